"""The vocabulary of discovery: producers, their units, the pairs that read them.

A *producer* is a Linear/Conv layer whose output features (channels) are the units; a
*consumer* reads them as its input. `Edge` and `LayerInfo` describe what discovery found;
the helpers here say what a layer is and whether a reset can write it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import parametrize

PRODUCER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Module types whose output units GXDReset can reset."""

NOT_CALLED = "not called in the forward pass"
"""The reason recorded for a Linear/Conv layer the discovery pass did not call."""

OUTPUT = "its units are part of the model's output"
"""The reason recorded for a layer whose units leave the model before any consumer."""

Node = Any  # torch.autograd.graph.Node; its C++ subclasses are not typed


@dataclass(frozen=True)
class Edge:
    """One consumer reading a producer's units.

    Attributes:
        consumer: qualified name of the consumer layer.
        columns_per_unit: ``k``: unit ``i`` is read on consumer input columns
            ``[i·k, (i+1)·k)`` (``k > 1`` when a conv output is flattened into a Linear).
        reference: ``"mean"`` or ``"zero"``: the reference this pair realises.
        note: why the reference differs from the one asked for (empty if it does not).

    Example:
        >>> import torch
        >>> from gxd_optim import GXDReset
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
        >>> opt = GXDReset(torch.optim.SGD(net.parameters(), lr=0.1), net)
        >>> opt.discover(torch.randn(2, 1, 4, 4))
        >>> opt.layers["0"].edges
        (Edge(consumer='3', columns_per_unit=4, reference='mean', note=''),)
    """

    consumer: str
    columns_per_unit: int
    reference: str
    note: str = ""


@dataclass(frozen=True)
class LayerInfo:
    """An eligible producer: its units and the layers that read them.

    Attributes:
        name: qualified name in ``model.named_modules()`` (wrapper prefixes stripped).
        num_units: output features (Linear) or output channels (Conv).
        edges: one `Edge` per consumer.
        norms: BatchNorm layers between the producer and its consumers.
        path: the operations found between producer and consumers (autograd node names).

    Example:
        >>> import torch
        >>> from gxd_optim import GXDReset
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
        >>> opt = GXDReset(torch.optim.SGD(net.parameters(), lr=0.1), net)
        >>> opt.discover(torch.randn(5, 3))
        >>> info = opt.layers["0"]
        >>> (info.num_units, info.consumers, info.norms)
        (4, ('3',), ('1',))
    """

    name: str
    num_units: int
    edges: tuple[Edge, ...]
    norms: tuple[str, ...] = ()
    path: tuple[str, ...] = field(default=(), compare=False)

    @property
    def consumers(self) -> tuple[str, ...]:
        """Qualified names of the layers that read this layer's units."""
        return tuple(edge.consumer for edge in self.edges)

    @property
    def touched(self) -> tuple[str, ...]:
        """The modules a reset of this layer writes: it, its consumers and its BatchNorms."""
        return (self.name, *self.consumers, *self.norms)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip ``DistributedDataParallel``/``DataParallel`` (``.module``) and
    ``torch.compile`` (``._orig_mod``) wrappers, so names carry no wrapper prefix."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and type(model).__name__ in {"DistributedDataParallel", "DataParallel"}:
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def producer_modules(model: nn.Module) -> dict[str, nn.Module]:
    """All Linear/Conv{1,2,3}d layers of ``model`` by qualified name (parametrized ones too;
    subclasses with their own forward are not included)."""
    return {
        name: module
        for name, module in unwrap_model(model).named_modules()
        if _base_type(module) in PRODUCER_TYPES
    }


def _base_type(module: nn.Module) -> type[nn.Module]:
    """The layer's class; for a parametrized layer, the class it was before."""
    if parametrize.is_parametrized(module):
        return type(module).__bases__[0]
    return type(module)


def requested_reference(consumer: nn.Module, requested: str) -> tuple[str, str]:
    """The reference a consumer can realise exactly, and why if it differs from ``requested``.

    A mean reference is folded into the consumer's bias; that needs a bias, and for a
    convolution no zero padding (at the borders the padded zeros, not ``r``, are read).
    """
    if requested == "zero":
        return "zero", ""
    if getattr(consumer, "bias", None) is None:
        return "zero", "consumer has no bias to fold the mean into"
    if isinstance(consumer, nn.modules.conv._ConvNd) and consumer.padding_mode == "zeros":
        padding = consumer.padding
        padded = (
            any(k > 1 for k in consumer.kernel_size)
            if padding == "same"
            else isinstance(padding, tuple) and any(p > 0 for p in padding)
        )
        if padded:
            return "zero", "zero-padded convolution: a bias fold differs from the mean at borders"
    return "mean", ""


def weight_problem(module: nn.Module) -> str:
    """Why the reset cannot write into this layer's weights ('' if it can)."""
    if parametrize.is_parametrized(module):
        return "parametrized (torch.nn.utils.parametrize): not supported yet"
    if not isinstance(module._parameters.get("weight"), nn.Parameter):
        return "holding a weight that is not a Parameter (pruned?): not supported"
    return ""


def edge_for(consumer: nn.Module, consumer_name: str, num_units: int, reference: str) -> Edge | str:
    """Build the edge from a producer of ``num_units`` to ``consumer``, or say why not."""
    problem = weight_problem(consumer)
    if problem:
        return f"its consumer `{consumer_name}` is {problem}"
    if isinstance(consumer, nn.Linear):
        if consumer.in_features % num_units:
            return (
                f"its consumer `{consumer_name}` has {consumer.in_features} inputs, "
                f"not a multiple of its {num_units} units"
            )
        k = consumer.in_features // num_units
    else:
        conv: Any = consumer
        if conv.groups != 1:
            return f"its consumer `{consumer_name}` is a grouped convolution (not supported yet)"
        if conv.in_channels != num_units:
            return (
                f"its consumer `{consumer_name}` has {conv.in_channels} input channels, "
                f"not its {num_units} units"
            )
        k = 1
    ref, note = requested_reference(consumer, reference)
    return Edge(consumer_name, k, ref, note)


def layer_tensors(module: nn.Module) -> list[tuple[str, Tensor]]:
    """A layer's (or BatchNorm's) weight and bias, where it has them."""
    found = ((name, getattr(module, name, None)) for name in ("weight", "bias"))
    return [(name, param) for name, param in found if isinstance(param, Tensor)]


def layer_params(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """A Linear/Conv layer's weight and bias, typed."""
    weight, bias = module.weight, module.bias
    assert isinstance(weight, Tensor) and (bias is None or isinstance(bias, Tensor))
    return weight, bias


def num_units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else int(module.out_channels)  # type: ignore[arg-type]
