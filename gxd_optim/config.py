"""Validated hyperparameters of `gxd_optim.GXDReset`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .operator import STATE_POLICIES
from .utilities import CRITERIA, UTILITIES, Criterion, UtilityFn

__all__ = ["REFERENCES", "SELECTIONS", "Config"]

REFERENCES = ("mean", "zero")
"""Names accepted by ``GXDReset(reference=...)``."""

SELECTIONS = ("budget", "threshold")
"""Names accepted by ``GXDReset(selection=...)``."""

DEFAULT_THRESHOLD = 0.1
"""``τ`` of ``selection="threshold"`` when none is given."""

DEFAULT_INTERVAL = 1000
"""``F`` of ``selection="threshold"`` when none is given."""


@dataclass(frozen=True)
class Config:
    """The wrapper's hyperparameters, checked on construction.

    Raises:
        ValueError: a value outside its domain, or an unknown name.
        TypeError: a value of the wrong type.
    """

    utility: str | UtilityFn = "gxd"
    reference: str = "mean"
    replacement_rate: float = 3e-4
    maturity: int = 100
    decay: float = 0.99
    seed: int = 0
    state_policy: str = "mean_scale"
    selection: str = "budget"
    threshold: float | None = None
    interval: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.utility, str):
            if self.utility not in UTILITIES:
                raise ValueError(
                    f"unknown utility {self.utility!r}; expected one of {sorted(UTILITIES)} "
                    "or a callable fn(h, grad, reference) -> scores"
                )
        elif not callable(self.utility):
            raise TypeError(
                f"utility must be a name or a callable, got {type(self.utility).__name__}"
            )
        if self.reference not in REFERENCES:
            raise ValueError(f"unknown reference {self.reference!r}; expected one of {REFERENCES}")
        if self.state_policy not in STATE_POLICIES:
            raise ValueError(
                f"unknown state_policy {self.state_policy!r}; expected one of {STATE_POLICIES}"
            )
        _number("replacement_rate", self.replacement_rate)
        if not self.replacement_rate >= 0:
            raise ValueError(f"replacement_rate must be >= 0, got {self.replacement_rate}")
        _number("decay", self.decay)
        if not 0 <= self.decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        _integer("maturity", self.maturity)
        if self.maturity < 0:
            raise ValueError(f"maturity must be >= 0, got {self.maturity}")
        _integer("seed", self.seed)
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; expected one of {SELECTIONS}")
        if self.selection == "budget" and (self.threshold, self.interval) != (None, None):
            raise ValueError("threshold= and interval= apply only to selection='threshold'")
        if self.threshold is not None:
            _number("threshold", self.threshold)
            if self.threshold < 0:
                raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.interval is not None:
            _integer("interval", self.interval)
            if self.interval < 1:
                raise ValueError(f"interval must be >= 1, got {self.interval}")

    @property
    def tau(self) -> float:
        """The threshold ``τ`` of ``selection="threshold"`` (its default if none was given)."""
        return DEFAULT_THRESHOLD if self.threshold is None else float(self.threshold)

    @property
    def every(self) -> int:
        """The interval ``F`` of ``selection="threshold"`` (its default if none was given)."""
        return DEFAULT_INTERVAL if self.interval is None else self.interval

    @property
    def criterion(self) -> Criterion:
        """The criterion that ``utility`` names (or wraps, for a callable)."""
        if isinstance(self.utility, str):
            return CRITERIA[self.utility]
        return Criterion.custom(self.utility)

    @property
    def utility_name(self) -> str:
        """The utility's name (a callable's qualified name)."""
        if isinstance(self.utility, str):
            return self.utility
        return getattr(self.utility, "__qualname__", type(self.utility).__name__)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint (a callable utility by name)."""
        out = asdict(self)
        out["utility"] = self.utility_name
        return out


def _number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")


def _integer(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
