"""Reinforcement-learning-sized networks: small MLPs and the Nature DQN CNN.

The defaults of stable-baselines3: PPO's and DQN's MLP policies have two hidden layers of 64
units (tanh for PPO, ReLU for DQN), SAC's two of 256 (ReLU); DQN on Atari uses the CNN of
Mnih et al. (2015) on four stacked 84×84 frames. Each is built from a seed without touching
the caller's global random state.

Examples:
    >>> net = rl_mlp(8, (64, 64), 4, nn.Tanh, seed=0)
    >>> [type(m).__name__ for m in net]
    ['Linear', 'Tanh', 'Linear', 'Tanh', 'Linear']
    >>> nature_cnn(actions=4, seed=0)(torch.zeros(2, *NATURE_INPUT)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["NATURE_INPUT", "nature_cnn", "rl_mlp"]

NATURE_INPUT = (4, 84, 84)
"""One observation of the Nature DQN: four stacked 84×84 frames."""


def rl_mlp(
    inputs: int, widths: Sequence[int], outputs: int, act: Callable[[], nn.Module], seed: int
) -> nn.Sequential:
    """``Linear → act`` per hidden width, then a ``Linear`` output; PyTorch's default init.

    Args:
        inputs: observation features.
        widths: hidden units per layer.
        outputs: actions (or values).
        act: the activation's module class, e.g. ``nn.Tanh``.
        seed: seed of the initial weights (the caller's global RNG is left alone).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        fan_in = inputs
        for width in widths:
            layers += [nn.Linear(fan_in, width), act()]
            fan_in = width
        return nn.Sequential(*layers, nn.Linear(fan_in, outputs))


def nature_cnn(actions: int, seed: int) -> nn.Sequential:
    """The Nature DQN: conv 32@8×8 stride 4, 64@4×4 stride 2, 64@3×3 stride 1 (ReLU after
    each), a 512-unit ReLU layer and one output per action, on `NATURE_INPUT` observations.

    Args:
        actions: outputs.
        seed: seed of the initial weights (the caller's global RNG is left alone).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(NATURE_INPUT[0], 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512),
            nn.ReLU(),
            nn.Linear(512, actions),
        )
