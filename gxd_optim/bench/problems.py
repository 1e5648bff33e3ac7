"""The benchmark problems: each builds a model, an optimizer and a stream of segments.

A *segment* is one point of a learning curve: a bin of examples (bit-flipping) or a task.
The runner trains on every batch of a segment, then reads the segment's performance and the
fraction of dormant units on its probe inputs. Every problem is a pure function of its
settings and a seed; nothing is downloaded (MNIST and CIFAR-10 are read from ``data_dir``).

The segments come from one of two recipes (`gxd_optim.bench.segments`).

Problems (`PROBLEMS`; ``python -m gxd_optim.bench list`` describes each): ``bitflip``
(Dohare et al. 2024), ``memorisation``, ``digits``, ``mnist`` (local IDX files), ``cnn``
(generated images or local CIFAR-10) and ``cartpole`` (`gxd_optim.bench.control`). Every one
has an ``activation`` setting for its hidden units (``relu`` by default; the names of
`gxd_optim.bench.models.ACTIVATIONS`).

Examples:
    >>> settings = PROBLEMS["bitflip"].settings(quick=True)
    >>> settings.segments, settings.steps_per_segment
    (4, 1000)
    >>> instance = PROBLEMS["bitflip"].build(settings, 0, torch.device("cpu"), None)
    >>> x, y = next(iter(next(instance.segments).batches))
    >>> x.shape, y.shape
    (torch.Size([1, 20]), torch.Size([1, 1]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .control import CartPoleSettings, dqn_on_cartpole, td_loss
from .datasets import cifar10_class_pairs, load_digits, load_mnist
from .metrics import accuracy
from .models import check_activation, conv_net, mlp
from .segments import Segment, Task, online_segment, task_segments
from .settings import apply_overrides, check_positive
from .streams import BitFlipStream, LTUTarget, permutations, prototype_tasks, random_label_data

__all__ = [
    "PROBLEMS",
    "BitFlipSettings",
    "CNNSettings",
    "DigitsSettings",
    "Instance",
    "MNISTSettings",
    "MemorisationSettings",
    "Problem",
    "Segment",
]


@dataclass
class Instance:
    """One seeded problem, ready to train.

    Attributes:
        model: the network (on the requested device).
        optimizer: the bare optimizer over its parameters.
        loss: ``(output, target) -> scalar`` training loss.
        segments: the segments, produced lazily.
        online: ``(output, target) -> 0-d tensor`` score of a batch read before the step on
            it (online performance), or ``None`` where the segment evaluates otherwise.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[Tensor, Tensor], Tensor]
    segments: Iterator[Segment]
    online: Callable[[Tensor, Tensor], Tensor] | None = None


@dataclass(frozen=True)
class Problem:
    """A registered benchmark problem.

    Attributes:
        name: the command-line name.
        summary: one line for ``list``.
        metric: what ``performance`` is (e.g. ``"squared error"``).
        higher_is_better: whether a larger performance is better.
        axis: label of the learning curve's x axis (the segment's unit).
        settings_type: the settings dataclass; its defaults are the full scale.
        quick: overrides of ``--quick`` (a scale for tests and CI).
        builder: ``(settings, seed, device, data_dir) -> Instance``.
        data: what it does with ``--data-dir``.
    """

    name: str
    summary: str
    metric: str
    higher_is_better: bool
    axis: str
    settings_type: type[Any]
    quick: Mapping[str, Any]
    builder: Callable[[Any, int, torch.device, Path | None], Instance]
    data: Literal["none", "optional", "required"] = "none"

    def settings(
        self, quick: bool = False, overrides: Mapping[str, str] = MappingProxyType({})
    ) -> Any:
        """The settings at full or quick scale, with ``KEY=VALUE`` overrides applied.

        Raises:
            ValueError: an unknown setting, a value of the wrong type, or values out of range
                (see `apply_overrides`).
        """
        base = self.settings_type(**(self.quick if quick else {}))
        return apply_overrides(base, overrides)

    def build(
        self, settings: Any, seed: int, device: torch.device, data_dir: Path | None
    ) -> Instance:
        """The seeded instance.

        Raises:
            ValueError: the problem needs ``data_dir`` and none was given.
        """
        if self.data == "required" and data_dir is None:
            raise ValueError(f"problem {self.name!r} reads local files: pass --data-dir")
        return self.builder(settings, seed, device, data_dir if self.data != "none" else None)


class _Tasks:
    """Settings whose segments are tasks; every number must be positive."""

    tasks: int
    activation: str

    def __post_init__(self) -> None:
        check_positive(self, unchecked=("noise",))
        check_activation(self.activation)

    @property
    def segments(self) -> int:
        """Tasks."""
        return self.tasks


