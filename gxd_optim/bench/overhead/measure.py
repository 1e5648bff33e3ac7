"""One overhead case measured, and the whole run: timing, memory, goals, the report."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

import torch
from tqdm import tqdm

from ..environment import session, source_info
from .arms import ARMS, Arm, copies_report
from .cases import CASES_BY_NAME, GOALS, Case, Settings, failed_goals
from .memory import MEMORY_METHOD, arm_memory, summarise_memory
from .timing import TIMING_METHOD, Tick, pin_allocator, summarise_times, time_interleaved

__all__ = ["measure_case", "run_overhead"]


def measure_case(case: Case, settings: Settings, tick: Tick | None = None) -> dict[str, Any]:
    """Time and measure the memory of one case.

    Args:
        case: the case.
        settings: repeats, warm-up, memory steps and device.
        tick: progress callback (see `Settings.calls` for the total it reaches).

    Returns:
        The case's record for the report: identity, timing, memory, goal and verdict.

    Raises:
        RuntimeError: an arm did not do what it stands for (see `Arm.check`).
    """
    device = torch.device(settings.device)
    workload = case.workload
    batches = workload.batches(device)
    baseline: list[Arm] = []
    candidate: list[Arm] = []
    for _ in range(settings.copies_of(case)):  # in turn: neither arm's copies all come first
        baseline.append(Arm(case.baseline, workload, batches, device))
        candidate.append(Arm(case.candidate, workload, batches, device))
    base_s, cand_s = time_interleaved(
        baseline,
        candidate,
        settings.pairs(case),
        settings.warmup,
        sync=device.type == "cuda",
        tick=tick,
    )
    for arm in (*baseline, *candidate):
        arm.check()
    arms = {"baseline": copies_report(baseline), "candidate": copies_report(candidate)}
    del baseline, candidate, batches
    timing = summarise_times(base_s, cand_s, settings.copies_of(case))
    memory = summarise_memory(
        arm_memory(case.baseline, workload, device, settings.memory_steps, tick),
        arm_memory(case.candidate, workload, device, settings.memory_steps, tick),
    )
    goal = case.goal
    failed = failed_goals(goal, timing["ratio"]["median"], memory["increase_percent"])
    return {
        "key": case.key,
        "name": case.name,
        "problem": workload.description,
        "compares": case.compares,
        "arms": arms,
        "timing": timing,
        "memory": memory,
        "goal": None if goal is None else asdict(goal),
        "within_goal": None if failed is None else not failed,
        "failed": failed,
    }


def run_overhead(settings: Settings, *, progress: bool = True) -> dict[str, Any]:
    """Run the selected cases and return the full report.

    Args:
        settings: what to run and how.
        progress: show a progress bar on stderr.

    Returns:
        The report: settings, machine, source, methods, goals, one record per case, seconds.

    Raises:
        ValueError: ``device="cuda"`` without CUDA.
    """
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    cases = [CASES_BY_NAME[name] for name in settings.cases]
    allocator = pin_allocator()
    with session(device, settings.threads) as run:
        records = []
        total = sum(settings.calls(case) for case in cases)
        with tqdm(total=total, unit="call", disable=not progress, file=sys.stderr) as bar:
            for case in cases:
                bar.set_description(case.name)
                records.append(measure_case(case, settings, bar.update))
    return {
        "benchmark": "overhead",
        "created": run.created,
        "settings": asdict(settings),
        "machine": run.machine,
        "source": source_info(),
        "method": {
            "timing": TIMING_METHOD,
            "memory": MEMORY_METHOD[device.type],
            "allocator": allocator,
        },
        "arms": dict(ARMS),
        "goals": {name: asdict(goal) for name, goal in GOALS.items()},
        "cases": records,
        **run.closing(),
    }
