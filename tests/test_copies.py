"""Model copies (AveragedModel, deepcopy EMA teachers) never feed the wrapper; resets mirror."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from gxd_optim import GXDReset
from gxd_optim.copies import mirror_resets


def make() -> tuple[nn.Module, GXDReset]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 24), nn.Tanh(),
        nn.Linear(24, 3),
    )  # fmt: skip
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, GXDReset(inner, model, replacement_rate=0.1, maturity=2)


def batch(step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)


def train(model: nn.Module, opt: GXDReset, steps: int, teacher: nn.Module | None = None) -> None:
    for step in range(steps):
        x, y = batch(step)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if teacher is not None:  # a teacher in training mode, even with gradients
            loss = loss + teacher(x).pow(2).mean()
        loss.backward()
        opt.step()
        if isinstance(teacher, AveragedModel):
            teacher.update_parameters(model)


@pytest.mark.parametrize("kind", ["averaged", "deepcopy"])
def test_a_copy_of_the_model_does_not_feed_the_statistics(kind: str) -> None:
    model, opt = make()
    train(model, opt, 12)
    alone = opt.utilities()

    model, opt = make()
    teacher: nn.Module
    if kind == "averaged":
        teacher = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    else:
        teacher = copy.deepcopy(model)
    train(model, opt, 12, teacher)
    for name, value in opt.utilities().items():
        torch.testing.assert_close(value, alone[name], rtol=0, atol=0)


def test_an_exact_copy_stays_exact_through_mirrored_resets() -> None:
    model, opt = make()
    train(model, opt, 3)
    twin = copy.deepcopy(model)
    mirror_resets(opt, twin)
    counts = opt.reset_counts
    opt.reset_units("0", [1, 5, 7])
    opt.reset_units("3", [0, 2])
    assert opt.reset_counts == {"0": counts["0"] + 3, "3": counts["3"] + 2}
    for name, a in model.state_dict().items():
        assert torch.equal(a, twin.state_dict()[name]), name


def test_an_ema_teacher_follows_resets_and_keeps_its_function() -> None:
    model, opt = make()
    teacher = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    train(model, opt, 8, teacher)
    handle = mirror_resets(opt, teacher)
    net = teacher.module
    x, _ = batch(99)
    net.eval()
    with torch.no_grad():
        before = net(x)
    index = torch.tensor([4, 9])
    r = opt.tracker.layers["3"].edges[0].reference[index].clone()
    with torch.no_grad():
        h = torch.tanh(net[3](net[2](net[1](net[0](x)))))[:, index]
        expected = before + (r - h) @ net[5].weight[:, index].T  # each row reads r instead
    opt.reset_units("3", index)
    with torch.no_grad():
        after = net(x)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(net[3].weight[index], model[3].weight[index])
    assert float(net[5].weight.detach()[:, index].abs().sum()) == 0.0
    handle.remove()
    opt.reset_units("3", [0])
    assert not torch.equal(net[3].weight[0], model[3].weight[0])


def test_mirroring_into_another_architecture_is_refused() -> None:
    model, opt = make()
    train(model, opt, 1)
    with pytest.raises(ValueError, match="not a copy"):
        mirror_resets(opt, nn.Sequential(nn.Linear(6, 24)))
