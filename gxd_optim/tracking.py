"""Per-unit statistics collected by hooks, committed only when the optimizer steps.

Each consumer's input passes through `_Probe`, an identity autograd function that saves
the (already saved) input and, when the gradient arrives, reduces ``(h, ∂ℓ/∂h)`` at once to a
few ``[U]`` and ``[N, U]`` tensors. Nothing is kept beyond the backward pass; statistics wait in
``pending`` buffers until `Tracker.commit` (the optimizer stepped) or
`Tracker.discard` (``zero_grad`` without a step).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .discovery import Edge, LayerInfo, layer_params
from .utilities import UtilityFn

__all__ = ["EdgeStats", "LayerStats", "Tracker", "bias_corrected"]


def bias_corrected(ema: Tensor, age: Tensor, decay: float) -> Tensor:
    """Adam-style bias correction ``ema / (1 - decay**age)``; 0 where ``age == 0``."""
    correction = 1.0 - torch.pow(torch.full_like(ema, decay), age.to(ema.dtype))
    return torch.where(age > 0, ema / correction.clamp_min(1e-30), torch.zeros_like(ema))


@dataclass
class EdgeStats:
    """Statistics of one (producer, consumer) pair, all ``[U]``.

    ``mean_ema`` feeds the reference ``r``; ``sum_g``/``sum_gh`` are ``Σ ∂ℓ/∂h`` and
    ``Σ ∂ℓ/∂h · h`` over the latest batch (``pending_*`` while it accumulates).
    """

    edge: Edge
    linear: bool
    mean_ema: Tensor
    reference: Tensor
    sum_g: Tensor
    sum_gh: Tensor
    pending_h: Tensor
    pending_g: Tensor
    pending_gh: Tensor
    pending_count: int = 0


@dataclass
class LayerStats:
    """Statistics of one producer: utility EMA, ages, budget, reset count, its edges."""

    info: LayerInfo
    utility_ema: Tensor
    age: Tensor
    edges: list[EdgeStats]
    pending_abs: Tensor
    pending_samples: int = 0
    budget: float = 0.0
    resets: int = 0
    open_batches: list[_Batch] = field(default_factory=list)


class _Batch:
    """Per-sample attributions of one producer call, summed over its consumers."""

    __slots__ = ("acc", "expected", "got", "layer")

    def __init__(self, layer: LayerStats) -> None:
        self.layer = layer
        self.expected = 0
        self.got = 0
        self.acc: Tensor | None = None


class _Probe(torch.autograd.Function):
    """Identity on the consumer's input whose backward reports ``(h, ∂ℓ/∂h)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sink: Callable[[Tensor, Tensor], None]) -> Tensor:
        ctx.sink = sink
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        ctx.sink(x, grad)
        return grad, None


class _Inert:
    """What a hook becomes in a pickled or deep-copied model: nothing."""

    def __call__(self, *args: Any) -> None:
        return None


class _Hook:
    """A module hook that only serves the module it was registered on, and pickles inert."""

    def __init__(self, tracker: Tracker, module: nn.Module, method: str, key: str) -> None:
        self._tracker = weakref.ref(tracker)
        self._module = weakref.ref(module)
        self._method = method
        self._key = key

    def __call__(self, module: nn.Module, *args: Any) -> Any:
        tracker = self._tracker()
        if tracker is None or module is not self._module():
            return None
        return getattr(tracker, self._method)(self._key, module, *args)

    def __reduce__(self) -> tuple[type[_Inert], tuple[()]]:
        return (_Inert, ())


