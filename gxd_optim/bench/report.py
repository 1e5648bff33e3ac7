"""What a benchmark prints and writes: the summary of a ``run``, ``sweep``, ``cost`` or
``overhead`` report, and the report as JSON.

Examples:
    >>> summary = {"none": {"early": 0.5, "average": 0.6, "final": 0.7, "final_dormant": 0.25,
    ...     "resets_per_run": 0, "records": 0, "mean_abs_realised_per_unit": float("nan"),
    ...     "mean_abs_predicted_per_unit": float("nan"), "spearman": float("nan"),
    ...     "average_ci95": [0.5, 0.7], "final_ci95": [float("nan"), float("nan")]}}
    >>> print(run_table(summary, "squared error").splitlines()[2])
    | none | 0.5 | 0.6 [0.5, 0.7] | 0.7 | 25.0% | 0 | — | — | — |
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .environment import describe_source
from .overhead.report import overhead_notes, overhead_table
from .runner import NONE
from .tables import markdown_table, number

__all__ = ["compact", "cost_table", "run_table", "summary_text", "sweep_table", "write_json"]


def run_table(summary: Mapping[str, Mapping[str, Any]], metric: str) -> str:
    """The per-criterion summary of a ``run`` report as a Markdown table."""
    header = [
        "criterion",
        f"early {metric}",
        "average [95% interval]",
        "final [95% interval]",
        "dormant (final)",
        "resets / run",
        "mean abs realised / unit",
        "mean abs predicted / unit",
        "Spearman ρ",
    ]
    rows = []
    for name, s in summary.items():
        rho = number(s["spearman"], 2)
        rows.append(
            [
                name,
                number(s["early"]),
                _with_interval(s["average"], s.get("average_ci95")),
                _with_interval(s["final"], s.get("final_ci95")),
                f"{s['final_dormant']:.1%}" if math.isfinite(s["final_dormant"]) else "—",
                f"{s['resets_per_run']:g}",
                number(s["mean_abs_realised_per_unit"]),
                number(s["mean_abs_predicted_per_unit"]),
                rho if s["records"] < 3 else f"{rho} (n={s['records']})",
            ]
        )
    return markdown_table(header, rows)


def _with_interval(value: float, bounds: list[float] | None) -> str:
    """``value [low, high]``, or ``value`` alone where there is no interval (one seed)."""
    if not bounds or not all(math.isfinite(b) for b in bounds):
        return number(value)
    return f"{number(value)} [{number(bounds[0])}, {number(bounds[1])}]"


def sweep_table(report: Mapping[str, Any]) -> str:
    """A ``sweep`` report as a Markdown table: average performance per rate, with its 95%
    interval over the seeds where there are two or more, and the onset."""
    rates = [f"{r:g}" for r in report["rates"]]
    rows = []
    for name, by_rate in report["summary"].items():
        if name == NONE:
            plain = by_rate["any"]
            cells = [_with_interval(plain["average"], plain.get("average_ci95"))] * len(rates)
            onset = "(no resets)"
        else:
            cells = [
                _with_interval(by_rate[r]["average"], by_rate[r].get("average_ci95")) for r in rates
            ]
            value = report["onset"][name]
            onset = "not within the rates" if value is None else f"{value:g}"
        rows.append([name, *cells, onset])
    seeds = report.get("seeds", 1)
    spread = f", mean over {seeds} seeds [95% interval]" if seeds > 1 else ""
    caption = (
        f"Average {report['problem']['metric']} per replacement rate{spread} (degrades from: "
        f"the smallest rate from which it stays {report['tolerance']:.0%} worse than its best)"
    )
    return caption + "\n\n" + markdown_table(["criterion", *rates, "degrades from"], rows)


def cost_table(report: Mapping[str, Any]) -> str:
    """A ``cost`` report as a Markdown table: per budget and criterion, the realised cost (mean
    and 95% interval over states and seeds), its difference from GXD's on the same states
    (and whether the interval excludes 0), the rank and Spearman's ρ of predicted against
    realised.

    Examples:
        >>> entry = {"realised": {"mean": 0.25, "ci95": [0.125, 0.375], "n": 6},
        ...          "rank": 1, "spearman": 0.5}
        >>> print(cost_table({"summary": {"0.1": {"gxd": entry}}}).splitlines()[2])
        | 10% | gxd | 1 | 0.25 | 0.125 – 0.375 | — | 0.5 |
    """
    header = ["budget", "criterion", "rank", "realised cost", "95% interval"]
    header += ["minus GXD's (95% interval)", "Spearman ρ"]
    rows = []
    for budget, entries in report["summary"].items():
        for name, e in sorted(entries.items(), key=lambda item: item[1]["rank"]):
            low, high = e["realised"]["ci95"]
            versus = e.get("minus_gxd")
            difference = (
                "—"
                if versus is None
                else f"{number(versus['mean'])} ({number(versus['ci95'][0])} – "
                f"{number(versus['ci95'][1])}): {versus['verdict']}"
            )
            rows.append(
                [
                    f"{float(budget):.0%}",
                    name,
                    str(e["rank"]),
                    number(e["realised"]["mean"]),
                    f"{number(low)} – {number(high)}",
                    difference,
                    number(e["spearman"], 2),
                ]
            )
    return markdown_table(header, rows)


def _training_notes(report: Mapping[str, Any]) -> list[str]:
    """The lines under a ``run``, ``sweep`` or ``cost`` table: the problem, the machine, the
    time."""
    problem, machine, source = report["problem"], report["machine"], report["source"]
    quick = " (--quick: not a measurement)" if problem["quick"] else ""
    what = (
        f"{report['states']} state(s) per seed, {report['scoring']} scoring batches; realised "
        "cost = held-out loss after − before the reset (lower is better)"
        if report["benchmark"] == "cost"
        else f"{'lower' if not problem['higher_is_better'] else 'higher'} {problem['metric']} "
        "is better; early/final = mean over the first/last tenth of the segments"
    )
    return [
        f"{problem['name']}: {problem['summary']}; {report['seeds']} seed(s); {what}",
        f"device {machine['device']}, {machine['cpu']}, {machine['threads']} thread(s); "
        f"torch {machine['torch']}; gxd_optim {source['gxd_optim']} "
        f"({describe_source(source)}); {report['seconds']:.0f} s{quick}",
    ]


def summary_text(report: Mapping[str, Any]) -> str:
    """The table of a ``run``, ``sweep``, ``cost`` or ``overhead`` report and the lines that
    say what was measured, where and how long."""
    kind = report["benchmark"]
    if kind == "overhead":
        table, notes = overhead_table(report["cases"]), overhead_notes(report)
    elif kind == "run":
        table = run_table(report["summary"], report["problem"]["metric"])
        notes = _training_notes(report)
    elif kind == "cost":
        table, notes = cost_table(report), _training_notes(report)
    else:
        table, notes = sweep_table(report), _training_notes(report)
    return "\n".join([table, "", *notes])


def compact(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report without the per-reset records (each run keeps their count): small enough to
    commit next to the plots.

    Examples:
        >>> compact({"runs": [{"criterion": "gxd", "records": [[1, "0", 1, 0.5, 0.4]]}]})
        {'runs': [{'criterion': 'gxd', 'records': 1}]}
    """
    runs = [{**run, "records": len(run["records"])} for run in report["runs"]]
    return {**report, "runs": runs}


def write_json(data: Mapping[str, Any], out_dir: Path, name: str) -> Path:
    """Write ``data`` as indented JSON to ``out_dir / name`` (the directory is created).

    Returns:
        The file written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
