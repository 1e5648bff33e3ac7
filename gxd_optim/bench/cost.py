"""The controlled comparison: what each criterion's choice of units costs, on the same states.

`run_cost` trains the bare optimizer on a problem and stops at evenly spaced segments (its
*states*). At each state every criterion scores the same batches (the segment's last
``scoring`` batches, with the weights held still: the inner optimizer is SGD with a learning
rate of 0) and chooses, for every budget, the same number of units per layer: its lowest
utilities, ``max(1, round(budget · units))`` of them. Each choice is reset with the same
operator and the same new weights (`GXDReset.reset_units` on a copy, from the same seed), and
its *realised cost* is the change of the loss on the segment's held-out data:
``L(after) − L(before)``. Its *predicted cost* is the first-order estimate from the gradient
of that loss, ``Σ_i c_i`` over the chosen units of every layer. Only the choice differs
between criteria, so differences in realised cost are the criteria's.

Examples:
    >>> from gxd_optim.bench.problems import PROBLEMS
    >>> plan = CostPlan(PROBLEMS["memorisation"], PROBLEMS["memorisation"].settings(quick=True),
    ...                 ("gxd", "random"), seeds=1, states=1, scoring=2, budgets=(0.25,))
    >>> report = run_cost(plan)
    >>> sorted(report["summary"]["0.25"])
    ['gxd', 'random']
    >>> len(report["measurements"])  # one state x two criteria x one budget
    2
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .. import UTILITIES, GXDReset
from ..selection import lowest
from .environment import session, source_info
from .metrics import interval, spearman
from .problems import Problem
from .runner import Options, problem_record
from .segments import Batch
from .variants import NAMES, wrapper_options

__all__ = [
    "BUDGETS",
    "CostPlan",
    "measure_state",
    "paired_difference",
    "run_cost",
    "state_segments",
]

BUDGETS = (0.01, 0.05, 0.10, 0.25)
"""Fractions of each layer's units that every criterion resets at every state."""
CONFIDENCE = 0.95
"""The level of every interval the report gives."""


@dataclass(frozen=True)
class CostPlan:
    """What ``bench cost`` measures.

    Attributes:
        problem: the problem the bare optimizer trains on.
        settings: its settings.
        criteria: the criteria that choose: names in `gxd_optim.UTILITIES`, or of the
            variants of GXD in `gxd_optim.bench.variants.NAMES`.
        seeds: seeds ``0 .. seeds-1``; each trains its own network.
        states: states per seed, at evenly spaced segments (`state_segments`).
        scoring: batches each criterion scores at a state.
        budgets: fractions of each layer's units to reset.
        options: device, data, threads, progress bar.
        quick: whether the settings are the ``--quick`` scale.
    """

    problem: Problem
    settings: Any
    criteria: Sequence[str] = UTILITIES
    seeds: int = 5
    states: int = 6
    scoring: int = 20
    budgets: Sequence[float] = BUDGETS
    options: Options = field(default_factory=Options)
    quick: bool = False

    def __post_init__(self) -> None:
        unknown = [c for c in self.criteria if c not in UTILITIES and c not in NAMES]
        if unknown:
            known = ", ".join([*UTILITIES, *NAMES])
            raise ValueError(f"unknown criteria {unknown}; known: {known}")
        if min(self.seeds, self.states, self.scoring) < 1:
            raise ValueError("seeds, states and scoring must be at least 1")
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise ValueError(f"budgets must be fractions in (0, 1], got {list(self.budgets)}")


def state_segments(segments: int, states: int) -> list[int]:
    """The segments after which the states are taken: evenly spaced, the last one included.

    Examples:
        >>> state_segments(10, 3), state_segments(4, 6)
        ([2, 6, 9], [0, 1, 2, 3])
    """
    count = min(states, segments)
    return sorted({round((i + 1) * segments / count) - 1 for i in range(count)})


def paired_difference(values: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """``values − baseline``, measured on the same states: mean, interval and the verdict.

    The verdict is ``"lower"`` or ``"higher"`` where the interval excludes 0, else
    ``"no difference"``.

    Examples:
        >>> paired_difference([1.0, 2.0, 3.0], [1.5, 2.4, 3.6])["verdict"]
        'lower'
    """
    mean, low, high = interval([v - b for v, b in zip(values, baseline, strict=True)], CONFIDENCE)
    verdict = "lower" if high < 0 else "higher" if low > 0 else "no difference"
    return {"mean": mean, "ci95": [low, high], "verdict": verdict}


def _loss_on(model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor], data: Batch) -> Tensor:
    return loss(model(data[0]), data[1])


