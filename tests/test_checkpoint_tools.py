"""torch.distributed.checkpoint: its zero-gradient step; a round trip resumes bit for bit."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from gxd_optim import GXDReset

STEPS = 24
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def make(seed: int = 0, track_every: int = 1) -> tuple[nn.Module, GXDReset]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 3)
    )
    inner = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, GXDReset(inner, model, replacement_rate=0.1, maturity=3, track_every=track_every)


def train(model: nn.Module, opt: GXDReset, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def final(model: nn.Module, opt: GXDReset) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()] + list(opt.utilities().values())


@pytest.mark.parametrize("track_every", [1, 5])
def test_round_trip_through_dcp_resumes_bit_for_bit(tmp_path: Path, track_every: int) -> None:
    """With ``track_every=5`` the save falls between two collections, and the loader's
    zero-gradient step must not move the cycle on."""
    model, opt = make(track_every=track_every)
    train(model, opt, range(STEPS))
    expected = final(model, opt)
    assert sum(opt.reset_counts.values()) > 0

    model, opt = make(track_every=track_every)
    train(model, opt, range(STEPS // 2))
    steps = opt.steps  # STEPS // 2, or 15 with track_every=5: commits at 0, 5, 10, each 5 steps
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    assert set(state["optim"]) == {"state", "param_groups"}  # DCP drops the wrapper's entry
    dcp.save(state, checkpoint_id=tmp_path / "ckpt")
    torch.save(opt.reset_state_dict(), tmp_path / "gxd_reset.pt")

    model, opt = make(seed=1, track_every=track_every)  # nothing discovered yet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.load_reset_state_dict(torch.load(tmp_path / "gxd_reset.pt"))
        state = {
            "model": get_model_state_dict(model),
            "optim": get_optimizer_state_dict(model, opt),
        }
        dcp.load(state, checkpoint_id=tmp_path / "ckpt")
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optim"])
    assert not [w for w in caught if "GXDReset" in str(w.message)]  # the documented order
    assert opt.steps == steps
    train(model, opt, range(STEPS // 2, STEPS))
    resumed = final(model, opt)
    for i, (a, b) in enumerate(zip(resumed, expected, strict=True)):
        assert torch.equal(a, b), f"tensor {i} differs"


def test_the_zero_gradient_step_commits_and_resets_nothing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt = GXDReset(inner, model, replacement_rate=1.0, maturity=0, layers={"0": ["2"]})
    weights = [p.detach().clone() for p in model.parameters()]
    before = opt.reset_state_dict()
    get_optimizer_state_dict(model, opt)  # steps the optimizer once with zero grads and lr=0
    assert opt.state  # the zero-gradient step ran
    assert opt.steps == 0 and opt.reset_counts == {"0": 0}
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))
    after = opt.reset_state_dict()
    assert torch.equal(before["stats"]["0"]["age"], after["stats"]["0"]["age"])


def test_a_plain_load_without_the_entry_warns_and_says_what_to_do() -> None:
    model, opt = make()
    train(model, opt, range(2))
    with pytest.warns(UserWarning, match=r"load_reset_state_dict"):
        opt.load_state_dict(opt.optimizer.state_dict())


def test_a_foreign_entry_is_refused_and_changes_nothing() -> None:
    model, opt = make()
    train(model, opt, range(3))
    entry = opt.reset_state_dict()
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    other_opt = GXDReset(torch.optim.SGD(other.parameters(), lr=0.1), other)
    train(other, other_opt, range(2))
    before = other_opt.reset_state_dict()
    with pytest.raises(ValueError, match="another architecture"):
        other_opt.load_reset_state_dict(entry)
    after = other_opt.reset_state_dict()
    assert torch.equal(before["stats"]["0"]["utility_ema"], after["stats"]["0"]["utility_ema"])
    assert torch.equal(before["generator"], after["generator"])


@pytest.mark.parametrize("collecting_first", [True, False])
def test_saving_with_dcp_leaves_the_cycle_of_track_every_as_it_was(
    collecting_first: bool,
) -> None:
    """Plain SGD keeps no state, so every ``get_optimizer_state_dict`` runs its zero-gradient
    step (after ``zero_grad()``): it moves no weight, and must not move the cycle either."""

    def run(save_at: int | None) -> list[Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
        )
        inner = torch.optim.SGD(model.parameters(), lr=0.05)
        opt = GXDReset(inner, model, replacement_rate=0.2, maturity=2, track_every=4)
        for step in range(14):
            if step == save_at:
                opt.zero_grad()
                get_optimizer_state_dict(model, opt)
            train(model, opt, range(step, step + 1))
        return final(model, opt)

    save_at = 8 if collecting_first else 6  # the cycle's first step, or its third
    for a, b in zip(run(save_at), run(None), strict=True):
        assert torch.equal(a, b)
