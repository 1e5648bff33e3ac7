"""What the overhead benchmark compares: the workloads, the cases, their limits, the settings.

Examples:
    >>> select_cases("a,cnn-b64-sgdm")
    ('mlp-b256-adam', 'cnn-b64-sgdm')
    >>> GOALS["mlp-b1-sgd"].max_ratio, GOALS["reset-step-rl-mlp64-b64-adam"].max_ratio
    (1.1, 1.5)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import NATURE_INPUT, conv_net, ffn_block, mlp, nature_cnn
from .timing import DEFAULT_WARMUP

__all__ = [
    "CASES",
    "DEFAULT_COPIES",
    "DEFAULT_MEMORY_STEPS",
    "DEFAULT_REPEATS",
    "GOALS",
    "MLP_SIZES",
    "QUICK",
    "SEED",
    "Case",
    "Goal",
    "Settings",
    "Workload",
    "failed_goals",
    "select_cases",
]

SEED = 0
"""Seed of every model and batch pool."""
POOL_SIZE = 4
"""Batches per case; call ``i`` of an arm reads batch ``i % POOL_SIZE``."""
MLP_SIZES = (784, 2000, 2000, 2000, 10)
"""The permuted-MNIST MLP of the continual-backprop paper."""
FFN_WIDTH = 256
"""Model width ``d`` of the transformer MLP block ``Linear(d, 4d)-GELU-Linear(4d, d)``."""
CNN_CHANNELS = (32, 32, 64, 64, 128)
"""Output channels of the CNN's blocks, pooled after the 2nd, 4th and 5th (3×32×32 inputs)."""
RL_FEATURES, RL_ACTIONS = 8, 4
"""Observation features and actions of the reinforcement-learning MLPs."""
RL_TRACK_EVERY = 16
"""``track_every`` of the cases that collect statistics on one step in several."""

DEFAULT_REPEATS = 150
"""Timed pairs per case (times the case's ``repeat_scale``)."""
DEFAULT_COPIES = 3
"""Copies of each arm that the timed pairs take in turn."""
DEFAULT_MEMORY_STEPS = 3
"""Calls of each arm inside the peak-memory window."""

Batch = tuple[Tensor, Tensor]
OptimizerFactory = Callable[[Iterable[Tensor]], torch.optim.Optimizer]


