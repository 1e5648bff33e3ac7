"""Train every (criterion, seed[, rate]) of a benchmark and collect what the report needs.

A run trains one seeded instance of a problem with the bare optimizer (criterion ``"none"``)
or wrapped in ``GXDReset(utility=criterion)``, with a `RealisedCostMeter` attached so that
every reset record carries its realised cost next to its predicted one. The training loop
never synchronises with the device between segments: losses and online scores stay tensors
until a segment ends.

Examples:
    >>> from gxd_optim.bench.problems import PROBLEMS
    >>> problem = PROBLEMS["bitflip"]
    >>> settings = problem.settings(quick=True, overrides={"examples": "2000"})
    >>> run = train_run(problem, settings, Job("gxd", 0, {"replacement_rate": 0.01}), Options())
    >>> len(run["performance"]), run["steps"], sum(run["resets"]) > 0
    (2, 2000, True)
    >>> record = run["records"][0]
    >>> len(record), record[1]
    (5, '0')
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from .. import UTILITIES, GXDReset
from ..diagnostics import measure_realised_cost
from .environment import session, source_info
from .metrics import degradation_onset, dormant_fraction, summarise_criterion
from .problems import Problem

__all__ = [
    "ARMS",
    "DEGRADE_TOLERANCE",
    "NONE",
    "Job",
    "Options",
    "Plan",
    "problem_record",
    "run_benchmark",
    "run_jobs",
    "run_sweep",
    "train_run",
]

NONE = "none"
"""The criterion name of the plain optimizer (no wrapper, no reset)."""
ARMS: tuple[str, ...] = (NONE, *UTILITIES)
"""Every criterion a benchmark can run."""
DEGRADE_TOLERANCE = 0.05
"""A sweep calls a rate degraded when its average is this much (relative) worse than the best."""

Tick = Callable[[int], None]


@dataclass(frozen=True)
class Job:
    """One run: a criterion, a seed and the ``GXDReset`` options given (others: defaults)."""

    criterion: str
    seed: int
    reset: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    """How runs are executed.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        data_dir: local data for problems that read files.
        threads: ``torch.set_num_threads`` during the runs (``None`` leaves it).
        progress: show a progress bar on stderr.
    """

    device: str = "cpu"
    data_dir: Path | None = None
    threads: int | None = 1
    progress: bool = False


def train_run(
    problem: Problem, settings: Any, job: Job, options: Options, tick: Tick | None = None
) -> dict[str, Any]:
    """Train one seeded instance and return its curves and reset records.

    Returns:
        ``criterion``, ``seed``, ``reset`` (the options given), per segment ``performance``,
        ``dormant`` and ``resets`` (units reset in the segment), ``records`` (every reset as
        ``[step, layer, units, predicted, realised]``), ``records_lost`` (records that fell
        out of the bounded `GXDReset.reset_log` before being read), ``steps``, ``seconds``
        and, when wrapped, ``gxd`` (the resolved wrapper settings).
    """
    if job.criterion not in ARMS:
        raise ValueError(f"unknown criterion {job.criterion!r}; known: {', '.join(ARMS)}")
    device = torch.device(options.device)
    instance = problem.build(settings, job.seed, device, options.data_dir)
    model = instance.model
    optimizer: torch.optim.Optimizer = instance.optimizer
    wrapper: GXDReset | None = None
    current: list[Tensor] = []
    seen = 0  # reset records read so far
    if job.criterion != NONE:
        wrapper = GXDReset(optimizer, model, utility=job.criterion, seed=job.seed, **job.reset)
        measure_realised_cost(wrapper, lambda: instance.loss(model(current[0]), current[1]))
        optimizer = wrapper
    run: dict[str, Any] = {
        "criterion": job.criterion,
        "seed": job.seed,
        "reset": dict(job.reset),
        "performance": [],
        "dormant": [],
        "resets": [],
        "records": [],
        "records_lost": 0,
    }
    steps, resets_before = 0, 0
    start = time.perf_counter()
    model.train()
    for segment in instance.segments:
        online: list[Tensor] = []
        for x, y in segment.batches:
            current[:] = (x, y)
            output = model(x)
            loss = instance.loss(output, y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if instance.online is not None:
                online.append(instance.online(output.detach(), y))
            steps += 1
        run["performance"].append(segment.evaluate(torch.stack(online) if online else None))
        run["dormant"].append(dormant_fraction(model, segment.probe))
        resets_now = sum(wrapper.reset_counts.values()) if wrapper is not None else 0
        run["resets"].append(resets_now - resets_before)
        resets_before = resets_now
        if wrapper is not None and wrapper.reset_log.total > seen:
            log = wrapper.reset_log
            new = log.total - seen
            kept = log[len(log) - min(new, len(log)) :]
            run["records_lost"] += new - len(kept)
            run["records"] += [[r.step, r.layer, r.units, r.predicted, r.realised] for r in kept]
            seen = log.total
        if tick is not None:
            tick(settings.steps_per_segment)
    run["steps"] = steps
    run["seconds"] = time.perf_counter() - start
    if wrapper is not None:
        run["gxd"] = wrapper.config.to_dict()
    return run


def run_jobs(
    problem: Problem, settings: Any, jobs: Sequence[Job], options: Options
) -> list[dict[str, Any]]:
    """Train every job in turn under one progress bar."""
    total = len(jobs) * settings.segments * settings.steps_per_segment
    with tqdm(total=total, unit="step", disable=not options.progress, file=sys.stderr) as bar:
        runs = []
        for job in jobs:
            rate = job.reset.get("replacement_rate")
            bar.set_description(
                f"{job.criterion} seed {job.seed}" + ("" if rate is None else f" rate {rate:g}")
            )
            runs.append(train_run(problem, settings, job, options, bar.update))
    return runs


@dataclass(frozen=True)
class Plan:
    """What a ``run`` or a ``sweep`` trains, and how.

    Attributes:
        problem: the problem.
        settings: its settings (see `Problem.settings`).
        criteria: the criteria to compare; ``"none"`` (the bare optimizer) always runs first.
        seeds: seeds ``0 .. seeds-1``.
        reset: the ``GXDReset`` options given (the others keep their defaults).
        options: device, data, threads, progress bar.
        quick: whether the settings are the ``--quick`` scale (recorded in the report).
    """

    problem: Problem
    settings: Any
    criteria: Sequence[str]
    seeds: int = 1
    reset: Mapping[str, Any] = field(default_factory=dict)
    options: Options = field(default_factory=Options)
    quick: bool = False

    def __post_init__(self) -> None:
        unknown = [c for c in self.criteria if c not in ARMS]
        if unknown:
            raise ValueError(f"unknown criteria {unknown}; known: {', '.join(ARMS)}")

    @property
    def all_criteria(self) -> tuple[str, ...]:
        """``"none"`` and then the other criteria, each once."""
        return (NONE, *dict.fromkeys(c for c in self.criteria if c != NONE))


def problem_record(problem: Problem, settings: Any, quick: bool) -> dict[str, Any]:
    """What a report records of its problem: name, summary, metric, settings, scale."""
    return {
        "name": problem.name,
        "summary": problem.summary,
        "metric": problem.metric,
        "higher_is_better": problem.higher_is_better,
        "axis": problem.axis,
        "settings": dataclasses.asdict(settings),
        "quick": quick,
    }


def _measure(kind: str, plan: Plan, jobs: list[Job]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the jobs with ``plan.options.threads``: the report's header, machine, source, runs
    and timing; and the runs."""
    problem, options = plan.problem, plan.options
    with session(torch.device(options.device), options.threads) as run:
        runs = run_jobs(problem, plan.settings, jobs, options)
    report = {
        "benchmark": kind,
        "created": run.created,
        "problem": problem_record(problem, plan.settings, plan.quick),
        "options": {
            "device": options.device,
            "data_dir": None if options.data_dir is None else str(options.data_dir),
            "threads": options.threads,
        },
        "machine": run.machine,
        "source": source_info(),
        "runs": runs,
        **run.closing(),
    }
    return report, runs


