"""Per-layer diagnostics as pure functions: numbers from tensors, and a table from numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DORMANT_FRACTION", "LayerSummary", "format_table", "summarise_layer"]

DORMANT_FRACTION = 0.01
"""A unit is dormant when its utility is below this fraction of its layer's mean utility."""


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
    """

    name: str
    units: int
    eligible: int
    resets: int
    utility_quantiles: tuple[float, ...]
    dormant: float


def summarise_layer(
    name: str, utility: Tensor, age: Tensor, maturity: int, resets: int
) -> LayerSummary:
    """Summarise one layer from its utilities ``[U]`` and unit ages ``[U]``.

    Example:
        >>> utility, age = torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([5, 5, 0, 5])
        >>> s = summarise_layer("fc", utility, age, maturity=1, resets=2)
        >>> (s.eligible, s.dormant, s.utility_quantiles[2])
        (3, 0.25, 1.5)
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
    )


def format_table(rows: Sequence[LayerSummary], skipped: Mapping[str, str]) -> str:
    """A fixed-width table of layer summaries, then the skipped layers."""
    header = (
        f"{'layer':<20} {'units':>6} {'eligible':>8} {'resets':>7} {'dormant':>8}"
        "  utility min / median / max"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        q = r.utility_quantiles
        lines.append(
            f"{r.name:<20} {r.units:>6} {r.eligible:>8} {r.resets:>7} {r.dormant:>8.1%}  "
            f"{q[0]:.3g} / {q[2]:.3g} / {q[4]:.3g}"
        )
    lines += [f"skipped: {name}: {why}" for name, why in skipped.items()]
    return "\n".join(lines)
