"""The centrepiece property: resetting a set of units changes the loss by Σ predicted_cost
to first order. Scaling the outgoing weights of the chosen units by ε makes the change
O(ε); the error of the prediction must then shrink as ε² (not merely be small)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.testing import assert_first_order
from gxd_optim.utilities import predicted_cost
from tests.nets import ACTIVATIONS, CNN, MLP, CNNSpec, MLPSpec


@st.composite
def specs(draw: st.DrawFn) -> tuple[MLPSpec | CNNSpec, int]:
    """A model spec and a batch size; every CNN spec keeps its feature maps non-empty."""
    act = draw(st.sampled_from(ACTIVATIONS))
    norm = draw(st.booleans())
    batch = draw(st.integers(4, 9))
    if draw(st.booleans()):
        spec = MLPSpec(
            inputs=draw(st.integers(2, 6)),
            widths=tuple(draw(st.lists(st.integers(2, 7), min_size=1, max_size=3))),
            outputs=draw(st.integers(1, 3)),
            act=act,
            norm=norm,
            two_heads=draw(st.booleans()),
        )
        return spec, batch
    cnn = CNNSpec(
        in_channels=draw(st.integers(1, 3)),
        channels=tuple(draw(st.lists(st.integers(2, 4), min_size=1, max_size=2))),
        size=draw(st.integers(8, 10)),
        outputs=draw(st.integers(1, 3)),
        act=act,
        norm=norm,
        padding=draw(st.sampled_from([0, 1])),
        pool=draw(st.sampled_from(["none", "max", "avg", "adaptive"])),
        hidden=draw(st.sampled_from([0, 3])),
        bias=draw(st.booleans()),
    )
    return cnn, batch


def build(spec: MLPSpec | CNNSpec, batch: int) -> tuple[nn.Module, Tensor]:
    """The float64 model of a spec and a random input batch for it."""
    if isinstance(spec, MLPSpec):
        return MLP(spec).double(), torch.randn(batch, spec.inputs, dtype=torch.float64)
    shape = (batch, spec.in_channels, spec.size, spec.size)
    return CNN(spec).double(), torch.randn(shape, dtype=torch.float64)


@given(
    drawn=specs(),
    reference=st.sampled_from(["mean", "zero"]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_reset_changes_loss_by_predicted_cost_to_first_order(
    drawn: tuple[MLPSpec | CNNSpec, int], reference: str, seed: int, data: st.DataObject
) -> None:
    torch.manual_seed(seed)
    model, x = build(*drawn)
    with torch.no_grad():
        target = torch.randn_like(model(x))

    def loss(out: Tensor) -> Tensor:
        return (out - target).pow(2).mean()

    found = GXDReset(torch.optim.SGD(model.parameters(), lr=0.0), model, reference=reference)
    found.discover(x)
    units = {
        name: [
            data.draw(
                st.lists(st.integers(0, info.num_units - 1), min_size=1, unique=True), label=name
            )
        ]
        for name, info in found.layers.items()
    }
    found.close()
    assert_first_order(model, x, loss, reference=reference, units=units, seed=seed)


def test_a_wrong_prediction_fails_with_a_readable_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import gxd_optim.tracking

    def off_by_a_thousandth(*args: object) -> Tensor:
        return 0.999 * predicted_cost(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(gxd_optim.tracking, "predicted_cost", off_by_a_thousandth)
    model, x = build(MLPSpec(3, (4,), 1), 6)
    with pytest.raises(AssertionError, match=r"layer 'hidden.0', units \[\d+\]"):
        assert_first_order(model, x, lambda out: out.pow(2).mean())
