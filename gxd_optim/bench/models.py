"""The benchmarks' networks, built from a seed without touching the global random state.

Example:
    >>> a, b = relu_mlp((4, 8, 2), seed=1), relu_mlp((4, 8, 2), seed=1)
    >>> all(bool((p == q).all()) for p, q in zip(a.parameters(), b.parameters()))
    True
    >>> small_cnn(channels=(4, 8), classes=2, seed=0)(torch.zeros(5, 3, 16, 16)).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

__all__ = ["relu_mlp", "small_cnn"]


def relu_mlp(sizes: Sequence[int], seed: int) -> nn.Sequential:
    """``Linear → ReLU`` for every hidden size, then a ``Linear`` output; PyTorch's default init.

    Args:
        sizes: ``(inputs, hidden..., outputs)``.
        seed: seed of the initial weights (the caller's global RNG is left alone).
    """
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must be at least (inputs, outputs), all >= 1; got {sizes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for fan_in, fan_out in pairwise(sizes[:-1]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-2], sizes[-1]))
        return nn.Sequential(*layers)


def small_cnn(
    channels: Sequence[int], classes: int, seed: int, in_channels: int = 3, image_size: int = 16
) -> nn.Sequential:
    """Blocks of ``Conv3×3(pad 1) → BatchNorm → ReLU → MaxPool2``, then a linear head.

    Args:
        channels: output channels of each block.
        classes: outputs of the head.
        seed: seed of the initial weights (the caller's global RNG is left alone).
        in_channels: image channels.
        image_size: height = width of the input; must be divisible by ``2**len(channels)``.
    """
    if not channels or image_size % (2 ** len(channels)):
        raise ValueError(
            f"image_size {image_size} must be divisible by 2**{len(channels)} (one pool per block)"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        fan_in = in_channels
        for width in channels:
            layers += [
                nn.Conv2d(fan_in, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            fan_in = width
        side = image_size // 2 ** len(channels)
        layers += [nn.Flatten(), nn.Linear(fan_in * side * side, classes)]
        return nn.Sequential(*layers)
