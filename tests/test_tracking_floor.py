"""The script that times the least per-step work of GXD's statistics: what it computes and
prints."""

from __future__ import annotations

import math

import pytest
import torch
from repo_scripts import load_script
from torch import nn

from gxd_optim import GXDReset


def test_the_least_tracker_computes_gxd_statistics() -> None:
    """Step after step (the running means no longer zero), its utilities are GXDReset's."""
    script = load_script("tracking_floor")
    model, twin = script.mlp(6, 2, seed=1), script.mlp(6, 2, seed=1)
    tracker = script.LeastTracker([model[2], model[4]], width=6, batch=5, decay=0.9)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    adam = torch.optim.Adam(twin.parameters(), lr=1e-2)
    wrapper = GXDReset(adam, twin, decay=0.9, maturity=99)  # no reset in these 4 steps
    for step in range(4):
        x, y = torch.randn(5, 8), torch.randn(5, 4)
        for net, opt in ((model, optimizer), (twin, wrapper)):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            if opt is optimizer:
                tracker.step()
            opt.step()
        expected = torch.cat([wrapper.utilities()["0"], wrapper.utilities()["2"]])
        torch.testing.assert_close(tracker.utilities, expected, msg=f"step {step}")
    assert not tracker.held and bool(tracker.means.abs().sum() > 0)


def test_the_least_tracker_ignores_passes_without_gradients() -> None:
    script = load_script("tracking_floor")
    model = script.mlp(6, 2)
    tracker = script.LeastTracker([model[2], model[4]], width=6, batch=5, decay=0.9)
    with torch.no_grad():
        model(torch.randn(5, 8))
    assert not tracker.held


def test_the_script_prints_every_arm_against_the_bare_step(
    capsys: pytest.CaptureFixture[str],
) -> None:
    threads = torch.get_num_threads()
    try:
        medians = load_script("tracking_floor").main(
            ["--width", "8", "--batch", "4", "--rounds", "3", "--warmup", "1"]
        )
    finally:
        torch.set_num_threads(threads)
    arms = ["bare", "hooks that keep (h, g)", "least tracker", "GXDReset"]
    assert list(medians) == arms
    assert all(math.isfinite(t) and t > 0 for t in medians.values())
    out = capsys.readouterr().out
    assert "| bare |" in out and "| 1.000 |" in out and "| least tracker |" in out
