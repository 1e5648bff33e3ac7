"""Which units to reset: a fractional per-layer budget spent lowest utility first, or every
unit whose layer-normalised utility falls to a threshold."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import torch
from torch import Tensor

from .utilities import layer_normalised

__all__ = [
    "BudgetSelector",
    "Candidates",
    "ThresholdSelector",
    "accrue",
    "below",
    "lowest",
    "selector_for",
]


def accrue(budget: float, eligible: int, rate: float) -> float:
    """Add ``rate × eligible`` to a layer's fractional budget (continual-backprop style).

    Nothing accrues while no unit is eligible, so a young layer does not save up a burst of
    resets for the moment its units mature.

    Examples:
        >>> accrue(0.5, eligible=2000, rate=1e-4), accrue(0.5, eligible=0, rate=1e-4)
        (0.7, 0.5)
    """
    return budget + rate * eligible if eligible > 0 else budget


def lowest(utility: Tensor, eligible: Tensor | None, count: int) -> Tensor:
    """Indices of the ``count`` eligible units of lowest utility, sorted by index.

    Ties are broken by unit index, so the choice is deterministic; only eligible units are
    chosen, whatever their utility (NaN last). ``eligible`` is a mask, or ``None`` when every
    unit is eligible (no mask to build and apply).

    Examples:
        >>> lowest(torch.tensor([3.0, 1.0, 2.0, 0.5]), torch.tensor([True, True, True, False]), 2)
        tensor([1, 2])
        >>> lowest(torch.tensor([3.0, 1.0, 2.0, 0.5]), None, 2)
        tensor([1, 3])
    """
    if eligible is None:
        chosen = torch.argsort(utility, stable=True)[:count]
    else:
        candidates = torch.nonzero(eligible).flatten()
        order = torch.argsort(utility.index_select(0, candidates), stable=True)[:count]
        chosen = candidates.index_select(0, order)
    return chosen.sort().values if chosen.numel() > 1 else chosen


def below(normalised: Tensor, eligible: Tensor | None, threshold: float) -> Tensor:
    """Indices of the eligible units whose layer-normalised utility is ``<= threshold``
    (``eligible``: a mask, or ``None`` when every unit is).

    Examples:
        >>> below(torch.tensor([0.05, 1.2, 0.1, 0.0]), torch.tensor([True, True, True, False]), 0.1)
        tensor([0, 2])
    """
    chosen = normalised <= threshold
    return torch.nonzero(chosen if eligible is None else eligible & chosen).reshape(-1)


class Candidates(Protocol):
    """What a selector reads of the tracked layers (the tracker provides it)."""

    steps: int

    def eligible(self, name: str) -> int: ...

    def eligible_units(self, name: str) -> Tensor: ...

    def utilities(self, name: str) -> Tensor: ...


class BudgetSelector:
    """Each step adds ``rate × eligible`` to a layer's budget; whole units are spent on the
    eligible units of lowest utility (`accrue`, `lowest`).

    Attributes:
        rate: the replacement rate; 0 never resets.
        stride: optimizer steps per call of `choose` (``track_every``): each call accrues
            ``stride × rate × eligible``.
        budgets: the fractional budget per layer (absent: 0).

    Examples:
        >>> class Layers:
        ...     steps = 1
        ...     def eligible(self, name): return 4
        ...     def eligible_units(self, name): return torch.ones(4, dtype=torch.bool)
        ...     def utilities(self, name): return torch.tensor([3.0, 1.0, 2.0, 4.0])
        >>> selector = BudgetSelector(rate=0.375)  # 4 eligible units: 1.5 units per step
        >>> selector.choose("fc", Layers(), lambda: False), selector.budgets["fc"]
        (tensor([1]), 0.5)
    """

    def __init__(self, rate: float, stride: int = 1) -> None:
        self.rate, self.stride = rate, stride
        self.budgets: dict[str, float] = {}
        self._saved: dict[str, float] | None = None

    def choose(self, name: str, layers: Candidates, bad_step: Callable[[], bool]) -> Tensor | None:
        """Accrue, then spend whole units of the budget unless the step was bad."""
        if self.rate == 0:
            return None
        eligible = layers.eligible(name)
        budget = accrue(self.budgets.get(name, 0.0), eligible, self.rate * self.stride)
        self.budgets[name] = budget
        count = int(budget)
        if count < 1 or bad_step():
            return None
        self.budgets[name] = budget - count
        utility = layers.utilities(name)
        return lowest(utility, _mask(layers, name, eligible, utility), count)

    def begin(self) -> None:
        """Remember the budgets: a commit starts."""
        self._saved = dict(self.budgets)

    def rollback(self) -> None:
        """Put the budgets back as they were at `begin`: the step did not happen."""
        if self._saved is not None:
            self.budgets, self._saved = self._saved, None

    def finish(self) -> None:
        """The step went through."""
        self._saved = None

    def keep(self, names: Iterable[str]) -> None:
        """Forget the budgets of every layer but ``names``."""
        kept = set(names)
        self.budgets = {n: b for n, b in self.budgets.items() if n in kept}


class ThresholdSelector(BudgetSelector):
    """Every ``interval`` steps, every eligible unit whose utility divided by its layer's
    mean is ``<= threshold`` (as ReDo and GraMa do; `below`). It keeps no budget.

    With a ``stride`` of ``k`` (``track_every``) it chooses when a multiple of ``interval``
    lies among the ``k`` steps that the latest commit stands for.
    """

    def __init__(self, threshold: float, interval: int, stride: int = 1) -> None:
        super().__init__(rate=0.0, stride=stride)
        self.threshold, self.interval = threshold, interval

    def choose(self, name: str, layers: Candidates, bad_step: Callable[[], bool]) -> Tensor | None:
        """The units at or below the threshold, on the steps that are due."""
        due = layers.steps % self.interval < self.stride
        eligible = layers.eligible(name) if due else 0
        if not eligible or bad_step():
            return None
        utility = layers.utilities(name)
        mask = _mask(layers, name, eligible, utility)
        return below(layer_normalised(utility), mask, self.threshold)


def _mask(layers: Candidates, name: str, eligible: int, utility: Tensor) -> Tensor | None:
    """Which units of a layer are eligible, on the utilities' device; ``None`` if all are."""
    if eligible == utility.numel():
        return None
    return layers.eligible_units(name).to(utility.device)


def selector_for(
    selection: str, rate: float, threshold: float, interval: int, stride: int = 1
) -> BudgetSelector:
    """The selector that ``GXDReset(selection=...)`` names (``stride``: ``track_every``)."""
    if selection == "threshold":
        return ThresholdSelector(threshold, interval, stride)
    return BudgetSelector(rate, stride)
