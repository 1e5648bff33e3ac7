"""The hooks: each consumer's ``(h, ∂ℓ/∂h)`` reduced, as its gradient arrives, into the
pending sums of `gxd_optim.tracking.storage`.

Each consumer reads its input through an alias (``h.view_as(h)``); a pre-hook on the alias's
backward node, when the gradient arrives, reduces ``(h, ∂ℓ/∂h)`` at once to ``[U]`` and
``[N, U]`` tensors (`gxd_optim.tracking.kernels`). The alias gives every consumer its own
gradient, even where several read the same ``h``. Nothing is kept beyond the backward pass.
With a single consumer (the common case) the per-sample scores are never stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..discovery.layers import canonical, dense_inputs, reads_features, whole_weight
from ..hooks import OwnedHook
from ..utilities import ConsumerView, Criterion, check_scores
from . import kernels
from .storage import TINY, Batch, EdgeStats, Slab, Statistics

__all__ = ["Collector"]


def _plain(edge: EdgeStats, batch: Batch, h: Tensor, grad: Tensor) -> bool:
    """A Linear consumer reading ``[N, U]`` (no tokens, no flatten) of a single-consumer layer."""
    return (
        edge.linear
        and h.dim() == 2
        and h.shape[1] == batch.layer.info.num_units
        and len(batch.read) == 1
        and h.dtype == edge.reference.dtype
    )


class Collector:
    """Hooks a model's producers and consumers and reduces what they see into `stats`.

    Args:
        stats: the statistics the sums go into.
        modules: the model's modules by qualified name.
        criterion: how units are scored (its ``streamed`` ones take the fast kernels).
        limits: the knobs of the reduction (`gxd_optim.tracking.kernels.Limits`).
    """

    def __init__(
        self,
        stats: Statistics,
        modules: Mapping[str, nn.Module],
        criterion: Criterion,
        limits: kernels.Limits,
    ) -> None:
        self.stats = stats
        self.modules = modules
        self.criterion = criterion
        self.limits = limits
        # a user's callable: "first" (shape and values to check), then "shape"; "" if built in
        self._unchecked = "first" if criterion.custom else ""
        self._reads_output = criterion.reads == "output"
        self._current: dict[str, Batch] = {}
        self._deferred: list[tuple[EdgeStats, Batch, Tensor, Tensor]] = []
        self._handles: list[RemovableHandle] = []

    def forget(self) -> None:
        """Drop the calls under way and the inputs waiting to be reduced."""
        self._current.clear()
        self._deferred.clear()

    def attach(self) -> None:
        """Register the forward hooks on producers and pre-hooks on consumers."""
        self.detach()
        for name in self.stats.layers:
            module = self.modules[name]
            hook = OwnedHook(self, module, "_on_produce", name)
            self._handles.append(module.register_forward_hook(hook))
        for consumer in self.stats.readers:
            module = self.modules[consumer]
            hook = OwnedHook(self, module, "_on_read", consumer)
            self._handles.append(module.register_forward_pre_hook(hook))

    def detach(self) -> None:
        """Remove every hook this tracker registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_produce(self, name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        if torch.is_grad_enabled() and module.training and isinstance(output, Tensor):
            batch = self._current[name] = Batch(self.stats.layers[name], output.shape[0])
            if self._reads_output and output.requires_grad:
                linear = reads_features(module)
                output.register_hook(partial(self._on_output_grad, batch, linear))  # type: ignore[no-untyped-call]
        else:
            self._current.pop(name, None)

    def _on_read(self, consumer: str, module: nn.Module, args: tuple[Any, ...]) -> Any:
        if not (torch.is_grad_enabled() and module.training) or not args:
            return None
        x = args[0]
        producer, edge = self.stats.readers[consumer]
        batch = self._current.get(producer)
        if batch is None or not isinstance(x, Tensor) or not x.requires_grad:
            return None
        if consumer in batch.read or x.shape[0] != batch.samples:
            return None  # a second call of the consumer, or a call on another batch
        batch.read.add(consumer)
        probed = x.view_as(x)  # the consumer reads this alias: its gradient is the pair's own
        probed.grad_fn.register_prehook(partial(self._on_grad, edge, batch, [x]))  # type: ignore[union-attr]
        return (probed, *args[1:])

    def _on_grad(
        self, edge: EdgeStats, batch: Batch, held: list[Tensor], grads: tuple[Tensor | None, ...]
    ) -> None:
        """The pre-hook of the alias's backward node: ``grads`` holds ``∂ℓ/∂h`` for ``held[0]``.

        The hook lives as long as the autograd graph; holding ``h`` only until the gradient
        arrives frees it as early as autograd frees what it saved.
        """
        if not held:
            return  # a further backward through the same forward (retain_graph, autograd.grad)
        h, grad = held.pop(), grads[0]
        if grad is None:  # an undefined gradient, which autograd means as zero
            grad = torch.zeros_like(h)
        edge.grad_version = edge.weight._version
        if h.numel() <= self.limits.defer:
            # Between the large kernels of a backward pass the interpreter runs from a cold
            # cache; small inputs cost little memory to keep and reduce faster together.
            grad = grad.detach() if grad.requires_grad else grad  # a graph only with create_graph
            self._deferred.append((edge, batch, h.detach(), grad))
        else:
            self.reduce(edge, batch, h, grad)

    def flush(self) -> None:
        """Reduce the deferred small inputs: together where they allow it, else one by one."""
        if not self._deferred:
            return
        deferred, self._deferred = self._deferred, []
        samples = deferred[0][2].shape[0]
        if (
            len(deferred) > 1
            and self.criterion.streamed
            and all(_plain(*p) and p[2].shape[0] == samples for p in deferred)
        ):
            self._reduce_together(deferred)
            return
        # GXD reads only the detached inputs: no graph to keep them off (other criteria read
        # the weights, which require grad)
        reduce = self._reduce if self.criterion.streamed else self.reduce
        for pair in deferred:
            reduce(*pair)

    def _reduce_together(self, deferred: list[tuple[EdgeStats, Batch, Tensor, Tensor]]) -> None:
        """GXD of plain ``[N, U]`` inputs of several single-consumer layers in one pass.

        The same sums as `_reduce` for each pair: ``Σ_x |g·(h − r)|`` per layer and ``Σ_x h``
        per mean-reference pair. When the inputs are those of every pair of the only slab,
        whose layers have one consumer each, `_reduce_slab` takes them.
        """
        slab = self._whole_slab(deferred)
        if slab is not None:
            self._reduce_slab(slab, deferred)
            return
        edges = [edge for edge, _, _, _ in deferred]  # in the order of the columns below
        # The deferred tensors are detached: nothing here can enter a graph.
        h = torch.cat([h for _, _, h, _ in deferred], 1)
        grad = torch.cat([g for _, _, _, g in deferred], 1)
        reference = torch.cat([e.reference for e in edges])
        abs_sum = (h - reference).mul_(grad).abs_().sum(0)  # Σ |g·(h − r)|
        sizes = [edge.reference.numel() for edge in edges]
        layers = [b.layer.pending_abs for _, b, _, _ in deferred]
        torch._foreach_add_(layers, list(torch.split(abs_sum, sizes)))
        means = [i for i, edge in enumerate(edges) if edge.mean]
        if means:
            h_sums = torch.split(h.sum(0), sizes)
            means_h = [edges[i].pending_h for i in means]
            torch._foreach_add_(means_h, [h_sums[i] for i in means])
        self._count(deferred)

    def _whole_slab(self, deferred: list[tuple[EdgeStats, Batch, Tensor, Tensor]]) -> Slab | None:
        """The only slab, whose layers have one consumer each, when ``deferred`` are the inputs
        of all its pairs (then put in its order, in place); else ``None``."""
        if len(self.stats.slabs) != 1:
            return None
        (slab,) = self.stats.slabs.values()
        if not slab.one_consumer_each or len(deferred) != len(slab.edges):
            return None
        ordered: list[tuple[EdgeStats, Batch, Tensor, Tensor] | None] = [None] * len(deferred)
        for pair in deferred:  # the backward pass ran them backwards
            ordered[pair[0].position] = pair
        if any(pair is None for pair in ordered):  # a pair twice, another never
            return None
        deferred[:] = cast(list[tuple[EdgeStats, Batch, Tensor, Tensor]], ordered)
        return slab

    def _reduce_slab(
        self, slab: Slab, deferred: list[tuple[EdgeStats, Batch, Tensor, Tensor]]
    ) -> None:
        """`_reduce_together` for the inputs of every pair of ``slab``, in its order.

        The inputs and then their gradients go into one ``[N, 2P]`` buffer; the gradients'
        half becomes ``|g·(h − r)|`` in place, and one sum over the samples gives ``Σ_x h``
        for the pairs, then ``Σ_x |g·(h − r)|`` for the layers: the layout of the slab's
        pending sums (`Slab`).
        """
        both, h, scores, difference, sums = slab.workspace(deferred[0][2].shape[0])
        torch.cat([x for _, _, x, _ in deferred] + [g for _, _, _, g in deferred], 1, out=both)
        scores.mul_(torch.sub(h, slab.pair_reference, out=difference)).abs_()
        torch.sum(both, 0, out=sums)
        if slab.masked:  # zero-reference pairs keep no running mean
            sums[: slab.pair_units].mul_(slab.pair_mask)
        slab.pending.add_(sums)
        self._count(deferred)

    @staticmethod
    def _count(deferred: list[tuple[EdgeStats, Batch, Tensor, Tensor]]) -> None:
        """Record the samples of reduced inputs of single-consumer layers."""
        for edge, batch, h, _ in deferred:
            edge.pending_count += h.shape[0]
            batch.add_reduced(edge.edge.consumer, h.shape[0])

    def reduce(self, edge: EdgeStats, batch: Batch, h: Tensor, grad: Tensor) -> None:
        """Fold one consumer's ``(h, ∂ℓ/∂h)`` into the pending statistics."""
        if torch.is_grad_enabled():  # a backward with create_graph: keep this off the graph
            with torch.no_grad():
                self._reduce(edge, batch, h, grad)
            return
        self._reduce(edge, batch, h, grad)

    def _reduce(self, edge: EdgeStats, batch: Batch, h: Tensor, grad: Tensor) -> None:
        """`reduce` where nothing it computes can enter a graph."""
        layer = batch.layer
        units = layer.info.num_units
        plan = edge.plans.get(h.shape)
        if plan is None:
            if len(edge.plans) >= self.limits.plans:
                edge.plans.clear()
            plan = edge.plans[h.shape] = kernels.make_plan(
                h.shape, edge.reference, edge.linear, edge.mean, self.limits
            )
        edge.pending_count += plan.count
        if not self.criterion.streamed:
            h4, g4 = (
                kernels.as_units(h, units, edge.linear),
                kernels.as_units(grad, units, edge.linear),
            )
            self._score_generic(edge, batch, h4, g4)
            return
        samples, dtype = h.shape[0], edge.mean_ema.dtype
        if plan.view is not None:
            h, grad = h.reshape(plan.view), grad.reshape(plan.view)
        ones = kernels.token_ones(plan, h, dtype)
        alone = len(batch.read) == 1  # one consumer: reduce |a| at once, keep nothing
        # Last rows first: the backward pass wrote and read them last, so they are still in
        # cache; the first rows, which the next backward node reads first, are in cache after.
        chunks = (
            [(h, grad)]
            if plan.rows >= samples
            else zip(*(reversed(torch.split(t, plan.rows)) for t in (h, grad)), strict=True)
        )
        parts: list[Tensor] = []
        sums: list[Tensor] = []
        for h_part, g_part in chunks:
            scores, h_sum = kernels.chunk_scores(h_part, g_part, plan, edge.mean, dtype, ones)
            if h_sum is not None:
                sums.append(h_sum)
            if alone and not plan.positions:  # the scores are the chunk-sized temporary
                layer.pending_abs += scores.abs_().sum(0, dtype=dtype)
            else:  # one ``[rows, U]`` per chunk
                parts.append(scores)
        if sums:  # a mean reference
            edge.pending_h.add_(sums[0] if len(sums) == 1 else torch.stack(sums).sum(0))
        if parts:
            scores = parts[0] if len(parts) == 1 else torch.cat(parts[::-1])  # samples in order
            if alone:
                layer.pending_abs += scores.abs_().sum(0, dtype=dtype)
            else:
                batch.add(edge.edge.consumer, scores)
        if alone:
            batch.add_reduced(edge.edge.consumer, samples)

    def _score_generic(self, edge: EdgeStats, batch: Batch, h4: Tensor, g4: Tensor) -> None:
        """Any criterion but the streamed GXD: running-mean sums, then the criterion's score."""
        dtype = edge.mean_ema.dtype
        units = batch.layer.info.num_units
        if self.criterion.reads != "consumer":
            if edge.mean:
                edge.pending_h += h4.sum((0, 1, 3), dtype=dtype)
            batch.add_reduced(edge.edge.consumer, 0)
            return
        assert self.criterion.score is not None
        edge.pending_h += h4.sum((0, 1, 3), dtype=dtype)
        h, grad = (t.transpose(1, 2).reshape(t.shape[0], units, -1) for t in (h4, g4))
        mean = edge.mean_ema / edge.correction.clamp_min(TINY)
        producer, consumer = (self.modules[n] for n in (batch.layer.info.name, edge.edge.consumer))
        producer_weight = canonical(whole_weight(producer), producer)  # gathered under FSDP2
        consumer_weight = dense_inputs(canonical(whole_weight(consumer), consumer), consumer)
        view = ConsumerView(h, grad, edge.reference, mean, consumer_weight, producer_weight)
        scores = self.criterion.score(view)
        if self._unchecked:  # a user's callable: its scores are checked before they count
            self._check_scores(scores, (h.shape[0], units))
        batch.add(edge.edge.consumer, scores)

    def _check_scores(self, scores: object, shape: tuple[int, int]) -> None:
        """Shape on every call, finite values on the first (`check_scores`)."""
        check_scores(self.criterion.name, scores, shape, values=self._unchecked == "first")
        self._unchecked = "shape"

    def _on_output_grad(self, batch: Batch, linear: bool, grad: Tensor) -> None:
        """Score the producer's output gradient ``∂ℓ/∂z`` (criteria that read it)."""
        if batch.output_seen:
            return  # a further backward through the same forward
        batch.output_seen = True
        layer = batch.layer
        units = layer.info.num_units
        assert self.criterion.score is not None
        with torch.no_grad():
            n = grad.shape[0]
            g = grad.reshape(n, -1, units).transpose(1, 2) if linear else grad.reshape(n, units, -1)
            scores = self.criterion.score(g)
            layer.pending_abs += scores.abs().sum(0, dtype=layer.pending_abs.dtype)
            layer.pending_samples += n
