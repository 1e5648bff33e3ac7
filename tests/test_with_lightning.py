"""Lightning: a LightningModule that wraps itself while ``training_step`` calls a submodule
trains with resets, and Lightning's checkpoints resume the wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from requirements import needs

needs("lightning")

import lightning_submodule as example  # noqa: E402  (examples/, on the path from conftest)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def test_a_submodule_called_from_training_step_is_found_and_reset(tmp_path: Path) -> None:
    _, opt = example.fit(30, str(tmp_path))
    assert opt.steps == 29  # the first step's pass is recorded to find the units
    assert sorted(opt.layers) == ["net.0", "net.2"]
    assert opt.skipped["net.4"] == "its units are part of the model's output"
    assert all(count > 0 for count in opt.reset_counts.values())


def test_a_checkpoint_restores_the_wrapper(tmp_path: Path) -> None:
    run, opt = example.fit(30, str(tmp_path))
    run.save_checkpoint(tmp_path / "step30.ckpt")
    _, restored = example.fit(30, str(tmp_path), ckpt_path=str(tmp_path / "step30.ckpt"))
    saved, loaded = opt.reset_state_dict(), restored.reset_state_dict()
    assert loaded["steps"] == saved["steps"] == 29 and loaded["layers"] == saved["layers"]
    assert torch.equal(loaded["generator"], saved["generator"])
    for name, stats in saved["stats"].items():
        for key in ("utility_ema", "weight_ema", "age"):
            assert torch.equal(loaded["stats"][name][key], stats[key]), (name, key)
