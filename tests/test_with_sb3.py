"""stable-baselines3: PPO trains its policy through ``evaluate_actions``, DQN through
``q_net``; the one-line wrap finds the units, resets happen, and saved models resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from requirements import needs

needs("stable_baselines3")
gym = needs("gymnasium")

import sb3_policy  # noqa: E402  (examples/, on the path from conftest)
from stable_baselines3 import PPO  # noqa: E402

from gxd_optim import GXDReset  # noqa: E402

HIDDEN = [f"mlp_extractor.{net}.{i}" for net in ("policy_net", "value_net") for i in (0, 2)]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _opt(model: object) -> GXDReset:
    opt = model.policy.optimizer  # type: ignore[attr-defined]
    assert isinstance(opt, GXDReset)
    return opt


def test_ppo_trains_the_policy_through_evaluate_actions_with_resets() -> None:
    model = sb3_policy.ppo(steps=1024)
    opt = _opt(model)
    # 4 rollouts of 256 steps, 4 epochs of 4 minibatches: 64 inner steps, the first recorded
    assert opt.steps == 63
    assert sorted(opt.layers) == sorted(HIDDEN)
    assert (
        opt.skipped["action_net"]
        == opt.skipped["value_net"]
        == ("its units are part of the model's output")
    )
    assert all(opt.reset_counts[name] > 0 for name in HIDDEN)
    for name in HIDDEN:  # the policy's consumers read every reset unit as a constant
        consumer = model.policy.get_submodule(opt.layers[name].consumers[0])
        assert consumer.weight.shape[1] == opt.layers[name].num_units


def test_ppo_resumes_with_the_wrappers_state(tmp_path: Path) -> None:
    model = sb3_policy.ppo(steps=1024)
    opt = _opt(model)
    model.save(tmp_path / "ppo")
    env = gym.make("CartPole-v1")
    algorithm = sb3_policy.load(tmp_path / "ppo", PPO, env, **sb3_policy.SETTINGS)
    resumed = _opt(algorithm)
    assert resumed.steps == opt.steps and resumed.reset_counts == opt.reset_counts
    assert sorted(resumed.layers) == sorted(HIDDEN)  # restored without a discovery pass
    for name, utility in opt.utilities().items():
        assert torch.equal(resumed.utilities()[name], utility)
    saved, loaded = opt.reset_state_dict(), resumed.reset_state_dict()
    assert torch.equal(saved["generator"], loaded["generator"])
    algorithm.learn(total_timesteps=512, reset_num_timesteps=False)  # and it goes on
    assert resumed.steps == opt.steps + 32


def test_dqn_trains_the_q_network_with_resets() -> None:
    model = sb3_policy.dqn(steps=768)
    opt = _opt(model)
    assert sorted(opt.layers) == ["q_net.q_net.0", "q_net.q_net.2"]
    assert opt.skipped["q_net_target.q_net.0"] == "not in the optimizer"
    assert opt.steps == 127  # (768 - 256) / 4 gradient steps, the first recorded
    assert all(count > 0 for count in opt.reset_counts.values())


def test_ppo_collecting_on_one_step_in_four_resets_and_resumes_where_it_was(
    tmp_path: Path,
) -> None:
    model = sb3_policy.ppo(steps=1024, track_every=4)
    opt = _opt(model)
    assert opt.steps == 64  # 16 of the 64 inner steps collected, each standing for 4
    assert sorted(opt.layers) == sorted(HIDDEN)
    assert all(opt.reset_counts[name] > 0 for name in HIDDEN)
    hooked = [m for m in model.policy.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert not opt.collecting and not hooked  # the rollouts run on a bare policy
    model.save(tmp_path / "ppo")
    env = gym.make("CartPole-v1")
    settings = sb3_policy.SETTINGS | {"track_every": 4}
    resumed = _opt(sb3_policy.load(tmp_path / "ppo", PPO, env, **settings))
    assert (resumed.steps, resumed.collecting) == (opt.steps, opt.collecting)
    for name, utility in opt.utilities().items():
        assert torch.equal(resumed.utilities()[name], utility)
