"""Reset invariants over many optimizers: what the reset touches, and what it must not."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.operator import SECOND_MOMENT_KEYS, unit_columns
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


def _rows(t: Tensor, dim: int, keep: list[int]) -> Tensor:
    return t.detach().index_select(dim, torch.tensor(keep, dtype=torch.long))


@pytest.mark.parametrize("policy", ["zero", "mean_scale"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_reset_touches_exactly_the_unit(optimizer: str, policy: str) -> None:
    model, opt = _trained(optimizer, policy)
    assert set(opt.layers) == {"conv1", "conv2", "fc"}
    params = dict(model.named_parameters())
    identities = {name: id(p) for name, p in params.items()}
    snapshot = {name: p.detach().clone() for name, p in params.items()}
    running_mean = model.bn.running_mean.clone()
    states = {
        name: {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, Tensor)}
        for name, p in params.items()
    }
    cases = {"conv1": [1, 2], "conv2": [0], "fc": [3]}
    touched: dict[str, list[tuple[int, list[int]]]] = {name: [] for name in params}
    for name, units in cases.items():
        opt.reset_units(name, units)
        touched[f"{name}.weight"].append((0, units))
        touched[f"{name}.bias"].append((0, units))
        for edge in opt.layers[name].edges:
            cols = unit_columns(torch.tensor(units), edge.columns_per_unit).tolist()
            touched[f"{edge.consumer}.weight"].append((1, cols))
    touched["bn.weight"].append((0, cases["conv1"]))
    touched["bn.bias"].append((0, cases["conv1"]))
    folded = {"conv2.bias", "fc.bias", "head.bias"}  # consumers of mean-reference edges

    assert {n: id(p) for n, p in model.named_parameters()} == identities
    for name, p in model.named_parameters():
        mask = _mask(p, touched[name])
        if name not in folded:
            assert torch.equal(p[~mask], snapshot[name][~mask]), f"{name}: untouched entries moved"
        redrawn = [i for dim, idx in touched[name] if dim == 0 for i in idx]
        kept_rows = [i for i in range(p.shape[0]) if i not in redrawn]
        for dim, idx in touched[name]:
            if dim == 1:  # a unit redrawn afterwards reads every input with fresh weights
                outgoing = _rows(_rows(p, 0, kept_rows), 1, idx)
                assert bool((outgoing == 0).all()), f"{name}: outgoing weights not zero"
            elif name.split(".")[0] in cases:
                bound = 1 / math.sqrt(params[f"{name.split('.')[0]}.weight"][0].numel())
                assert float(_rows(p, 0, idx).abs().max()) <= bound, f"{name}: not redrawn"
    assert model.bn.weight[cases["conv1"]].tolist() == [1.0, 1.0]
    assert model.bn.bias[cases["conv1"]].tolist() == [0.0, 0.0]
    assert model.bn.running_var[cases["conv1"]].tolist() == [1.0, 1.0]
    assert model.bn.running_mean[cases["conv1"]].tolist() == [0.0, 0.0]
    assert torch.equal(model.bn.running_mean[[0, 3]], running_mean[[0, 3]])

    for name, p in model.named_parameters():
        mask = _mask(p, touched[name])
        for key, before in states[name].items():
            after = opt.state[p][key]
            if before.shape != p.shape:
                assert torch.equal(after, before), f"{name}/{key}: scalar state changed"
                continue
            assert torch.equal(after[~mask], before[~mask]), f"{name}/{key}: untouched slice moved"
            cleared = after[mask]
            if policy == "mean_scale" and key in SECOND_MOMENT_KEYS and len(touched[name]) == 1:
                expected = float(before[~mask].mean())
                torch.testing.assert_close(cleared, torch.full_like(cleared, expected))
            elif policy == "zero" or key not in SECOND_MOMENT_KEYS:
                assert bool((cleared == 0).all()), f"{name}/{key}: touched slice not cleared"


def _mask(p: Tensor, slices: list[tuple[int, list[int]]]) -> Tensor:
    mask = torch.zeros(p.shape, dtype=torch.bool)
    for dim, idx in slices:
        mask.index_fill_(dim, torch.tensor(idx, dtype=torch.long), True)
    return mask


def test_reset_keeps_training_working() -> None:
    model, opt = _trained("adam", "mean_scale")
    opt.reset_units("fc", [0, 1])
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 2, 8, 8)).pow(2).mean().backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
