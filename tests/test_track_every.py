"""``track_every``: statistics on one step in k, and the steps between them left bare."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.selection import ThresholdSelector

BATCHES = [
    (torch.randn(16, 4, generator=torch.Generator().manual_seed(i)), torch.randn(16, 2))
    for i in range(12)
]


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def _step(model: nn.Module, opt: torch.optim.Optimizer, batch: tuple[Tensor, Tensor]) -> None:
    opt.zero_grad()
    nn.functional.mse_loss(model(batch[0]), batch[1]).backward()
    opt.step()


def _hooked(model: nn.Module) -> bool:
    """Whether the wrapper's statistics hooks are on the model's layers."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("bad", [0, -1, 2**62 + 1])
def test_a_track_every_outside_its_range_is_refused(bad: int) -> None:
    model = _net()
    with pytest.raises(ValueError, match="track_every must be in"):
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, track_every=bad)


@pytest.mark.parametrize("bad", [1.5, True, "2"])
def test_a_track_every_that_is_not_an_int_is_refused(bad: object) -> None:
    model = _net()
    with pytest.raises(TypeError, match="track_every must be an int"):
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, track_every=bad)  # type: ignore[arg-type]


def test_the_hooks_are_off_the_model_between_the_steps_that_collect() -> None:
    model = _net()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, track_every=3)
    hooked = []
    for batch in BATCHES[:7]:
        _step(model, opt, batch)
        hooked.append(_hooked(model))
    # after steps 1..7 the next step is the 2nd, 3rd, ... : steps 0, 3, 6 collect
    assert hooked == [False, False, True, False, False, True, False]
    assert opt.steps == 3 * 3  # three commits, each standing for three steps


def test_the_utilities_are_those_of_the_collected_batches_with_the_decay_per_commit() -> None:
    """With the weights held still, ``track_every=3`` on 7 batches is ``decay**3`` on
    batches 0, 3 and 6: bit for bit."""
    strided_net, plain_net = _net(), _net()
    strided = GXDReset(
        torch.optim.SGD(strided_net.parameters(), lr=0.0), strided_net, track_every=3, decay=0.9
    )
    plain = GXDReset(
        torch.optim.SGD(plain_net.parameters(), lr=0.0), plain_net, decay=0.9**3, maturity=100
    )
    for batch in BATCHES[:7]:
        _step(strided_net, strided, batch)
    for batch in BATCHES[0:7:3]:
        _step(plain_net, plain, batch)
    for name, utility in plain.utilities().items():
        assert torch.equal(strided.utilities()[name], utility), name


def test_units_age_by_track_every_steps_per_commit() -> None:
    model = _net()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, track_every=4, maturity=6)
    eligible = []
    for batch in BATCHES[:9]:
        _step(model, opt, batch)
        eligible.append(opt.layer_summaries()[0].eligible)
    # commits after steps 1, 5, 9 age the units to 4, 8, 12 steps: eligible (> 6) from the 2nd
    assert eligible == [0, 0, 0, 0, 8, 8, 8, 8, 8]


def test_resets_happen_on_the_collecting_steps_at_the_rate_of_every_step() -> None:
    counts = {}
    for every in (1, 3):
        model = _net()
        opt = GXDReset(
            torch.optim.SGD(model.parameters(), lr=0.1),
            model,
            track_every=every,
            replacement_rate=0.05,
            maturity=0,
        )
        when: list[int] = []
        opt.register_reset_hook(lambda name, index, opt=opt, when=when: when.append(opt.steps))
        for batch in BATCHES:
            _step(model, opt, batch)
        counts[every] = sum(opt.reset_counts.values())
        assert all(step % every == 0 for step in when)
    assert counts[1] == counts[3] > 0  # 12 steps × 0.05 × 8 units per layer, either way


