"""The benchmarks' networks, built from a seed without touching the global random state.

The plasticity problems and the overhead benchmark build their networks here.

Examples:
    >>> a, b = mlp((4, 8, 2), seed=1), mlp((4, 8, 2), seed=1)
    >>> all(bool((p == q).all()) for p, q in zip(a.parameters(), b.parameters()))
    True
    >>> [type(m).__name__ for m in mlp((4, 8, 2), seed=1, activation="tanh")]
    ['Linear', 'Tanh', 'Linear']
    >>> conv_net(channels=(4, 8), classes=2, seed=0)(torch.zeros(5, 3, 16, 16)).shape
    torch.Size([5, 2])
    >>> ffn_block(width=8, seed=0)(torch.zeros(2, 3, 8)).shape
    torch.Size([2, 3, 8])
    >>> nature_cnn(actions=4, seed=0)(torch.zeros(2, *NATURE_INPUT)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from itertools import pairwise
from types import MappingProxyType

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "NATURE_INPUT",
    "check_activation",
    "conv_net",
    "ffn_block",
    "mlp",
    "nature_cnn",
]

ACTIVATIONS: Mapping[str, Callable[[], nn.Module]] = MappingProxyType(
    {
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "gelu": nn.GELU,
        "leaky_relu": nn.LeakyReLU,
        "elu": nn.ELU,
    }
)
"""The hidden units' activations a problem's ``activation`` setting may name."""
NATURE_INPUT = (4, 84, 84)
"""One observation of the Nature DQN (`nature_cnn`): four stacked 84×84 frames."""


def check_activation(name: str) -> None:
    """Refuse an activation that is not in `ACTIVATIONS`.

    Raises:
        ValueError: naming the known ones.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


def _seeded(seed: int, build: Callable[[], nn.Sequential]) -> nn.Sequential:
    """``build()`` with the global CPU generator seeded, and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def mlp(sizes: Sequence[int], seed: int, activation: str = "relu") -> nn.Sequential:
    """``Linear → activation`` for every hidden size, then a ``Linear`` output; PyTorch's
    default init.

    Args:
        sizes: ``(inputs, hidden..., outputs)``.
        seed: seed of the initial weights (the caller's global RNG is left alone).
        activation: a name in `ACTIVATIONS`.
    """
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must be at least (inputs, outputs), all >= 1; got {sizes}")
    check_activation(activation)
    act = ACTIVATIONS[activation]

    def build() -> nn.Sequential:
        layers: list[nn.Module] = []
        for fan_in, fan_out in pairwise(sizes[:-1]):
            layers += [nn.Linear(fan_in, fan_out), act()]
        layers.append(nn.Linear(sizes[-2], sizes[-1]))
        return nn.Sequential(*layers)

    return _seeded(seed, build)


def conv_net(
    channels: Sequence[int],
    classes: int,
    seed: int,
    *,
    in_channels: int = 3,
    image_size: int = 16,
    pool_after: Collection[int] | None = None,
    activation: str = "relu",
) -> nn.Sequential:
    """Blocks of ``Conv3×3(pad 1) → BatchNorm → activation [→ MaxPool2]``, then a linear
    head.

    Args:
        channels: output channels of each block.
        classes: outputs of the head.
        seed: seed of the initial weights (the caller's global RNG is left alone).
        in_channels: image channels.
        image_size: height = width of the input; must be divisible by 2 once per pooling.
        pool_after: indices of the blocks followed by max-pooling (``None``: every block).
        activation: a name in `ACTIVATIONS`.
    """
    check_activation(activation)
    act = ACTIVATIONS[activation]
    pooled = set(range(len(channels)) if pool_after is None else pool_after)
    if not channels or image_size % (2 ** len(pooled)):
        raise ValueError(
            f"image_size {image_size} must be divisible by 2**{len(pooled)} (one per pooling)"
        )

    def build() -> nn.Sequential:
        layers: list[nn.Module] = []
        fan_in = in_channels
        for block, width in enumerate(channels):
            layers += [nn.Conv2d(fan_in, width, 3, padding=1), nn.BatchNorm2d(width), act()]
            if block in pooled:
                layers.append(nn.MaxPool2d(2))
            fan_in = width
        side = image_size // 2 ** len(pooled)
        layers += [nn.Flatten(), nn.Linear(fan_in * side * side, classes)]
        return nn.Sequential(*layers)

    return _seeded(seed, build)


def ffn_block(width: int, seed: int) -> nn.Sequential:
    """A transformer MLP block ``Linear(d, 4d) → GELU → Linear(4d, d)``.

    Args:
        width: the model width ``d``.
        seed: seed of the initial weights (the caller's global RNG is left alone).
    """
    return _seeded(
        seed,
        lambda: nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)),
    )


def nature_cnn(actions: int, seed: int) -> nn.Sequential:
    """The Nature DQN of Mnih et al. (2015), as stable-baselines3's DQN uses it on Atari:
    conv 32@8×8 stride 4, 64@4×4 stride 2, 64@3×3 stride 1 (ReLU after each), a 512-unit
    ReLU layer and one output per action, on `NATURE_INPUT` observations.

    Args:
        actions: outputs.
        seed: seed of the initial weights (the caller's global RNG is left alone).
    """
    return _seeded(
        seed,
        lambda: nn.Sequential(
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
        ),
    )
