"""What `GXDReset` costs: step time and peak memory against the bare optimizer.

Every case compares two *arms* on the same problem: a model and a pool of batches built from
fixed seeds (nothing is downloaded), an optimizer and a loss. Usually the baseline arm is the
bare optimizer and the candidate is the same optimizer wrapped in `GXDReset` with its default
settings, except ``maturity`` set so high that no unit becomes eligible: the timed steps pay for
the hooks, the statistics and the budget bookkeeping, never for a reset. Two cases measure the
rest: the cost of a step on which resets happen (against the wrapped step without resets) and
the cost of `GXDReset.predicted_cost` for all layers (against a bare step).

Timing:
    each arm is built ``copies`` times (same seed, so the same weights), and all read the same
    batches. After ``warmup`` untimed calls of each copy, ``repeats`` pairs are timed with
    `time.perf_counter`, interleaved: pair ``r`` takes copy ``r mod copies`` of each arm, and
    each copy's pairs alternate which arm runs first (A B, B A, A B, ...), so neither arm
    always runs first. Copies of the same arm can differ by a few percent, only
    because their tensors live at other addresses; taking turns spreads that over both arms
    instead of leaving the ratio to the luck of one layout. On CUDA the device is synchronised
    before and after every timed call. A training step is ``zero_grad`` + forward + loss +
    backward + ``step``. The reported ratio is the median of the per-pair ratios
    candidate / baseline, the reported times the medians of each arm. The garbage collector
    stays on: collections caused by the wrapper's allocations are part of its cost.

Peak memory: see `MEMORY_METHOD`.

Example:
    >>> from gxd_optim.bench.overhead import GOALS, select_cases
    >>> select_cases("a,cnn-b64-sgdm")
    ('mlp-b256-adam', 'cnn-b64-sgdm')
    >>> GOALS["mlp-b1-sgd"].max_ratio
    1.1
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..reset import GXDReset
from .common import (
    cpu_seconds,
    environment,
    environment_text,
    load_average,
    machine_info,
    other_cpu_percent,
    progress_bar,
    source_info,
    write_json,
)

__all__ = [
    "ARMS",
    "CASES",
    "GOALS",
    "MEMORY_METHOD",
    "TIMING_METHOD",
    "Arm",
    "Case",
    "Goal",
    "Problem",
    "Settings",
    "arm_memory",
    "copies_report",
    "failed_goals",
    "machine_info",
    "make_batches",
    "markdown_table",
    "measure_case",
    "median_ci",
    "memory_peaks",
    "other_cpu_percent",
    "peak_live_bytes",
    "run_overhead",
    "select_cases",
    "summarise_memory",
    "summarise_times",
    "summary_text",
    "time_interleaved",
    "verdict",
    "where_and_what",
    "write_report",
]

Batch = tuple[Tensor, Tensor]
Tick = Callable[[int], None]
"""Progress callback: ``tick(n)`` after ``n`` more calls of an arm."""

SEED = 0
"""Seed of every model and data pool."""
POOL_SIZE = 4
"""Batches per case; call ``i`` of an arm reads batch ``i % POOL_SIZE``."""
NO_RESET_MATURITY = 10**9
"""``maturity`` of the arms that must not reset: no unit gets old enough during a run."""
MLP_SIZES = (784, 2000, 2000, 2000, 10)
"""The permuted-MNIST MLP of the continual-backprop paper."""
FFN_WIDTH = 256
"""Model width ``d`` of the transformer MLP block ``Linear(d, 4d)-GELU-Linear(4d, d)``."""
RESET_RATE = 1.0 / MLP_SIZES[1]
"""``replacement_rate`` of the resetting arm: one unit per 2000-unit layer on every step."""

DEFAULT_REPEATS = 150
"""Timed pairs per case (times the case's ``repeat_scale``)."""
DEFAULT_WARMUP = 5
"""Untimed calls of each copy of each arm before timing."""
DEFAULT_COPIES = 3
"""Copies of each arm that the timed pairs take in turn."""
DEFAULT_MEMORY_STEPS = 3
"""Calls of each arm inside the peak-memory window."""

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
MEMORY_METHOD: Mapping[str, str] = MappingProxyType(
    {
        "cpu": (
            "Peak of the bytes live in PyTorch's CPU allocator, from the allocation and free "
            "events recorded by torch.profiler (profile_memory=True), over a window that starts "
            "before the arm builds its batch (one), model, optimizer and wrapper and ends after "
            "`memory_steps` calls of the arm. It counts parameters, gradients, optimizer state, "
            "activations saved for backward, the wrapper's statistics and every temporary "
            "tensor, including the one-time discovery pass and the optimizer's lazily created "
            "state; it does not count Python objects or memory that kernels allocate outside "
            "PyTorch's allocator. The figure is deterministic for a given build. Increase = "
            "(candidate peak - baseline peak) / baseline peak."
        ),
        "cuda": (
            "torch.cuda.max_memory_allocated after torch.cuda.reset_peak_memory_stats, minus "
            "torch.cuda.memory_allocated before, over a window that starts before the arm builds "
            "its batch (one), model, optimizer and wrapper and ends after `memory_steps` calls of "
            "the arm. Increase = (candidate peak - baseline peak) / baseline peak."
        ),
    }
)


# -- goals (issue 6) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Goal:
    """The most a case may cost: a step-time ratio and a peak-memory increase.

    Attributes:
        max_ratio: largest acceptable median step-time ratio candidate / baseline.
        max_memory_percent: largest acceptable peak-memory increase, in % of the baseline.
    """

    max_ratio: float
    max_memory_percent: float = 2.0

    def describe(self) -> str:
        """The goal as a table cell, e.g. ``ratio ≤ 1.03, memory ≤ +2%``."""
        return f"ratio ≤ {self.max_ratio:.2f}, memory ≤ +{self.max_memory_percent:g}%"


GOALS: Mapping[str, Goal] = MappingProxyType(
    {
        "mlp-b256-adam": Goal(1.03),
        "mlp-b256-sgd": Goal(1.03),
        "mlp-b1-adam": Goal(1.10),
        "mlp-b1-sgd": Goal(1.10),
        "cnn-b64-sgdm": Goal(1.05),
        "ffn-t4096-adam": Goal(1.05),
    }
)
"""Issue 6's goals per case; cases without an entry are reported for information."""


def failed_goals(goal: Goal | None, ratio: float, memory_percent: float) -> list[str] | None:
    """Which parts of a goal a measurement misses.

    Args:
        goal: the case's goal, or ``None`` if it has none.
        ratio: the measured median step-time ratio.
        memory_percent: the measured peak-memory increase in %.

    Returns:
        ``None`` without a goal; else the missed criteria (``"ratio"``, ``"memory"``), empty
        when the measurement is within the goal.

    Example:
        >>> failed_goals(Goal(1.03), 1.05, 0.5)
        ['ratio']
    """
    if goal is None:
        return None
    failed = []
    if not ratio <= goal.max_ratio:
        failed.append("ratio")
    if not memory_percent <= goal.max_memory_percent:
        failed.append("memory")
    return failed


# -- problems ----------------------------------------------------------------------------------
def mlp(sizes: Sequence[int] = MLP_SIZES) -> nn.Sequential:
    """A ReLU MLP with the given layer sizes (input, hidden..., output)."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def cnn(channels: Sequence[int] = (32, 32, 64, 64, 128), classes: int = 10) -> nn.Sequential:
    """Conv3x3+BatchNorm+ReLU blocks with max-pooling after the 2nd, 4th and 5th, a linear head.

    Built for 3×32×32 inputs: three poolings leave 4×4 positions per channel.
    """
    layers: list[nn.Module] = []
    fan_in = 3
    for i, width in enumerate(channels):
        layers += [nn.Conv2d(fan_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        if i in (1, 3, 4):
            layers.append(nn.MaxPool2d(2))
        fan_in = width
    layers += [nn.Flatten(), nn.Linear(fan_in * 4 * 4, classes)]
    return nn.Sequential(*layers)


def ffn(width: int = FFN_WIDTH) -> nn.Sequential:
    """A transformer MLP block ``Linear(d, 4d)-GELU-Linear(4d, d)``."""
    return nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))


OptimizerFactory = Callable[[Iterable[Tensor]], torch.optim.Optimizer]


@dataclass(frozen=True)
class Problem:
    """One training problem: model, optimizer, data shapes and loss.

    Attributes:
        description: what it is, for the report.
        model: builds the model (called under a fixed seed).
        optimizer: builds the optimizer from the model's parameters.
        input_shape: shape of one input batch.
        target_shape: shape of one target batch.
        classes: number of classes for a cross-entropy loss with random labels, or ``None``
            for a mean-squared error against a Gaussian target.
    """

    description: str
    model: Callable[[], nn.Module]
    optimizer: OptimizerFactory
    input_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    classes: int | None = None

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The training loss of a batch."""
        if self.classes is None:
            return F.mse_loss(output, target)
        return F.cross_entropy(output, target)


def _adam(params: Iterable[Tensor]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-4)


def _sgd(params: Iterable[Tensor]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=1e-2)


def _sgd_momentum(params: Iterable[Tensor]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=1e-2, momentum=0.9)


def _mlp_problem(batch: int, optimizer: OptimizerFactory, label: str) -> Problem:
    return Problem(
        f"MLP {'-'.join(map(str, MLP_SIZES))} (ReLU), batch {batch}, {label}, "
        "cross-entropy on random labels",
        mlp,
        optimizer,
        (batch, MLP_SIZES[0]),
        (batch,),
        classes=MLP_SIZES[-1],
    )


MLP_B256_ADAM = _mlp_problem(256, _adam, "Adam(lr=1e-4)")
MLP_B256_SGD = _mlp_problem(256, _sgd, "SGD(lr=1e-2)")
MLP_B1_ADAM = _mlp_problem(1, _adam, "Adam(lr=1e-4)")
MLP_B1_SGD = _mlp_problem(1, _sgd, "SGD(lr=1e-2)")
CNN_B64_SGDM = Problem(
    "CNN: 5 blocks Conv3x3-BatchNorm-ReLU (32-32-64-64-128 channels), max-pooling after "
    "blocks 2, 4 and 5, Linear(2048, 10); batch 64 of 3x32x32; SGD(lr=1e-2, momentum=0.9), "
    "cross-entropy on random labels",
    cnn,
    _sgd_momentum,
    (64, 3, 32, 32),
    (64,),
    classes=10,
)
FFN_T4096_ADAM = Problem(
    f"transformer MLP block Linear({FFN_WIDTH}, {4 * FFN_WIDTH})-GELU-"
    f"Linear({4 * FFN_WIDTH}, {FFN_WIDTH}) on [16, 256, {FFN_WIDTH}] (batch x tokens = 4096); "
    "Adam(lr=1e-4), mean-squared error to a Gaussian target",
    ffn,
    _adam,
    (16, 256, FFN_WIDTH),
    (16, 256, FFN_WIDTH),
)


def make_batches(problem: Problem, device: torch.device, count: int = POOL_SIZE) -> list[Batch]:
    """The problem's pool of batches, drawn from a generator seeded with `SEED`.

    Args:
        problem: what to draw batches for.
        device: where the batches go.
        count: number of batches.

    Returns:
        ``count`` pairs ``(input, target)``; the same values on every call.
    """
    generator = torch.Generator().manual_seed(SEED)
    batches = []
    for _ in range(count):
        x = torch.randn(problem.input_shape, generator=generator)
        if problem.classes is None:
            y = torch.randn(problem.target_shape, generator=generator)
        else:
            y = torch.randint(problem.classes, problem.target_shape, generator=generator)
        batches.append((x.to(device), y.to(device)))
    return batches


# -- arms --------------------------------------------------------------------------------------
ARMS: Mapping[str, str] = MappingProxyType(
    {
        "bare": "the plain optimizer: one training step per call",
        "wrapped": (
            "GXDReset(optimizer, model) with default settings except "
            f"maturity={NO_RESET_MATURITY} (no reset can happen): one training step per call"
        ),
        "resetting": (
            f"GXDReset(optimizer, model, maturity=0, replacement_rate=1/{MLP_SIZES[1]}): one "
            "training step per call, each resetting about one unit per 2000-unit layer"
        ),
        "predicted-cost": (
            f"GXDReset(optimizer, model, maturity={NO_RESET_MATURITY}) after one training step "
            "and one more zero_grad + forward + backward: opt.predicted_cost(name) for every "
            "layer per call (between backward and step, where the API reads it), no step"
        ),
        "contribution": (
            f"GXDReset(optimizer, model, utility='contribution', maturity={NO_RESET_MATURITY}): "
            "continual backprop's criterion |h|·Σ|w_out| through the same wrapper, one training "
            "step per call"
        ),
    }
)
"""What each kind of arm does per call."""

_WRAPPER_SETTINGS: Mapping[str, dict[str, Any]] = MappingProxyType(
    {
        "wrapped": {"maturity": NO_RESET_MATURITY},
        "resetting": {"maturity": 0, "replacement_rate": RESET_RATE},
        "predicted-cost": {"maturity": NO_RESET_MATURITY},
        "contribution": {"maturity": NO_RESET_MATURITY, "utility": "contribution"},
    }
)


class Arm:
    """One side of a comparison, on its own copy of the problem's model.

    Args:
        kind: a key of `ARMS`.
        problem: the problem.
        batches: the batches to train on (call ``i`` reads ``batches[i % len(batches)]``).
        device: where the model lives.
    """

    def __init__(
        self, kind: str, problem: Problem, batches: Sequence[Batch], device: torch.device
    ) -> None:
        if kind not in ARMS:
            raise ValueError(f"unknown arm {kind!r}; expected one of {sorted(ARMS)}")
        self.kind = kind
        self.problem = problem
        self.batches = batches
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            self.model = problem.model().to(device)
        inner = problem.optimizer(self.model.parameters())
        self.wrapper = (
            GXDReset(inner, self.model, **_WRAPPER_SETTINGS[kind]) if kind != "bare" else None
        )
        self.optimizer: torch.optim.Optimizer = inner if self.wrapper is None else self.wrapper
        self.steps = 0
        self._names: list[str] = []
        if kind == "predicted-cost":
            self.train_step(0)  # statistics and references exist
            self.backward(1)  # gradients to read; predicted_cost is valid until the next step
            self._names = list(self._require_wrapper().layers)

    def _require_wrapper(self) -> GXDReset:
        if self.wrapper is None:
            raise RuntimeError(f"arm {self.kind!r} has no GXDReset")
        return self.wrapper

    def backward(self, i: int) -> None:
        """``zero_grad``, forward, loss and backward on batch ``i``."""
        x, y = self.batches[i % len(self.batches)]
        self.optimizer.zero_grad()
        loss = self.problem.loss(self.model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]

    def train_step(self, i: int) -> None:
        """One training step (zero_grad, forward, loss, backward, step) on batch ``i``."""
        self.backward(i)
        self.optimizer.step()
        self.steps += 1

    def predicted_costs(self) -> list[Tensor]:
        """``predicted_cost`` of every layer the wrapper tracks."""
        wrapper = self._require_wrapper()
        return [wrapper.predicted_cost(name) for name in self._names]

    def __call__(self, i: int) -> None:
        """The arm's unit of work: a training step, or the predicted-cost queries."""
        if self.kind == "predicted-cost":
            self.predicted_costs()
        else:
            self.train_step(i)

    def report(self) -> dict[str, Any]:
        """What the arm is and what its wrapper saw: layers, skipped layers, resets."""
        out: dict[str, Any] = {
            "arm": self.kind,
            "description": ARMS[self.kind],
            "training_steps": self.steps,
        }
        if self.wrapper is not None:
            resets = self.wrapper.reset_counts
            out |= {
                "layers": list(self.wrapper.layers),
                "skipped": dict(self.wrapper.skipped),
                "resets": resets,
                "resets_per_step": sum(resets.values()) / max(self.steps, 1),
            }
        return out

    def check(self) -> None:
        """Refuse a run whose arm did not do what it stands for.

        Raises:
            RuntimeError: a non-resetting arm reset units, or the resetting arm reset none.
        """
        if self.wrapper is None:
            return
        resets = sum(self.wrapper.reset_counts.values())
        if self.kind == "resetting" and resets == 0:
            raise RuntimeError("the resetting arm reset no unit: its timings measure nothing")
        if self.kind != "resetting" and resets:
            raise RuntimeError(
                f"the {self.kind!r} arm reset {resets} units: its timings include resets"
            )


def copies_report(copies: Sequence[Arm]) -> dict[str, Any]:
    """The report of an arm built several times: `Arm.report` of the first, with the training
    steps and resets of all copies added up and their number as ``copies``.

    Raises:
        ValueError: no copies, or copies of different arms.
    """
    if not copies or len({arm.kind for arm in copies}) != 1:
        raise ValueError("need one or more copies of the same arm")
    out = copies[0].report() | {"copies": len(copies)}
    steps = sum(arm.steps for arm in copies)
    out["training_steps"] = steps
    if copies[0].wrapper is not None:
        resets: dict[str, int] = {}
        for arm in copies:
            for name, count in arm.report()["resets"].items():
                resets[name] = resets.get(name, 0) + count
        out |= {"resets": resets, "resets_per_step": sum(resets.values()) / max(steps, 1)}
    return out


# -- cases -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One comparison of the benchmark.

    Attributes:
        key: one-letter alias (issue 6's list: ``a`` … ``h``; ``i``, ``j`` for comparison).
        name: readable name, e.g. ``mlp-b256-adam``.
        problem: the problem both arms train on.
        baseline: the arm the candidate is measured against (a key of `ARMS`).
        candidate: the arm measured.
        repeat_scale: timed pairs are ``repeats × repeat_scale`` (cheap, noisy steps get more).
    """

    key: str
    name: str
    problem: Problem
    baseline: str = "bare"
    candidate: str = "wrapped"
    repeat_scale: int = 1

    @property
    def goal(self) -> Goal | None:
        """Issue 6's goal for this case, if it has one."""
        return GOALS.get(self.name)

    @property
    def compares(self) -> str:
        """``candidate / baseline``, for the table."""
        return f"{self.candidate} / {self.baseline}"


CASES: tuple[Case, ...] = (
    Case("a", "mlp-b256-adam", MLP_B256_ADAM),
    Case("b", "mlp-b256-sgd", MLP_B256_SGD),
    Case("c", "mlp-b1-adam", MLP_B1_ADAM, repeat_scale=4),
    Case("d", "mlp-b1-sgd", MLP_B1_SGD, repeat_scale=4),
    Case("e", "cnn-b64-sgdm", CNN_B64_SGDM),
    Case("f", "ffn-t4096-adam", FFN_T4096_ADAM),
    Case("g", "reset-step-mlp-b256-adam", MLP_B256_ADAM, "wrapped", "resetting"),
    Case("h", "predicted-cost-mlp-b256-adam", MLP_B256_ADAM, "bare", "predicted-cost"),
    Case("i", "contribution-mlp-b256-sgd", MLP_B256_SGD, "bare", "contribution"),
    Case("j", "contribution-mlp-b1-sgd", MLP_B1_SGD, "bare", "contribution", repeat_scale=4),
)
"""Every case: issue 6's list (``a`` … ``h``), then continual backprop's criterion through the
same wrapper (``i``, ``j``) for comparison with the figures of its reference code."""

_BY_NAME = {case.name: case for case in CASES}
_BY_KEY = {case.key: case for case in CASES}


def select_cases(spec: str) -> tuple[str, ...]:
    """Case names from a comma-separated list of names or one-letter keys.

    Args:
        spec: e.g. ``"a,b"`` or ``"mlp-b1-sgd,h"``; ``"all"`` for every case.

    Returns:
        The names, in the order given, without duplicates.

    Raises:
        ValueError: an unknown name or an empty list.
    """
    if spec.strip() == "all":
        return tuple(case.name for case in CASES)
    names: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        case = _BY_KEY.get(item) or _BY_NAME.get(item)
        if case is None:
            known = ", ".join(f"{c.key}={c.name}" for c in CASES)
            raise ValueError(f"unknown case {item!r}; known cases: {known}")
        if case.name not in names:
            names.append(case.name)
    if not names:
        raise ValueError("no case selected")
    return tuple(names)


@dataclass(frozen=True)
class Settings:
    """How to run the overhead benchmark.

    Attributes:
        cases: names of the cases to run (see `select_cases`).
        repeats: timed pairs per case (times the case's ``repeat_scale``).
        warmup: untimed calls of each copy of each arm before timing.
        copies: copies of each arm, taken in turn by the timed pairs.
        memory_steps: calls of each arm inside the peak-memory window.
        device: ``"cpu"`` or ``"cuda"``.
        threads: ``torch.set_num_threads`` for the run; ``None`` keeps the current setting.
        quick: whether this is the tiny ``--quick`` configuration (recorded in the report).

    Raises:
        ValueError: a value out of range, an unknown case or device.
    """

    cases: tuple[str, ...] = tuple(case.name for case in CASES)
    repeats: int = DEFAULT_REPEATS
    warmup: int = DEFAULT_WARMUP
    copies: int = DEFAULT_COPIES
    memory_steps: int = DEFAULT_MEMORY_STEPS
    device: str = "cpu"
    threads: int | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        unknown = [name for name in self.cases if name not in _BY_NAME]
        if unknown or not self.cases:
            raise ValueError(f"unknown or no cases {unknown}; known: {sorted(_BY_NAME)}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.copies < 1:
            raise ValueError(f"copies must be >= 1, got {self.copies}")
        if self.memory_steps < 1:
            raise ValueError(f"memory_steps must be >= 1, got {self.memory_steps}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def pairs(self, case: Case) -> int:
        """Timed pairs of a case."""
        return self.repeats * case.repeat_scale

    def copies_of(self, case: Case) -> int:
        """Copies of each arm a case builds: `copies`, but no more than its timed pairs."""
        return min(self.copies, self.pairs(case))

    def calls(self, case: Case) -> int:
        """Calls of both arms a case makes (warm-up, timed and memory): the progress total."""
        return 2 * (self.copies_of(case) * self.warmup + self.pairs(case) + self.memory_steps)


QUICK = Settings(repeats=3, warmup=1, copies=2, memory_steps=2, quick=True)
"""The ``--quick`` configuration: seconds per case, for tests of the command itself."""


# -- timing ------------------------------------------------------------------------------------
def _timed(work: Callable[[int], None], i: int, sync: bool) -> float:
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    work(i)
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_interleaved(
    baseline: Sequence[Callable[[int], None]],
    candidate: Sequence[Callable[[int], None]],
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

    Example:
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


def median_ci(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free confidence interval of the median, from order statistics.

    The sorted values at ranks ``n/2 ∓ z·√n/2`` (clipped to the sample); ``z = 1.96`` gives
    about 95% for independent samples.

    Example:
        >>> median_ci([float(v) for v in range(100)])
        (40.0, 60.0)
    """
    ordered = sorted(values)
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    low = max(math.floor(n / 2 - half), 0)
    high = min(math.ceil(n / 2 + half), n - 1)
    return ordered[low], ordered[high]


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

    Example:
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


# -- memory ------------------------------------------------------------------------------------
def peak_live_bytes(deltas: Iterable[int]) -> int:
    """Highest running total of allocation (+) and free (−) sizes, from 0; at least 0.

    Example:
        >>> peak_live_bytes([100, 50, -100, 200, -250])
        250
    """
    live = peak = 0
    for delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines) for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_LAST_CALL = "gxd_bench::last_call"
"""Profiler label of the final call inside a memory window."""


def _cpu_peaks(prepare: Callable[[], Callable[[], None]]) -> tuple[int, int]:
    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    )
    with _native_stderr_silenced():
        profiler.start()
    try:
        last = prepare()
        with torch.profiler.record_function(_LAST_CALL):
            last()
        del last
    finally:
        with _native_stderr_silenced():
            profiler.stop()
    results = None if profiler.profiler is None else profiler.profiler.kineto_results
    if results is None:
        raise RuntimeError("torch.profiler recorded no results; cannot measure CPU memory")
    events = results.events()
    marks = [(e.start_ns(), e.end_ns()) for e in events if e.name() == _LAST_CALL]
    if len(marks) != 1:
        raise RuntimeError(f"expected one {_LAST_CALL!r} event in the profile, got {len(marks)}")
    begin, end = marks[0]
    deltas = [  # allocations (+bytes) and frees (-bytes); _KinetoEvent.nbytes is not in the stubs
        (e.start_ns(), int(cast(Any, e).nbytes()))
        for e in events
        if e.name() == "[memory]" and e.device_type().name == "CPU"
    ]
    deltas.sort(key=lambda delta: delta[0])  # stable: same-time events keep their order
    before = [nbytes for t, nbytes in deltas if t < begin]
    during = [nbytes for t, nbytes in deltas if begin <= t <= end]
    live = sum(before)
    return peak_live_bytes(nbytes for _, nbytes in deltas), live + peak_live_bytes(during)


def memory_peaks(
    prepare: Callable[[], Callable[[], None]], device: torch.device
) -> tuple[int, int]:
    """Peak bytes of tensors on ``device``, above what was live before ``prepare()`` ran.

    Args:
        prepare: builds what is measured, runs all calls but the last and returns the last.
        device: where the tensors live. See `MEMORY_METHOD` for what is counted.

    Returns:
        The peak over the whole window (``prepare()`` and the last call), and the peak during
        the last call (everything still live from ``prepare()`` included).
    """
    if device.type != "cuda":
        return _cpu_peaks(prepare)
    torch.cuda.synchronize(device)
    start = int(torch.cuda.memory_allocated(device))
    torch.cuda.reset_peak_memory_stats(device)
    last = prepare()
    torch.cuda.synchronize(device)
    prepared = int(torch.cuda.max_memory_allocated(device))
    torch.cuda.reset_peak_memory_stats(device)
    last()
    torch.cuda.synchronize(device)
    during = int(torch.cuda.max_memory_allocated(device))
    return max(prepared, during) - start, during - start


def arm_memory(
    kind: str, problem: Problem, device: torch.device, calls: int, tick: Tick | None = None
) -> tuple[int, int]:
    """Memory peaks (see `memory_peaks`) of building an arm with one batch and ``calls`` calls.

    The first figure includes one-time costs (GXDReset's discovery pass, lazily created
    optimizer state); the second is the steady-state peak of the last call.
    """
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")

    def prepare() -> Callable[[], None]:
        arm = Arm(kind, problem, make_batches(problem, device, count=1), device)
        for i in range(calls - 1):
            arm(i)
            if tick is not None:
                tick(1)

        def last() -> None:
            arm(calls - 1)
            if tick is not None:
                tick(1)

        return last

    gc.collect()
    return memory_peaks(prepare, device)


def summarise_memory(baseline: tuple[int, int], candidate: tuple[int, int]) -> dict[str, Any]:
    """Both arms' peaks and the candidate's increase, in bytes and in % of the baseline.

    Args:
        baseline: the baseline's ``(run peak, step peak)`` from `arm_memory`.
        candidate: the candidate's.

    Returns:
        ``baseline_peak_bytes``, ``candidate_peak_bytes``, ``increase_bytes`` and
        ``increase_percent`` for the steady-state step, and the same with ``run_`` in front
        for the whole window (build and first steps included).

    Example:
        >>> summarise_memory((1200, 1000), (1260, 1015))["increase_percent"]
        1.5
    """
    out: dict[str, Any] = {}
    for prefix, base, cand in (
        ("", baseline[1], candidate[1]),
        ("run_", baseline[0], candidate[0]),
    ):
        increase = cand - base
        out |= {
            f"{prefix}baseline_peak_bytes": base,
            f"{prefix}candidate_peak_bytes": cand,
            f"{prefix}increase_bytes": increase,
            f"{prefix}increase_percent": 100.0 * increase / base if base else float("nan"),
        }
    return out


# -- one case, the whole run -------------------------------------------------------------------
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
    problem = case.problem
    batches = make_batches(problem, device)
    baseline: list[Arm] = []
    candidate: list[Arm] = []
    for _ in range(settings.copies_of(case)):  # in turn: neither arm's copies all come first
        baseline.append(Arm(case.baseline, problem, batches, device))
        candidate.append(Arm(case.candidate, problem, batches, device))
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
        arm_memory(case.baseline, problem, device, settings.memory_steps, tick),
        arm_memory(case.candidate, problem, device, settings.memory_steps, tick),
    )
    goal = case.goal
    failed = failed_goals(goal, timing["ratio"]["median"], memory["increase_percent"])
    return {
        "key": case.key,
        "name": case.name,
        "problem": problem.description,
        "compares": case.compares,
        "arms": arms,
        "timing": timing,
        "memory": memory,
        "goal": None if goal is None else asdict(goal),
        "within_goal": None if failed is None else not failed,
        "failed": failed,
    }


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_THRESHOLD_MAX = 32 << 20  # the largest mmap threshold glibc accepts on 64-bit


def pin_allocator() -> str:
    """Keep freed memory mapped for the rest of the process (glibc only); say what was done.

    With ``zero_grad(set_to_none=True)`` every step frees and re-allocates its gradients. By
    default glibc returns large blocks to the system and adapts its thresholds as it goes, so
    whether a step page-faults on its new gradients depends on what the *other* arm freed
    before it: on the batch-1 MLP either arm could take 6 or 19 ms from run to run. Serving
    every block up to 32 MiB from the heap and never trimming it makes both arms reuse their
    memory, so the ratio measures the wrapper, not the allocator.
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
    cases = [_BY_NAME[name] for name in settings.cases]
    allocator = pin_allocator()
    threads = torch.get_num_threads()
    start = time.perf_counter()
    load_start, cpu_start = load_average(), cpu_seconds()
    try:
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        machine = machine_info(device)
        records = []
        total = sum(settings.calls(case) for case in cases)
        with progress_bar(total, "call", progress) as bar:
            for case in cases:
                bar.set_description(case.name)
                records.append(measure_case(case, settings, bar.update))
    finally:
        torch.set_num_threads(threads)
    return {
        "benchmark": "overhead",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "machine": machine,
        "source": source_info(),
        "method": {
            "timing": TIMING_METHOD,
            "memory": MEMORY_METHOD[device.type],
            "allocator": allocator,
        },
        "arms": dict(ARMS),
        "goals": {name: asdict(goal) for name, goal in GOALS.items()},
        "cases": records,
        "seconds": time.perf_counter() - start,
        "environment": environment(load_start, cpu_start),
    }


def markdown_table(records: Sequence[Mapping[str, Any]]) -> str:
    """The cases of a report as a Markdown table.

    Args:
        records: the report's ``"cases"``.

    Returns:
        One header, one separator and one row per case.
    """
    header = (
        "| case | compares | pairs | baseline ms | candidate ms | ratio (median) | ratio 95% CI "
        "| peak memory | goal | within goal |"
    )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in records:
        t, m = r["timing"], r["memory"]
        goal = r["goal"]
        goal_cell = "—" if goal is None else Goal(**goal).describe()
        rows.append(
            f"| {r['key']}: {r['name']} | {r['compares']} | {t['pairs']} "
            f"| {t['baseline_ms']['median']:.2f} | {t['candidate_ms']['median']:.2f} "
            f"| {t['ratio']['median']:.3f} "
            f"| {t['ratio']['median_ci95'][0]:.3f}–{t['ratio']['median_ci95'][1]:.3f} "
            f"| {m['increase_percent']:+.2f}% | {goal_cell} | {verdict(r)} |"
        )
    return "\n".join(rows)


def verdict(record: Mapping[str, Any]) -> str:
    """A case's "within goal" cell: each missed part with its figure against the goal.

    The table rounds ratios to three places, so a ratio of 1.0303 shows as 1.030 against a
    goal of 1.03; the verdict shows each missed figure with as many places as it takes to
    differ from the goal (at least four for a ratio, two for memory).

    Example:
        >>> record = {"goal": {"max_ratio": 1.03, "max_memory_percent": 2.0},
        ...           "within_goal": False, "failed": ["ratio", "memory"],
        ...           "timing": {"ratio": {"median": 1.03031}},
        ...           "memory": {"increase_percent": 2.004}}
        >>> verdict(record)
        'no (ratio 1.0303 > 1.03, memory +2.004% > +2%)'
    """
    if record["within_goal"] is None:
        return "—"
    if record["within_goal"]:
        return "yes"
    goal = Goal(**record["goal"])
    ratio = _beyond(record["timing"]["ratio"]["median"], goal.max_ratio, 4)
    memory = _beyond(record["memory"]["increase_percent"], goal.max_memory_percent, 2, "+")
    figures = {
        "ratio": f"ratio {ratio} > {goal.max_ratio:.2f}",
        "memory": f"memory {memory}% > +{goal.max_memory_percent:g}%",
    }
    return f"no ({', '.join(figures[part] for part in record['failed'])})"


def _beyond(value: float, limit: float, places: int, sign: str = "") -> str:
    """``value`` with at least ``places`` decimals, and more until it no longer reads as
    ``limit`` (at most 9); ``sign="+"`` writes the sign of positive values too."""
    while places < 9 and round(value, places) == round(limit, places):
        places += 1
    return f"{value:{sign}.{places}f}"


def write_report(report: Mapping[str, Any], out_dir: Path) -> Path:
    """Write the report as ``overhead.json`` in ``out_dir`` (created if needed).

    Returns:
        The file written.
    """
    return write_json(report, out_dir, "overhead.json")


def where_and_what(report: Mapping[str, Any]) -> str:
    """The device, machine, torch and gxd_optim commit a report was measured with, in a line."""
    machine = report["machine"]
    where = f"{machine['cpu']}, {machine['usable_cores']} cores, {machine['threads']} threads"
    if machine["gpu"]:
        where = f"{machine['gpu']} ({where})"
    source = report["source"]
    commit = (source["git_commit"] or "unknown commit")[:12]
    if source["git_dirty"]:
        commit += " + local changes"
    return (
        f"device {machine['device']}: {where}; torch {machine['torch']}; "
        f"gxd_optim {source['gxd_optim']} ({commit})"
    )


def summary_text(report: Mapping[str, Any]) -> str:
    """The table plus the lines that say what was measured, where and how."""
    settings = report["settings"]
    return "\n".join(
        [
            markdown_table(report["cases"]),
            "",
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
    )
