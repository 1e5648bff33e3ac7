"""What `gxd_optim.GXDReset` is given, checked: its hyperparameters, optimizer and model."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .discovery import producer_modules
from .operator import STATE_POLICIES
from .selection import BudgetSelector, selector_for
from .sharded import refuse_unsupported
from .utilities import CRITERIA, UTILITIES, Criterion, UtilityFn, probe

__all__ = ["REFERENCES", "SELECTIONS", "Config", "check_wrap", "optimizer_params"]

REFERENCES = ("mean", "zero")
"""Names accepted by ``GXDReset(reference=...)``."""

SELECTIONS = ("budget", "threshold")
"""Names accepted by ``GXDReset(selection=...)``."""

DEFAULT_THRESHOLD = 0.1
"""``τ`` of ``selection="threshold"`` when none is given."""

DEFAULT_INTERVAL = 1000
"""``F`` of ``selection="threshold"`` when none is given."""

MAX_STEPS = 2**62
"""The largest ``maturity``, ``interval`` and ``track_every``: unit ages are counted in 64-bit
integers."""


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
    track_every: int = 1

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
        else:
            probe(self.utility)
        if self.reference not in REFERENCES:
            raise ValueError(f"unknown reference {self.reference!r}; expected one of {REFERENCES}")
        if self.state_policy not in STATE_POLICIES:
            raise ValueError(
                f"unknown state_policy {self.state_policy!r}; expected one of {STATE_POLICIES}"
            )
        self._set("replacement_rate", _number("replacement_rate", self.replacement_rate))
        if not 0 <= self.replacement_rate <= 1:
            raise ValueError(
                f"replacement_rate must be in [0, 1] (a fraction of the eligible units per "
                f"step), got {self.replacement_rate}"
            )
        self._set("decay", _number("decay", self.decay))
        if not 0 <= self.decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        self._set("maturity", _integer("maturity", self.maturity))
        if not 0 <= self.maturity <= MAX_STEPS:
            raise ValueError(f"maturity must be in [0, 2**62], got {self.maturity}")
        self._set("seed", _integer("seed", self.seed))
        if not -(2**63) <= self.seed < 2**64:
            raise ValueError(f"seed must fit in 64 bits, got {self.seed}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; expected one of {SELECTIONS}")
        if self.selection == "budget" and (self.threshold, self.interval) != (None, None):
            raise ValueError("threshold= and interval= apply only to selection='threshold'")
        if self.threshold is not None:
            self._set("threshold", _number("threshold", self.threshold))
            if self.threshold < 0:
                raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.interval is not None:
            self._set("interval", _integer("interval", self.interval))
            if not 1 <= self.interval <= MAX_STEPS:
                raise ValueError(f"interval must be in [1, 2**62], got {self.interval}")
        self._set("track_every", _integer("track_every", self.track_every))
        if not 1 <= self.track_every <= MAX_STEPS:
            raise ValueError(f"track_every must be in [1, 2**62], got {self.track_every}")

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def selector(self) -> BudgetSelector:
        """A new selector for these settings (the threshold's defaults where none was given)."""
        return selector_for(
            self.selection,
            self.replacement_rate,
            DEFAULT_THRESHOLD if self.threshold is None else float(self.threshold),
            DEFAULT_INTERVAL if self.interval is None else self.interval,
            self.track_every,
        )

    @property
    def criterion(self) -> Criterion:
        """The criterion that ``utility`` names (or wraps, for a callable)."""
        if isinstance(self.utility, str):
            return CRITERIA[self.utility]
        return Criterion.of(self.utility)

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


def _scalar(value: object) -> object:
    """A one-element tensor (a 0-d tensor, say) as a Python number; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        return value.item()
    return value


def _number(name: str, value: object) -> float:
    """``value`` as a float: any finite real number (numpy scalars and 0-d tensors too)."""
    value = _scalar(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
    ):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _integer(name: str, value: object) -> int:
    """``value`` as an int: any integer (numpy integers and 0-d integer tensors too)."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters an optimizer holds."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def check_wrap(optimizer: object, model: object, exclude: Iterable[str] | str) -> tuple[str, ...]:
    """Refuse what cannot be wrapped, before anything changes; return ``exclude`` as a tuple.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``, or ``model`` is not an
            ``nn.Module``.
        ValueError: the model has no Linear/Conv layer, the optimizer holds none of its
            parameters, or ``exclude`` names a layer that is not one.
        NotImplementedError: sharded setups GXDReset cannot reset (FSDP1, tensor-parallel
            DTensors, FSDP2 with CPU offloading, ``ZeroRedundancyOptimizer`` overlapped with
            DDP; see `gxd_optim.sharded.refuse_unsupported`).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _refuse_sharded(optimizer, model)
    modules = producer_modules(model)
    if not modules:
        raise ValueError(
            "the model has no Linear or Conv1d/2d/3d layer: GXDReset has no unit to reset"
        )
    owned = {id(p) for p in optimizer_params(optimizer)}
    if not any(id(p) in owned for p in model.parameters()):
        raise ValueError("the optimizer holds none of the model's parameters")
    names = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(
            f"exclude= names {unknown} that are not Linear/Conv layers; known: {sorted(modules)}"
        )
    return names


def _refuse_sharded(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Refuse the sharded setups a reset cannot write correctly (`sharded.refuse_unsupported`):
    FSDP1, DTensors outside FSDP2's layout, CPU offloading, ZeRO overlapped with DDP."""
    refuse_unsupported(optimizer, model)
