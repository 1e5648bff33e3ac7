"""Small models covering every supported pattern, built from a plain spec (for hypothesis)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = (
    "relu",
    "relu_inplace",
    "functional_relu",
    "tanh",
    "gelu",
    "silu",
    "leaky",
    "sigmoid",
)


def activation(name: str) -> nn.Module:
    """The activation module for a spec name (functional ones are applied in forward)."""
    return {
        "relu": nn.ReLU(),
        "relu_inplace": nn.ReLU(inplace=True),
        "functional_relu": nn.Identity(),
        "tanh": nn.Tanh(),
        "gelu": nn.GELU(),
        "silu": nn.SiLU(),
        "leaky": nn.LeakyReLU(0.1),
        "sigmoid": nn.Sigmoid(),
    }[name]


@dataclass(frozen=True)
class MLPSpec:
    inputs: int
    widths: tuple[int, ...]
    outputs: int
    act: str = "relu"
    norm: bool = False
    two_heads: bool = False


class MLP(nn.Module):
    """Linear → [BatchNorm1d] → act, repeated; one or two output heads."""

    def __init__(self, spec: MLPSpec) -> None:
        super().__init__()
        self.spec = spec
        sizes = (spec.inputs, *spec.widths)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(b) if spec.norm else nn.Identity() for b in spec.widths
        )
        self.acts = nn.ModuleList(activation(spec.act) for _ in spec.widths)
        self.head = nn.Linear(sizes[-1], spec.outputs)
        self.head2 = nn.Linear(sizes[-1], spec.outputs) if spec.two_heads else None

    def forward(self, x: Tensor) -> Tensor:
        for layer, norm, act in zip(self.hidden, self.norms, self.acts, strict=False):
            x = act(norm(layer(x)))
            if self.spec.act == "functional_relu":
                x = F.relu(x)
        out = self.head(x)
        if self.head2 is not None:
            out = torch.cat([out, self.head2(x)], dim=1)
        return out


@dataclass(frozen=True)
class CNNSpec:
    in_channels: int
    channels: tuple[int, ...]
    size: int
    outputs: int
    act: str = "relu"
    norm: bool = False
    padding: int = 0
    pool: str = "none"  # none | max | avg | adaptive
    hidden: int = 0  # a hidden Linear after the flatten
    bias: bool = True
    extra: dict[str, int] = field(default_factory=dict, compare=False)


class CNN(nn.Module):
    """Conv → [BN] → act → [pool], repeated; torch.flatten; [Linear → act]; Linear head."""

    def __init__(self, spec: CNNSpec) -> None:
        super().__init__()
        self.spec = spec
        sizes = (spec.in_channels, *spec.channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=spec.padding, bias=spec.bias)
            for a, b in itertools.pairwise(sizes)
        )
        self.norms = nn.ModuleList(
            nn.BatchNorm2d(b) if spec.norm else nn.Identity() for b in spec.channels
        )
        self.acts = nn.ModuleList(activation(spec.act) for _ in spec.channels)
        side = spec.size
        for _ in spec.channels:
            side = side - 2 + 2 * spec.padding
            if spec.pool in ("max", "avg") and side >= 2:
                side //= 2
        if spec.pool == "adaptive":
            side = 1
        self.side = side
        features = spec.channels[-1] * side * side
        self.fc = nn.Linear(features, spec.hidden) if spec.hidden else None
        self.fc_act = activation(spec.act)
        self.head = nn.Linear(spec.hidden or features, spec.outputs)

    def forward(self, x: Tensor) -> Tensor:
        for conv, norm, act in zip(self.convs, self.norms, self.acts, strict=False):
            x = act(norm(conv(x)))
            if self.spec.act == "functional_relu":
                x = F.relu(x)
            if self.spec.pool == "max" and x.shape[-1] >= 2:
                x = F.max_pool2d(x, 2)
            elif self.spec.pool == "avg" and x.shape[-1] >= 2:
                x = F.avg_pool2d(x, 2)
        if self.spec.pool == "adaptive":
            x = F.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        if self.fc is not None:
            x = self.fc_act(self.fc(x))
        return self.head(x)
