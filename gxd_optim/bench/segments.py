"""How a problem's data become segments, the points of a learning curve.

Two recipes:

* *online* (`online_segment`): every example seen once, in order, each batch scored before
  the step on it; the segment's performance is the mean of those scores.
* *tasks* (`task_segments`): several shuffled epochs on each task's training set; the
  segment's performance is the accuracy on the task's held-out set at its end.

Examples:
    >>> x, y = torch.arange(10.0)[:, None], torch.zeros(10, 1)
    >>> segment = online_segment(x, y, batch=4)
    >>> [len(inputs) for inputs, _ in segment.batches], segment.evaluate(torch.tensor([1.0, 2.0]))
    ([4, 4, 2], 1.5)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .metrics import accuracy, evaluating
from .streams import minibatches

__all__ = ["Batch", "Segment", "Task", "held_out_accuracy", "online_segment", "task_segments"]

Batch = tuple[Tensor, Tensor]
"""``(inputs, targets)``."""
PROBE_SIZE = 1000
"""Inputs of an online segment on which dormant units are counted."""


@dataclass(frozen=True)
class Segment:
    """One point of the learning curve.

    Attributes:
        batches: the training batches ``(inputs, targets)``, in order.
        evaluate: ``online -> performance``; ``online`` stacks the instance's online score of
            every batch (``None`` if the instance has none). Called after the last batch.
        probe: inputs on which dormant units are counted after the segment.
        held_out: data of the segment's task that it does not train on (a task's held-out
            set, or the first examples of an online segment, seen once), on which the
            controlled comparison measures the cost of resets (`gxd_optim.bench.cost`).
    """

    batches: Iterable[Batch]
    evaluate: Callable[[Tensor | None], float]
    probe: Tensor
    held_out: Batch


def _mean_online(online: Tensor | None) -> float:
    assert online is not None
    return float(online.mean())


def online_segment(inputs: Tensor, targets: Tensor, batch: int) -> Segment:
    """Every example once, in order, ``batch`` at a time, scored by the mean online score."""
    batches = (
        (inputs[i : i + batch], targets[i : i + batch]) for i in range(0, len(inputs), batch)
    )
    return Segment(
        batches, _mean_online, inputs[:PROBE_SIZE], (inputs[:PROBE_SIZE], targets[:PROBE_SIZE])
    )


@dataclass(frozen=True)
class Task:
    """The data of one task.

    Attributes:
        train: what the task trains on, every epoch.
        held_out: what the task's performance is measured on, at its end.
        probe: inputs on which dormant units are counted.
    """

    train: Batch
    held_out: Batch
    probe: Tensor


@torch.no_grad()
def held_out_accuracy(model: nn.Module, inputs: Tensor, labels: Tensor) -> float:
    """``model``'s accuracy in eval mode; its mode, buffers and the global RNG are restored."""
    with evaluating(model):
        return float(accuracy(model(inputs), labels))


def _epochs(data: Batch, epochs: int, batch: int, order: torch.Generator) -> Iterator[Batch]:
    inputs, targets = data
    for _ in range(epochs):
        for index in minibatches(len(inputs), batch, order):
            yield inputs[index], targets[index]


def _accuracy_at_end(model: nn.Module, held_out: Batch) -> Callable[[Tensor | None], float]:
    return lambda _: held_out_accuracy(model, *held_out)


def task_segments(
    model: nn.Module, tasks: Iterable[Task], epochs: int, batch: int, seed: int
) -> Iterator[Segment]:
    """One segment per task: ``epochs`` epochs of shuffled minibatches of its training set.

    Args:
        model: the network whose held-out accuracy each segment reports.
        tasks: the tasks, read one at a time as the segments are.
        epochs: passes over each task's training set.
        batch: minibatch size.
        seed: seed of the shuffles (one generator for all tasks).
    """
    order = torch.Generator().manual_seed(seed)
    for task in tasks:
        yield Segment(
            _epochs(task.train, epochs, batch, order),
            _accuracy_at_end(model, task.held_out),
            task.probe,
            task.held_out,
        )
