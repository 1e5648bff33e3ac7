"""Small models that cover every pattern `GXDReset` supports, each built from a plain spec.

A spec is a frozen dataclass of a few integers and names, so a test can print it, compare
it and draw it with hypothesis (`gxd_optim.testing.strategies`). `build` turns a spec into
its model, `example_input` into a matching batch.

Examples:
    >>> import torch
    >>> spec = CNNSpec(in_channels=2, channels=(4, 3), size=8, outputs=2, pool="max")
    >>> model = build(spec)
    >>> model(example_input(spec, batch=5)).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "MLP",
    "POOLS",
    "CNNSpec",
    "MLPSpec",
    "activation",
    "build",
    "example_input",
]

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
"""Activation names of a spec: modules, an in-place ReLU and a functional ``F.relu``."""

POOLS = ("none", "max", "avg", "adaptive")
"""Pooling after each convolution of a `CNNSpec` (``adaptive``: one global pool at the end)."""


def activation(name: str) -> nn.Module:
    """The activation module of a spec name (``functional_relu`` is applied in ``forward``).

    Args:
        name: one of `ACTIVATIONS`.

    Raises:
        ValueError: for another name.

    Examples:
        >>> activation("leaky")
        LeakyReLU(negative_slope=0.1)
    """
    modules: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU,
        "relu_inplace": lambda: nn.ReLU(inplace=True),
        "functional_relu": nn.Identity,
        "tanh": nn.Tanh,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "leaky": lambda: nn.LeakyReLU(0.1),
        "sigmoid": nn.Sigmoid,
    }
    if name not in modules:
        raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
    return modules[name]()


@dataclass(frozen=True)
class MLPSpec:
    """An `MLP`: ``inputs → widths... → outputs``.

    Attributes:
        inputs: input features.
        widths: hidden units per hidden layer.
        outputs: outputs of the (each) head.
        act: activation name, one of `ACTIVATIONS`.
        norm: a ``BatchNorm1d`` after each hidden Linear.
        two_heads: two output heads reading the last hidden layer, concatenated.

    Examples:
        >>> MLPSpec(3, (5, 4), 2).input_shape
        (3,)
    """

    inputs: int
    widths: tuple[int, ...]
    outputs: int
    act: str = "relu"
    norm: bool = False
    two_heads: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample."""
        return (self.inputs,)


class MLP(nn.Module):
    """Linear → [BatchNorm1d] → activation, repeated; one or two Linear output heads.

    Examples:
        >>> MLP(MLPSpec(3, (5,), 2, two_heads=True))(torch.randn(4, 3)).shape
        torch.Size([4, 4])
    """

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
        """Apply the hidden layers and the head(s) to ``x`` of shape ``[N, inputs]``."""
        for layer, norm, act in zip(self.hidden, self.norms, self.acts, strict=True):
            x = act(norm(layer(x)))
            if self.spec.act == "functional_relu":
                x = F.relu(x)
        out: Tensor = self.head(x)
        if self.head2 is not None:
            out = torch.cat([out, self.head2(x)], dim=1)
        return out


@dataclass(frozen=True)
class CNNSpec:
    """A `CNN`: 3×3 convolutions on ``size × size`` images, flattened into a Linear head.

    Attributes:
        in_channels: input channels.
        channels: output channels per convolution.
        size: image height and width.
        outputs: outputs of the head.
        act: activation name, one of `ACTIVATIONS`.
        norm: a ``BatchNorm2d`` after each convolution.
        padding: zero padding of each convolution (``1`` keeps the size).
        pool: one of `POOLS`; ``max``/``avg`` halve the size after each convolution (while it
            is at least 2).
        hidden: units of a hidden Linear between the flatten and the head (``0``: none).
        bias: whether the convolutions have a bias (without one, the reference is zero).

    Examples:
        >>> CNNSpec(1, (3,), 8, 2).input_shape
        (1, 8, 8)
    """

    in_channels: int
    channels: tuple[int, ...]
    size: int
    outputs: int
    act: str = "relu"
    norm: bool = False
    padding: int = 0
    pool: str = "none"
    hidden: int = 0
    bias: bool = True

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample."""
        return (self.in_channels, self.size, self.size)


class CNN(nn.Module):
    """Conv2d → [BatchNorm2d] → activation → [pool], repeated; flatten; [Linear → act]; Linear.

    Raises:
        ValueError: when the convolutions leave no pixel, or ``pool`` is not in `POOLS`.

    Examples:
        >>> CNN(CNNSpec(2, (4, 3), 8, 2, padding=1, hidden=5))(torch.randn(3, 2, 8, 8)).shape
        torch.Size([3, 2])
    """

    def __init__(self, spec: CNNSpec) -> None:
        super().__init__()
        if spec.pool not in POOLS:
            raise ValueError(f"unknown pool {spec.pool!r}; expected one of {POOLS}")
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
            if side < 1:
                raise ValueError(f"{spec} leaves no pixel after its convolutions")
            if spec.pool in ("max", "avg") and side >= 2:
                side //= 2
        if spec.pool == "adaptive":
            side = 1
        features = spec.channels[-1] * side * side
        self.fc = nn.Linear(features, spec.hidden) if spec.hidden else None
        self.fc_act = activation(spec.act)
        self.head = nn.Linear(spec.hidden or features, spec.outputs)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the convolutions, the flatten and the Linear layers to ``[N, C, H, W]``."""
        for conv, norm, act in zip(self.convs, self.norms, self.acts, strict=True):
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
        out: Tensor = self.head(x)
        return out


def build(spec: MLPSpec | CNNSpec) -> MLP | CNN:
    """The model of a spec, initialised from the global random state.

    Examples:
        >>> type(build(MLPSpec(3, (4,), 1))).__name__
        'MLP'
    """
    return MLP(spec) if isinstance(spec, MLPSpec) else CNN(spec)


def example_input(
    spec: MLPSpec | CNNSpec,
    batch: int,
    *,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A standard-normal batch of ``batch`` samples for the model of ``spec``.

    Args:
        spec: the model's spec.
        batch: number of samples.
        dtype: floating-point type of the batch.
        generator: the random source (default: the global one).

    Examples:
        >>> example_input(CNNSpec(1, (3,), 8, 2), batch=4).shape
        torch.Size([4, 1, 8, 8])
    """
    return torch.randn((batch, *spec.input_shape), dtype=dtype, generator=generator)
