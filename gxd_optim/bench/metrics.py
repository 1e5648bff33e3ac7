"""What the benchmarks measure: accuracy, dormant units, rank correlation, and the summaries.

Examples:
    >>> spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 40.0, 30.0])
    0.8
    >>> window(10), window(3)
    (1, 1)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from ..sandbox import untouched

__all__ = [
    "RECORD_FIELDS",
    "accuracy",
    "degradation_onset",
    "dormant_fraction",
    "evaluating",
    "interval",
    "spearman",
    "summarise_criterion",
    "window",
]

RECORD_FIELDS = ("step", "layer", "units", "predicted", "realised")
"""The fields of one reset record as a run stores it (a list in this order)."""


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for a block: its mode, its buffers and the global RNG are
    restored afterwards (`gxd_optim.sandbox.untouched`)."""
    was_training = model.training
    try:
        with untouched(model):
            model.eval()
            yield
    finally:
        model.train(was_training)


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose largest logit is the label (a 0-d tensor, no device sync).

    Examples:
        >>> float(accuracy(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([1, 1])))
        0.5
    """
    return (logits.argmax(dim=1) == labels).float().mean()


@torch.no_grad()
def dormant_fraction(model: nn.Module, probe: Tensor) -> float:
    """Fraction of ReLU units that output 0 for every probe input (at every position).

    A dormant ReLU unit passes no gradient to its weights, so the optimizer alone never brings
    it back. Units are the channels (dimension 1) of every ``nn.ReLU`` output. The model runs
    in eval mode, its buffers and the global RNG restored afterwards.

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        ...     _ = model[0].bias.copy_(torch.tensor([0.0, -1.0]))
        >>> dormant_fraction(model, torch.tensor([[1.0, 0.0], [2.0, 1.0]]))
        0.5
    """
    alive: list[Tensor] = []

    def record(module: nn.Module, args: Any, output: Tensor) -> None:
        dims = [d for d in range(output.dim()) if d != 1]
        alive.append((output > 0).any(dim=dims) if dims else output > 0)

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with evaluating(model):
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    units = sum(a.numel() for a in alive)
    return float(sum(int((~a).sum()) for a in alive)) / units if units else math.nan


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (`scipy.stats.spearmanr`: ties take their mean rank),
    rounded to 12 decimals; NaN if either side is constant or fewer than 3 pairs are given.

    Raises:
        ValueError: ``x`` and ``y`` differ in length.
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"x and y differ in length: {len(a)} != {len(b)}")
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return round(float(stats.spearmanr(a, b).statistic), 12)


def interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and ``confidence`` interval of the mean (Student's t; NaN bounds below 2 values).

    Examples:
        >>> mean, low, high = interval([1.0, 2.0, 3.0])
        >>> mean, round(low, 3), round(high, 3)
        (2.0, -0.484, 4.484)
    """
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean()) if len(data) else math.nan
    if len(data) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(data) - 1) * stats.sem(data))
    return mean, mean - half, mean + half


def window(segments: int) -> int:
    """How many segments "early" and "final" average: a tenth of the run, at least one."""
    return max(1, segments // 10)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summarise_criterion(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One criterion's summary over its seeds.

    Args:
        runs: the criterion's runs, each with ``performance``, ``dormant`` and ``resets``
            (per segment) and ``records`` (reset records, `RECORD_FIELDS`).

    Returns:
        ``early``/``average``/``final`` performance (mean over seeds of the first tenth, all,
        and last tenth of the segments), ``average_ci95`` and ``final_ci95`` (95% intervals
        of those means over the seeds; NaN below two seeds), ``final_dormant``, ``resets_per_run``,
        ``mean_abs_realised_per_unit`` and ``mean_abs_predicted_per_unit`` (``Σ|cost| / Σ
        units`` over the resets with a measured value), ``spearman`` between each reset's
        predicted and realised cost, and ``records``, the number of resets measured.

    Examples:
        >>> run = {"performance": [1.0, 2.0], "dormant": [0.0, 0.5], "resets": [1, 2],
        ...        "records": [[5, "0", 1, 0.25, 0.5], [9, "0", 2, -1.0, -0.5]]}
        >>> s = summarise_criterion([run])
        >>> s["early"], s["final"], s["resets_per_run"], s["mean_abs_realised_per_unit"]
        (1.0, 2.0, 3.0, 0.3333333333333333)
    """
    k = window(len(runs[0]["performance"]))
    measured = [
        r
        for run in runs
        for r in run["records"]
        if math.isfinite(r[3]) and math.isfinite(r[4]) and r[2] > 0
    ]
    units = sum(r[2] for r in measured)
    averages = [_mean(run["performance"]) for run in runs]
    finals = [_mean(run["performance"][-k:]) for run in runs]
    return {
        "early": _mean([_mean(run["performance"][:k]) for run in runs]),
        "average": _mean(averages),
        "average_ci95": list(interval(averages)[1:]),
        "final": _mean(finals),
        "final_ci95": list(interval(finals)[1:]),
        "final_dormant": _mean([_mean(run["dormant"][-k:]) for run in runs]),
        "resets_per_run": sum(sum(run["resets"]) for run in runs) / len(runs),
        "records": len(measured),
        "mean_abs_realised_per_unit": (
            sum(abs(r[4]) for r in measured) / units if units else math.nan
        ),
        "mean_abs_predicted_per_unit": (
            sum(abs(r[3]) for r in measured) / units if units else math.nan
        ),
        "spearman": spearman([r[3] for r in measured], [r[4] for r in measured]),
    }


def degradation_onset(
    rates: Sequence[float], scores: Sequence[float], higher_is_better: bool, tolerance: float
) -> float | None:
    """The smallest rate from which the score stays worse than the best by more than a tolerance.

    "Worse" is relative: below ``best·(1 − tolerance)`` for scores where higher is better,
    above ``best·(1 + tolerance)`` otherwise. ``None`` when the largest rate is not worse.

    Examples:
        >>> degradation_onset([1e-4, 1e-3, 1e-2], [0.9, 0.91, 0.5], True, 0.05)
        0.01
        >>> degradation_onset([1e-4, 1e-3], [0.5, 0.49], False, 0.05) is None
        True
    """
    pairs = sorted(zip(rates, scores, strict=True))
    finite = [s for _, s in pairs if math.isfinite(s)]
    if not finite:
        return None
    best = max(finite) if higher_is_better else min(finite)
    limit = best * (1 - tolerance) if higher_is_better else best * (1 + tolerance)
    onset = None
    for rate, score in reversed(pairs):
        worse = (score < limit) if higher_is_better else (score > limit)
        if not (worse or not math.isfinite(score)):
            break
        onset = rate
    return onset
