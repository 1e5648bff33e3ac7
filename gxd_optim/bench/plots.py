"""Plots of a benchmark report: learning curves, reset costs, a sweep, the controlled cost
comparison, the overhead pairs.

Every function draws one figure with matplotlib's Agg backend, writes it to ``path`` and
returns ``path``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import interval
from .overhead.report import where_and_what
from .runner import NONE
from .tables import number

__all__ = ["comparison_plot", "cost_plot", "curve_plot", "overhead_plot", "sweep_plot"]

_COLOURS = {
    "none": "tab:gray",
    "gxd": "tab:blue",
    "contribution": "tab:orange",
    "adaptable_contribution": "tab:green",
    "activation": "tab:red",
    "gradient": "tab:purple",
    "random": "tab:brown",
}


def _x_values(report: Mapping[str, Any], segments: int) -> np.ndarray:
    span = int(report["problem"]["settings"].get("bin", 1))
    return np.arange(1, segments + 1) * span


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path, *, tight: bool) -> Path:
    """Write ``fig`` to ``path`` and close it (``tight``: with `Figure.tight_layout` first)."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def curve_plot(report: Mapping[str, Any], path: Path) -> Path:
    """Learning curves (mean over seeds, band: its 95% interval, from two seeds) and the
    fraction of dormant units, per criterion."""
    plt = _pyplot()
    problem = report["problem"]
    fig, (ax_perf, ax_dead) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name in report["criteria"]:
        runs = [r for r in report["runs"] if r["criterion"] == name]
        for ax, key in ((ax_perf, "performance"), (ax_dead, "dormant")):
            values = np.array([r[key] for r in runs], dtype=float)
            x = _x_values(report, values.shape[1])
            colour = _COLOURS.get(name)
            ax.plot(x, values.mean(0), label=name, color=colour, lw=1.5)
            if len(runs) > 1:
                bounds = np.array([interval(column)[1:] for column in values.T])
                ax.fill_between(x, bounds[:, 0], bounds[:, 1], color=colour, alpha=0.15)
    ax_perf.set(xlabel=problem["axis"], ylabel=problem["metric"], title="performance per segment")
    ax_dead.set(
        xlabel=problem["axis"],
        ylabel="fraction of units dormant",
        ylim=(-0.02, 1.02),
        title="dormant units (zero on every probe input)",
    )
    ax_perf.legend(fontsize=8)
    band = " (bands: 95% interval of the mean over seeds)" if report["seeds"] > 1 else ""
    fig.suptitle(_title(report) + band, fontsize=10)
    return _save(plt, fig, path, tight=True)


def _title(report: Mapping[str, Any]) -> str:
    reset = ", ".join(f"{k}={v}" for k, v in report["reset"].items()) or "library defaults"
    return f"{report['problem']['name']}: {report['seeds']} seed(s), GXDReset {reset}" + (
        " (--quick)" if report["problem"]["quick"] else ""
    )


def cost_plot(report: Mapping[str, Any], path: Path) -> Path:
    """Realised against predicted cost of every measured reset, one colour per criterion."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    limits: list[float] = []
    for name in report["criteria"]:
        records = [
            r
            for run in report["runs"]
            if run["criterion"] == name
            for r in run["records"]
            if math.isfinite(r[3]) and math.isfinite(r[4])
        ]
        if not records:
            continue
        predicted = np.array([r[3] for r in records])
        realised = np.array([r[4] for r in records])
        rho = report["summary"][name]["spearman"]
        ax.scatter(
            predicted,
            realised,
            s=8,
            alpha=0.5,
            color=_COLOURS.get(name),
            label=f"{name} (ρ={number(rho, 2)}, n={len(records)})",
        )
        limits += [float(np.abs(predicted).max()), float(np.abs(realised).max())]
    if limits and max(limits) > 0:  # (all zero: dead units reset, linear axes)
        top = max(limits)
        ax.plot(
            [-top, top], [-top, top], color="black", lw=0.8, ls="--", label="realised = predicted"
        )
        ax.set_xscale("symlog", linthresh=top * 1e-3)
        ax.set_yscale("symlog", linthresh=top * 1e-3)
    ax.set(
        xlabel="predicted cost (first order, from the step's gradients)",
        ylabel="realised cost (batch loss after − before the reset)",
        title=_title(report),
    )
    ax.legend(fontsize=7)
    return _save(plt, fig, path, tight=True)


def _bounds(cells: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``[2, len(cells)]``: each summary's ``average_ci95`` (NaN where it has none)."""
    nan = [math.nan, math.nan]
    return np.array([c.get("average_ci95") or nan for c in cells], dtype=float).T