class _EpochSettings(Protocol):
    @property
    def epochs(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def lr(self) -> float: ...


def _epoch_steps(epochs: int, examples: int, batch: int) -> int:
    return epochs * -(-examples // batch)


def _adam_on_tasks(
    model: nn.Module, tasks: Iterable[Task], s: _EpochSettings, seed: int
) -> Instance:
    """Adam and cross-entropy on each task for ``s.epochs`` epochs, shuffled from ``seed + 1``."""
    return Instance(
        model,
        torch.optim.Adam(model.parameters(), lr=s.lr),
        F.cross_entropy,
        task_segments(model, tasks, s.epochs, s.batch, seed + 1),
    )


@dataclass(frozen=True)
class BitFlipSettings:
    """Slowly-changing regression; defaults are the paper's (Dohare et al. 2024)."""

    examples: int = 1_000_000
    bin: int = 20_000
    flip_after: int = 10_000
    inputs: int = 20
    flipping: int = 15
    target_features: int = 100
    beta: float = 0.7
    hidden: int = 5
    lr: float = 0.01
    batch: int = 1
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_positive(self, unchecked=("noise",))
        check_activation(self.activation)
        if self.examples % self.bin or self.bin % self.batch:
            raise ValueError("examples must be a multiple of bin, and bin of batch")

    @property
    def segments(self) -> int:
        """Bins."""
        return self.examples // self.bin

    @property
    def steps_per_segment(self) -> int:
        """Optimizer steps per bin."""
        return self.bin // self.batch


def _bitflip(s: BitFlipSettings, seed: int, device: torch.device, _: Path | None) -> Instance:
    target = LTUTarget.draw(seed, s.inputs, s.target_features, s.beta)
    stream = BitFlipStream(seed + 1, s.inputs, s.flipping, s.flip_after)
    model = mlp((s.inputs, s.hidden, 1), seed, s.activation).to(device)

    def segments() -> Iterator[Segment]:
        for _ in range(s.segments):
            x = stream.take(s.bin)
            yield online_segment(x.to(device), target(x).to(device), s.batch)

    return Instance(
        model,
        torch.optim.SGD(model.parameters(), lr=s.lr),
        F.mse_loss,
        segments(),
        online=lambda output, target: F.mse_loss(output, target),
    )


@dataclass(frozen=True)
class MNISTSettings(_Tasks):
    """Online permuted MNIST (read from ``--data-dir``): every example seen once per task."""

    tasks: int = 50
    examples: int = 60_000
    batch: int = 16
    hidden: tuple[int, ...] = (256, 256, 256)
    lr: float = 0.01
    activation: str = "relu"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.examples % self.batch:
            raise ValueError("examples must be a multiple of batch")

    @property
    def steps_per_segment(self) -> int:
        """SGD steps per task."""
        return self.examples // self.batch


def _mnist(s: MNISTSettings, seed: int, device: torch.device, data_dir: Path | None) -> Instance:
    assert data_dir is not None
    inputs, labels = load_mnist(data_dir, "train")
    if s.examples > len(inputs):
        raise ValueError(f"examples={s.examples} but {data_dir} holds {len(inputs)} images")
    inputs, labels = inputs.to(device), labels.to(device)
    model = mlp((inputs.shape[1], *s.hidden, 10), seed, s.activation).to(device)
    perms = permutations(s.tasks, inputs.shape[1], seed + 2).to(device)
    order = torch.Generator().manual_seed(seed + 1)

    def segments() -> Iterator[Segment]:
        for p in perms:
            pick = torch.randperm(len(inputs), generator=order)[: s.examples].to(device)
            yield online_segment(inputs[pick][:, p], labels[pick], s.batch)

    return Instance(
        model,
        torch.optim.SGD(model.parameters(), lr=s.lr),
        F.cross_entropy,
        segments(),
        online=accuracy,
    )


@dataclass(frozen=True)
class MemorisationSettings(_Tasks):
    """Random-label memorisation; ``examples/continual_demo.py`` runs it with 45 tasks."""

    tasks: int = 60
    samples: int = 1000
    input_dim: int = 32
    classes: int = 10
    width: int = 128
    depth: int = 2
    epochs: int = 100
    batch: int = 100
    lr: float = 1e-3
    activation: str = "relu"

    @property
    def steps_per_segment(self) -> int:
        """Adam steps per task."""
        return _epoch_steps(self.epochs, self.samples, self.batch)


def _memorisation(
    s: MemorisationSettings, seed: int, device: torch.device, _: Path | None
) -> Instance:
    inputs, labels = random_label_data(s.samples, s.input_dim, s.classes, s.tasks, seed)
    inputs, labels = inputs.to(device), labels.to(device)
    model = mlp((s.input_dim, *[s.width] * s.depth, s.classes), seed, s.activation).to(device)
    return _adam_on_tasks(model, (Task((inputs, y), (inputs, y), inputs) for y in labels), s, seed)


@dataclass(frozen=True)
class DigitsSettings(_Tasks):
    """Permuted scikit-learn digits."""

    tasks: int = 50
    epochs: int = 5
    batch: int = 16
    hidden: tuple[int, ...] = (128, 128)
    lr: float = 1e-3
    test_fraction: float = 0.2
    activation: str = "relu"

    @property
    def steps_per_segment(self) -> int:
        """Adam steps per task."""
        return _epoch_steps(self.epochs, 1797 - int(1797 * self.test_fraction), self.batch)


def _digits(s: DigitsSettings, seed: int, device: torch.device, _: Path | None) -> Instance:
    inputs, labels = load_digits()
    split = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    test = int(len(inputs) * s.test_fraction)
    train_x, train_y = inputs[split[test:]].to(device), labels[split[test:]].to(device)
    test_x, test_y = inputs[split[:test]].to(device), labels[split[:test]].to(device)
    model = mlp((64, *s.hidden, 10), seed, s.activation).to(device)
    perms = permutations(s.tasks, 64, seed + 2).to(device)

    def tasks() -> Iterator[Task]:
        for p in perms:
            x = train_x[:, p]
            yield Task((x, train_y), (test_x[:, p], test_y), x)

    return _adam_on_tasks(model, tasks(), s, seed)


@dataclass(frozen=True)
class CNNSettings(_Tasks):
    """Binary image tasks for a small CNN (generated, or CIFAR-10 from ``--data-dir``)."""

    tasks: int = 40
    train: int = 640
    test: int = 200
    epochs: int = 5
    batch: int = 32
    channels: tuple[int, ...] = (16, 32)
    image_size: int = 16
    noise: float = 1.0
    lr: float = 1e-3
    activation: str = "relu"

    @property
    def steps_per_segment(self) -> int:
        """Adam steps per task."""
        return _epoch_steps(self.epochs, self.train, self.batch)


def _cnn(s: CNNSettings, seed: int, device: torch.device, data_dir: Path | None) -> Instance:
    size = 32 if data_dir is not None else s.image_size
    model = conv_net(s.channels, 2, seed, image_size=size, activation=s.activation).to(device)
    generator = torch.Generator().manual_seed(seed + 3)
    images = (
        cifar10_class_pairs(data_dir, s.tasks, (s.train, s.test), seed, generator)
        if data_dir is not None
        else prototype_tasks(s.tasks, (s.train, s.test), s.image_size, s.noise, generator)
    )

    def tasks() -> Iterator[Task]:
        for x, y, xt, yt in images:
            x = x.to(device)
            yield Task((x, y.to(device)), (xt.to(device), yt.to(device)), x[:256])

    return _adam_on_tasks(model, tasks(), s, seed)


def _cartpole(s: CartPoleSettings, seed: int, device: torch.device, _: Path | None) -> Instance:
    model, optimizer, segments = dqn_on_cartpole(s, seed, device)
    return Instance(model, optimizer, td_loss, segments)


PROBLEMS: Mapping[str, Problem] = MappingProxyType(
    {
        p.name: p
        for p in (
            Problem(
                "bitflip",
                "slowly-changing regression (Dohare et al. 2024): 20-5-1 net, SGD, batch 1",
                "squared error",
                False,
                "examples",
                BitFlipSettings,
                {"examples": 4000, "bin": 1000, "flip_after": 500},
                _bitflip,
            ),
            Problem(
                "memorisation",
                "random-label memorisation: fixed inputs, new labels per task, MLP, Adam",
                "training accuracy",
                True,
                "task",
                MemorisationSettings,
                {"tasks": 3, "samples": 128, "input_dim": 8, "width": 16, "epochs": 5, "batch": 32},
                _memorisation,
            ),
            Problem(
                "digits",
                "permuted scikit-learn digits: new pixel permutation per task, MLP, Adam",
                "held-out accuracy",
                True,
                "task",
                DigitsSettings,
                {"tasks": 3, "epochs": 1, "batch": 64, "hidden": (16,)},
                _digits,
            ),
            Problem(
                "mnist",
                "online permuted MNIST from local IDX files (--data-dir), MLP, SGD",
                "online accuracy",
                True,
                "task",
                MNISTSettings,
                {"tasks": 2, "examples": 64, "hidden": (16,)},
                _mnist,
                data="required",
            ),
            Problem(
                "cnn",
                "binary image tasks (generated or CIFAR-10 in --data-dir), conv-BN-act-pool CNN",
                "held-out accuracy",
                True,
                "task",
                CNNSettings,
                {"tasks": 3, "train": 64, "test": 32, "epochs": 1, "channels": (4, 8)},
                _cnn,
                data="optional",
            ),
            Problem(
                "cartpole",
                "DQN on CartPole, a new observation map (permutation, signs) per task, MLP, Adam",
                "return (last 10 episodes)",
                True,
                "task",
                CartPoleSettings,
                {"tasks": 2, "steps": 200, "warmup": 100, "buffer": 1000, "batch": 16},
                _cartpole,
            ),
        )
    }
)
"""The problems by name."""
