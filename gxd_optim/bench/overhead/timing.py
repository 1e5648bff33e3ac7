"""Interleaved A/B timing of two workloads, and its summary.

`torch.utils.benchmark.Timer` times one statement at a time; here the two arms of a case take
turns pair by pair (A B, B A, ...) over several copies of each, so that a machine whose speed
drifts slows both alike. The summary keeps every pair's ratio, which `Measurement` and
`Compare` (per-statement times, their own table) have no place for.

Examples:
    >>> calls = []
    >>> base, cand = time_interleaved(
    ...     [lambda i: calls.append(("a0", i)), lambda i: calls.append(("a1", i))],
    ...     [lambda i: calls.append(("b0", i)), lambda i: calls.append(("b1", i))],
    ...     repeats=3,
    ...     warmup=0,
    ... )
    >>> calls
    [('a0', 0), ('b0', 0), ('a1', 1), ('b1', 1), ('b0', 2), ('a0', 2)]
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

__all__ = [
    "DEFAULT_WARMUP",
    "TIMING_METHOD",
    "Tick",
    "median_ci",
    "pin_allocator",
    "summarise_times",
    "time_interleaved",
]

Tick = Callable[[int], None]
"""Progress callback: ``tick(n)`` after ``n`` more calls of an arm."""
Work = Callable[[int], None]
"""One copy of an arm: ``work(i)`` does call ``i``."""

DEFAULT_WARMUP = 5
"""Untimed calls of each copy of each arm before timing."""

TIMING_METHOD = (
    "Each arm is built `copies` times (same seed) and every copy reads the same batches. "
    "After `warmup` untimed calls of each copy, `repeats` pairs are timed with "
    "time.perf_counter, interleaved: pair r takes copy r mod `copies` of each arm (copies "
    "differ only in where their tensors live, which can move one copy's step time by a few "
    "percent) and each copy's pairs alternate which arm runs first (A B, B A, ...); on CUDA "
    "the device is synchronised before and after each timed call. A training step is "
    "zero_grad + forward + loss + backward + step. ratio = median over pairs of candidate "
    "time / baseline time; times are per-arm medians. The garbage collector stays enabled. On "
    "glibc the allocator is pinned first (see `pin_allocator`), so that freed gradients stay "
    "mapped."
)


def _timed(work: Work, i: int, sync: bool) -> float:
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    work(i)
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_interleaved(
    baseline: Sequence[Work],
    candidate: Sequence[Work],
    repeats: int,
    warmup: int = DEFAULT_WARMUP,
    *,
    sync: bool = False,
    tick: Tick | None = None,
) -> tuple[list[float], list[float]]:
    """Time two workloads in interleaved pairs, in alternating order.

    Each workload comes in ``K`` copies (the same work, e.g. on models built from the same
    seed); pair ``r`` times copy ``r mod K`` of each, and each copy's pairs alternate which
    arm runs first (pair ``r`` runs the baseline first when ``r // K`` is even).

    Args:
        baseline: the baseline's copies; ``baseline[j](i)`` does call ``i`` on copy ``j``.
        candidate: the candidate's copies, as many (same ``i`` in a pair).
        repeats: timed pairs.
        warmup: untimed calls of each copy before timing.
        sync: synchronise CUDA before and after each timed call.
        tick: progress callback, called with the number of calls just made.

    Returns:
        Seconds per call of the baseline and of the candidate, pair by pair.

    Raises:
        ValueError: no copies, or not as many of each.
    """
    if not baseline or len(baseline) != len(candidate):
        raise ValueError(
            f"need as many copies of each workload, at least one; got {len(baseline)} "
            f"and {len(candidate)}"
        )
    for i in range(warmup):
        for base_copy, cand_copy in zip(baseline, candidate, strict=True):
            base_copy(i)
            cand_copy(i)
            if tick is not None:
                tick(2)
    gc.collect()
    base: list[float] = []
    cand: list[float] = []
    for r in range(repeats):
        i = warmup + r
        turn, copy = divmod(r, len(baseline))
        base_copy, cand_copy = baseline[copy], candidate[copy]
        if turn % 2 == 0:
            base.append(_timed(base_copy, i, sync))
            cand.append(_timed(cand_copy, i, sync))
        else:
            cand.append(_timed(cand_copy, i, sync))
            base.append(_timed(base_copy, i, sync))
        if tick is not None:
            tick(2)
    return base, cand


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median (`scipy.stats.quantile_test`).

    The interval's ends are order statistics chosen from the binomial distribution; with too
    few values to reach ``confidence`` (fewer than 6 at 95%) both ends are NaN.

    Examples:
        >>> median_ci([float(v) for v in range(100)])
        (39.0, 60.0)
    """
    a = np.asarray(values, dtype=np.float64)
    test = stats.quantile_test(a, q=float(np.median(a)), p=0.5)
    interval = test.confidence_interval(confidence_level=confidence)
    return float(interval.low), float(interval.high)


def _spread(values: Sequence[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "median_ci95": list(median_ci(values)),
        "p25": float(np.percentile(a, 25)),
        "p75": float(np.percentile(a, 75)),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def summarise_times(
    baseline_s: Sequence[float], candidate_s: Sequence[float], copies: int = 1
) -> dict[str, Any]:
    """Medians, quartiles and per-pair ratios of two interleaved timing series.

    Args:
        baseline_s: seconds per baseline call, pair by pair.
        candidate_s: seconds per candidate call, pair by pair.
        copies: copies of each arm that the pairs took in turn (see `time_interleaved`).

    Returns:
        ``baseline_ms`` / ``candidate_ms`` / ``ratio`` spreads (``median``, its 95% interval
        ``median_ci95`` (see `median_ci`), ``p25``, ``p75``, ``min``, ``max``),
        ``ratio_of_medians``, ``pairs``, the raw ``samples`` in ms, and ``per_copy``: the
        median times and ratio of each copy's pairs.

    Examples:
        >>> times = summarise_times([0.010, 0.012, 0.011], [0.011, 0.012, 0.0121])
        >>> round(times["ratio"]["median"], 6), times["pairs"]
        (1.1, 3)
    """
    if len(baseline_s) != len(candidate_s) or not baseline_s:
        raise ValueError("need two non-empty series of the same length")
    if not 1 <= copies <= len(baseline_s):
        raise ValueError(f"copies must be in [1, {len(baseline_s)}] (the pairs), got {copies}")
    base_ms = [1e3 * t for t in baseline_s]
    cand_ms = [1e3 * t for t in candidate_s]
    ratios = [c / b for b, c in zip(base_ms, cand_ms, strict=True)]
    base, cand = _spread(base_ms), _spread(cand_ms)
    return {
        "pairs": len(ratios),
        "baseline_ms": base,
        "candidate_ms": cand,
        "ratio": _spread(ratios),
        "ratio_of_medians": cand["median"] / base["median"],
        "per_copy": [
            {
                "baseline_ms": float(np.median(base_ms[j::copies])),
                "candidate_ms": float(np.median(cand_ms[j::copies])),
                "ratio": float(np.median(ratios[j::copies])),
            }
            for j in range(copies)
        ],
        "samples": {"baseline_ms": base_ms, "candidate_ms": cand_ms},
    }


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_THRESHOLD_MAX = 32 << 20  # the largest mmap threshold glibc accepts on 64-bit


def pin_allocator() -> str:
    """Keep freed memory mapped for the rest of the process (glibc only); say what was done.

    With ``zero_grad(set_to_none=True)`` every step frees and re-allocates its gradients. By
    default glibc returns large blocks to the system and adapts its thresholds as it goes, so
    whether a step page-faults on its new gradients depends on what the *other* arm freed
    before it, and a small step's time can vary severalfold from run to run. Serving every
    block up to 32 MiB from the heap and never trimming it makes both arms reuse their memory,
    so the ratio measures the wrapper, not the allocator.
    """
    if not sys.platform.startswith("linux"):
        return "default (not glibc)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        done = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and done
    except (OSError, AttributeError):
        return "default (no glibc mallopt)"
    return "glibc: mmap threshold 32 MiB, no trimming" if done else "default (mallopt refused)"