def sweep_plot(report: Mapping[str, Any], path: Path) -> Path:
    """Average performance against replacement rate per criterion (log x), with 95% intervals
    over the seeds as error bars (a band for the plain run's horizontal line); each
    criterion's degradation onset marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    rates = report["rates"]
    for name, by_rate in report["summary"].items():
        colour = _COLOURS.get(name)
        if name == NONE:
            plain = by_rate["any"]
            ax.axhline(plain["average"], color=colour, ls="--", label="none (no reset)")
            low, high = _bounds([plain])[:, 0]
            if math.isfinite(low) and math.isfinite(high):
                ax.axhspan(low, high, color=colour, alpha=0.12, lw=0)
            continue
        cells = [by_rate[f"{r:g}"] for r in rates]
        values = np.array([c["average"] for c in cells])
        bounds = _bounds(cells)
        errors = np.where(np.isfinite(bounds), np.abs(bounds - values), 0.0)
        ax.errorbar(rates, values, yerr=errors, marker="o", color=colour, label=name, capsize=3)
        onset = report["onset"][name]
        if onset is not None:
            ax.scatter(
                [onset],
                [by_rate[f"{onset:g}"]["average"]],
                s=120,
                facecolors="none",
                edgecolors=colour,
                linewidths=2,
            )
    ax.set_xscale("log")
    bars = "; bars: 95% interval of the mean over seeds" if report["seeds"] > 1 else ""
    ax.set(
        xlabel="replacement rate",
        ylabel=f"average {report['problem']['metric']}",
        title=_title(report) + f"\n(circle: degradation onset{bars})",
    )
    ax.legend(fontsize=8)
    return _save(plt, fig, path, tight=True)


def comparison_plot(report: Mapping[str, Any], path: Path) -> Path:
    """A ``cost`` report: per budget, each criterion's realised cost (left) and its difference
    from GXD's on the same states (right), with 95% intervals."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    budgets = list(report["summary"])
    criteria = report["criteria"]
    width = 0.8 / max(len(criteria), 1)
    for k, name in enumerate(criteria):
        x = np.arange(len(budgets)) + (k - (len(criteria) - 1) / 2) * width
        for ax, key in ((left, "realised"), (right, "minus_gxd")):
            entries = [report["summary"][b][name].get(key) for b in budgets]
            if any(e is None for e in entries):
                continue
            mean = np.array([e["mean"] for e in entries])
            low, high = (np.array([e["ci95"][i] for e in entries]) for i in (0, 1))
            errors = np.nan_to_num(np.vstack([mean - low, high - mean]))
            colour = _COLOURS.get(name)
            ax.errorbar(x, mean, yerr=errors, fmt="o", ms=4, capsize=3, color=colour, label=name)
    labels = [f"{float(b):.0%}" for b in budgets]
    right.axhline(0.0, color="black", lw=0.8)
    for ax, ylabel in (
        (left, "realised cost: held-out loss after − before"),
        (right, "realised cost minus GXD's (same states)"),
    ):
        ax.set_xticks(np.arange(len(budgets)), labels)
        ax.set(xlabel="units reset per layer", ylabel=ylabel)
    problem = report["problem"]
    fig.suptitle(
        f"{problem['name']} ({problem['settings'].get('activation', 'relu')}): "
        f"{report['seeds']} seed(s) × {report['states']} states, mean and 95% interval"
        + (" (--quick)" if problem["quick"] else ""),
        fontsize=10,
    )
    left.legend(fontsize=8)
    return _save(plt, fig, path, tight=True)


