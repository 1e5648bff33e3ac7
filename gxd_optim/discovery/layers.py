"""The vocabulary of discovery: producers, their units, the pairs that read them.

A *producer* is a Linear/Conv layer whose output features (channels) are the units; a
*consumer* reads them as its input. `Edge` and `LayerInfo` describe what discovery found;
the helpers here say what a layer is and whether a reset can write it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..sharded import held, is_sharded, whole

PRODUCER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Module types whose output units GXDReset can reset."""

NOT_CALLED = "not called in the forward pass"
"""The reason recorded for a Linear/Conv layer the discovery pass did not call."""

OUTPUT = "its units are part of the model's output"
"""The reason recorded for a layer whose units leave the model before any consumer."""

PADDED = "zero-padded before its consumer: a fold differs from the mean at borders"
"""Why a pair whose units are padded with zeros on their way uses the zero reference."""

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
        norm: the BatchNorm after a consumer without bias that takes the mean's fold (its
            ``running_mean``), or empty.

    Examples:
        >>> import torch
        >>> from gxd_optim import GXDReset
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
        >>> opt = GXDReset(torch.optim.SGD(net.parameters(), lr=0.1), net)
        >>> opt.discover(torch.randn(2, 1, 4, 4))
        >>> opt.layers["0"].edges
        (Edge(consumer='3', columns_per_unit=4, reference='mean', note='', norm=''),)
    """

    consumer: str
    columns_per_unit: int
    reference: str
    note: str = ""
    norm: str = ""


@dataclass(frozen=True)
class LayerInfo:
    """An eligible producer: its units and the layers that read them.

    Attributes:
        name: qualified name in ``model.named_modules()`` (wrapper prefixes stripped).
        num_units: output features (Linear) or output channels (Conv).
        edges: one `Edge` per consumer.
        norms: BatchNorm layers between the producer and its consumers.
        path: the operations found between producer and consumers (autograd node names).
        partners: the producers whose units are multiplied with these (a gated MLP's ``up``
            for its ``gate``): unit ``i`` is the product, and a reset redraws row ``i`` of
            each.

    Examples:
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
    partners: tuple[str, ...] = ()

    @property
    def consumers(self) -> tuple[str, ...]:
        """Qualified names of the layers that read this layer's units."""
        return tuple(edge.consumer for edge in self.edges)

    @functools.cached_property
    def touched(self) -> tuple[str, ...]:
        """The modules a reset of this layer writes: it, its consumers and its BatchNorms."""
        absorbing = tuple(e.norm for e in self.edges if e.norm)
        return (self.name, *self.partners, *self.consumers, *self.norms, *absorbing)


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


def is_transposed(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D``: a Linear whose weight is ``[in, out]``."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and isinstance(weight, Tensor)
        and weight.dim() == 2
    )


