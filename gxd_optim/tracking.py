"""Per-unit statistics collected by hooks, committed only when the optimizer steps.

Each consumer reads its input through an alias (``h.view_as(h)``); a pre-hook on the alias's
backward node, when the gradient arrives, reduces ``(h, ∂ℓ/∂h)`` at once to ``[U]`` and
``[N, U]`` tensors. The alias gives every consumer its own gradient, even where several read
the same ``h``. Nothing
is kept beyond the backward pass; statistics wait in ``pending`` buffers until
`Tracker.commit` (the optimizer stepped) or `Tracker.discard` (``zero_grad`` without a step).

Per backward pass and consumer the hot path reads the activation and its gradient once, in
chunks with one temporary each (see `_plan`): each chunk of ``h`` gives ``Σ_x h`` (for a mean
reference) and then, as ``h − r`` times the gradient while it is in cache, ``Σ_x |a(x)|``.
With a single consumer (the common case) the per-sample scores are never stored. The signed
sums that `predicted_cost` needs are not collected at all: they follow from the consumer's
gradients (see `gxd_optim.utilities.predicted_cost`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache, partial
from itertools import accumulate
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .discovery import Edge, LayerInfo, layer_params
from .hooks import OwnedHook
from .operator import fold_and_zero_inputs_, unit_columns
from .utilities import (
    CRITERIA,
    ConsumerView,
    Criterion,
    check_scores,
    layer_normalised,
    predicted_cost,
    random_scores,
)

__all__ = ["EdgeStats", "LayerStats", "Tracker", "fold_edge_"]

_TINY = 1e-30
_CHUNK = 1 << 19  # elements per chunk of a mean-reference reduction: its one temporary
_CHUNK_ZERO = 1 << 21  # elements per chunk of a zero-reference reduction (see `_plan`)
_DEFER = 1 << 15  # consumer inputs this small are reduced at the commit, back to back
_PLANS = 64  # input shapes a pair keeps plans for (varying sequence lengths start over)


@dataclass
class EdgeStats:
    """Statistics of one (producer, consumer) pair.

    ``mean_ema`` is the EMA of the batch means of ``h`` and ``weight_ema`` its bias
    correction (the EMA of 1 over the steps this consumer saw data); ``reference`` is the ``r``
    they imply (0 for a zero-reference pair, whose ``reference_mask`` is 0); ``pending_h`` and
    ``pending_count`` sum ``h`` over the backward passes since the last commit.
    ``weight`` is the consumer's weight when the wrapper was built (`Tracker.predicted_cost`
    refuses to read one that replaced it), its version at the last backward ``grad_version``.
    """

    edge: Edge
    linear: bool
    weight: Tensor
    mean_ema: Tensor
    weight_ema: Tensor
    reference: Tensor
    pending_h: Tensor
    reference_mask: Tensor
    pending_count: int = 0
    grad_version: int | None = None  # the consumer weight's version at the last backward
    position: int = 0  # among the pairs of its slab, whose segments come in this order
    plans: dict[torch.Size, _Plan] = field(default_factory=dict, repr=False)  # by input shape

    @property
    def mean(self) -> bool:
        """Whether this pair substitutes the running mean (else zero)."""
        return self.edge.reference == "mean"


@dataclass
class LayerStats:
    """Statistics of one producer.

    Attributes:
        utility_ema: EMA of ``mean_x |a_i(x)|`` (not bias-corrected).
        weight_ema: EMA of 1 over the same steps, ``1 - decay**age``: the Adam-style bias
            correction of every EMA of the layer, kept on the statistics' device.
        age: committed steps since each unit's last reset, on the host (eligibility is
            counted there, so the step never waits for the device).
        commits: committed steps of the layer, the clock of ``age``.
        eligible_count: units older than the tracker's maturity; recounted from ``age`` only
            once ``commits`` reaches ``recount_at`` (see `Tracker.eligible`).
    """

    info: LayerInfo
    utility_ema: Tensor
    weight_ema: Tensor
    age: Tensor
    edges: list[EdgeStats]
    pending_abs: Tensor
    pending_samples: int = 0
    budget: float = 0.0
    resets: int = 0
    open_batches: list[_Batch] = field(default_factory=list)
    commits: int = 0  # committed steps of this layer: the clock that ``age`` counts in
    eligible_count: int = 0  # units older than maturity, valid while ``commits < recount_at``
    recount_at: int = 0


class _Slab:
    """The statistics of all layers on one device and dtype, in flat buffers.

    Every `LayerStats` and `EdgeStats` tensor is a view into these, so a commit in which every
    layer and pair saw data updates all of them with a handful of kernels.

    The segments of all pairs come first, then those of all layers. Where every layer has one
    consumer, the pairs' segments (``[:pair_units]``) and the layers' (``[pair_units:]``) then
    hold the same units in the same order.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self.size = 0
        self.owners: list[LayerStats | EdgeStats] = []  # in the order of their segments
        self.edges: list[EdgeStats] = []
        self.pair_units = 0
        self.one_consumer_each = True  # every layer of the slab has exactly one consumer
        self._cursor = 0
        self._segments: list[slice] = []
        self._scaled_for: list[int] = []  # the counts that `scale` holds the inverses of

    def allocate(self) -> None:
        """Create the buffers, once `size` is known."""
        zeros = partial(torch.zeros, dtype=self.dtype, device=self.device)
        self.state = zeros(4, self.size)  # one buffer: a step's state is copied in one kernel
        self.saved = zeros(2, self.size)  # ema and norm before a commit (see `Tracker.commit`)
        self.state[1].fill_(_TINY)  # a bias correction is never 0: r = ema / norm needs no clamp
        self.unbind()
        self.mask, self.scale = zeros(self.size), zeros(self.size)  # scale: 1 / counts
        self.ends = torch.ones(2, self.size, dtype=self.dtype, device=self.device)

    def unbind(self) -> None:
        """``ema``, ``norm``, ``reference`` and ``pending``: the rows of `state`."""
        self.ema, self.norm, self.reference, self.pending = self.state.unbind(0)

    def take(self, units: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The next segment's views: EMA, its bias correction, reference, pending sum, mask."""
        part = slice(self._cursor, self._cursor + units)
        self._cursor += units
        self._segments.append(part)
        return self._views(part)

    def _views(self, part: slice) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return (
            self.ema[part],
            self.norm[part],
            self.reference[part],
            self.pending[part],
            self.mask[part],
        )

    def relink(self) -> None:
        """Make every owner's tensors views of the buffers again.

        ``copy.deepcopy`` and ``torch.save`` keep views of one storage together; plain
        ``pickle`` gives each view a storage of its own (with the same values), after which
        a commit would update the buffers and leave the owners' tensors behind.
        """
        self.unbind()
        for owner, part in zip(self.owners, self._segments, strict=True):
            ema, norm, reference, pending, mask = self._views(part)
            if isinstance(owner, EdgeStats):
                owner.mean_ema, owner.weight_ema, owner.reference = ema, norm, reference
                owner.pending_h, owner.reference_mask = pending, mask
                owner.plans.clear()  # their reference views are views of the old storage
            else:
                owner.utility_ema, owner.weight_ema, owner.pending_abs = ema, norm, pending
        self.split()

    def split(self) -> None:
        """Views of the pairs' and the layers' halves, once every segment is taken."""
        pairs, layers = slice(0, self.pair_units), slice(self.pair_units, self.size)
        self.pair_reference, self.pair_mask = self.reference[pairs], self.mask[pairs]
        self.pair_pending, self.layer_pending = self.pending[pairs], self.pending[layers]
        # only zero-reference pairs need their references masked (the layers' are unused)
        self.masked = not bool(self.pair_mask.all())

    def counts(self) -> list[int]:
        """Samples (layers) or positions (pairs) pending per segment."""
        return [
            o.pending_samples if isinstance(o, LayerStats) else o.pending_count for o in self.owners
        ]

    def means(self, counts: list[int]) -> Tensor:
        """Write every segment's pending mean (all counts positive) to the first row of
        `ends`; return their sum of squares (a 0-d tensor, for `_finite`).

        The means are the sums times `scale`, refilled (on the device, without a transfer)
        only when the counts differ from the last step's.
        """
        if counts != self._scaled_for:
            for part, n in zip(self._segments, counts, strict=True):
                self.scale[part].fill_(1.0 / n)
            self._scaled_for = counts
        means = torch.mul(self.pending, self.scale, out=self.ends[0])
        return torch.dot(means, means)

    def fold(self, finite: Tensor | bool, decay: float) -> None:
        """Fold the `means` into the EMAs and recompute the references (`Tracker.finish`
        clears the pending sums once the step went through).

        The second row of `ends` holds the ones that each bias correction is an EMA of, so
        one ``lerp`` updates ``ema`` and ``norm`` together. Where ``finite`` is false,
        nothing changes: as a 0-d bool tensor (its value unread), the EMAs are put back from
        `saved` (the copy `Tracker.commit` took first); as a Python bool, nothing is folded.
        """
        if finite is not False:
            self.state[:2].lerp_(self.ends, 1.0 - decay)
            if finite is not True:
                torch.where(finite, self.state[:2], self.saved[:2], out=self.state[:2])
            self.refresh()

    def refresh(self) -> None:
        """Every ``r`` from its running mean (0 for zero references)."""
        torch.div(self.ema, self.norm, out=self.reference)
        if self.masked:
            self.reference.mul_(self.mask)


HOST_READS = True
"""Whether the commit reads `Tracker.finite` on the host when every statistic lives on the
CPU, where a read waits for nothing (elsewhere it would wait for the device). The tests turn
it off to run, on the CPU, the path that a GPU takes."""


def _finite(squares: list[Tensor]) -> Tensor:
    """A 0-d bool on the first tensor's device: whether every batch mean is finite and small
    enough that its square does not overflow (in float32, below ``1.8e19``), given each
    tensor's sum of squares.

    Larger means come from an overflowing batch (a loss of inf, inputs scaled by 1e20):
    folded into a running mean, one would make every reset fold an absurd ``W·r`` into a
    bias for hundreds of steps. (One sum of squares per tensor, where ``isfinite`` over
    every element takes nine kernels on a CPU.)
    """
    total = squares[0]
    for more in squares[1:]:
        total = total + more.to(total.device)
    return torch.isfinite(total)


class _Batch:
    """Per-sample attributions of one producer call, summed over its consumers.

    With one consumer (the common case) the batch closes as soon as its gradient arrives.
    """

    __slots__ = ("acc", "layer", "output_seen", "read", "reported", "samples")

    def __init__(self, layer: LayerStats, samples: int) -> None:
        self.layer = layer
        self.samples = samples
        self.acc: Tensor | None = None
        self.output_seen = False  # the producer's output gradient arrived (criteria reading it)
        self.read: set[str] = set()  # consumers that read this call's output
        self.reported: set[str] = set()  # consumers whose scores have been added

    def add(self, consumer: str, scores: Tensor) -> None:
        """Add one consumer's per-sample scores ``[N, U]``; close once all have reported."""
        if not self.reported and len(self.read) > 1:
            self.layer.open_batches.append(self)
        self.reported.add(consumer)
        self.acc = scores if self.acc is None else self.acc + scores
        if len(self.reported) >= len(self.read):
            self.close()

    def add_reduced(self, consumer: str, samples: int) -> None:
        """Record that the only consumer reported ``samples`` samples, already reduced."""
        self.reported.add(consumer)
        self.layer.pending_samples += samples

    def close(self) -> None:
        """Move ``Σ_x |a(x)|`` into the layer's pending sums."""
        layer = self.layer
        if self.acc is not None:
            layer.pending_abs += self.acc.abs().sum(0, dtype=layer.pending_abs.dtype)
            layer.pending_samples += self.acc.shape[0]
            self.acc = None
        if self in layer.open_batches:
            layer.open_batches.remove(self)


def fold_edge_(edge: EdgeStats, consumer: nn.Module, index: Tensor) -> Tensor:
    """Apply the reset's fold to one consumer: ``b += W_out[:, i]·r_i``, then ``W_out[:, i] = 0``.

    Returns:
        The consumer input columns it touched (for clearing their optimizer state).
    """
    weight, bias = layer_params(consumer)
    k = edge.edge.columns_per_unit
    columns = unit_columns(index, k).to(weight.device)
    values = edge.reference.index_select(0, index).repeat_interleave(k) if edge.mean else None
    fold_and_zero_inputs_(weight, bias, columns, values)
    return columns


def _plain(edge: EdgeStats, batch: _Batch, h: Tensor, grad: Tensor) -> bool:
    """A Linear consumer reading ``[N, U]`` (no tokens, no flatten) of a single-consumer layer."""
    return (
        edge.linear
        and h.dim() == 2
        and h.shape[1] == batch.layer.info.num_units
        and len(batch.read) == 1
        and h.dtype == edge.reference.dtype
    )


def _has_pending(layer: LayerStats) -> bool:
    """Whether a backward pass reached the layer since the last commit."""
    return bool(layer.pending_samples) or any(e.pending_count for e in layer.edges)


_Layout = tuple[tuple[int, ...], tuple[int, ...], int]  # view shape, positions, unit dimension


@lru_cache(maxsize=1024)
def _layout(shape: torch.Size, units: int, linear: bool) -> _Layout:
    """The fewest dimensions that keep a consumer input's samples, units and positions apart.

    Returns the shape to view the input as, its position dimensions (summed per sample) and
    its unit dimension: ``[N, U]`` for a flat Linear input, ``[N, U, k]`` for a flatten's
    columns per unit, ``[N, T, U]`` for tokens, ``[N, T, U, k]`` for tokens with columns per
    unit, and a convolution's own ``[N, U, *spatial]`` (no view, so a channels-last input is
    not copied). (Cached: a model feeds few distinct shapes.)
    """
    n, numel = shape[0], shape.numel()
    if not linear:
        return tuple(shape), tuple(range(2, len(shape))), 1
    k = shape[-1] // units
    pre = numel // (n * shape[-1]) if n else 1
    if pre == 1:
        return ((n, units), (), 1) if k == 1 else ((n, units, k), (2,), 1)
    if k == 1:
        return (n, pre, units), (1,), 2
    return (n, pre, units, k), (1, 3), 2


@dataclass(frozen=True)
class _Plan:
    """How one pair reduces its inputs of one shape: built once per shape by `_plan`.

    Attributes:
        view: the shape to view the input as (`_layout`), or ``None`` where its own serves.
        positions: the dimensions summed per sample.
        others: every dimension but the units' (``Σ h`` sums them).
        reference: the pair's ``r``, shaped to broadcast over the viewed input (a view of
            its statistics, so it follows their in-place updates).
        ones: the row ``[1, T]`` that sums tokens (`_token_sums`), for ``[N, T, U]`` only.
        rows: samples per chunk (at least the batch's samples where one chunk holds it all).
        count: positions per unit, ``h.numel() / U``: what ``Σ h`` sums over.
    """

    view: tuple[int, ...] | None
    positions: tuple[int, ...]
    others: tuple[int, ...]
    reference: Tensor
    ones: Tensor | None
    rows: int
    count: int


def _plan(shape: torch.Size, reference: Tensor, linear: bool, mean: bool) -> _Plan:
    """The `_Plan` of a pair's inputs of ``shape``, given its ``r`` (``[U]``), whether its
    consumer is a Linear and whether ``r`` is a running mean (else zero).

    A mean reference reads each chunk of ``h`` twice (its sum, then ``h − r``) and its
    temporary twice (the product, a sum), so small chunks keep both in cache. A zero
    reference writes one product that one sum reads: fewer, larger kernels are faster, and its
    pairs are mostly zero-padded convolutions, whose large inputs the backward pass reaches
    last, after autograd freed most of what it saved.
    """
    units = reference.numel()
    view, positions, unit_dim = _layout(shape, units, linear)
    dims = len(view)
    samples, numel = shape[0], shape.numel()
    limit = _CHUNK if mean else _CHUNK_ZERO
    return _Plan(
        view=None if view == tuple(shape) else view,
        positions=positions,
        others=tuple(d for d in range(dims) if d != unit_dim),
        reference=reference.view(units, *(1,) * (dims - 1 - unit_dim)),
        ones=reference.new_ones(1, view[1]) if positions == (1,) else None,
        rows=max(1, limit * samples // max(1, numel)),
        count=numel // units,
    )


def _as_units(t: Tensor, units: int, linear: bool) -> Tensor:
    """View a consumer input as ``[N, pre, U, k·post]`` (a view for contiguous layouts)."""
    if linear:
        return t.reshape(t.shape[0], -1, units, t.shape[-1] // units)
    return t.reshape(t.shape[0], 1, units, -1)


def _chunk_scores(
    h: Tensor, g: Tensor, plan: _Plan, mean: bool, dtype: torch.dtype, ones: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Per-sample ``a = Σ_pos ∂ℓ/∂h · (h − r)`` of a chunk viewed as its `_Plan` says.

    Args:
        h: the chunk of the consumer's input.
        g: its gradient, shaped as ``h``.
        plan: the pair's plan for the input's shape.
        mean: whether ``r`` is a running mean, whose ``Σ_x h`` the statistics need.
        dtype: the statistics' dtype.
        ones: the row of ones that sums tokens as a product (`_token_sums`), where that
            keeps full precision; ``None`` for plain sums.

    Returns:
        ``a`` (``[rows, U]`` or, without positions, the chunk-sized temporary itself) and, for
        a mean reference, the chunk's ``Σ h`` per unit (``None`` otherwise), read just before
        ``h − r``, so that the chunk is in cache for the second read.
    """
    h_sum: Tensor | None = None
    if mean:
        h_sum = _token_sums(h, ones).sum(0) if ones is not None else h.sum(plan.others, dtype=dtype)
    product = (h - plan.reference).mul_(g) if mean else h * g
    if ones is not None:
        return _token_sums(product, ones), h_sum
    return (product.sum(plan.positions) if plan.positions else product), h_sum


def _token_ones(plan: _Plan, h: Tensor, dtype: torch.dtype) -> Tensor | None:
    """The plan's row of ones where sums over tokens are matrix products, else ``None``.

    Products where they keep full precision and are worth it: a CPU input in the statistics'
    dtype, float64 or float32 at full-precision products (not the bfloat16 that
    ``torch.set_float32_matmul_precision`` may allow).
    """
    if plan.ones is None or h.dtype != dtype or h.device.type != "cpu":
        return None
    full = h.dtype == torch.float64 or torch.get_float32_matmul_precision() == "highest"
    return plan.ones if full else None


def _token_sums(t: Tensor, ones: Tensor) -> Tensor:
    """``t.sum(1)`` of a ``[rows, T, U]`` tensor, as a product with a row of ones ``[1, T]``.

    The matrix product reads each element once; PyTorch's CPU reduction over a middle
    dimension took about twice as long (45–50 µs against 20–30 µs for 2 MiB).
    """
    return torch.matmul(ones, t).squeeze(1)


class Tracker:
    """Collects per-unit statistics for the discovered layers of one model.

    Args:
        layers: eligible producers.
        modules: every Linear/Conv layer by qualified name.
        criterion: how units are scored (`gxd_optim.utilities.CRITERIA`).
        decay: EMA decay ``η`` of utilities and running means.
        seed: seed of the random criterion's scores.
        maturity: a unit is eligible for a reset once older than this many committed steps.

    Attributes:
        steps: committed steps (steps that saw at least one backward pass).
        finite: whether the latest commit's batch means were finite and sane (a 0-d bool
            tensor, or a bool where it was read on the host); if not, it left every
            statistic as it was (``None`` before the first).
        before_commit: called with the tracker at the start of `commit`, once the pending
            sums are complete (e.g. to reduce them across processes, `gxd_optim.distributed`).
    """

    def __init__(
        self,
        layers: Mapping[str, LayerInfo],
        modules: Mapping[str, nn.Module],
        criterion: Criterion,
        decay: float,
        seed: int = 0,
        maturity: int = 0,
    ) -> None:
        self.decay = decay
        self.maturity = maturity
        self.criterion = criterion
        self.seed = seed
        self.steps = 0
        self.finite: Tensor | bool | None = None  # whether the latest commit folded anything
        self.before_commit: Callable[[Tracker], None] | None = None
        self._fast = criterion is CRITERIA["gxd"]  # the streamed GXD path below
        # a user's callable: "first" (shape and values to check), then "shape"; "" if built in
        self._unchecked = "" if criterion in CRITERIA.values() else "first"
        self._reads_output = criterion.reads == "output"
        self.modules = dict(modules)
        self.layers: dict[str, LayerStats] = {}
        self._readers: dict[str, tuple[str, EdgeStats]] = {}  # consumer: (producer, pair)
        self._current: dict[str, _Batch] = {}
        self._deferred: list[tuple[EdgeStats, _Batch, Tensor, Tensor]] = []
        self._handles: list[RemovableHandle] = []
        self._slabs: dict[tuple[torch.device, torch.dtype], _Slab] = {}
        self._ages = torch.zeros(sum(i.num_units for i in layers.values()), dtype=torch.int64)
        self._committed: list[LayerStats] = []  # by the last commit, until `finish`
        self._undo: tuple[Tensor | bool | None, list[float]] | None = None  # `finite`, budgets

        for info in layers.values():
            self._slab(modules[info.name]).size += info.num_units * (1 + len(info.edges))
        for slab in self._slabs.values():
            slab.allocate()
        edges_of: dict[str, list[EdgeStats]] = {}
        for name, info in layers.items():  # every pair's segment first, then every layer's
            slab = self._slab(modules[name])
            edges_of[name] = [
                EdgeStats(
                    e,
                    isinstance(modules[e.consumer], nn.Linear),
                    layer_params(modules[e.consumer])[0],
                    *slab.take(info.num_units),
                )
                for e in info.edges
            ]
            for edge in edges_of[name]:
                edge.position = len(slab.edges)
                slab.edges.append(edge)
                slab.owners.append(edge)  # owners follow the order of the `take` calls
            slab.pair_units += info.num_units * len(info.edges)
            slab.one_consumer_each &= len(info.edges) == 1
        ages = self._age_views([info.num_units for info in layers.values()])
        for (name, info), age in zip(layers.items(), ages, strict=True):
            slab = self._slab(modules[name])
            ema, norm, _, pending, _ = slab.take(info.num_units)
            stats = LayerStats(info, ema, norm, age, edges_of[name], pending)
            slab.owners.append(stats)
            self.layers[name] = stats
            for edge in stats.edges:
                self._readers[edge.edge.consumer] = (name, edge)
                if edge.mean:
                    edge.reference_mask.fill_(1.0)
        for slab in self._slabs.values():
            slab.split()

    def _age_views(self, units: list[int]) -> list[Tensor]:
        """Consecutive views of ``_ages``, one per layer of ``units`` units."""
        ends = list(accumulate(units))
        return [self._ages[end - n : end] for end, n in zip(ends, units, strict=True)]

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle with every statistic a view of its buffer again (see `_Slab.relink`)."""
        self.__dict__.update(state)
        for slab in self._slabs.values():
            slab.relink()
        layers = list(self.layers.values())
        ages = self._age_views([layer.info.num_units for layer in layers])
        for layer, age in zip(layers, ages, strict=True):
            layer.age = age

    def _slab(self, module: nn.Module) -> _Slab:
        """The slab of statistics for a layer's device and dtype (created empty if new)."""
        weight, _ = layer_params(module)
        float_type = torch.float64 if weight.dtype == torch.float64 else torch.float32
        key = (weight.device, float_type)
        if key not in self._slabs:
            self._slabs[key] = _Slab(float_type, weight.device)
        return self._slabs[key]

    # -- hooks ------------------------------------------------------------------------------
    def attach(self) -> None:
        """Register the forward hooks on producers and pre-hooks on consumers."""
        self.detach()
        for name in self.layers:
            module = self.modules[name]
            hook = OwnedHook(self, module, "_on_produce", name)
            self._handles.append(module.register_forward_hook(hook))
        for consumer in self._readers:
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
            batch = self._current[name] = _Batch(self.layers[name], output.shape[0])
            if self._reads_output and output.requires_grad:
                linear = isinstance(module, nn.Linear)
                output.register_hook(partial(self._on_output_grad, batch, linear))  # type: ignore[no-untyped-call]
        else:
            self._current.pop(name, None)

    def _on_read(self, consumer: str, module: nn.Module, args: tuple[Any, ...]) -> Any:
        if not (torch.is_grad_enabled() and module.training) or not args:
            return None
        x = args[0]
        producer, edge = self._readers[consumer]
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
        self, edge: EdgeStats, batch: _Batch, held: list[Tensor], grads: tuple[Tensor | None, ...]
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
        if h.numel() <= _DEFER:
            # Between the large kernels of a backward pass the interpreter runs from a cold
            # cache; small inputs cost little memory to keep and reduce faster together.
            grad = grad.detach() if grad.requires_grad else grad  # a graph only with create_graph
            self._deferred.append((edge, batch, h.detach(), grad))
        else:
            self._reduce(edge, batch, h, grad)

    def flush(self) -> None:
        """Reduce the deferred small inputs: together where they allow it, else one by one."""
        deferred, self._deferred = self._deferred, []
        together = len(deferred) > 1 and self._fast and all(_plain(*p) for p in deferred)
        if together and len({h.shape[0] for _, _, h, _ in deferred}) == 1:
            self._reduce_together(deferred)
            return
        for pair in deferred:
            self._reduce(*pair)

    def _reduce_together(self, deferred: list[tuple[EdgeStats, _Batch, Tensor, Tensor]]) -> None:
        """GXD of plain ``[N, U]`` inputs of several single-consumer layers in one pass.

        The same sums as `_reduce` for each pair: ``Σ_x |g·(h − r)|`` per layer and ``Σ_x h``
        per mean-reference pair. When the inputs are those of every pair of a slab whose
        layers have one consumer each, the sums go into the slab's buffers in two products.
        """
        slab = self._slab(self.modules[deferred[0][0].edge.consumer])
        whole = (
            slab.one_consumer_each and len(self._slabs) == 1 and len(deferred) == len(slab.edges)
        )
        if whole:
            deferred = sorted(deferred, key=lambda pair: pair[0].position)
            whole = all(pair[0] is edge for pair, edge in zip(deferred, slab.edges, strict=True))
        edges = [edge for edge, _, _, _ in deferred]  # in the order of the columns below
        # The deferred tensors are detached: nothing here can enter a graph.
        h = torch.cat([h for _, _, h, _ in deferred], 1)
        grad = torch.cat([g for _, _, _, g in deferred], 1)
        reference = slab.pair_reference if whole else torch.cat([e.reference for e in edges])
        abs_sum = (h - reference).mul_(grad).abs_().sum(0)  # Σ |g·(h − r)|
        if whole:  # Σ h where the mask is 1 (r is 0 where it is 0)
            slab.pair_pending.addcmul_(h.sum(0), slab.pair_mask)
            slab.layer_pending.add_(abs_sum)
        else:
            sizes = [edge.reference.numel() for edge in edges]
            layers = [b.layer.pending_abs for _, b, _, _ in deferred]
            torch._foreach_add_(layers, list(torch.split(abs_sum, sizes)))
            means = [i for i, edge in enumerate(edges) if edge.mean]
            if means:
                h_sums = torch.split(h.sum(0), sizes)
                means_h = [edges[i].pending_h for i in means]
                torch._foreach_add_(means_h, [h_sums[i] for i in means])
        for edge, batch, h_part, _ in deferred:
            edge.pending_count += h_part.shape[0]
            batch.add_reduced(edge.edge.consumer, h_part.shape[0])

    def _reduce(self, edge: EdgeStats, batch: _Batch, h: Tensor, grad: Tensor) -> None:
        """Fold one consumer's ``(h, ∂ℓ/∂h)`` into the pending statistics."""
        if torch.is_grad_enabled():  # a backward with create_graph: keep this off the graph
            with torch.no_grad():
                self._reduce(edge, batch, h, grad)
            return
        layer = batch.layer
        units = layer.info.num_units
        plan = edge.plans.get(h.shape)
        if plan is None:
            if len(edge.plans) >= _PLANS:
                edge.plans.clear()
            plan = edge.plans[h.shape] = _plan(h.shape, edge.reference, edge.linear, edge.mean)
        edge.pending_count += plan.count
        if not self._fast:
            h4, g4 = _as_units(h, units, edge.linear), _as_units(grad, units, edge.linear)
            self._score_generic(edge, batch, h4, g4)
            return
        samples, dtype = h.shape[0], edge.mean_ema.dtype
        if plan.view is not None:
            h, grad = h.reshape(plan.view), grad.reshape(plan.view)
        ones = _token_ones(plan, h, dtype)
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
            scores, h_sum = _chunk_scores(h_part, g_part, plan, edge.mean, dtype, ones)
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

    def _score_generic(self, edge: EdgeStats, batch: _Batch, h4: Tensor, g4: Tensor) -> None:
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
        mean = edge.mean_ema / edge.weight_ema.clamp_min(_TINY)
        producer_weight = layer_params(self.modules[batch.layer.info.name])[0]
        consumer_weight = layer_params(self.modules[edge.edge.consumer])[0]
        view = ConsumerView(h, grad, edge.reference, mean, consumer_weight, producer_weight)
        scores = self.criterion.score(view)
        if self._unchecked:  # a user's callable: its scores are checked before they count
            self._check_scores(scores, (h.shape[0], units))
        batch.add(edge.edge.consumer, scores)

    def _check_scores(self, scores: object, shape: tuple[int, int]) -> None:
        """Shape on every call, finite values on the first (`check_scores`)."""
        check_scores(self.criterion.name, scores, shape, values=self._unchecked == "first")
        self._unchecked = "shape"

    def _on_output_grad(self, batch: _Batch, linear: bool, grad: Tensor) -> None:
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

    # -- commit / discard -------------------------------------------------------------------
    def commit(self) -> list[str]:
        """Fold the pending statistics into the EMAs; return the layers that had any.

        All layers are updated together, with a few kernels per slab. When any batch mean is
        not finite or absurdly large (`_finite`: an overflowing batch), no statistic changes
        at all; the step still counts, and `finite` says so (read it only where a reset is
        due: it waits for the device). Until `finish`, `rollback` undoes the commit and the
        budgets spent after it.
        """
        self.settle()
        if self.before_commit is not None:
            self.before_commit(self)
        layers = [layer for layer in self.layers.values() if _has_pending(layer)]
        self._committed = layers
        counts = [slab.counts() for slab in self._slabs.values()]
        self._undo = (self.finite, [layer.budget for layer in self.layers.values()])
        if not layers:
            return []
        self.steps += 1
        slabs = list(self._slabs.values())
        with torch.no_grad():
            for slab in slabs:
                slab.saved.copy_(slab.state[:2])
            if all(all(c) for c in counts):  # every segment saw data: whole buffers at once
                squares = [slab.means(c) for slab, c in zip(slabs, counts, strict=True)]
                if HOST_READS and all(slab.device.type == "cpu" for slab in slabs):
                    self.finite = all(math.isfinite(float(t)) for t in squares)
                    for slab in slabs:
                        slab.fold(self.finite, self.decay)
                else:
                    self.finite = finite = _finite(squares)
                    for slab in slabs:
                        slab.fold(finite.to(slab.device), self.decay)
                self._ages += 1
            else:
                self._commit_segments(layers)
        for layer in layers:
            layer.commits += 1
        return [layer.info.name for layer in layers]

    def finish(self) -> None:
        """The step that committed went through: clear the pending sums it folded
        (`rollback` no longer applies)."""
        layers, self._committed, self._undo = self._committed, [], None
        if len(layers) == len(self.layers):
            for slab in self._slabs.values():
                slab.pending.zero_()
            self._reset_counts(layers)
        elif layers:
            self._clear_pending(layers)

    def rollback(self) -> None:
        """Undo the last commit and the budgets spent since: its step did not happen.

        The pending sums are still there (`finish` clears them), so the next step commits
        them. (Under DDP they are already summed over the ranks then.)
        """
        if self._undo is None:
            return
        self.finite, budgets = self._undo
        for layer, budget in zip(self.layers.values(), budgets, strict=True):
            layer.budget = budget
        layers, self._committed, self._undo = self._committed, [], None
        if not layers:
            return
        self.steps -= 1
        with torch.no_grad():
            for slab in self._slabs.values():
                slab.state[:2].copy_(slab.saved)
                slab.refresh()
        for layer in layers:
            layer.age -= 1
            layer.commits -= 1
            layer.recount_at = 0  # the cached eligible count was for the later ages

    def settle(self) -> None:
        """Complete the pending sums: reduce the deferred inputs and close every open batch.

        The commit does this first; doing it earlier (a checkpoint) changes what it folds only
        in the order of additions.
        """
        self.flush()
        for layer in self.layers.values():
            for batch in list(layer.open_batches):
                batch.close()

    def _commit_segments(self, layers: list[LayerStats]) -> None:
        """Commit segment by segment, skipping those that saw no data."""
        segments = [
            seg
            for lay in layers
            for seg in [
                (lay.pending_abs, lay.utility_ema, lay.weight_ema, lay.pending_samples),
                *((e.pending_h, e.mean_ema, e.weight_ema, e.pending_count) for e in lay.edges),
            ]
            if seg[3]
        ]
        means = [value / count for value, _, _, count in segments]
        self.finite = _finite([torch.dot(m, m) for m in means])
        for mean, (_, ema, norm, _) in zip(means, segments, strict=True):
            ema.lerp_(mean, 1.0 - self.decay)
            norm.mul_(self.decay).add_(1.0 - self.decay)  # the EMA of 1
        for slab in self._slabs.values():  # an overflowing step puts every EMA back
            torch.where(
                self.finite.to(slab.device), slab.state[:2], slab.saved[:2], out=slab.state[:2]
            )
        for layer in layers:
            layer.age += 1
            self.refresh_references(layer)

    def discard(self) -> None:
        """Drop statistics of backward passes that no step committed."""
        self._current.clear()
        self._deferred.clear()
        dirty = [
            layer for layer in self.layers.values() if _has_pending(layer) or layer.open_batches
        ]
        for layer in dirty:
            layer.open_batches.clear()
        self._clear_pending(dirty)

    @classmethod
    def _clear_pending(cls, layers: list[LayerStats]) -> None:
        if not layers:
            return
        edges = [edge for layer in layers for edge in layer.edges]
        torch._foreach_zero_([layer.pending_abs for layer in layers] + [e.pending_h for e in edges])
        cls._reset_counts(layers)

    @staticmethod
    def _reset_counts(layers: list[LayerStats]) -> None:
        for layer in layers:
            layer.pending_samples = 0
            for edge in layer.edges:
                edge.pending_count = 0

    @staticmethod
    def refresh_references(layer: LayerStats) -> None:
        """Recompute every ``r`` of a layer from its running means (0 for zero references)."""
        for edge in layer.edges:
            if edge.mean:
                torch.div(edge.mean_ema, edge.weight_ema.clamp_min(_TINY), out=edge.reference)

    # -- queries ----------------------------------------------------------------------------
    def eligible_units(self, name: str) -> Tensor:
        """Which units of a layer are older than ``maturity`` (a mask on the host)."""
        layer = self.layers[name]
        return layer.age > self.maturity

    def eligible(self, name: str) -> int:
        """How many units of a layer are older than ``maturity``, without a tensor op per step.

        The count can change only when a reset (or a checkpoint load) sets ages, or when the
        oldest unit not yet eligible comes of age; it is recounted from ``age`` at those
        moments and read from the host otherwise.
        """
        layer = self.layers[name]
        if layer.commits >= layer.recount_at:
            young = layer.age[~self.eligible_units(name)]
            layer.eligible_count = layer.info.num_units - young.numel()
            if young.numel():  # the oldest young unit comes of age after this many commits
                layer.recount_at = layer.commits + self.maturity + 1 - int(young.max())
            else:
                layer.recount_at = sys.maxsize
        return layer.eligible_count

    def utilities(self, name: str) -> Tensor:
        """Bias-corrected utilities of one layer (0 for units never scored).

        Normalised by the layer's mean for the criteria that are; fresh uniform scores of
        this step for the random criterion.
        """
        layer = self.layers[name]
        if self.criterion.reads == "none":
            index = list(self.layers).index(name)
            scores = random_scores(layer.info.num_units, self.seed, self.steps, index)
            return scores.to(layer.utility_ema)
        utility = layer.utility_ema / layer.weight_ema.clamp_min(_TINY)
        return layer_normalised(utility) if self.criterion.normalised else utility

    def predicted_cost(self, name: str, index: Tensor | None = None) -> Tensor:
        """``c_i = Σ_consumers Σ_{x,pos} ∂L/∂h · (r_i − h)`` from the consumers' gradients.

        With ``index``, only for those units (in that order), reading only their columns.

        Raises:
            RuntimeError: a consumer has no gradient (before ``backward()``, or after
                ``zero_grad()``).
        """
        layer = self.layers[name]
        units = layer.utility_ema if index is None else layer.utility_ema.index_select(0, index)
        cost = torch.zeros_like(units)
        found = False
        with torch.no_grad():
            for edge in layer.edges:
                weight, bias = layer_params(self.modules[edge.edge.consumer])
                if weight.grad is None:
                    continue  # no gradient reached this consumer: it adds nothing
                if weight is not edge.weight:
                    raise RuntimeError(
                        f"predicted_cost({name!r}): the weight of `{edge.edge.consumer}` is not "
                        "the parameter it was when GXDReset was built (replaced, e.g. by "
                        "load_state_dict(assign=True)); the inner optimizer still holds the "
                        "old one: build the optimizer and GXDReset again"
                    )
                if edge.grad_version is not None and weight._version != edge.grad_version:
                    raise RuntimeError(
                        f"predicted_cost({name!r}): `{edge.edge.consumer}` changed since the "
                        "last backward (an optimizer step or a reset): call it right after "
                        "backward()"
                    )
                found = True
                bias_grad = None if bias is None else bias.grad
                reference = edge.reference if edge.mean else None
                if reference is not None and bias_grad is None:
                    raise RuntimeError(
                        f"predicted_cost({name!r}) needs the bias gradient of "
                        f"`{edge.edge.consumer}` (its bias does not require grad)"
                    )
                k = edge.edge.columns_per_unit
                weight_grad = weight.grad
                if index is not None:
                    columns = unit_columns(index, k).to(weight.device)
                    weight, weight_grad = (
                        t.index_select(1, columns) for t in (weight, weight_grad)
                    )
                    reference = None if reference is None else reference.index_select(0, index)
                cost += predicted_cost(weight, weight_grad, bias_grad, reference, k).to(cost.dtype)
        if not found:
            raise RuntimeError(
                f"predicted_cost({name!r}) needs the gradients of its consumers: "
                "call it after backward() and before zero_grad()"
            )
        return cost

    def restart(self, name: str, index: Tensor) -> None:
        """Start the statistics of the given units again (after their reset)."""
        self.flush()  # what the units saw before the reset is dropped below, as for the rest
        layer = self.layers[name]
        layer.recount_at = 0  # ages changed: recount the eligible units
        with torch.no_grad():
            layer.age.index_fill_(0, index.cpu(), 0)
            for t in (layer.utility_ema, layer.pending_abs):
                t.index_fill_(0, index, 0.0)
            layer.weight_ema.index_fill_(0, index, _TINY)  # never 0: see `_Slab.allocate`
            for batch in layer.open_batches:
                if batch.acc is not None:
                    batch.acc.index_fill_(1, index, 0.0)
            for edge in layer.edges:
                for t in (edge.mean_ema, edge.reference, edge.pending_h):
                    t.index_fill_(0, index, 0.0)
                edge.weight_ema.index_fill_(0, index, _TINY)
