"""Where the statistics live: per-layer and per-pair views into one flat slab per device.

Every `LayerStats` and `EdgeStats` tensor is a view into a `Slab`'s buffers, so a commit in
which every layer and pair saw data updates all of them with a handful of kernels.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

from ..discovery.layers import Edge, LayerInfo, layer_params, reads_features
from .kernels import Plan
from .kernels import finite as finite_of

__all__ = ["TINY", "Batch", "EdgeStats", "LayerStats", "Slab", "Statistics"]

WORKSPACES = 4
"""Batch sizes whose `Slab.workspace` a slab keeps."""
TINY = 1e-30
"""The floor of a bias correction: never 0, so ``r = ema / correction`` needs no clamp."""


@dataclass
class EdgeStats:
    """Statistics of one (producer, consumer) pair.

    ``mean_ema`` is the EMA of the batch means of ``h`` and ``correction`` its bias
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
    correction: Tensor
    reference: Tensor
    pending_h: Tensor
    reference_mask: Tensor
    pending_count: int = 0
    grad_version: int | None = None  # the consumer weight's version at the last backward
    position: int = 0  # among the pairs of its slab, whose segments come in this order
    plans: dict[torch.Size, Plan] = field(default_factory=dict, repr=False)  # by input shape

    @property
    def mean(self) -> bool:
        """Whether this pair substitutes the running mean (else zero)."""
        return self.edge.reference == "mean"


@dataclass
class LayerStats:
    """Statistics of one producer.

    Attributes:
        utility_ema: EMA of ``mean_x |a_i(x)|`` (not bias-corrected).
        correction: EMA of 1 over the same steps, ``1 - decay**age``: the Adam-style bias
            correction of every EMA of the layer, kept on the statistics' device.
        born: ``commits`` when each unit was last reset, on the host: a unit's ``age`` is
            ``commits − born``, so a commit advances one counter per layer, never a tensor
            (eligibility is counted on the host too, so the step never waits for the device).
        commits: committed steps of the layer, the clock of ``born`` and ``age``.
        slab: the `Slab` whose buffers hold the layer's and its pairs' statistics, and
            ``starts`` their segments' first columns there (``[segments, 1]``, on its device).
        eligible_count: units older than the tracker's maturity, while ``counted``: then
            ``maturing`` lists ``[commits, units]`` that come of age at those commits, in
            order, and `Tracker.eligible` adds them as ``commits`` reaches them (no tensor is
            read); where ``counted`` is false, both are recounted from ``age``.
    """

    info: LayerInfo
    utility_ema: Tensor
    correction: Tensor
    born: Tensor
    edges: list[EdgeStats]
    pending_abs: Tensor
    pending_samples: int = 0
    resets: int = 0
    open_batches: list[Batch] = field(default_factory=list)
    commits: int = 0  # committed steps of this layer: the clock that ``born`` counts in
    eligible_count: int = 0
    maturing: deque[list[int]] = field(default_factory=deque)
    counted: bool = False
    slab: Slab = field(init=False, repr=False)  # whose buffers hold the statistics
    starts: Tensor = field(init=False, repr=False)  # first column in the slab, per segment

    @property
    def age(self) -> Tensor:
        """Committed steps since each unit's last reset (int64, on the host; a new tensor)."""
        return self.commits - self.born

    @property
    def has_pending(self) -> bool:
        """Whether a backward pass reached the layer since the last commit."""
        return bool(self.pending_samples) or any(e.pending_count for e in self.edges)


class Batch:
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


class Slab:
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
        self._work: dict[int, tuple[Tensor, ...]] = {}  # `workspace` by batch size

    def allocate(self) -> None:
        """Create the buffers, once `size` is known."""
        zeros = partial(torch.zeros, dtype=self.dtype, device=self.device)
        self.state = zeros(4, self.size)  # one buffer: a step's state is copied in one kernel
        self.saved = zeros(2, self.size)  # ema and norm before a commit (see `Tracker.commit`)
        self.state[1].fill_(TINY)  # a bias correction is never 0: r = ema / norm needs no clamp
        self.mask, self.scale = zeros(self.size), zeros(self.size)  # scale: 1 / counts
        self.ends = torch.ones(2, self.size, dtype=self.dtype, device=self.device)
        self.unbind()

    def unbind(self) -> None:
        """``ema``, ``norm``, ``reference`` and ``pending``: the rows of `state`; ``emas``:
        its first two rows (what a commit folds) and ``batch_means``: the first row of `ends`.

        (Made once: a view costs as much as a small kernel, and a commit needs these.)
        """
        self.ema, self.norm, self.reference, self.pending = self.state.unbind(0)
        self.emas, self.batch_means = self.state[:2], self.ends[0]

    def workspace(self, samples: int) -> tuple[Tensor, ...]:
        """Buffers to reduce the inputs of all pairs of ``samples`` samples in: ``[N, 2P]``
        (inputs, then their gradients), its two halves, ``[N, P]`` and ``[2P]`` (``P`` =
        `pair_units`). Kept for the last few batch sizes: allocating them every step costs
        more than filling them."""
        work = self._work.get(samples)
        if work is None:
            if len(self._work) >= WORKSPACES:
                self._work.clear()
            both = torch.empty(samples, 2 * self.pair_units, dtype=self.dtype, device=self.device)
            work = self._work[samples] = (
                both,
                *both.tensor_split(2, 1),
                torch.empty(samples, self.pair_units, dtype=self.dtype, device=self.device),
                torch.empty(2 * self.pair_units, dtype=self.dtype, device=self.device),
            )
        return work

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
        self._work = {}  # plain pickling separated the halves from their buffer
        for owner, part in zip(self.owners, self._segments, strict=True):
            ema, norm, reference, pending, mask = self._views(part)
            if isinstance(owner, EdgeStats):
                owner.mean_ema, owner.correction, owner.reference = ema, norm, reference
                owner.pending_h, owner.reference_mask = pending, mask
                owner.plans.clear()  # their reference views are views of the old storage
            else:
                owner.utility_ema, owner.correction, owner.pending_abs = ema, norm, pending
        self.split()

    def split(self) -> None:
        """Views of the pairs' references and masks, once every segment is taken."""
        pairs = slice(0, self.pair_units)
        self.pair_reference, self.pair_mask = self.reference[pairs], self.mask[pairs]
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
        means = torch.mul(self.pending, self.scale, out=self.batch_means)
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
            self.emas.lerp_(self.ends, 1.0 - decay)
            if finite is not True:
                torch.where(finite, self.emas, self.saved, out=self.emas)
            self.refresh()

    def refresh(self) -> None:
        """Every ``r`` from its running mean (0 for zero references)."""
        torch.div(self.ema, self.norm, out=self.reference)
        if self.masked:
            self.reference.mul_(self.mask)