def _as_units(t: Tensor, units: int, linear: bool) -> Tensor:
    """View a consumer input as ``[N, pre, U, k·post]`` (a view for contiguous layouts)."""
    if linear:
        return t.reshape(t.shape[0], -1, units, t.shape[-1] // units)
    return t.reshape(t.shape[0], 1, units, -1)


class Tracker:
    """Collects per-unit statistics for the discovered layers of one model.

    Args:
        layers: eligible producers.
        modules: every Linear/Conv layer by qualified name.
        utility: per-sample score function, or ``None`` for the built-in GXD fast path.
        decay: EMA decay ``η`` of utilities and running means.
    """

    def __init__(
        self,
        layers: Mapping[str, LayerInfo],
        modules: Mapping[str, nn.Module],
        utility: UtilityFn | None,
        decay: float,
    ) -> None:
        self.decay = decay
        self.utility = utility
        self.modules = dict(modules)
        self.layers: dict[str, LayerStats] = {}
        self._readers: dict[str, tuple[LayerStats, EdgeStats]] = {}
        self._current: dict[str, _Batch] = {}
        self._handles: list[RemovableHandle] = []
        for name, info in layers.items():
            weight, _ = layer_params(modules[name])
            float_type = torch.float64 if weight.dtype == torch.float64 else torch.float32
            zeros = partial(torch.zeros, info.num_units, dtype=float_type, device=weight.device)
            edges = [
                EdgeStats(
                    e,
                    isinstance(modules[e.consumer], nn.Linear),
                    *(zeros() for _ in range(7)),  # type: ignore[arg-type]
                )
                for e in info.edges
            ]
            ages = torch.zeros(info.num_units, dtype=torch.int64, device=weight.device)
            stats = LayerStats(info, zeros(), ages, edges, zeros())
            self.layers[name] = stats
            for edge in edges:
                self._readers[edge.edge.consumer] = (stats, edge)

    # -- hooks ------------------------------------------------------------------------------
    def attach(self) -> None:
        """Register the forward hooks on producers and pre-hooks on consumers."""
        self.detach()
        for name in self.layers:
            module = self.modules[name]
            self._handles.append(
                module.register_forward_hook(_Hook(self, module, "_on_produce", name))
            )
        for consumer in self._readers:
            module = self.modules[consumer]
            self._handles.append(
                module.register_forward_pre_hook(_Hook(self, module, "_on_read", consumer))
            )

    def detach(self) -> None:
        """Remove every hook this tracker registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_produce(self, name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        if torch.is_grad_enabled() and module.training:
            self._current[name] = _Batch(self.layers[name])
        else:
            self._current.pop(name, None)

    def _on_read(self, consumer: str, module: nn.Module, args: tuple[Any, ...]) -> Any:
        if not (torch.is_grad_enabled() and module.training) or not args:
            return None
        x = args[0]
        layer, edge = self._readers[consumer]
        batch = self._current.get(layer.info.name)
        if batch is None or not isinstance(x, Tensor) or not x.requires_grad:
            return None
        batch.expected += 1
        probed = _Probe.apply(x, partial(self._on_grad, edge, batch))  # type: ignore[no-untyped-call]
        return (probed, *args[1:])

    def _on_grad(self, edge: EdgeStats, batch: _Batch, h: Tensor, grad: Tensor) -> None:
        layer = batch.layer
        units = layer.info.num_units
        dtype = edge.mean_ema.dtype
        with torch.no_grad():
            h4, g4 = _as_units(h, units, edge.linear), _as_units(grad, units, edge.linear)
            gh = (g4 * h4).sum((1, 3), dtype=dtype)
            gs = g4.sum((1, 3), dtype=dtype)
            edge.pending_h += h4.sum((0, 1, 3), dtype=dtype)
            edge.pending_g += gs.sum(0)
            edge.pending_gh += gh.sum(0)
            edge.pending_count += h4.numel() // units
            if self.utility is None:
                scores = gh - edge.reference * gs
            else:
                flat = [t.transpose(1, 2).reshape(t.shape[0], units, -1) for t in (h4, g4)]
                scores = self.utility(flat[0], flat[1], edge.reference).to(dtype)
            batch.acc = scores if batch.acc is None else batch.acc + scores
            if batch.got == 0:
                layer.open_batches.append(batch)
            batch.got += 1
            if batch.got >= batch.expected:
                self._close(batch)

    @staticmethod
    def _close(batch: _Batch) -> None:
        layer = batch.layer
        if batch.acc is not None:
            layer.pending_abs += batch.acc.abs().sum(0)
            layer.pending_samples += batch.acc.shape[0]
        batch.acc = None
        layer.open_batches.remove(batch)

    # -- commit / discard -------------------------------------------------------------------
    def has_pending(self) -> bool:
        """Whether a backward pass left statistics that no step has committed yet."""
        return any(layer.open_batches or layer.pending_samples for layer in self.layers.values())

    def commit(self) -> list[str]:
        """Fold the pending statistics into the EMAs; return the layers that had any."""
        committed = []
        decay = self.decay
        with torch.no_grad():
            for name, layer in self.layers.items():
                for batch in list(layer.open_batches):
                    self._close(batch)
                if not layer.pending_samples:
                    continue
                committed.append(name)
                batch_utility = layer.pending_abs / layer.pending_samples
                layer.utility_ema.mul_(decay).add_(batch_utility, alpha=1 - decay)
                layer.age += 1
                for edge in layer.edges:
                    if edge.pending_count:
                        batch_mean = edge.pending_h / edge.pending_count
                        edge.mean_ema.mul_(decay).add_(batch_mean, alpha=1 - decay)
                    edge.sum_g.copy_(edge.pending_g)
                    edge.sum_gh.copy_(edge.pending_gh)
                    self.refresh_reference(layer, edge)
                self._clear_pending(layer)
        return committed

    def discard(self) -> None:
        """Drop statistics of backward passes that no step committed."""
        for layer in self.layers.values():
            layer.open_batches.clear()
            self._clear_pending(layer)

    @staticmethod
    def _clear_pending(layer: LayerStats) -> None:
        layer.pending_abs.zero_()
        layer.pending_samples = 0
        for edge in layer.edges:
            for t in (edge.pending_h, edge.pending_g, edge.pending_gh):
                t.zero_()
            edge.pending_count = 0

    def refresh_reference(self, layer: LayerStats, edge: EdgeStats) -> None:
        """Recompute ``r`` from the running mean (zero for zero-reference edges)."""
        if edge.edge.reference == "mean":
            edge.reference.copy_(bias_corrected(edge.mean_ema, layer.age, self.decay))
        else:
            edge.reference.zero_()

    # -- queries ----------------------------------------------------------------------------
    def utilities(self, name: str) -> Tensor:
        """Bias-corrected utilities of one layer."""
        layer = self.layers[name]
        return bias_corrected(layer.utility_ema, layer.age, self.decay)

    def predicted_cost(self, name: str) -> Tensor:
        """``c_i = Σ_consumers Σ_x,p ∂ℓ/∂h · (r_i − h)`` over the latest batch."""
        layer = self.layers[name]
        pending = any(e.pending_count for e in layer.edges)
        cost = torch.zeros_like(layer.utility_ema)
        for edge in layer.edges:
            g, gh = (edge.pending_g, edge.pending_gh) if pending else (edge.sum_g, edge.sum_gh)
            cost += edge.reference * g - gh
        return cost

    def restart(self, name: str, index: Tensor) -> None:
        """Start the statistics of the given units again (after their reset)."""
        layer = self.layers[name]
        with torch.no_grad():
            for t in (layer.utility_ema, layer.age, layer.pending_abs):
                t.index_fill_(0, index, 0)
            for batch in layer.open_batches:
                if batch.acc is not None:
                    batch.acc.index_fill_(1, index, 0.0)
            for edge in layer.edges:
                for t in (
                    edge.mean_ema,
                    edge.reference,
                    edge.sum_g,
                    edge.sum_gh,
                    edge.pending_h,
                    edge.pending_g,
                    edge.pending_gh,
                ):
                    t.index_fill_(0, index, 0.0)