def is_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a Linear/Conv layer (a subclass, or transformers' ``Conv1D``)."""
    return isinstance(module, PRODUCER_TYPES) or is_transposed(module)


def reads_features(module: nn.Module) -> bool:
    """Whether the layer reads (and writes) its features on the last axis, as a Linear does."""
    return isinstance(module, nn.Linear) or is_transposed(module)


def canonical(tensor: Tensor, module: nn.Module) -> Tensor:
    """A tensor shaped like the layer's weight, as a view ``[out, in, *kernel]``."""
    return tensor.t() if is_transposed(module) else tensor


def dense_inputs(weight: Tensor, module: nn.Module) -> Tensor:
    """A grouped convolution's weight as the dense ``[out, in, *kernel]`` it acts as (zeros
    outside each group's block); any other layer's weight as it is."""
    groups = int(getattr(module, "groups", 1))
    if groups == 1:
        return weight
    per_out, per_in = weight.shape[0] // groups, weight.shape[1]
    dense = weight.new_zeros(weight.shape[0], per_in * groups, *weight.shape[2:])
    for group in range(groups):
        rows = slice(group * per_out, (group + 1) * per_out)
        dense[rows, group * per_in : (group + 1) * per_in] = weight[rows]
    return dense


def producer_modules(model: nn.Module) -> dict[str, nn.Module]:
    """All Linear/Conv{1,2,3}d layers of ``model`` by qualified name (subclasses, parametrized
    layers and transformers' ``Conv1D`` too; `forward_problem` says which behave as one)."""
    return {name: m for name, m in unwrap_model(model).named_modules() if is_layer(m)}


def forward_problem(module: nn.Module) -> str:
    """Why a subclass of a Linear/Conv layer does not compute what its class does ('' if it
    does): checked on a small random input against the base class's ``forward``.

    A subclass that casts or reshapes passes; one that standardises its weight in ``forward``
    (so that zeroing a column changes the others) does not.
    """
    if is_transposed(module) or parametrize.is_parametrized(module):
        return ""
    base = next(t for t in type(module).__mro__ if t in PRODUCER_TYPES)
    if type(module).forward is base.forward:
        return ""
    weight = module.weight  # as the forward reads it: FSDP2's unsharded weight during a pass
    assert isinstance(weight, Tensor)
    if is_sharded(weight):
        return (
            f"a subclass of {base.__name__} with a forward of its own, sharded by fully_shard: "
            "its forward cannot be checked against its base class's on sharded weights "
            "(not supported yet)"
        )
    generator = torch.Generator().manual_seed(0)
    if isinstance(module, nn.Linear):
        shape: tuple[int, ...] = (2, module.in_features)
    else:
        conv: Any = module
        size = [
            d * (k - 1) + s + 1
            for k, d, s in zip(conv.kernel_size, conv.dilation, conv.stride, strict=True)
        ]
        shape = (1, conv.in_channels, *size)
    x = torch.randn(shape, generator=generator, dtype=torch.float64).to(weight)
    try:
        with torch.no_grad():
            same = torch.allclose(module.forward(x), base.forward(module, x), rtol=1e-4, atol=1e-5)
    except Exception as error:
        return f"a subclass of {base.__name__} whose forward fails on a probe ({error!r})"
    if not same:
        return f"a subclass of {base.__name__} whose forward computes something else"
    return ""


def requested_reference(
    consumer: nn.Module, requested: str, norm: str = "", padded: bool = False
) -> tuple[str, str]:
    """The reference a consumer can realise exactly, and why if it differs from ``requested``.

    A mean reference is folded into the consumer's bias, or, for a consumer without one whose
    output only a BatchNorm ``norm`` reads, into what that BatchNorm subtracts. A convolution
    must not pad its input with zeros, nor may the input be padded before it (``padded``): at
    the borders the zeros, not ``r``, are read.
    """
    if requested == "zero":
        return "zero", ""
    if padded:
        return "zero", PADDED
    if getattr(consumer, "bias", None) is None and not norm:
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
    return forward_problem(module)


def edge_for(
    consumer: nn.Module,
    consumer_name: str,
    num_units: int,
    reference: str,
    norm: str = "",
    padded: bool = False,
) -> Edge | str:
    """Build the edge from a producer of ``num_units`` to ``consumer``, or say why not.

    ``norm`` names a BatchNorm that alone reads the consumer's output; ``padded``, whether
    the units were padded with zeros on their way (see `requested_reference`).
    """
    problem = weight_problem(consumer)
    if problem:
        return f"its consumer `{consumer_name}` is {problem}"
    inputs = in_features(consumer)
    if reads_features(consumer):
        if inputs % num_units:
            return (
                f"its consumer `{consumer_name}` has {inputs} inputs, "
                f"not a multiple of its {num_units} units"
            )
        k = inputs // num_units
    else:
        if inputs != num_units:
            return (
                f"its consumer `{consumer_name}` has {inputs} input channels, "
                f"not its {num_units} units"
            )
        k = 1
    ref, note = requested_reference(consumer, reference, norm, padded)
    absorbed = norm if ref == "mean" and getattr(consumer, "bias", None) is None else ""
    return Edge(consumer_name, k, ref, note, absorbed)


def layer_tensors(module: nn.Module) -> list[tuple[str, Tensor]]:
    """A layer's (or BatchNorm's) weight and bias, where it has them (as `layer_params`
    names them under FSDP2)."""
    found = ((name, held(module, name, getattr(module, name, None))) for name in ("weight", "bias"))
    return [(name, param) for name, param in found if isinstance(param, Tensor)]


def layer_params(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """A Linear/Conv layer's weight and bias, typed: the parameters the optimizer holds.

    Under FSDP2 (``fully_shard``) these are the sharded DTensors, also during a forward or
    backward pass, while FSDP2 has the unsharded ones registered (`gxd_optim.sharded.held`).
    """
    weight, bias = held(module, "weight", module.weight), held(module, "bias", module.bias)
    assert isinstance(weight, Tensor) and (bias is None or isinstance(bias, Tensor))
    return weight, bias


def whole_weight(module: nn.Module) -> Tensor:
    """A layer's whole weight as a regular tensor, to read (not to write): the unsharded
    weight FSDP2 has registered during a pass, else the sharded one gathered (a collective
    that every rank reaches alike, since FSDP2 swaps weights alike on every rank)."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    return whole(weight)


def num_units(module: nn.Module) -> int:
    """The layer's units: output features (Linear, ``Conv1D``) or output channels (Conv)."""
    if is_transposed(module):
        return int(layer_params(module)[0].shape[1])
    return module.out_features if isinstance(module, nn.Linear) else int(module.out_channels)  # type: ignore[arg-type]


def in_features(module: nn.Module) -> int:
    """The layer's inputs: input features (Linear, ``Conv1D``) or input channels (Conv)."""
    if is_transposed(module):
        return int(layer_params(module)[0].shape[0])
    return module.in_features if isinstance(module, nn.Linear) else int(module.in_channels)  # type: ignore[arg-type]
