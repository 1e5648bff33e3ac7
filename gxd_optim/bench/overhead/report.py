"""The overhead report in words: its table, each case's verdict, where it was measured.

Examples:
    >>> record = {"goal": {"max_ratio": 1.03, "max_memory_percent": 2.0},
    ...           "within_goal": False, "failed": ["ratio", "memory"],
    ...           "timing": {"ratio": {"median": 1.03031}},
    ...           "memory": {"increase_percent": 2.004}}
    >>> verdict(record)
    'no (ratio 1.0303 > 1.03, memory +2.004% > +2%)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..environment import describe_source, environment_text
from ..tables import MISSING, markdown_table
from .cases import Goal

__all__ = ["overhead_notes", "overhead_table", "verdict", "where_and_what"]

_COLUMNS = (
    "case",
    "compares",
    "pairs",
    "baseline ms",
    "candidate ms",
    "ratio (median)",
    "ratio 95% CI",
    "peak memory",
    "goal",
    "within goal",
)


def _interval(low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return MISSING  # too few pairs for a 95% interval
    return f"{low:.3f}–{high:.3f}"


def overhead_table(records: Sequence[Mapping[str, Any]]) -> str:
    """The cases of a report (its ``"cases"``) as a Markdown table, one row per case."""
    rows = []
    for r in records:
        t, m, goal = r["timing"], r["memory"], r["goal"]
        rows.append(
            [
                f"{r['key']}: {r['name']}",
                r["compares"],
                str(t["pairs"]),
                f"{t['baseline_ms']['median']:.2f}",
                f"{t['candidate_ms']['median']:.2f}",
                f"{t['ratio']['median']:.3f}",
                _interval(*t["ratio"]["median_ci95"]),
                f"{m['increase_percent']:+.2f}%",
                MISSING if goal is None else Goal(**goal).describe(),
                verdict(r),
            ]
        )
    return markdown_table(_COLUMNS, rows)


def verdict(record: Mapping[str, Any]) -> str:
    """A case's "within goal" cell: each missed part with its figure against the goal.

    The table rounds ratios to three places, so a ratio of 1.0303 shows as 1.030 against a
    goal of 1.03; the verdict shows each missed figure with as many places as it takes to
    differ from the goal (at least four for a ratio, two for memory).
    """
    if record["within_goal"] is None:
        return MISSING
    if record["within_goal"]:
        return "yes"
    goal = Goal(**record["goal"])
    figures = []
    for part in record["failed"]:
        if part == "ratio":
            ratio = _beyond(record["timing"]["ratio"]["median"], goal.max_ratio, 4)
            figures.append(f"ratio {ratio} > {goal.max_ratio:.2f}")
        elif goal.max_memory_percent is not None:
            limit = goal.max_memory_percent
            memory = _beyond(record["memory"]["increase_percent"], limit, 2, "+")
            figures.append(f"memory {memory}% > +{limit:g}%")
    return f"no ({', '.join(figures)})"


def _beyond(value: float, limit: float, places: int, sign: str = "") -> str:
    """``value`` with at least ``places`` decimals, and more until it no longer reads as
    ``limit`` (at most 9); ``sign="+"`` writes the sign of positive values too."""
    while places < 9 and round(value, places) == round(limit, places):
        places += 1
    return f"{value:{sign}.{places}f}"


def where_and_what(report: Mapping[str, Any]) -> str:
    """The device, machine, torch and gxd_optim commit a report was measured with, in a line."""
    machine = report["machine"]
    where = f"{machine['cpu']}, {machine['usable_cores']} cores, {machine['threads']} threads"
    if machine["gpu"]:
        where = f"{machine['gpu']} ({where})"
    return (
        f"device {machine['device']}: {where}; torch {machine['torch']}; "
        f"gxd_optim {report['source']['gxd_optim']} ({describe_source(report['source'])})"
    )


def overhead_notes(report: Mapping[str, Any]) -> list[str]:
    """The lines under the table: what was measured, where and how."""
    settings = report["settings"]
    return [
        where_and_what(report),
        f"{settings['copies']} copies of each arm taking turns, {settings['warmup']} "
        f"warm-up calls per copy, {settings['memory_steps']} calls in each memory window, "
        f"{report['seconds']:.0f} s in all; "
        f"{environment_text(report['environment'])}"
        + (" (--quick: not a measurement)" if settings["quick"] else ""),
        f"allocator: {report['method']['allocator']}",
        "ratio: median over the timed pairs of candidate / baseline step time; peak memory: "
        "increase of the steady-state step's peak over the baseline's (see 'method' in the "
        "JSON for how both are measured)",
    ]