@dataclass(frozen=True)
class Workload:
    """What both arms of a case train: a model, an optimizer, batches of fixed shapes, a loss.

    Attributes:
        description: what it is, for the report.
        model: builds the model, always with the same weights (from `SEED`).
        optimizer: builds the optimizer from the model's parameters.
        input_shape: shape of one input batch.
        target_shape: shape of one target batch.
        classes: number of classes for a cross-entropy loss with random labels, or ``None``
            for a mean-squared error against a Gaussian target.
        reset_rate: ``replacement_rate`` of the resetting arm: whole units on every step in
            every layer (one unit per step in the narrowest tracked layer).
        steps: training steps per call of an arm; the ``"sampled"`` arm collects statistics
            on the first of them (``track_every=steps``), so that each call is one cycle.
    """

    description: str
    model: Callable[[], nn.Module]
    optimizer: OptimizerFactory
    input_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    classes: int | None = None
    reset_rate: float = 1.0 / MLP_SIZES[1]
    steps: int = 1

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The training loss of a batch."""
        if self.classes is None:
            return F.mse_loss(output, target)
        return F.cross_entropy(output, target)

    def batches(self, device: torch.device, count: int = POOL_SIZE) -> list[Batch]:
        """``count`` batches ``(input, target)`` drawn from `SEED`: the same on every call."""
        generator = torch.Generator().manual_seed(SEED)
        batches = []
        for _ in range(count):
            x = torch.randn(self.input_shape, generator=generator)
            if self.classes is None:
                y = torch.randn(self.target_shape, generator=generator)
            else:
                y = torch.randint(self.classes, self.target_shape, generator=generator)
            batches.append((x.to(device), y.to(device)))
        return batches


def _adam(params: Iterable[Tensor]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-4)


def _adam_rl(params: Iterable[Tensor]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=3e-4)


def _sgd(params: Iterable[Tensor]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=1e-2)


def _sgd_momentum(params: Iterable[Tensor]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=1e-2, momentum=0.9)


def _mlp_workload(batch: int, optimizer: OptimizerFactory, label: str) -> Workload:
    return Workload(
        f"MLP {'-'.join(map(str, MLP_SIZES))} (ReLU), batch {batch}, {label}, "
        "cross-entropy on random labels",
        partial(mlp, MLP_SIZES, seed=SEED),
        optimizer,
        (batch, MLP_SIZES[0]),
        (batch,),
        classes=MLP_SIZES[-1],
    )


MLP_B256_ADAM = _mlp_workload(256, _adam, "Adam(lr=1e-4)")
MLP_B256_SGD = _mlp_workload(256, _sgd, "SGD(lr=1e-2)")
MLP_B1_ADAM = _mlp_workload(1, _adam, "Adam(lr=1e-4)")
MLP_B1_SGD = _mlp_workload(1, _sgd, "SGD(lr=1e-2)")
CNN_B64_SGDM = Workload(
    "CNN: 5 blocks Conv3x3-BatchNorm-ReLU (32-32-64-64-128 channels), max-pooling after "
    "blocks 2, 4 and 5, Linear(2048, 10); batch 64 of 3x32x32; SGD(lr=1e-2, momentum=0.9), "
    "cross-entropy on random labels",
    partial(conv_net, CNN_CHANNELS, 10, seed=SEED, image_size=32, pool_after=(1, 3, 4)),
    _sgd_momentum,
    (64, 3, 32, 32),
    (64,),
    classes=10,
)
FFN_T4096_ADAM = Workload(
    f"transformer MLP block Linear({FFN_WIDTH}, {4 * FFN_WIDTH})-GELU-"
    f"Linear({4 * FFN_WIDTH}, {FFN_WIDTH}) on [16, 256, {FFN_WIDTH}] (batch x tokens = 4096); "
    "Adam(lr=1e-4), mean-squared error to a Gaussian target",
    partial(ffn_block, FFN_WIDTH, seed=SEED),
    _adam,
    (16, 256, FFN_WIDTH),
    (16, 256, FFN_WIDTH),
)


def _rl_mlp_workload(width: int, batch: int, activation: str, use: str) -> Workload:
    return Workload(
        f"MLP {RL_FEATURES}-{width}-{width}-{RL_ACTIONS} ({activation}), batch {batch} "
        f"({use}), Adam(lr=3e-4), mean-squared error to a Gaussian target",
        partial(mlp, (RL_FEATURES, width, width, RL_ACTIONS), SEED, activation),
        _adam_rl,
        (batch, RL_FEATURES),
        (batch, RL_ACTIONS),
        reset_rate=1.0 / width,
    )


RL_MLP64_B64_ADAM = _rl_mlp_workload(64, 64, "tanh", "stable-baselines3's PPO/DQN default")
RL_MLP256_B256_ADAM = _rl_mlp_workload(256, 256, "relu", "stable-baselines3's SAC default")
RL_DQN_CNN_B32_ADAM = Workload(
    "Nature DQN CNN: Conv 32@8x8/4, 64@4x4/2, 64@3x3/1, Linear(3136, 512), Linear(512, "
    f"{RL_ACTIONS}) (ReLU); batch 32 of 4x84x84; Adam(lr=1e-4), mean-squared error to a "
    "Gaussian target",
    partial(nature_cnn, RL_ACTIONS, seed=SEED),
    _adam,
    (32, *NATURE_INPUT),
    (32, RL_ACTIONS),
    reset_rate=1.0 / 32,
)


def _cycles(workload: Workload) -> Workload:
    """``workload`` with `RL_TRACK_EVERY` training steps per call."""
    return replace(
        workload,
        description=f"{workload.description}; {RL_TRACK_EVERY} training steps per call",
        steps=RL_TRACK_EVERY,
    )


RL_MLP64_B64_CYCLES, RL_MLP256_B256_CYCLES, RL_DQN_CNN_B32_CYCLES = map(
    _cycles, (RL_MLP64_B64_ADAM, RL_MLP256_B256_ADAM, RL_DQN_CNN_B32_ADAM)
)


@dataclass(frozen=True)
class Goal:
    """The most a case may cost: a step-time ratio and a peak-memory increase.

    Attributes:
        max_ratio: largest acceptable median step-time ratio candidate / baseline.
        max_memory_percent: largest acceptable peak-memory increase, in % of the baseline;
            ``None``: no limit (a model of a few hundred kilobytes, next to which the
            wrapper's fixed cost, its first-pass discovery and its statistics, is large).

    Examples:
        >>> Goal(1.03).describe(), Goal(1.5, None).describe()
        ('ratio ≤ 1.03, memory ≤ +2%', 'ratio ≤ 1.50')
    """

    max_ratio: float
    max_memory_percent: float | None = 2.0

    def describe(self) -> str:
        """The goal as a table cell, e.g. ``ratio ≤ 1.03, memory ≤ +2%``."""
        ratio = f"ratio ≤ {self.max_ratio:.2f}"
        if self.max_memory_percent is None:
            return ratio
        return f"{ratio}, memory ≤ +{self.max_memory_percent:g}%"


GOALS: Mapping[str, Goal] = MappingProxyType(
    {
        "mlp-b256-adam": Goal(1.03),
        "mlp-b256-sgd": Goal(1.03),
        "mlp-b1-adam": Goal(1.10),
        "mlp-b1-sgd": Goal(1.10),
        "cnn-b64-sgdm": Goal(1.05),
        "ffn-t4096-adam": Goal(1.05),
        "rl-mlp64-b64-adam": Goal(1.10, None),
        "rl-mlp256-b256-adam": Goal(1.05, None),
        "rl-dqn-cnn-b32-adam": Goal(1.05),
        "reset-step-rl-mlp64-b64-adam": Goal(1.5, None),
        "reset-step-rl-mlp256-b256-adam": Goal(1.5, None),
        "reset-step-rl-dqn-cnn-b32-adam": Goal(1.5),
        f"rl-mlp64-b64-adam-every{RL_TRACK_EVERY}": Goal(1.10, None),
        f"rl-mlp256-b256-adam-every{RL_TRACK_EVERY}": Goal(1.05, None),
        f"rl-dqn-cnn-b32-adam-every{RL_TRACK_EVERY}": Goal(1.05),
    }
)
"""The cost each case must stay within; cases without an entry are reported for information.
The reinforcement-learning MLPs (0.1 and 1.9 MB at their peak) have no memory limit."""


def failed_goals(goal: Goal | None, ratio: float, memory_percent: float) -> list[str] | None:
    """Which parts of a goal a measurement misses.

    Args:
        goal: the case's goal, or ``None`` if it has none.
        ratio: the measured median step-time ratio.
        memory_percent: the measured peak-memory increase in %.

    Returns:
        ``None`` without a goal; else the missed criteria (``"ratio"``, ``"memory"``), empty
        when the measurement is within the goal.

    Examples:
        >>> failed_goals(Goal(1.03), 1.05, 0.5)
        ['ratio']
    """
    if goal is None:
        return None
    failed = []
    if not ratio <= goal.max_ratio:
        failed.append("ratio")
    if goal.max_memory_percent is not None and not memory_percent <= goal.max_memory_percent:
        failed.append("memory")
    return failed


@dataclass(frozen=True)
class Case:
    """One comparison of the benchmark.

    Attributes:
        key: one-letter alias, ``a`` … ``s``.
        name: readable name, e.g. ``mlp-b256-adam``.
        workload: what both arms train.
        baseline: the arm the candidate is measured against (a key of `ARMS`).
        candidate: the arm measured.
        repeat_scale: timed pairs are ``repeats × repeat_scale`` (cheap, noisy steps get more).
    """

    key: str
    name: str
    workload: Workload
    baseline: str = "bare"
    candidate: str = "wrapped"
    repeat_scale: int = 1

    @property
    def goal(self) -> Goal | None:
        """The cost this case must stay within, if it has a limit."""
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
    Case("k", "rl-mlp64-b64-adam", RL_MLP64_B64_ADAM, repeat_scale=4),
    Case("l", "rl-mlp256-b256-adam", RL_MLP256_B256_ADAM, repeat_scale=4),
    Case("m", "rl-dqn-cnn-b32-adam", RL_DQN_CNN_B32_ADAM),
    Case("n", "reset-step-rl-mlp64-b64-adam", RL_MLP64_B64_ADAM, "wrapped", "resetting", 4),
    Case("o", "reset-step-rl-mlp256-b256-adam", RL_MLP256_B256_ADAM, "wrapped", "resetting", 4),
    Case("p", "reset-step-rl-dqn-cnn-b32-adam", RL_DQN_CNN_B32_ADAM, "wrapped", "resetting"),
    Case("q", f"rl-mlp64-b64-adam-every{RL_TRACK_EVERY}", RL_MLP64_B64_CYCLES, "bare", "sampled"),
    Case(
        "r", f"rl-mlp256-b256-adam-every{RL_TRACK_EVERY}", RL_MLP256_B256_CYCLES, "bare", "sampled"
    ),
    Case(
        "s", f"rl-dqn-cnn-b32-adam-every{RL_TRACK_EVERY}", RL_DQN_CNN_B32_CYCLES, "bare", "sampled"
    ),
)
"""Every case: the wrapper's cost on each workload (``a`` … ``f``), a step that resets (``g``),
`GXDReset.predicted_cost` (``h``), continual backprop's criterion through the same wrapper
(``i``, ``j``), and reinforcement-learning-sized networks: the wrapper's cost (``k`` … ``m``),
a step that resets against a wrapped step without (``n`` … ``p``), and the wrapper's cost
with ``track_every=16``, per cycle of 16 steps (``q`` … ``s``)."""

CASES_BY_NAME: Mapping[str, Case] = MappingProxyType({case.name: case for case in CASES})
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
        case = _BY_KEY.get(item) or CASES_BY_NAME.get(item)
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
        unknown = [name for name in self.cases if name not in CASES_BY_NAME]
        if unknown or not self.cases:
            raise ValueError(f"unknown or no cases {unknown}; known: {sorted(CASES_BY_NAME)}")
        for name, least in (("repeats", 1), ("warmup", 0), ("copies", 1), ("memory_steps", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be >= {least}, got {getattr(self, name)}")
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