def overhead_plot(report: Mapping[str, Any], path: Path) -> Path:
    """Every timed pair's step-time ratio, one panel per case of an ``overhead`` report.

    Each row of a panel is one copy of the arms (pair ``r`` took copy ``r mod K``), with that
    copy's median as a black tick; the case's median is the blue line, its ratio goal (if any)
    the red dashed one. The spread between rows is what the copies are for: where a model's
    tensors live moves one copy's ratio by a few percent. The axis spans the 1st to 99th
    percentile of the pairs, the median and the goal; pairs beyond it are drawn at its edges
    as triangles and counted in the panel's title.
    """
    plt = _pyplot()
    cases = report["cases"]
    title = textwrap.fill(
        "gxd_optim.bench overhead: "
        + where_and_what(report)
        + (" (--quick)" if report["settings"]["quick"] else ""),
        110,
    )
    panels = [0.55 + 0.2 * len(case["timing"]["per_copy"]) for case in cases]  # inches
    height = 0.9 + 0.17 * title.count("\n") + sum(panels)
    fig, axes = plt.subplots(
        len(cases),
        1,
        figsize=(8, height),
        squeeze=False,
        height_ratios=panels,
        layout="constrained",
    )
    for ax, case in zip(axes[:, 0], cases, strict=True):
        _ratio_panel(ax, case)
    axes[-1, 0].set_xlabel("step-time ratio per timed pair (candidate / baseline)")
    fig.suptitle(title, fontsize=9, x=0.01, ha="left")
    handles = [
        plt.Line2D([], [], color="tab:blue", lw=1.5, label="median over all pairs"),
        plt.Line2D([], [], color="black", lw=1.5, label="median of one copy"),
    ]
    if any(case["goal"] is not None for case in cases):
        handles.append(plt.Line2D([], [], color="tab:red", ls="--", lw=1.2, label="goal"))
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=len(handles),
        fontsize=7,
        frameon=False,
    )
    return _save(plt, fig, path, tight=False)


def _ratio_panel(ax: Any, case: Mapping[str, Any]) -> None:
    """One case of `overhead_plot`: its pairs' ratios, a row per copy."""
    timing = case["timing"]
    samples = timing["samples"]
    with np.errstate(divide="ignore", invalid="ignore"):  # an edited report may hold zeros
        ratios = np.divide(samples["candidate_ms"], samples["baseline_ms"], dtype=float)
    copies = len(timing["per_copy"])
    copy = np.arange(len(ratios)) % copies
    median = timing["ratio"]["median"]
    goal = None if case["goal"] is None else case["goal"]["max_ratio"]
    finite = ratios[np.isfinite(ratios)]
    ends = [median, *([] if goal is None else [goal])]
    if finite.size:
        ends += list(np.percentile(finite, [1, 99]))
    ends = [float(end) for end in ends if math.isfinite(end)] or [1.0]
    margin = 0.1 * (max(ends) - min(ends)) or 0.01
    left, right = min(ends) - margin, max(ends) + margin
    rows = copy + np.random.default_rng(0).uniform(-0.25, 0.25, len(ratios))
    colour = {"c": copy % 10, "cmap": "tab10", "vmin": 0, "vmax": 9}
    inside = (ratios >= left) & (ratios <= right)
    below, above = ratios < left, ratios > right
    ax.scatter(ratios[inside], rows[inside], s=6, alpha=0.5, **_pick(colour, inside))
    for beyond, edge, marker in ((below, left, "<"), (above, right, ">")):
        ax.scatter(
            np.full(beyond.sum(), edge),
            rows[beyond],
            s=14,
            marker=marker,
            clip_on=False,
            **_pick(colour, beyond),
        )
    for row, per_copy in enumerate(timing["per_copy"]):
        ax.plot([per_copy["ratio"]] * 2, [row - 0.4, row + 0.4], color="black", lw=1.5)
    ax.axvline(median, color="tab:blue", lw=1.5)
    label = f"{case['key']}: {case['name']} ({case['compares']}): median {median:.3f}"
    if goal is not None:
        ax.axvline(goal, color="tab:red", ls="--", lw=1.2)
        label += f", goal ≤ {goal:.2f}" + (" (missed)" if "ratio" in case["failed"] else "")
    outside, unknown = int(below.sum() + above.sum()), int(np.isnan(ratios).sum())
    if outside:
        label += f"; {outside} of {len(ratios)} pairs beyond the axis"
    if unknown:
        label += f"; {unknown} not a number"
    ax.set_xlim(left, right)
    ax.set_ylim(-0.6, copies - 0.4)
    ax.set_yticks(range(copies), [f"copy {i}" for i in range(copies)], fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(label, fontsize=8, loc="left")


def _pick(colour: Mapping[str, Any], where: np.ndarray) -> dict[str, Any]:
    """The scatter colour arguments of `_ratio_panel` for the points ``where`` selects."""
    return {**colour, "c": colour["c"][where]}
