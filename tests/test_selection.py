"""The selectors' shortcut for layers whose units are all eligible: no mask is built, and the
same units are chosen as with a mask of every unit."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from gxd_optim.selection import BudgetSelector, ThresholdSelector, below, lowest

utilities = st.lists(
    st.one_of(st.sampled_from([0.0, 0.5, 1.0, float("nan"), float("inf")]), st.floats(0, 2)),
    min_size=1,
    max_size=12,
)


@given(values=utilities, count=st.integers(0, 14), threshold=st.floats(0, 2))
def test_no_mask_chooses_what_a_mask_of_every_unit_chooses(
    values: list[float], count: int, threshold: float
) -> None:
    """Ties, NaN and infinite utilities included."""
    utility = torch.tensor(values)
    every = torch.ones(len(values), dtype=torch.bool)
    assert torch.equal(lowest(utility, None, count), lowest(utility, every, count))
    assert torch.equal(below(utility, None, threshold), below(utility, every, threshold))


class _Layers:
    """Candidates with every unit eligible, or all but the one of lowest utility."""

    def __init__(self, utility: Tensor, all_eligible: bool) -> None:
        self.steps = 4
        self.utility = utility
        self.mask = torch.ones(len(utility), dtype=torch.bool)
        self.mask[int(utility.argmin())] = all_eligible
        self.masks_read = 0

    def eligible(self, name: str) -> int:
        return int(self.mask.sum())

    def eligible_units(self, name: str) -> Tensor:
        self.masks_read += 1
        return self.mask

    def utilities(self, name: str) -> Tensor:
        return self.utility


@pytest.mark.parametrize("all_eligible", [True, False], ids=["all-eligible", "one-young"])
def test_selectors_read_the_eligibility_mask_only_where_a_unit_is_not_eligible(
    all_eligible: bool,
) -> None:
    utility = torch.tensor([0.3, 0.1, 0.2, 0.0, 0.4])
    for selector in (BudgetSelector(rate=0.5), ThresholdSelector(threshold=0.5, interval=2)):
        layers = _Layers(utility, all_eligible)
        chosen = selector.choose("fc", layers, lambda: False)
        assert chosen is not None
        expected = {True: [1, 3], False: [1, 2]}[all_eligible]  # 2 units of the budget
        if isinstance(selector, ThresholdSelector):  # at most half the layer's mean
            expected = {True: [1, 3], False: [1]}[all_eligible]
        assert chosen.tolist() == expected
        assert layers.masks_read == (0 if all_eligible else 1)


@given(
    values=utilities,
    mask=st.lists(st.booleans(), min_size=12, max_size=12),
    count=st.integers(1, 14),
)
def test_lowest_chooses_only_eligible_units_whatever_their_utility(
    values: list[float], mask: list[bool], count: int
) -> None:
    """The eligible units of lowest utility (NaN last, ties by index), never another, even
    where an eligible unit's utility is +inf or NaN."""
    utility = torch.tensor(values)
    eligible = torch.tensor(mask[: len(values)])
    candidates = [i for i in range(len(values)) if mask[i]]
    nan_last = [(1, 0.0) if math.isnan(v) else (0, v) for v in values]
    ranked = sorted(candidates, key=lambda i: (*nan_last[i], i))
    expected = sorted(ranked[:count])
    assert lowest(utility, eligible, count).tolist() == expected
