"""The two sides of every overhead case: the bare optimizer, or `GXDReset` doing one thing.

Examples:
    >>> sorted(ARMS)
    ['bare', 'contribution', 'predicted-cost', 'resetting', 'sampled', 'wrapped']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ... import GXDReset
from .cases import Batch, Workload

__all__ = ["ARMS", "NO_RESET_MATURITY", "Arm", "copies_report"]

NO_RESET_MATURITY = 10**9
"""``maturity`` of the arms that must not reset: no unit gets old enough during a run."""

ARMS: Mapping[str, str] = MappingProxyType(
    {
        "bare": "the plain optimizer: one training step per call",
        "wrapped": (
            "GXDReset(optimizer, model) with default settings except "
            f"maturity={NO_RESET_MATURITY} (no reset can happen): one training step per call"
        ),
        "resetting": (
            "GXDReset(optimizer, model, maturity=0, replacement_rate=the workload's reset_rate): "
            "one training step per call, each resetting whole units in every layer (one per "
            "step in the narrowest: one per 2000-unit layer for the large MLP)"
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
        "sampled": (
            f"GXDReset(optimizer, model, track_every=k, maturity={NO_RESET_MATURITY}) with k "
            "the workload's steps per call: statistics collected on the first step of each call"
        ),
    }
)
"""What each kind of arm does per call."""

_WRAPPER_SETTINGS: Mapping[str, dict[str, Any]] = MappingProxyType(
    {
        "wrapped": {"maturity": NO_RESET_MATURITY},
        "resetting": {"maturity": 0},  # and the workload's reset_rate
        "predicted-cost": {"maturity": NO_RESET_MATURITY},
        "contribution": {"maturity": NO_RESET_MATURITY, "utility": "contribution"},
        "sampled": {"maturity": NO_RESET_MATURITY},  # and the workload's steps per call
    }
)


class Arm:
    """One side of a comparison, on its own copy of the workload's model.

    Args:
        kind: a key of `ARMS`.
        workload: what to train.
        batches: the batches to train on (call ``i`` reads ``batches[i % len(batches)]``).
        device: where the model lives.
    """

    def __init__(
        self, kind: str, workload: Workload, batches: Sequence[Batch], device: torch.device
    ) -> None:
        if kind not in ARMS:
            raise ValueError(f"unknown arm {kind!r}; expected one of {sorted(ARMS)}")
        self.kind = kind
        self.workload = workload
        self.batches = batches
        self.model = workload.model().to(device)
        inner = workload.optimizer(self.model.parameters())
        settings = dict(_WRAPPER_SETTINGS.get(kind, {}))
        if kind == "resetting":
            settings["replacement_rate"] = workload.reset_rate
        if kind == "sampled":
            settings["track_every"] = workload.steps
        self.wrapper = GXDReset(inner, self.model, **settings) if kind != "bare" else None
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
        loss = self.workload.loss(self.model(x), y)
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
        """The arm's unit of work: the workload's training steps per call (from batch
        ``i × steps`` on), or the predicted-cost queries."""
        if self.kind == "predicted-cost":
            self.predicted_costs()
            return
        steps = self.workload.steps
        for j in range(i * steps, (i + 1) * steps):
            self.train_step(j)

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
