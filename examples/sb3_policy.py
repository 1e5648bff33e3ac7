"""GXDReset in stable-baselines3: PPO and DQN on CartPole, saving and resuming (about 10 s).

Needs ``pip install stable-baselines3 gymnasium``. A policy's optimizer is an attribute of the
policy, so the one-line wrap replaces it; PPO trains the policy through ``policy.evaluate_actions``
and DQN through ``policy.q_net``, never through ``policy.forward``, and the wrapper finds the units
in the first training pass either way. Run it with ``python examples/sb3_policy.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gymnasium as gym
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.save_util import load_from_zip_file

from gxd_optim import GXDReset

SETTINGS = {"replacement_rate": 1e-3, "maturity": 20}
"""Resets that show in a short run; the defaults suit runs of 100,000 steps and more."""


# --8<-- [start:wrap]
def wrap(model: BaseAlgorithm, **settings: Any) -> GXDReset:
    """Wrap the optimizer of a stable-baselines3 model's policy, in place."""
    opt = GXDReset(model.policy.optimizer, model.policy, **settings)
    model.policy.optimizer = opt
    return opt


# --8<-- [end:wrap]


# --8<-- [start:resume]
def load(
    path: str | Path, algorithm: type[BaseAlgorithm], env: gym.Env, **settings: Any
) -> BaseAlgorithm:
    """Load a model saved with ``model.save(path)``, its optimizer wrapped and restored."""
    model = algorithm.load(path, env=env, device="cpu")  # restores the inner optimizer only
    opt = wrap(model, **settings)
    _, params, _ = load_from_zip_file(path, device="cpu")
    opt.load_state_dict(params["policy.optimizer"])  # the saved entry holds GXDReset's state
    return model


# --8<-- [end:resume]


def ppo(steps: int = 2048, seed: int = 0, **settings: Any) -> PPO:
    """PPO on CartPole, its optimizer wrapped with `SETTINGS` (``settings`` override them)."""
    env = gym.make("CartPole-v1")
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=256,
        batch_size=64,
        n_epochs=4,
        seed=seed,
        device="cpu",
    )
    wrap(model, **(SETTINGS | settings))
    model.learn(total_timesteps=steps)
    return model


def dqn(steps: int = 2048, seed: int = 0, **settings: Any) -> DQN:
    """DQN on CartPole, its optimizer wrapped with `SETTINGS` (``settings`` override them)."""
    env = gym.make("CartPole-v1")
    model = DQN(
        "MlpPolicy",
        env,
        learning_starts=256,
        train_freq=4,
        batch_size=32,
        seed=seed,
        device="cpu",
    )
    wrap(model, **(SETTINGS | settings))
    model.learn(total_timesteps=steps)
    return model


def show(name: str, opt: GXDReset) -> None:
    print(f"{name}: {opt.steps} steps; units reset per layer:")
    for layer, count in opt.reset_counts.items():
        print(f"  {layer:<28} {count}")


def main() -> None:
    model = ppo()
    opt = model.policy.optimizer
    assert isinstance(opt, GXDReset)
    show("PPO", opt)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(f"{tmp}/ppo")
        env = gym.make("CartPole-v1")
        resumed = load(f"{tmp}/ppo", PPO, env, **SETTINGS).policy.optimizer
        assert isinstance(resumed, GXDReset)
        same = resumed.reset_counts == opt.reset_counts
        print(f"resumed: {resumed.steps} steps, the same resets: {same}")
    opt = dqn().policy.optimizer
    assert isinstance(opt, GXDReset)
    show("DQN", opt)


if __name__ == "__main__":
    main()