def run_benchmark(plan: Plan) -> dict[str, Any]:
    """Run every criterion (``"none"`` always first) on every seed: the report.

    Returns:
        The header (problem, settings, options), ``criteria``, ``reset``, ``seeds``,
        ``machine``, ``source``, ``runs``, ``summary`` (per criterion, see
        `summarise_criterion`), ``seconds`` and ``environment``.
    """
    criteria = plan.all_criteria
    jobs = [
        Job(c, s, {} if c == NONE else dict(plan.reset))
        for s in range(plan.seeds)
        for c in criteria
    ]
    report, runs = _measure("run", plan, jobs)
    report.update(
        criteria=list(criteria),
        reset=dict(plan.reset),
        seeds=plan.seeds,
        summary={
            c: summarise_criterion([r for r in runs if r["criterion"] == c]) for c in criteria
        },
    )
    return report


def run_sweep(plan: Plan, rates: Sequence[float]) -> dict[str, Any]:
    """Run every criterion at every replacement rate (``"none"`` once per seed): the report.

    Returns:
        As `run_benchmark`, with ``rates``, a ``summary`` keyed ``criterion -> rate -> ...``
        (``"none"`` under the key ``"any"``) and ``onset``: per criterion the smallest rate
        from which its average performance is `DEGRADE_TOLERANCE` worse than its best
        (``None``: it does not degrade within the swept rates).

    Raises:
        ValueError: the plan's reset options select other than by budget.
    """
    if plan.reset.get("selection", "budget") != "budget":
        raise ValueError("a sweep over replacement rates needs selection='budget'")
    criteria = plan.all_criteria
    rated = criteria[1:]
    jobs = [Job(NONE, s) for s in range(plan.seeds)]
    jobs += [
        Job(c, s, {**plan.reset, "replacement_rate": rate})
        for rate in rates
        for s in range(plan.seeds)
        for c in rated
    ]
    report, runs = _measure("sweep", plan, jobs)
    summary: dict[str, dict[str, Any]] = {
        NONE: {"any": summarise_criterion([r for r in runs if r["criterion"] == NONE])}
    }
    onset: dict[str, float | None] = {}
    higher_is_better = plan.problem.higher_is_better
    for c in rated:
        summary[c] = {
            f"{rate:g}": summarise_criterion(
                [r for r in runs if r["criterion"] == c and r["reset"]["replacement_rate"] == rate]
            )
            for rate in rates
        }
        averages = [summary[c][f"{rate:g}"]["average"] for rate in rates]
        onset[c] = degradation_onset(rates, averages, higher_is_better, DEGRADE_TOLERANCE)
    report.update(
        criteria=list(criteria),
        rates=list(rates),
        reset=dict(plan.reset),
        seeds=plan.seeds,
        summary=summary,
        onset=onset,
        tolerance=DEGRADE_TOLERANCE,
    )
    return report