@given(stride=st.integers(1, 9), interval=st.integers(1, 30), commits=st.integers(1, 40))
def test_the_threshold_chooses_when_a_multiple_of_the_interval_fell_in_the_commits_steps(
    stride: int, interval: int, commits: int
) -> None:
    class Layers:
        steps = commits * stride

        def eligible(self, name: str) -> int:
            return 1

        def eligible_units(self, name: str) -> Tensor:
            return torch.ones(1, dtype=torch.bool)

        def utilities(self, name: str) -> Tensor:
            return torch.zeros(1)

    chosen = ThresholdSelector(0.5, interval, stride).choose("fc", Layers(), lambda: False)
    window = range(Layers.steps - stride + 1, Layers.steps + 1)
    assert (chosen is not None and chosen.numel() == 1) == any(s % interval == 0 for s in window)


def test_a_copy_between_collections_goes_on_as_the_original() -> None:
    model = _net()
    opt = GXDReset(
        torch.optim.Adam(model.parameters(), lr=1e-2),
        model,
        track_every=3,
        replacement_rate=0.1,
        maturity=0,
    )
    for batch in BATCHES[:4]:
        _step(model, opt, batch)
    twin_model, twin = copy.deepcopy((model, opt))
    assert not _hooked(twin_model)  # the copy is between collections too
    for batch in BATCHES[4:]:
        _step(model, opt, batch)
        _step(twin_model, twin, batch)
    assert opt.reset_counts == twin.reset_counts
    for a, b in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_closed_wrapper_never_hooks_the_model_again() -> None:
    model = _net()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, track_every=2)
    _step(model, opt, BATCHES[0])
    opt.close()
    for batch in BATCHES[1:4]:
        _step(model, opt, batch)
        assert not _hooked(model)


def test_a_checkpoint_without_a_phase_loads_as_phase_zero() -> None:
    model = _net()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, track_every=3)
    _step(model, opt, BATCHES[0])
    saved = opt.state_dict()
    assert saved[GXDReset.KEY]["phase"] == 1
    del saved[GXDReset.KEY]["phase"]
    assert not _hooked(model)
    opt.load_state_dict(saved)
    assert opt._binding.phase == 0 and _hooked(model)


def test_a_bad_phase_is_refused_and_changes_nothing() -> None:
    model = _net()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, track_every=3)
    _step(model, opt, BATCHES[0])
    saved = opt.state_dict()
    saved[GXDReset.KEY]["phase"] = -1
    with pytest.raises(ValueError, match="phase must be a count"):
        opt.load_state_dict(saved)
    assert opt._binding.phase == 1 and not _hooked(model)


def test_a_closure_step_follows_the_same_schedule() -> None:
    model = _net()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, track_every=2)
    for batch in BATCHES[:5]:

        def closure(batch: tuple[Tensor, Tensor] = batch) -> Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(batch[0]), batch[1])
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        opt.step(closure)
    assert opt.steps == 3 * 2  # steps 0, 2 and 4 collected


def test_predicted_cost_is_read_on_the_steps_that_collect_and_refused_between() -> None:
    model = _net()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, track_every=2)
    x, y = BATCHES[0]
    nn.functional.mse_loss(model(x), y).backward()
    assert opt.collecting and opt.predicted_cost("0").shape == (8,)
    opt.step()
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    assert not opt.collecting
    with pytest.raises(RuntimeError, match="track_every=2, the gradients are checked only"):
        opt.predicted_cost("0")
    opt.reset_units("0", [1])  # a manual reset still works; its predicted cost is unknown
    assert math.isnan(opt.reset_log[-1].predicted)


@pytest.mark.parametrize("every", [1, 3])
def test_a_checkpoint_loaded_into_a_closed_wrapper_hooks_nothing(every: int) -> None:
    model = _net()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, track_every=every)
    _step(model, opt, BATCHES[0])
    saved = opt.state_dict()
    opt.close()
    opt.load_state_dict(saved)
    assert not _hooked(model)
    twin = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)  # the model is free
    twin.close()
