"""The centrepiece property: resetting a set of units changes the loss by Σ predicted_cost
to first order. Scaling the outgoing weights of the chosen units by ε makes the change
O(ε); the error of the prediction must then shrink as ε² (not merely be small)."""

from __future__ import annotations

import copy
import itertools

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.operator import unit_columns
from tests.nets import ACTIVATIONS, CNN, MLP, CNNSpec, MLPSpec

EPSILONS = tuple(2e-3 * 2.0**-k for k in range(11))
FLOOR = 5e-15  # times max(1, |loss|): float64 round-off of a loss difference stays below


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


def _loss(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    return (model(x) - target).pow(2).mean()


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
    opt = GXDReset(
        torch.optim.SGD(model.parameters(), lr=0.0),
        model,
        reference=reference,
        replacement_rate=0.0,
        maturity=0,
        decay=0.5,
    )
    for _ in range(3):  # lr = 0: parameters stay, running means (the references) build up
        opt.zero_grad()
        _loss(model, x + 0.3 * torch.randn_like(x), target).backward()
        opt.step()
    assert opt.layers, dict(opt.skipped)
    # Train-mode BatchNorm right after a consumer is scale invariant: it would undo the eps
    # scaling below (the perturbation would stay O(1)). In eval mode it is a fixed affine map.
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    for name, info in opt.layers.items():
        subset = data.draw(
            st.lists(st.integers(0, info.num_units - 1), min_size=1, unique=True), label=name
        )
        index = torch.tensor(sorted(subset))
        errors, predictions = [], []
        for eps in EPSILONS:
            trial = copy.deepcopy(opt)
            net = trial.model
            modules = dict(net.named_modules())
            with torch.no_grad():
                for edge in info.edges:
                    weight = modules[edge.consumer].weight
                    columns = unit_columns(index, edge.columns_per_unit)
                    weight.index_copy_(1, columns, weight.index_select(1, columns) * eps)
            trial.zero_grad()
            before = _loss(net, x, target)
            before.backward()
            predicted = trial.predicted_cost(name)[index].sum()
            trial.reset_units(name, index)
            with torch.no_grad():
                after = _loss(net, x, target)
            errors.append(abs(float((after - before - predicted).detach())))
            predictions.append(abs(float(predicted.detach())))
        # Halving eps must quarter the error. A ReLU kink crossed by the O(eps) perturbation
        # spoils the larger eps, so the verdict comes from the smallest eps whose errors are
        # still above round-off: there the error must shrink as eps^2, not as eps.
        floor = FLOOR * max(1.0, abs(float(before.detach())))
        ratios = [a / b for a, b in itertools.pairwise(errors) if b > floor]
        if not ratios:  # the loss is linear in the reset: nothing to resolve
            continue
        tail = ratios[-2:]
        assert any(3.0 < r < 5.3 for r in tail) and not any(1.6 < r < 2.4 for r in tail), (
            f"layer {name}: realised - predicted should shrink as eps^2; "
            f"errors {errors} at eps {EPSILONS} (ratios {ratios}), predicted {predictions}"
        )
