"""How one operation of a recorded pass moves a producer's units, or mixes them.

The walk of `gxd_optim.discovery.graph` follows a producer's output upwards through the
autograd graph; `step` says where the units sit after each operation (`Layout`), or why the
operation mixes them. Binary operations are accepted here when their output has the units'
shape; the walk then checks what the other operand is (`others`): a parameter (a bias, a layer
scale), the same units (``x * sigmoid(x)``), another producer's units (a gate), or anything
else (a residual connection: mixed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .layers import Node

__all__ = ["BINARY", "HINTS", "Layout", "op_name", "others", "step"]

_UNARY = frozenset(
    {
        *("Relu", "Threshold", "LeakyRelu", "Tanh", "Sigmoid", "Gelu", "Silu", "Elu", "Celu"),
        *("Hardtanh", "Softplus", "Mish", "Hardswish", "Hardsigmoid", "LogSigmoid"),
        *("RreluWithNoise", "PreluKernel", "NativeDropout", "ToCopy", "Clone", "Alias"),
        *("Pow", "Exp", "Log", "Sqrt", "Rsqrt", "Neg", "Abs", "Erf", "Reciprocal", "Clamp"),
        *("MulScalar", "AddScalar", "DivScalar", "SubScalar", "Hardshrink", "Softshrink"),
        "RegisterPostBackwardFunction",  # FSDP2's identity on a sharded module's inputs
    }
)
BINARY = frozenset({"Add", "Sub", "Mul", "Div"})
"""Binary operations: per unit when the other operand is a parameter or the same units."""

_NORMS = frozenset({"NativeBatchNorm", "CudnnBatchNorm", "MiopenBatchNorm"})
_POOLS = frozenset(
    {
        *("MaxPool2DWithIndices", "MaxPool3DWithIndices", "AvgPool2D", "AvgPool3D"),
        *("AdaptiveAvgPool2D", "AdaptiveAvgPool3D", "AdaptiveMaxPool2D", "AdaptiveMaxPool3D"),
    }
)
_EDGE_PADS = frozenset(  # a constant unit stays that constant: a mean reference still folds
    {
        *("ReflectionPad1D", "ReflectionPad2D", "ReflectionPad3D"),
        *("ReplicationPad1D", "ReplicationPad2D", "ReplicationPad3D"),
    }
)
_REDUCTIONS = frozenset({"Mean", "Sum"})
_RESHAPES = frozenset({"View", "ReshapeAlias", "UnsafeView", "Squeeze", "Unsqueeze"})
HINTS = {
    "Add": "an addition of two tensors (a residual connection?)",
    "Sub": "a subtraction of two tensors",
    "Mul": "a product of two tensors (gating?)",
    "Div": "a division of two tensors",
    "Cat": "a concatenation",
    "Stack": "a stack",
    "NativeLayerNorm": "LayerNorm",
    "NativeGroupNorm": "GroupNorm",
    "Softmax": "a softmax (attention?)",
    "LogSoftmax": "a log-softmax",
    "Bmm": "a matrix product (attention?)",
    "Mm": "a matrix product",
    "Expand": "a broadcast (inside a batched matrix product?)",
}
"""What each mixing operation probably is, for the reasons in `GXDReset.skipped`."""


def op_name(node: Node) -> str:
    """The operation of an autograd node: ``ReluBackward0`` -> ``Relu``."""
    name = type(node).__name__
    cut = name.rfind("Backward")
    return name[:cut] if cut > 0 else name


@dataclass(frozen=True)
class Layout:
    """Where the units sit in a tensor: indices ``[i·k, (i+1)·k)`` of ``axis`` are unit ``i``.

    Attributes:
        shape: the tensor's shape.
        axis: the dimension that holds the units.
        k: consecutive elements of ``axis`` per unit (after a flatten).
        stale: inside a composite op whose inner shapes were not recorded.
        padded: zeros were padded around the units (a mean reference cannot be folded then).
    """

    shape: tuple[int, ...]
    axis: int
    k: int = 1
    stale: bool = False
    padded: bool = False


def others(node: Node, came_from: Node) -> list[Node]:
    """The inputs of ``node`` other than ``came_from`` that carry a gradient and are not
    parameters (a parameter's node is ``AccumulateGrad``)."""
    return [
        child
        for child, _ in node.next_functions
        if child is not None and child is not came_from and type(child).__name__ != "AccumulateGrad"
    ]


def step(
    node: Node,
    came_from: Node,
    layout: Layout,
    units: int,
    shapes: Mapping[Node, Any],
    nonzero_pads: set[Node],
) -> Layout | str:
    """Follow one operation upwards from its input ``came_from``; the new layout, or why the
    units are mixed."""
    op = op_name(node)
    out_shape = shapes.get(node)
    mixed = f"its units are mixed by {HINTS.get(op, f'`{op}`')} before any consumer"
    if op in _UNARY:
        return layout
    if op in BINARY:
        if out_shape is None or out_shape == layout.shape:
            return layout
        if op == "Mul":
            return "its units scale a tensor of another shape (a squeeze-excitation gate?)"
        return mixed
    if op == "CopySlices":  # an in-place op on a view (dropout after a flatten)
        return mixed if others(node, came_from) else layout
    if op in ("Permute", "Transpose"):
        return _permuted(node, op, layout)
    if op == "AsStrided":  # a view taken again after an in-place op on it
        return _as_strided(node, layout, units)
    if op == "ConstantPadNd" or op in _EDGE_PADS:
        return _padded(node, op, layout, out_shape, node in nonzero_pads, mixed)
    if op in _NORMS or op in _POOLS:
        if layout.axis != 1 or layout.k != 1:
            return f"{mixed} (it does not act on the unit axis)"
        if op in _NORMS:
            return layout
        pooled = Layout(out_shape, 1, padded=layout.padded) if out_shape is not None else None
        return pooled or replace(layout, stale=True)
    if op in _REDUCTIONS and hasattr(node, "_saved_dim"):
        return _reduced(node, op, layout, mixed)
    if op in _RESHAPES:
        if out_shape is None:  # e.g. the unsqueeze inside a 1-d pooling
            return replace(layout, stale=True)
        if layout.stale:
            if out_shape[: layout.axis + 1] == layout.shape[: layout.axis + 1]:
                return Layout(out_shape, layout.axis, layout.k, padded=layout.padded)
            return f"could not follow `{op}`"
        return _reshape(layout, out_shape, units)
    return mixed


def _permuted(node: Node, op: str, layout: Layout) -> Layout | str:
    """The units' axis after a permutation of the dimensions."""
    rank = len(layout.shape)
    if op == "Permute":
        dims = [d % rank for d in node._saved_dims]
    else:
        dims = list(range(rank))
        a, b = (d % rank for d in (node._saved_dim0, node._saved_dim1))
        dims[a], dims[b] = dims[b], dims[a]
    if dims[0] != 0:
        what = "a transpose" if op == "Transpose" else "a permutation"
        return f"its units are mixed by {what} of the batch dimension before any consumer"
    shape = tuple(layout.shape[d] for d in dims)
    return replace(layout, shape=shape, axis=dims.index(layout.axis))


def _as_strided(node: Node, layout: Layout, units: int) -> Layout | str:
    size, stride = tuple(node._saved_size), tuple(node._saved_stride)
    contiguous = tuple(_prod(size[i + 1 :]) for i in range(len(size)))
    if (
        node._saved_storage_offset != 0
        or stride != contiguous
        or _prod(size) != _prod(layout.shape)
    ):
        return "could not follow a strided view"
    return _reshape(layout, size, units)


def _padded(
    node: Node,
    op: str,
    layout: Layout,
    out_shape: tuple[int, ...] | None,
    nonzero: bool,
    mixed: str,
) -> Layout | str:
    """Padding of the positions around the units (never of the units' own axis)."""
    if nonzero:
        return "its units are padded with a constant other than 0 before any consumer"
    if out_shape is None or len(out_shape) != len(layout.shape):
        return f"could not follow `{op}`"
    changed = [d for d, (a, b) in enumerate(zip(out_shape, layout.shape, strict=True)) if a != b]
    if 0 in changed or layout.axis in changed or (changed and layout.k != 1):
        return mixed
    padded = layout.padded or (op == "ConstantPadNd" and bool(changed))
    return replace(layout, shape=out_shape, padded=padded)


def _reduced(node: Node, op: str, layout: Layout, mixed: str) -> Layout | str:
    shape = tuple(getattr(node, "_saved_self_sym_sizes", layout.shape))
    if shape[: layout.axis + 1] != layout.shape[: layout.axis + 1]:
        return f"could not follow `{op}`"
    dims = {(d - 2**64 if d >= 2**63 else d) % len(shape) for d in node._saved_dim}
    if 0 in dims or layout.axis in dims:
        return mixed
    if node._saved_keepdim:
        kept = tuple(1 if i in dims else size for i, size in enumerate(shape))
        return replace(layout, shape=kept)
    shape = tuple(size for i, size in enumerate(shape) if i not in dims)
    axis = layout.axis - sum(d < layout.axis for d in dims)
    return replace(layout, shape=shape, axis=axis)


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _reshape(layout: Layout, new: tuple[int, ...], units: int) -> Layout | str:
    """Locate the unit axis after a view: unit ``i`` spans ``k·inner`` consecutive elements."""
    old = layout.shape
    outer, span = _prod(old[: layout.axis]), layout.k * _prod(old[layout.axis + 1 :])
    if new[:1] != old[:1]:
        return "a view merges the batch dimension with others"
    for b in range(1, len(new)):
        inner = _prod(new[b + 1 :])
        if _prod(new[:b]) == outer and new[b] % units == 0 and (new[b] // units) * inner == span:
            return Layout(new, b, new[b] // units, padded=layout.padded)
    return "a view splits its units across dimensions"
