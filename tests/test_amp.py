"""Mixed precision: GradScaler steps, skipped steps, unscale_ + clipping, low-precision forwards."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.operator import reinit_units_
from gxd_optim.utilities import CRITERIA

STEPS = 40
INF_AT = (7, 8, 23)  # steps whose loss is made infinite: the scaler skips them


def make(utility: str = "gxd", **kwargs: object) -> tuple[nn.Module, GXDReset]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 3)
    )
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    options: dict[str, object] = {"replacement_rate": 0.05, "maturity": 3, **kwargs}
    opt = GXDReset(inner, model, utility=utility, **options)  # type: ignore[arg-type]
    return model, opt


def batch(step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)


def snapshot(model: nn.Module, opt: GXDReset) -> list[Tensor]:
    out = [p.detach().clone() for p in model.parameters()]
    out += [u.clone() for u in opt.utilities().values()]
    return out


def train_reference(utility: str = "gxd", clip: float | None = None) -> list[Tensor]:
    """No scaler; the steps the scaled runs skip are simply left out."""
    model, opt = make(utility)
    for step in range(STEPS):
        if step in INF_AT:
            continue
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    assert sum(opt.reset_counts.values()) > 0
    return snapshot(model, opt)


def train_scaled(
    scaler: torch.amp.GradScaler,
    utility: str = "gxd",
    clip: float | None = None,
    tell_scaler: bool = False,
) -> list[Tensor]:
    model, opt = make(utility, grad_scaler=scaler if tell_scaler else None)
    for step in range(STEPS):
        x, y = batch(step)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if step in INF_AT:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        if clip is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(opt)
        scaler.update()
    return snapshot(model, opt)


def assert_bit_identical(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(x, y), f"tensor {i} differs (max {float((x - y).abs().max())})"


@pytest.mark.parametrize("utility", sorted(CRITERIA))
def test_the_loss_scale_changes_nothing(utility: str) -> None:
    # Power-of-two scales are exact in float32, so unscaled statistics and weights must agree
    # bit for bit with a run without any scaler, for a fixed scale and a growing one alike.
    reference = train_reference(utility)
    fixed = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=10**6)
    growing = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=2)
    assert_bit_identical(train_scaled(fixed, utility), reference)
    assert_bit_identical(train_scaled(growing, utility), reference)
    assert growing.get_scale() > 2.0**8  # the scale grew (and backed off at the inf steps)


def test_scale_one_and_two_to_the_sixteen_rank_units_alike() -> None:
    one = train_scaled(torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=10**6))
    big = train_scaled(torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=10**6))
    utilities = slice(-2, None)
    for u, v in zip(one[utilities], big[utilities], strict=True):
        assert torch.equal(torch.argsort(u), torch.argsort(v))


def test_a_skipped_step_commits_and_resets_nothing() -> None:
    model, opt = make(replacement_rate=1.0, maturity=0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = batch(0)
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    before = opt.reset_state_dict()
    weights = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y) * float("inf")
    scaler.scale(loss).backward()
    scaler.step(opt)  # found_inf: skipped although every unit is due for a reset
    scaler.update()
    after = opt.reset_state_dict()
    assert opt.steps == 1 and scaler.get_scale() == 2.0**9
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))
    for name, stats in before["stats"].items():
        for key in ("utility_ema", "weight_ema", "age"):
            assert torch.equal(stats[key], after["stats"][name][key])
        assert stats["resets"] == after["stats"][name]["resets"]
    # and the skipped pass leaves nothing behind for the next good step
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    assert opt.steps == 2
    assert all(u.isfinite().all() for u in opt.utilities().values())


@pytest.mark.parametrize("clip", [1e9, 0.5])
def test_unscale_and_clip_through_the_wrapper(clip: float) -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
    scaled = train_scaled(scaler, clip=clip, tell_scaler=True)
    assert_bit_identical(scaled, train_reference(clip=clip))


def test_unscale_without_telling_the_wrapper_is_a_clear_error() -> None:
    model, opt = make()
    scaler = torch.amp.GradScaler("cpu")
    x, y = batch(0)
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match=r"grad_scaler=scaler"):
        scaler.step(opt)


def test_bf16_autocast_forward_tracks_and_resets() -> None:
    def first_utilities(autocast: bool) -> dict[str, Tensor]:
        model, opt = make()
        x, y = batch(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return opt.utilities()

    exact, low = first_utilities(False), first_utilities(True)
    for name in exact:
        assert low[name].dtype == torch.float32
        torch.testing.assert_close(low[name], exact[name], rtol=0.1, atol=1e-4)

    model, opt = make(replacement_rate=0.2, maturity=1)
    for step in range(10):
        x, y = batch(step)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert sum(opt.reset_counts.values()) > 0
    assert all(p.isfinite().all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_new_weights_are_drawn_in_float32_then_cast(dtype: torch.dtype) -> None:
    weight = torch.zeros(5, 7, dtype=dtype)
    bias = torch.zeros(5, dtype=dtype)
    twin_weight, twin_bias = torch.zeros(5, 7), torch.zeros(5)
    index = torch.tensor([1, 3])
    reinit_units_(weight, bias, index, torch.Generator().manual_seed(4))
    reinit_units_(twin_weight, twin_bias, index, torch.Generator().manual_seed(4))
    assert torch.equal(weight, twin_weight.to(dtype)) and torch.equal(bias, twin_bias.to(dtype))

    model = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 3)).to(dtype)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)  # Adam's eps underflows in float16
    opt = GXDReset(inner, model, replacement_rate=1.0, maturity=0)
    x, y = batch(0)
    nn.functional.cross_entropy(model(x.to(dtype)), y).backward()
    opt.step()
    assert sum(opt.reset_counts.values()) > 0
    assert all(p.dtype == dtype and p.isfinite().all() for p in model.parameters())
