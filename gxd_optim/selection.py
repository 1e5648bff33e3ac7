"""Which units to reset: a fractional per-layer budget spent lowest utility first, or every
unit whose layer-normalised utility falls to a threshold."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["accrue", "below", "lowest"]


def accrue(budget: float, eligible: int, rate: float) -> float:
    """Add ``rate × eligible`` to a layer's fractional budget (continual-backprop style).

    Nothing accrues while no unit is eligible, so a young layer does not save up a burst of
    resets for the moment its units mature.

    Example:
        >>> accrue(0.5, eligible=2000, rate=1e-4), accrue(0.5, eligible=0, rate=1e-4)
        (0.7, 0.5)
    """
    return budget + rate * eligible if eligible > 0 else budget


def lowest(utility: Tensor, eligible: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` eligible units of lowest utility, sorted by index.

    Ties are broken by unit index, so the choice is deterministic.

    Example:
        >>> lowest(torch.tensor([3.0, 1.0, 2.0, 0.5]), torch.tensor([True, True, True, False]), 2)
        tensor([1, 2])
    """
    masked = torch.where(eligible, utility, torch.full_like(utility, float("inf")))
    order = torch.argsort(masked, stable=True)
    return order[: min(count, int(eligible.sum()))].sort().values


def below(normalised: Tensor, eligible: Tensor, threshold: float) -> Tensor:
    """Indices of the eligible units whose layer-normalised utility is ``<= threshold``.

    Example:
        >>> below(torch.tensor([0.05, 1.2, 0.1, 0.0]), torch.tensor([True, True, True, False]), 0.1)
        tensor([0, 2])
    """
    return torch.nonzero(eligible & (normalised <= threshold)).reshape(-1)
