"""Every LR scheduler drives the inner optimizer through the wrapper, also across reloads;
LBFGS with a closure commits after its inner step."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim import lr_scheduler as sched

from gxd_optim import GXDReset

Factory = Callable[[torch.optim.Optimizer], Any]


def _lambda(step: int) -> float:
    return 0.9**step


def _times(step: int) -> float:
    return 0.95


FACTORIES: dict[str, Factory] = {
    "LambdaLR": lambda o: sched.LambdaLR(o, _lambda),
    "MultiplicativeLR": lambda o: sched.MultiplicativeLR(o, _times),
    "StepLR": lambda o: sched.StepLR(o, 3, gamma=0.5),
    "MultiStepLR": lambda o: sched.MultiStepLR(o, [2, 5, 9], gamma=0.5),
    "ConstantLR": lambda o: sched.ConstantLR(o, factor=0.5, total_iters=4),
    "LinearLR": lambda o: sched.LinearLR(o, start_factor=0.2, total_iters=6),
    "ExponentialLR": lambda o: sched.ExponentialLR(o, gamma=0.9),
    "SequentialLR": lambda o: sched.SequentialLR(
        o, [sched.ConstantLR(o, factor=0.3, total_iters=3), sched.ExponentialLR(o, 0.9)], [3]
    ),
    "PolynomialLR": lambda o: sched.PolynomialLR(o, total_iters=8, power=2.0),
    "CosineAnnealingLR": lambda o: sched.CosineAnnealingLR(o, T_max=6),
    "ChainedScheduler": lambda o: sched.ChainedScheduler(
        [sched.ConstantLR(o, factor=0.5, total_iters=4), sched.ExponentialLR(o, gamma=0.9)]
    ),
    "ReduceLROnPlateau": lambda o: sched.ReduceLROnPlateau(o, patience=1, factor=0.5),
    "CyclicLR": lambda o: sched.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3),
    "CosineAnnealingWarmRestarts": lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=4),
    "OneCycleLR": lambda o: sched.OneCycleLR(o, max_lr=0.1, total_steps=40),
}
STEPS, RELOAD, RESUME = 14, 5, 9


def test_every_scheduler_in_torch_is_covered() -> None:
    classes = {
        name
        for name, cls in vars(sched).items()
        if inspect.isclass(cls) and not name.startswith("_") and name != "LRScheduler"
        and (issubclass(cls, sched.LRScheduler) or name == "ReduceLROnPlateau")
    }  # fmt: skip
    assert classes == set(FACTORIES)


def make(wrapped: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if not wrapped:
        return model, inner
    return model, GXDReset(inner, model, replacement_rate=0.2, maturity=1)


def lrs(name: str, wrapped: bool) -> list[float]:
    model, opt = make(wrapped)
    scheduler = FACTORIES[name](opt)
    seen = []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        opt.zero_grad()
        loss = model(torch.randn(8, 4, generator=g)).pow(2).mean()
        loss.backward()
        opt.step()
        if name == "ReduceLROnPlateau":
            scheduler.step(1.0)  # a plateau: the lr must drop
        else:
            scheduler.step()
        if wrapped and step == RELOAD:  # the inner optimizer's groups are rebound
            opt.load_state_dict(opt.state_dict())
        if wrapped and step == RESUME:  # a fresh wrapper and scheduler resume from the dicts
            saved, saved_scheduler = opt.state_dict(), scheduler.state_dict()
            fresh_model, opt = make(wrapped)
            fresh_model.load_state_dict(model.state_dict())
            model = fresh_model
            scheduler = FACTORIES[name](opt)
            opt.load_state_dict(saved)
            scheduler.load_state_dict(saved_scheduler)
        inner = opt.optimizer if isinstance(opt, GXDReset) else opt
        seen.append(inner.param_groups[0]["lr"])
    return seen


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_scheduler_drives_the_inner_optimizer(name: str) -> None:
    plain, wrapped = lrs(name, False), lrs(name, True)
    assert wrapped == pytest.approx(plain, rel=1e-12, abs=0.0)
    assert len(set(plain)) > 1  # the schedule moved


def test_lbfgs_with_a_closure_commits_after_the_inner_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    inner = torch.optim.LBFGS(model.parameters(), max_iter=4)
    opt = GXDReset(inner, model, replacement_rate=0.2, maturity=1)
    x = torch.randn(64, 4)
    y = x.sum(1, keepdim=True).sin()
    evaluations = 0
    iterations_at_start: list[int] = []
    iterations_at_reset: list[int] = []  # inner iterations done in the step, at each reset
    first = next(model.parameters())

    def closure() -> Tensor:
        nonlocal evaluations
        evaluations += 1
        opt.zero_grad()  # drops the statistics of the previous evaluation
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        return loss

    def iterations() -> int:
        return int(inner.state[first].get("n_iter", 0))

    opt.register_step_pre_hook(lambda *_: iterations_at_start.append(iterations()))
    opt.register_reset_pre_hook(
        lambda *_: iterations_at_reset.append(iterations() - iterations_at_start[-1])
    )
    losses = [opt.step(closure).item() for _ in range(6)]
    assert evaluations > 6  # several evaluations per step ...
    assert opt.steps == 6  # ... one commit per step
    assert losses[-1] < losses[0]
    assert iterations_at_reset and min(iterations_at_reset) >= 1  # the inner step ran first
    assert sum(opt.reset_counts.values()) > 0
