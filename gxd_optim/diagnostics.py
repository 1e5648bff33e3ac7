"""Per-layer diagnostics: numbers from tensors, a table from numbers, and realised costs."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .records import ResetRecord, ResetSource
from .sandbox import untouched

__all__ = [
    "DORMANT_FRACTION",
    "RECENT_RESETS",
    "LayerSummary",
    "RealisedCostMeter",
    "format_table",
    "measure_realised_cost",
    "summarise_layer",
]

DORMANT_FRACTION = 0.01
"""A unit is dormant when its utility is below this fraction of its layer's mean utility."""

RECENT_RESETS = 100
"""How many of a layer's latest resets `LayerSummary` averages over."""


@dataclass(frozen=True)
class LayerSummary:
    """What `GXDReset.summary` reports for one layer.

    Attributes:
        name: the producer's qualified name.
        units: number of units.
        eligible: units older than ``maturity``.
        resets: units reset so far.
        utility_quantiles: utility at the 0, 25, 50, 75 and 100 percentiles.
        dormant: fraction of units whose utility is below `DORMANT_FRACTION` of the layer's
            mean (units that barely affect the loss).
        predicted: mean predicted cost per reset unit over the layer's recent resets
            (NaN if none).
        realised: mean realised cost per reset unit over the same resets (NaN if none was
            measured).

    Examples:
        >>> s = LayerSummary("fc1", 64, 60, 3, (0.0, 0.1, 0.2, 0.3, 0.9), 0.05)
        >>> (s.eligible, s.dormant, s.predicted)
        (60, 0.05, nan)
    """

    name: str
    units: int
    eligible: int
    resets: int
    utility_quantiles: tuple[float, ...]
    dormant: float
    predicted: float = math.nan
    realised: float = math.nan


def summarise_layer(
    name: str,
    utility: Tensor,
    age: Tensor,
    maturity: int,
    resets: int,
    recent: Sequence[ResetRecord] = (),
) -> LayerSummary:
    """Summarise one layer from its utilities ``[U]``, unit ages ``[U]`` and recent resets.

    Examples:
        >>> utility, age = torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([5, 5, 0, 5])
        >>> recent = [ResetRecord(7, "fc", 2, 0.5, 0.75)]
        >>> s = summarise_layer("fc", utility, age, maturity=1, resets=2, recent=recent)
        >>> (s.eligible, s.dormant, s.utility_quantiles[2], s.predicted, s.realised)
        (3, 0.25, 1.5, 0.25, 0.375)
    """
    values = utility.detach().double().cpu()
    quantiles = torch.quantile(
        values, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    )
    dormant = float((values < DORMANT_FRACTION * values.mean()).double().mean())
    return LayerSummary(
        name,
        int(values.numel()),
        int((age > maturity).sum()),
        resets,
        tuple(float(q) for q in quantiles),
        dormant,
        _per_unit(recent, "predicted"),
        _per_unit(recent, "realised"),
    )


def _per_unit(records: Sequence[ResetRecord], field: str) -> float:
    """``Σ value / Σ units`` over the records whose value is known (NaN if none is)."""
    known = [r for r in records if not math.isnan(getattr(r, field))]
    units = sum(r.units for r in known)
    return sum(getattr(r, field) for r in known) / units if units else math.nan


def format_table(rows: Sequence[LayerSummary], skipped: Mapping[str, str]) -> str:
    """A fixed-width table of layer summaries, then the skipped layers.

    Examples:
        >>> row = LayerSummary("fc1", 64, 60, 3, (0.0, 0.1, 0.2, 0.3, 0.9), 0.05, 1e-4)
        >>> print(format_table([row], {"head": "its units are part of the model's output"}))
        layer  units eligible  resets  dormant  predicted   realised  utility min / median / max
        ----------------------------------------------------------------------------------------
        fc1       64       60       3     5.0%     0.0001          -  0 / 0.2 / 0.9
        skipped: head: its units are part of the model's output
    """
    width = max([5, *(len(r.name) for r in rows)])
    header = (
        f"{'layer':<{width}} {'units':>6} {'eligible':>8} {'resets':>7} {'dormant':>8}"
        f" {'predicted':>10} {'realised':>10}  utility min / median / max"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        q = r.utility_quantiles
        lines.append(
            f"{r.name:<{width}} {r.units:>6} {r.eligible:>8} {r.resets:>7} {r.dormant:>8.1%} "
            f"{_cost(r.predicted):>10} {_cost(r.realised):>10}  "
            f"{q[0]:.3g} / {q[2]:.3g} / {q[4]:.3g}"
        )
    lines += [f"skipped: {name}: {why}" for name, why in skipped.items()]
    return "\n".join(lines)


def _cost(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3g}"


class RealisedCostMeter:
    """Measures the realised cost of every reset of ``opt``: see `measure_realised_cost`.

    Examples:
        >>> from torch import nn
        >>> from gxd_optim import GXDReset
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
        >>> meter = RealisedCostMeter(opt, lambda: model(torch.ones(2, 4)).sum())
        >>> meter.remove()
    """

    def __init__(self, opt: ResetSource, loss_fn: Callable[[], Tensor]) -> None:
        self._opt = opt
        self._loss_fn = loss_fn
        self._before: dict[str, float] = {}
        self._handles = [
            opt.register_reset_pre_hook(self._pre),
            opt.register_reset_hook(self._post),
        ]

    def _loss(self) -> float:
        with untouched(self._opt.model), torch.no_grad():
            return float(self._loss_fn())

    def _pre(self, name: str, index: Tensor) -> None:
        self._before[name] = self._loss()

    def _post(self, name: str, index: Tensor) -> None:
        before = self._before.pop(name, None)
        if before is not None:
            self._opt.reset_log[-1].realised = self._loss() - before

    def remove(self) -> None:
        """Stop measuring."""
        for handle in self._handles:
            handle.remove()


def measure_realised_cost(opt: ResetSource, loss_fn: Callable[[], Tensor]) -> RealisedCostMeter:
    """Measure every reset's realised cost into its `ResetRecord`.

    ``loss_fn()`` must return the loss of the current batch with the current parameters. It
    is evaluated without gradients, with the model's buffers and the RNG restored, right
    before and right after each layer's reset; ``realised = L(after) − L(before)`` is the
    change caused by that reset alone. Each call costs two forward passes per reset.

    Returns:
        The meter; ``remove()`` stops it.

    Examples:
        >>> from torch import nn
        >>> from gxd_optim import GXDReset
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
        >>> x = torch.randn(32, 4)
        >>> meter = measure_realised_cost(opt, lambda: model(x).pow(2).mean())
        >>> opt.zero_grad(); model(x).pow(2).mean().backward()
        >>> opt.reset_units("0", [3])
        >>> record = opt.reset_log[-1]
        >>> (record.layer, record.units, abs(record.realised - record.predicted) < 0.05)
        ('0', 1, True)
    """
    return RealisedCostMeter(opt, loss_fn)
