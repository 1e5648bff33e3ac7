"""The centrepiece property: resetting a set of units changes the loss by Σ predicted_cost
to first order. Scaling the outgoing weights of the chosen units by ε makes the change
O(ε); the error of the prediction must then shrink as ε² (not merely be small)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from gxd_optim.testing import assert_first_order
from gxd_optim.testing import strategies as gst
from gxd_optim.testing.models import MLP, MLPSpec
from gxd_optim.utilities import predicted_cost


@given(
    case=gst.models(dtype=torch.float64),
    reference=st.sampled_from(["mean", "zero"]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_reset_changes_loss_by_predicted_cost_to_first_order(
    case: gst.Case, reference: str, seed: int, data: st.DataObject
) -> None:
    model, x, _ = case
    with torch.no_grad():
        target = torch.randn_like(model(x))

    def loss(out: Tensor) -> Tensor:
        return (out - target).pow(2).mean()

    units = data.draw(gst.unit_sets(model, x, reference=reference), label="units")
    assert_first_order(model, x, loss, reference=reference, units=units, seed=seed)


def test_a_wrong_prediction_fails_with_a_readable_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import gxd_optim.tracking.predicted

    def off_by_a_thousandth(*args: object) -> Tensor:
        return 0.999 * predicted_cost(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(gxd_optim.tracking.predicted, "predicted_cost", off_by_a_thousandth)
    model, x = MLP(MLPSpec(3, (4,), 1)), torch.randn(6, 3)
    with pytest.raises(AssertionError, match=r"layer 'hidden.0', units \[\d+\]"):
        assert_first_order(model, x, lambda out: out.pow(2).mean())