class Statistics:
    """Every statistic of the tracked layers: the `LayerStats` by producer, each with its
    `EdgeStats`, as views into one `Slab` per device and dtype.

    Args:
        layers: eligible producers.
        modules: the model's modules by qualified name.

    Attributes:
        layers: `LayerStats` by producer name, in the order of ``layers``.
        readers: ``(producer, pair)`` by consumer name.
        slabs: the `Slab` per (device, dtype).
        in_order: the `LayerStats` of ``layers``, listed once (a commit visits them all).
        on_host: whether every slab lives on the CPU.
    """

    def __init__(self, layers: Mapping[str, LayerInfo], modules: Mapping[str, nn.Module]) -> None:
        self.layers: dict[str, LayerStats] = {}
        self.readers: dict[str, tuple[str, EdgeStats]] = {}
        self.slabs: dict[tuple[torch.device, torch.dtype], Slab] = {}
        for info in layers.values():
            self.slab(modules[info.name]).size += info.num_units * (1 + len(info.edges))
        for slab in self.slabs.values():
            slab.allocate()
        edges_of: dict[str, list[EdgeStats]] = {}
        for name, info in layers.items():  # every pair's segment first, then every layer's
            slab = self.slab(modules[name])
            edges_of[name] = [
                EdgeStats(
                    e,
                    reads_features(modules[e.consumer]),
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
        for name, info in layers.items():
            slab = self.slab(modules[name])
            ema, norm, _, pending, _ = slab.take(info.num_units)
            born = torch.zeros(info.num_units, dtype=torch.int64)
            stats = LayerStats(info, ema, norm, born, edges_of[name], pending)
            stats.slab = slab
            starts = [t.storage_offset() for t in (ema, *(e.mean_ema for e in stats.edges))]
            stats.starts = torch.tensor(starts, device=slab.device)[:, None]
            slab.owners.append(stats)
            self.layers[name] = stats
            for edge in stats.edges:
                self.readers[edge.edge.consumer] = (name, edge)
                if edge.mean:
                    edge.reference_mask.fill_(1.0)
        for slab in self.slabs.values():
            slab.split()
        self.in_order = list(self.layers.values())
        self.on_host = all(slab.device.type == "cpu" for slab in self.slabs.values())

    def fold(self, counts: list[list[int]], decay: float, host_reads: bool) -> Tensor | bool:
        """Fold every slab's pending means (every count positive, `Slab.counts`) into its EMAs;
        return whether they were finite and sane (`kernels.finite`): read on the host where
        ``host_reads`` allows it and every slab lives on the CPU, else a 0-d bool tensor whose
        value nothing reads (`Slab.fold`)."""
        slabs = self.slabs.values()
        squares = [slab.means(c) for slab, c in zip(slabs, counts, strict=True)]
        if host_reads and self.on_host:
            finite = all(math.isfinite(float(t)) for t in squares)
            for slab in slabs:
                slab.fold(finite, decay)
            return finite
        on_device = finite_of(squares)
        for slab in slabs:
            slab.fold(on_device.to(slab.device), decay)
        return on_device

    def relink(self) -> None:
        """Make every statistic a view of its buffer again (after plain unpickling)."""
        for slab in self.slabs.values():
            slab.relink()

    def slab(self, module: nn.Module) -> Slab:
        """The slab for a layer's device and dtype (created empty if new)."""
        weight, _ = layer_params(module)
        float_type = torch.float64 if weight.dtype == torch.float64 else torch.float32
        key = (weight.device, float_type)
        if key not in self.slabs:
            self.slabs[key] = Slab(float_type, weight.device)
        return self.slabs[key]
