"""The benchmarks' networks, built from a seed without touching the global random state.

The plasticity problems and the overhead benchmark build their networks here.

Examples:
    >>> a, b = relu_mlp((4, 8, 2), seed=1), relu_mlp((4, 8, 2), seed=1)
    >>> all(bool((p == q).all()) for p, q in zip(a.parameters(), b.parameters()))
    True
    >>> conv_net(channels=(4, 8), classes=2, seed=0)(torch.zeros(5, 3, 16, 16)).shape
    torch.Size([5, 2])
    >>> ffn_block(width=8, seed=0)(torch.zeros(2, 3, 8)).shape
    torch.Size([2, 3, 8])
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from itertools import pairwise

import torch
from torch import nn

__all__ = ["conv_net", "ffn_block", "relu_mlp"]


def _seeded(seed: int, build: Callable[[], nn.Sequential]) -> nn.Sequential:
    """``build()`` with the global CPU generator seeded, and restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def relu_mlp(sizes: Sequence[int], seed: int) -> nn.Sequential:
    """``Linear → ReLU`` for every hidden size, then a ``Linear`` output; PyTorch's default init.

    Args:
        sizes: ``(inputs, hidden..., outputs)``.
        seed: seed of the initial weights (the caller's global RNG is left alone).
    """
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must be at least (inputs, outputs), all >= 1; got {sizes}")

    def build() -> nn.Sequential:
        layers: list[nn.Module] = []
        for fan_in, fan_out in pairwise(sizes[:-1]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
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
) -> nn.Sequential:
    """Blocks of ``Conv3×3(pad 1) → BatchNorm → ReLU [→ MaxPool2]``, then a linear head.

    Args:
        channels: output channels of each block.
        classes: outputs of the head.
        seed: seed of the initial weights (the caller's global RNG is left alone).
        in_channels: image channels.
        image_size: height = width of the input; must be divisible by 2 once per pooling.
        pool_after: indices of the blocks followed by max-pooling (``None``: every block).
    """
    pooled = set(range(len(channels)) if pool_after is None else pool_after)
    if not channels or image_size % (2 ** len(pooled)):
        raise ValueError(
            f"image_size {image_size} must be divisible by 2**{len(pooled)} (one per pooling)"
        )

    def build() -> nn.Sequential:
        layers: list[nn.Module] = []
        fan_in = in_channels
        for block, width in enumerate(channels):
            layers += [nn.Conv2d(fan_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
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