def measure_state(
    model: nn.Module,
    loss: Callable[[Tensor, Tensor], Tensor],
    scoring: Sequence[Batch],
    held_out: Batch,
    criteria: Sequence[str],
    budgets: Sequence[float],
) -> list[dict[str, Any]]:
    """Every criterion's choice at every budget on one state: realised and predicted cost.

    Args:
        model: the state (left as it is: each criterion works on a copy).
        loss: the training loss.
        scoring: the batches each criterion scores, with the weights held still.
        held_out: the data the costs are measured on.
        criteria: the criteria.
        budgets: fractions of each layer's units.

    Returns:
        One record per criterion and budget: ``criterion``, ``budget``, ``units`` (per
        layer), ``before`` (the held-out loss), ``realised`` and ``predicted``.
    """
    records = []
    for criterion in criteria:
        net = copy.deepcopy(model)
        inner = torch.optim.SGD(net.parameters(), lr=0.0)
        options = wrapper_options(criterion)
        opt = GXDReset(inner, net, **options, replacement_rate=0.0, maturity=0)
        every = options.get("track_every", 1)
        # every k-th batch is scored; the steps pad the last cycle so that the next step (the
        # held-out pass below) collects again, as each state's first did
        for i in range(-(-len(scoring) // every) * every):
            batch = scoring[i % len(scoring)]
            opt.zero_grad()
            _loss_on(net, loss, batch).backward()  # type: ignore[no-untyped-call]
            opt.step()  # the weights stay: only the statistics move
        utilities = opt.utilities()
        for budget in budgets:
            twin_net, twin = copy.deepcopy((net, opt))
            twin.zero_grad()
            before = _loss_on(twin_net, loss, held_out)
            before.backward()  # type: ignore[no-untyped-call]
            chosen = {
                name: lowest(scores, None, max(1, round(budget * scores.numel())))
                for name, scores in utilities.items()
            }
            predicted = sum(float(twin.predicted_cost(n)[i].sum()) for n, i in chosen.items())
            for name, index in chosen.items():
                twin.reset_units(name, index)
            with torch.no_grad():
                after = _loss_on(twin_net, loss, held_out)
            twin.close()
            records.append(
                {
                    "criterion": criterion,
                    "budget": budget,
                    "units": {n: int(i.numel()) for n, i in chosen.items()},
                    "before": float(before.detach()),
                    "realised": float(after - before.detach()),
                    "predicted": predicted,
                }
            )
        opt.close()
    return records


def _states(
    plan: CostPlan, seed: int, advance: Callable[[int], None]
) -> Iterator[tuple[int, nn.Module, Any, list[Batch], Batch]]:
    """Train seed ``seed`` with the bare optimizer; yield each state as it is reached:
    ``(segment, model, loss, scoring batches, held-out data)``."""
    instance = plan.problem.build(
        plan.settings, seed, torch.device(plan.options.device), plan.options.data_dir
    )
    model, optimizer = instance.model, instance.optimizer
    keep = set(state_segments(plan.settings.segments, plan.states))
    model.train()
    for index, segment in enumerate(instance.segments):
        last: list[Batch] = []
        for x, y in segment.batches:
            optimizer.zero_grad()
            instance.loss(model(x), y).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            last = [*last[-(plan.scoring - 1) :], (x, y)] if plan.scoring > 1 else [(x, y)]
        advance(plan.settings.steps_per_segment)
        if index in keep:
            yield index, model, instance.loss, last, segment.held_out


def _summary(
    measurements: Sequence[Mapping[str, Any]], criteria: Sequence[str], budgets: Sequence[float]
) -> dict[str, dict[str, Any]]:
    """Per budget and criterion: the realised cost's mean and interval, its difference from
    GXD's on the same states, the rank, and how predicted and realised costs agree."""
    summary: dict[str, dict[str, Any]] = {}
    for budget in budgets:
        here = [m for m in measurements if m["budget"] == budget]
        rows = {c: [m for m in here if m["criterion"] == c] for c in criteria}
        realised = {c: [m["realised"] for m in rows[c]] for c in criteria}
        entry: dict[str, Any] = {}
        for c in criteria:
            mean, low, high = interval(realised[c], CONFIDENCE)
            entry[c] = {
                "realised": {"mean": mean, "ci95": [low, high], "n": len(realised[c])},
                "spearman": spearman([m["predicted"] for m in rows[c]], realised[c]),
            }
            if "gxd" in criteria and c != "gxd":
                entry[c]["minus_gxd"] = paired_difference(realised[c], realised["gxd"])
        ranking = sorted(criteria, key=lambda c: entry[c]["realised"]["mean"])
        for rank, c in enumerate(ranking, start=1):
            entry[c]["rank"] = rank
        summary[f"{budget:g}"] = entry
    return summary


def run_cost(plan: CostPlan) -> dict[str, Any]:
    """Measure every criterion's realised cost on the same states of every seed: the report.

    Returns:
        ``benchmark`` (``"cost"``), the problem, ``criteria``, ``budgets``, ``seeds``,
        ``states``, ``scoring``, ``measurements`` (one record per seed, state, criterion and
        budget, see `measure_state`), ``summary`` (per budget and criterion: realised cost
        with its interval, the difference from GXD's with its interval and verdict, rank,
        Spearman's ρ of predicted against realised), machine, source and timing.
    """
    options, settings = plan.options, plan.settings
    total = plan.seeds * settings.segments * settings.steps_per_segment
    measurements: list[dict[str, Any]] = []
    with (
        session(torch.device(options.device), options.threads) as run,
        tqdm(total=total, unit="step", disable=not options.progress, file=sys.stderr) as bar,
    ):
        for seed in range(plan.seeds):
            bar.set_description(f"seed {seed}")
            for segment, model, loss, scoring, held_out in _states(plan, seed, bar.update):
                bar.set_description(f"seed {seed}: scoring state at segment {segment + 1}")
                found = measure_state(model, loss, scoring, held_out, plan.criteria, plan.budgets)
                measurements += [{"seed": seed, "segment": segment, **m} for m in found]
                bar.set_description(f"seed {seed}")
    return {
        "benchmark": "cost",
        "created": run.created,
        "problem": problem_record(plan.problem, settings, plan.quick),
        "criteria": list(plan.criteria),
        "budgets": list(plan.budgets),
        "seeds": plan.seeds,
        "states": plan.states,
        "scoring": plan.scoring,
        "options": {"device": options.device, "threads": options.threads},
        "machine": run.machine,
        "source": source_info(),
        "measurements": measurements,
        "summary": _summary(measurements, plan.criteria, plan.budgets),
        **run.closing(),
    }
