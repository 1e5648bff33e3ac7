"""The pure reset functions on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gxd_optim.operator import (
    clear_state_slices_,
    fold_and_zero_inputs_,
    reinit_units_,
    reset_norm_entries_,
    unit_columns,
)
from gxd_optim.selection import accrue, lowest
from gxd_optim.utilities import gxd


def test_unit_columns_maps_units_to_their_flattened_columns() -> None:
    assert unit_columns(torch.tensor([0, 2]), 3).tolist() == [0, 1, 2, 6, 7, 8]
    assert unit_columns(torch.tensor([1]), 1).tolist() == [1]


def test_reinit_writes_in_place_within_the_default_bound_and_only_the_chosen_rows() -> None:
    layer = nn.Conv2d(3, 4, 2)
    weight, bias = layer.weight, layer.bias
    before_w, before_b = weight.detach().clone(), bias.detach().clone()
    reinit_units_(weight, bias, torch.tensor([1, 3]), torch.Generator().manual_seed(0))
    assert layer.weight is weight and layer.bias is bias
    bound = 1 / math.sqrt(3 * 2 * 2)
    for row in (1, 3):
        assert not torch.equal(weight[row], before_w[row])
        assert weight[row].abs().max() <= bound and abs(float(bias[row])) <= bound
    for row in (0, 2):
        assert torch.equal(weight[row], before_w[row]) and bias[row] == before_b[row]


def test_reinit_is_reproducible_from_the_generator() -> None:
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    for layer in (a, b):
        reinit_units_(
            layer.weight, layer.bias, torch.tensor([0, 2]), torch.Generator().manual_seed(7)
        )
    assert torch.equal(a.weight[[0, 2]], b.weight[[0, 2]])
    assert torch.equal(a.bias[[0, 2]], b.bias[[0, 2]])


def test_fold_substitutes_the_reference_exactly_for_linear() -> None:
    layer = nn.Linear(4, 2).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    r = torch.tensor([0.5, -2.0], dtype=torch.float64)
    columns = torch.tensor([1, 3])
    expected = layer(x.index_copy(1, columns, r.expand(5, 2)))
    fold_and_zero_inputs_(layer.weight, layer.bias, columns, r)
    assert torch.equal(layer.weight[:, columns], torch.zeros(2, 2, dtype=torch.float64))
    torch.testing.assert_close(layer(x), expected)


def test_fold_substitutes_the_reference_exactly_for_a_valid_convolution() -> None:
    conv = nn.Conv2d(3, 2, 3).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    substituted = x.clone()
    substituted[:, 1] = 0.7
    expected = conv(substituted)
    fold_and_zero_inputs_(conv.weight, conv.bias, torch.tensor([1]), torch.tensor([0.7]))
    torch.testing.assert_close(conv(x), expected)


def test_fold_without_bias_refuses_a_reference() -> None:
    layer = nn.Linear(3, 2, bias=False)
    with pytest.raises(ValueError, match="bias"):
        fold_and_zero_inputs_(layer.weight, None, torch.tensor([0]), torch.tensor([1.0]))


def test_zero_reference_only_zeroes() -> None:
    layer = nn.Linear(3, 2)
    bias = layer.bias.detach().clone()
    fold_and_zero_inputs_(layer.weight, layer.bias, torch.tensor([2]), None)
    assert torch.equal(layer.bias, bias) and bool((layer.weight[:, 2] == 0).all())


def test_batchnorm_entries_restored() -> None:
    bn = nn.BatchNorm1d(3)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.fill_(5.0)
    reset_norm_entries_(bn, torch.tensor([1]))
    assert bn.weight.tolist() == [5, 1, 5] and bn.bias.tolist() == [5, 0, 5]
    assert bn.running_mean.tolist() == [5, 0, 5] and bn.running_var.tolist() == [5, 1, 5]


@pytest.mark.parametrize("policy", ["zero", "mean_scale"])
def test_state_policies(policy: str) -> None:
    param = torch.zeros(3, 2)
    state = {
        "step": torch.tensor(10.0),
        "exp_avg": torch.full((3, 2), 2.0),
        "exp_avg_sq": torch.tensor([[1.0, 3.0], [9.0, 9.0], [5.0, 7.0]]),
    }
    clear_state_slices_(state, param, 0, torch.tensor([1]), policy)
    assert float(state["step"]) == 10.0
    assert state["exp_avg"][1].tolist() == [0, 0] and state["exp_avg"][0].tolist() == [2, 2]
    expected = 0.0 if policy == "zero" else 4.0  # mean of the untouched rows 1, 3, 5, 7
    assert state["exp_avg_sq"][1].tolist() == [expected, expected]
    assert state["exp_avg_sq"][2].tolist() == [5, 7]


def test_state_policy_columns() -> None:
    param = torch.zeros(2, 3)
    state = {"momentum_buffer": torch.ones(2, 3)}
    clear_state_slices_(state, param, 1, torch.tensor([0, 2]), "zero")
    assert state["momentum_buffer"].tolist() == [[0, 1, 0], [0, 1, 0]]


def test_unknown_state_policy() -> None:
    with pytest.raises(ValueError, match="state_policy"):
        clear_state_slices_({}, torch.zeros(1), 0, torch.tensor([0]), "nope")


def test_gxd_on_a_hand_computed_example() -> None:
    h = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])
    g = torch.tensor([[[0.5, -1.0], [1.0, 1.0]]])
    # unit 0: 0.5*(1-1) + -1*(3-1) = -2; unit 1: 1*(2-0) + 1*(2-0) = 4
    assert gxd(h, g, torch.tensor([1.0, 0.0])).tolist() == [[-2.0, 4.0]]


def test_budget_accrues_only_with_eligible_units_and_lowest_are_chosen() -> None:
    assert accrue(0.5, 0, 0.1) == 0.5
    assert accrue(0.5, 10, 0.1) == pytest.approx(1.5)
    util = torch.tensor([0.3, 0.1, 0.1, 0.0])
    eligible = torch.tensor([True, True, True, False])
    assert lowest(util, eligible, 2).tolist() == [1, 2]
    assert lowest(util, eligible, 9).tolist() == [0, 1, 2]


@settings(deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data())
def test_a_second_moment_is_refilled_with_the_mean_of_its_untouched_entries(
    shape: list[int], data: st.DataObject
) -> None:
    """``mean_scale``: each touched slice of a second moment holds the mean of the entries
    outside the touched slices (summed in float64), a first moment is zeroed, and nothing
    else changes."""
    dim = data.draw(st.integers(0, len(shape) - 1))
    index = sorted(data.draw(st.sets(st.integers(0, shape[dim] - 1), min_size=1)))
    second = torch.rand(shape) * 10
    state = {"exp_avg": torch.ones(shape), "exp_avg_sq": second.clone()}
    clear_state_slices_(state, torch.zeros(shape), dim, torch.tensor(index), "mean_scale")
    view = [1] * len(shape)
    view[dim] = shape[dim]
    touched = torch.zeros(shape[dim], dtype=torch.bool)
    touched[index] = True
    touched = touched.view(view).expand(shape)
    rest = second[~touched].double()
    fill = float(rest.sum()) / rest.numel() if rest.numel() else 0.0
    after = state["exp_avg_sq"]
    assert torch.equal(after[~touched], second[~touched])
    torch.testing.assert_close(after[touched], torch.full_like(after[touched], fill))
    assert not bool(state["exp_avg"][touched].any()) and bool(state["exp_avg"][~touched].all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("std", [None, 0.02])
def test_one_unit_is_drawn_straight_into_its_row_as_several_are_drawn(
    dtype: torch.dtype, std: float | None
) -> None:
    """A single unit's new weights and bias, drawn into the parameter's own row, are the
    numbers the generator gives for a separate draw of that row, and within the bound."""
    layer = nn.Linear(6, 4).to(dtype)
    reinit_units_(
        layer.weight, layer.bias, torch.tensor([2]), torch.Generator().manual_seed(3), std
    )
    generator = torch.Generator().manual_seed(3)
    expected = torch.empty(1, 6, dtype=dtype)
    expected_bias = torch.empty(1, dtype=dtype)
    if std is None:
        bound = 1 / math.sqrt(6)
        expected.uniform_(-bound, bound, generator=generator)
        expected_bias.uniform_(-bound, bound, generator=generator)
    else:
        expected.normal_(0.0, std, generator=generator)
        expected_bias.zero_()
    assert torch.equal(layer.weight[2:3].detach(), expected)
    assert torch.equal(layer.bias[2:3].detach(), expected_bias)
    several = nn.Linear(6, 4).to(dtype)
    reinit_units_(
        several.weight, several.bias, torch.tensor([2, 3]), torch.Generator().manual_seed(3), std
    )
    assert torch.equal(several.weight[2].detach(), layer.weight[2].detach())
