"""The tracker: statistics that count only when the optimizer steps, and what they say.

The hooks (`gxd_optim.tracking.collector`) leave their sums in ``pending`` buffers;
`Tracker.commit` folds them into the running means when the optimizer steps, `Tracker.discard`
drops them at a ``zero_grad`` without a step. The signed sums that `Tracker.predicted_cost`
needs are not collected at all: they follow from the consumers' gradients (see
`gxd_optim.utilities.predicted_cost`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..discovery.layers import LayerInfo
from ..grad_mode import no_grad
from ..utilities import Criterion, layer_normalised, random_scores
from . import kernels
from .collector import Collector
from .predicted import layer_cost
from .storage import TINY, LayerStats, Statistics

__all__ = ["Tracker"]


class Tracker:
    """Collects per-unit statistics for the discovered layers of one model.

    Args:
        layers: eligible producers.
        modules: the model's modules by qualified name.
        criterion: how units are scored (`gxd_optim.utilities.Criterion`).
        decay: EMA decay ``η`` of utilities and running means, per optimizer step.
        seed: seed of the random criterion's scores.
        maturity: a unit is eligible for a reset once older than this many steps.
        stride: optimizer steps per commit (``track_every``): the statistics are collected on
            one step in ``stride``, and each commit folds them with decay ``η^stride`` and
            ages every unit by ``stride`` steps.

    Attributes:
        steps: committed steps (steps that saw at least one backward pass), each counted
            ``stride`` times.
        collecting: whether the hooks are attached (`pause`, `resume`).
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
        stride: int = 1,
    ) -> None:
        self.decay = decay**stride  # per commit
        self.maturity, self.stride = maturity, stride
        self.collecting = True
        self.criterion = criterion
        self.seed = seed
        self.steps = 0
        self.finite: Tensor | bool | None = None  # whether the latest commit folded anything
        self.before_commit: Callable[[Tracker], None] | None = None
        self.limits = kernels.DEFAULT_LIMITS
        self.modules = dict(modules)
        self.stats = Statistics(layers, self.modules)
        self.layers = self.stats.layers
        self.collector = Collector(self.stats, self.modules, criterion, self.limits)
        self._committed: list[LayerStats] = []  # by the last commit, until `finish`
        self._undo: tuple[Tensor | bool | None] | None = None  # (`finite` before the commit,)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle with every statistic a view of its buffer again (`Statistics.relink`)."""
        state.setdefault("stride", 1)  # pickled before track_every
        state.setdefault("collecting", True)
        self.__dict__.update(state)
        self.stats.relink()

    def attach(self) -> None:
        """Register the hooks that collect the statistics (`Collector.attach`), unless paused."""
        if self.collecting:
            self.collector.attach()

    def detach(self) -> None:
        """Remove the hooks."""
        self.collector.detach()

    def pause(self) -> None:
        """Collect nothing until `resume`: the hooks are removed, the model runs as if bare."""
        if self.collecting:  # each step between collections pauses: only the first detaches
            self.collecting = False
            self.detach()

    def resume(self) -> None:
        """Collect again from the next forward pass."""
        if not self.collecting:
            self.collecting = True
            self.attach()

    def flush(self) -> None:
        """Reduce the inputs that wait for the commit (`Collector.flush`)."""
        self.collector.flush()

    def commit(self) -> list[str]:
        """Fold the pending statistics into the EMAs; return the layers that had any.

        All layers are updated together, with a few kernels per slab. When any batch mean is
        not finite or absurdly large (`kernels.finite`: an overflowing batch), no statistic changes
        at all; the step still counts, and `finite` says so (read it only where a reset is
        due: it waits for the device). Until `finish`, `rollback` undoes the commit.
        """
        self.settle()
        if self.before_commit is not None:
            self.before_commit(self)
        self._undo = (self.finite,)
        slabs = self.stats.slabs.values()
        counts = [slab.counts() for slab in slabs]
        flat = self.limits.flat_commits and all(all(c) for c in counts)  # every segment saw data
        every = self.stats.in_order
        layers = every if flat else [layer for layer in every if layer.has_pending]
        self._committed = layers
        if not layers:
            return []
        self.steps += self.stride
        for slab in slabs:
            slab.saved.copy_(slab.emas)
        if flat:  # whole buffers at once (no statistic requires grad: no `no_grad` needed)
            self.finite = self.stats.fold(counts, self.decay, self.limits.host_reads)
        else:
            with no_grad():
                self._commit_segments(layers)
        for layer in layers:
            layer.commits += self.stride
        return [layer.info.name for layer in layers]

    def finish(self) -> None:
        """The step that committed went through: clear the pending sums it folded
        (`rollback` no longer applies)."""
        layers, self._committed, self._undo = self._committed, [], None
        if len(layers) == len(self.layers):
            for slab in self.stats.slabs.values():
                slab.pending.zero_()
            self._reset_counts(layers)
        elif layers:
            self._clear_pending(layers)

    def rollback(self) -> None:
        """Undo the last commit: its step did not happen.

        The pending sums are still there (`finish` clears them), so the next step commits
        them. (Under DDP they are already summed over the ranks then.)
        """
        if self._undo is None:
            return
        (self.finite,) = self._undo
        layers, self._committed, self._undo = self._committed, [], None
        if not layers:
            return
        self.steps -= self.stride
        with no_grad():
            for slab in self.stats.slabs.values():
                slab.emas.copy_(slab.saved)
                slab.refresh()
        for layer in layers:
            layer.commits -= self.stride  # and with it every unit's age
            layer.counted = False  # the eligible count was for the later ages

    def settle(self) -> None:
        """Complete the pending sums: reduce the deferred inputs and close every open batch.

        The commit does this first; doing it earlier (a checkpoint) changes what it folds only
        in the order of additions.
        """
        self.flush()
        for layer in self.stats.in_order:
            if layer.open_batches:
                for batch in list(layer.open_batches):
                    batch.close()

    def _commit_segments(self, layers: list[LayerStats]) -> None:
        """Commit segment by segment, skipping those that saw no data."""
        segments = [
            seg
            for lay in layers
            for seg in [
                (lay.pending_abs, lay.utility_ema, lay.correction, lay.pending_samples),
                *((e.pending_h, e.mean_ema, e.correction, e.pending_count) for e in lay.edges),
            ]
            if seg[3]
        ]
        means = [value / count for value, _, _, count in segments]
        self.finite = kernels.finite([torch.dot(m, m) for m in means])
        for mean, (_, ema, norm, _) in zip(means, segments, strict=True):
            ema.lerp_(mean, 1.0 - self.decay)
            norm.mul_(self.decay).add_(1.0 - self.decay)  # the EMA of 1
        for slab in self.stats.slabs.values():  # an overflowing step puts every EMA back
            torch.where(self.finite.to(slab.device), slab.emas, slab.saved, out=slab.emas)
        for layer in layers:
            self.refresh_references(layer)

    def discard(self) -> None:
        """Drop statistics of backward passes that no step committed."""
        self.collector.forget()
        dirty = [layer for layer in self.stats.in_order if layer.has_pending or layer.open_batches]
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
                torch.div(edge.mean_ema, edge.correction.clamp_min(TINY), out=edge.reference)

    def eligible_units(self, name: str) -> Tensor:
        """Which units of a layer are older than ``maturity`` (a mask on the host)."""
        layer = self.layers[name]
        return layer.age > self.maturity

    def eligible(self, name: str) -> int:
        """How many units of a layer are older than ``maturity``, without a tensor op per step.

        The count changes only when units come of age (`LayerStats.maturing` says when), are
        reset, or get their ages from a checkpoint; it is recounted from ``age`` only after
        what `restart` cannot follow (a reset of units that may not have been eligible, a
        load, a rollback).
        """
        layer = self.layers[name]
        if not layer.counted:
            self._recount(layer)
        maturing = layer.maturing
        while maturing and maturing[0][0] <= layer.commits:
            layer.eligible_count += maturing.popleft()[1]
        return layer.eligible_count

    def _recount(self, layer: LayerStats) -> None:
        """Count the eligible units from ``age`` and list when the others come of age."""
        age = layer.age
        young = age[age <= self.maturity].tolist()
        layer.eligible_count = layer.info.num_units - len(young)
        layer.maturing.clear()
        for years, units in sorted(Counter(young).items(), reverse=True):  # the oldest first
            layer.maturing.append([layer.commits + self.maturity + 1 - years, units])
        layer.counted = True

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
        utility = layer.utility_ema / layer.correction  # never 0: see `TINY`
        return layer_normalised(utility) if self.criterion.normalised else utility

    def predicted_cost(self, name: str, index: Tensor | None = None) -> Tensor:
        """``c_i = Σ_consumers Σ_{x,pos} ∂L/∂h · (r_i − h)`` from the consumers' gradients.

        With ``index``, only for those units (in that order), reading only their columns.

        Raises:
            RuntimeError: no consumer has a gradient (before ``backward()``/after ``zero_grad()``),
                or the statistics are paused (`pause`): whether the gradients are those of
                the latest backward pass is known only while the hooks see it.
        """
        return self._cost(name, index, total=False)

    def predicted_total(self, name: str, index: Tensor) -> float:
        """``Σ_{i∈index} c_i`` (`predicted_cost`), or NaN where the gradients are stale (or
        not known to be fresh: the statistics are paused)."""
        try:
            layer = self.layers[name]
            cost = self._cost(name, index.to(layer.utility_ema.device), total=True)
        except RuntimeError:
            return math.nan
        return float(cost.sum() if cost.dim() else cost)

    def _cost(self, name: str, index: Tensor | None, total: bool) -> Tensor:
        """`layer_cost` of layer ``name``, refused while the statistics are paused."""
        if not self.collecting:
            raise RuntimeError(
                f"predicted_cost({name!r}): with track_every={self.stride}, the gradients are "
                "checked only on the steps that collect statistics; call it after the "
                "backward pass of such a step (GXDReset.collecting is True before it)"
            )
        return layer_cost(self.layers[name], self.modules, index, total)

    def overflowed(self) -> bool:
        """Whether the latest commit's statistics were not finite (read only when a reset is
        due: it waits for the device)."""
        return self.finite is not None and not bool(self.finite)

    def restart(self, name: str, index: Tensor, eligible: bool = False) -> None:
        """Start the statistics of the given units again (after their reset).

        Args:
            name: the layer.
            index: its reset units (unique).
            eligible: whether every one of them was eligible (as the selectors choose them):
                then the eligible count follows without a recount.
        """
        self.flush()  # what the units saw before the reset is dropped below, as for the rest
        layer = self.layers[name]
        if eligible and layer.counted:
            self.eligible(name)  # up to date with this commit
            layer.eligible_count -= index.numel()
            due = layer.commits + self.maturity + 1  # when they come of age again
            if layer.maturing and layer.maturing[-1][0] == due:
                layer.maturing[-1][1] += index.numel()
            else:
                layer.maturing.append([due, index.numel()])
        else:
            layer.counted = False
        with no_grad():
            layer.born.index_fill_(0, index.cpu(), layer.commits)
            # every statistic of the layer and its pairs: EMA, reference and pending sum 0,
            # bias correction TINY (never 0: see `TINY`), in their columns of the slab
            columns = (index + layer.starts).flatten()
            layer.slab.state.index_fill_(1, columns, 0.0)
            layer.slab.norm.index_fill_(0, columns, TINY)
            for batch in layer.open_batches:
                if batch.acc is not None:
                    batch.acc.index_fill_(1, index, 0.0)

    def stats_dict(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Copies of every statistic that influences future training (of ``names``: all).

        The pending sums are completed first (`settle`), so a copy taken between the
        backward passes of one step resumes with them.
        """
        self.settle()
        return {
            name: {
                "utility_ema": layer.utility_ema.detach().clone(),
                "weight_ema": layer.correction.detach().clone(),
                "age": layer.age,
                "mean_ema": [e.mean_ema.detach().clone() for e in layer.edges],
                "edge_weight_ema": [e.correction.detach().clone() for e in layer.edges],
                "resets": layer.resets,
                "pending_abs": layer.pending_abs.detach().clone(),
                "pending_samples": layer.pending_samples,
                "pending_h": [e.pending_h.detach().clone() for e in layer.edges],
                "pending_count": [e.pending_count for e in layer.edges],
            }
            for name, layer in self.layers.items()
            if names is None or name in names
        }

    def load_stats_dict(self, stats: Mapping[str, Any]) -> None:
        """Restore statistics from `stats_dict` (checked by `gxd_optim.checkpoint.parse`).

        Layers that ``stats`` does not name keep their statistics; an entry without pending
        sums (a checkpoint of format 1) leaves them empty.
        """
        self.discard()
        with no_grad():
            for name, saved in stats.items():
                if name not in self.layers:
                    continue
                layer = self.layers[name]
                _copy(layer.utility_ema, saved["utility_ema"])
                _copy(layer.correction, saved["weight_ema"])
                _copy(layer.born, layer.commits - saved["age"])
                layer.correction.clamp_min_(TINY)  # never 0 (format 1 saved 0 for fresh units)
                layer.counted = False  # ages were replaced
                layer.resets = int(saved["resets"])
                for edge, mean, norm in zip(
                    layer.edges, saved["mean_ema"], saved["edge_weight_ema"], strict=True
                ):
                    _copy(edge.mean_ema, mean)
                    _copy(edge.correction, norm)
                    edge.correction.clamp_min_(TINY)
                if "pending_abs" in saved:
                    _copy(layer.pending_abs, saved["pending_abs"])
                    layer.pending_samples = int(saved["pending_samples"])
                    for edge, pending, count in zip(
                        layer.edges, saved["pending_h"], saved["pending_count"], strict=True
                    ):
                        _copy(edge.pending_h, pending)
                        edge.pending_count = int(count)
                self.refresh_references(layer)


def _copy(dst: Tensor, src: Tensor) -> None:
    dst.copy_(src.to(device=dst.device, dtype=dst.dtype))
