"""Reset invariants over many optimizers: what the reset touches, and what it must not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.testing import assert_reset_invariants
from tests.optimizers import OPTIMIZERS


class Net(nn.Module):
    """conv → BN → ReLU → maxpool → conv → ReLU → flatten → Linear → ReLU → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 2)
        self.fc = nn.Linear(3 * 2 * 2, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.conv1(x))), 2)
        x = torch.flatten(F.relu(self.conv2(x)), 1)
        return self.head(F.relu(self.fc(x)))


def _trained(optimizer: str, policy: str) -> tuple[Net, GXDReset]:
    model = Net()
    opt = GXDReset(
        OPTIMIZERS[optimizer](model.parameters()), model, replacement_rate=0.0, state_policy=policy
    )
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(8, 2, 8, 8)).pow(2).mean().backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("policy", ["zero", "mean_scale"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_reset_touches_exactly_the_unit(optimizer: str, policy: str) -> None:
    _, opt = _trained(optimizer, policy)
    assert set(opt.layers) == {"conv1", "conv2", "fc"}
    assert opt.layers["conv1"].norms == ("bn",)
    assert opt.layers["conv2"].edges[0].columns_per_unit == 4
    for name, units in {"conv1": [1, 2], "conv2": [0], "fc": [3, 0]}.items():
        assert_reset_invariants(opt, name, units)


def test_the_invariant_check_catches_a_broken_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    import gxd_optim.operator.plan

    def fold_without_zeroing(
        weight: Tensor, bias: Tensor | None, columns: Tensor, values: object, **_: object
    ) -> None:
        weight.detach()[:, columns].zero_()  # the classic bug: writes into a copy

    monkeypatch.setattr(gxd_optim.operator.plan, "fold_and_zero_inputs_", fold_without_zeroing)
    _, opt = _trained("adam", "zero")
    with pytest.raises(AssertionError, match="outgoing weights of the units are not zero"):
        assert_reset_invariants(opt, "fc", [1])


def test_reset_keeps_training_working() -> None:
    model, opt = _trained("adam", "mean_scale")
    opt.reset_units("fc", [0, 1])
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 2, 8, 8)).pow(2).mean().backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
