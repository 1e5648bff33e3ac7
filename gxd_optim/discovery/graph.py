"""The walk of a recorded pass: from each producer's output up to the layers that read it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from .checks import Checks
from .layers import (
    NOT_CALLED,
    OUTPUT,
    PRODUCER_TYPES,
    Edge,
    LayerInfo,
    Node,
    edge_for,
    num_units,
    producer_modules,
    unwrap_model,
)
from .trace import Call, Trace, trace_forward


def _parents(roots: set[Node]) -> dict[Node, list[Node]]:
    parents: dict[Node, list[Node]] = {}
    seen: set[Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                parents.setdefault(child, []).append(node)
                stack.append(child)
    return parents


def _internal_owner(calls: Mapping[str, Call]) -> dict[Node, str]:
    """Map every autograd node created inside a Linear/Conv call to that layer's name."""
    owner: dict[Node, str] = {}
    for name, call in calls.items():
        for in_node, out_node in [(call.in_node, call.out_node), *call.more]:
            stack = [out_node] if out_node is not None else []
            while stack:
                node = stack.pop()
                if node is in_node or node in owner or type(node).__name__ == "AccumulateGrad":
                    continue
                owner[node] = name
                stack.extend(child for child, _ in node.next_functions if child is not None)
    return owner


_UNARY = frozenset(
    {
        *("Relu", "Threshold", "LeakyRelu", "Tanh", "Sigmoid", "Gelu", "Silu", "Elu", "Celu"),
        *("Hardtanh", "Softplus", "Mish", "Hardswish", "Hardsigmoid", "LogSigmoid"),
        *("RreluWithNoise", "PreluKernel", "NativeDropout", "ToCopy", "Clone", "Alias"),
    }
)
_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})
_NORMS = frozenset({"NativeBatchNorm", "CudnnBatchNorm", "MiopenBatchNorm"})
_POOLS = frozenset(
    {
        *("MaxPool2DWithIndices", "MaxPool3DWithIndices", "AvgPool2D", "AvgPool3D"),
        *("AdaptiveAvgPool2D", "AdaptiveAvgPool3D", "AdaptiveMaxPool2D", "AdaptiveMaxPool3D"),
    }
)
_REDUCTIONS = frozenset({"Mean", "Sum"})
_RESHAPES = frozenset({"View", "ReshapeAlias", "UnsafeView", "Squeeze", "Unsqueeze"})
_HINTS = {
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
    "Permute": "a permutation of dimensions",
    "Transpose": "a transpose",
    "Expand": "a broadcast (inside a batched matrix product?)",
}


def _op_name(node: Node) -> str:
    name = type(node).__name__
    cut = name.rfind("Backward")
    return name[:cut] if cut > 0 else name


@dataclass(frozen=True)
class _Layout:
    """Where the units sit in a tensor: indices ``[i·k, (i+1)·k)`` of ``axis`` are unit ``i``."""

    shape: tuple[int, ...]
    axis: int
    k: int = 1
    stale: bool = False  # inside a composite op whose inner shapes were not recorded


def _step(node: Node, layout: _Layout, units: int, shapes: Mapping[Node, Any]) -> _Layout | str:
    """Follow one operation upwards; return the new layout or why the units are mixed."""
    op = _op_name(node)
    out_shape = shapes.get(node)
    mixed = f"its units are mixed by {_HINTS.get(op, f'`{op}`')} before any consumer"
    if op in _UNARY:
        return layout
    if op in _BINARY:
        others = [
            child
            for child, _ in node.next_functions[1:]
            if child is not None and type(child).__name__ != "AccumulateGrad"
        ]
        if others or (out_shape is not None and out_shape != layout.shape):
            return mixed
        return layout
    if op in _NORMS or op in _POOLS:
        if layout.axis != 1 or layout.k != 1:
            return f"{mixed} (it does not act on the unit axis)"
        if op in _NORMS:
            return layout
        return _Layout(out_shape, 1) if out_shape is not None else replace(layout, stale=True)
    if op in _REDUCTIONS and hasattr(node, "_saved_dim"):
        shape = tuple(getattr(node, "_saved_self_sym_sizes", layout.shape))
        if shape[: layout.axis + 1] != layout.shape[: layout.axis + 1]:
            return f"could not follow `{op}`"
        dims = {(d - 2**64 if d >= 2**63 else d) % len(shape) for d in node._saved_dim}
        if 0 in dims or layout.axis in dims:
            return mixed
        if node._saved_keepdim:
            kept = tuple(1 if i in dims else size for i, size in enumerate(shape))
            return _Layout(kept, layout.axis, layout.k, layout.stale)
        shape = tuple(size for i, size in enumerate(shape) if i not in dims)
        axis = layout.axis - sum(d < layout.axis for d in dims)
        return _Layout(shape, axis, layout.k, layout.stale)
    if op in _RESHAPES:
        if out_shape is None:  # e.g. the unsqueeze inside a 1-d pooling
            return replace(layout, stale=True)
        if layout.stale:
            if out_shape[: layout.axis + 1] == layout.shape[: layout.axis + 1]:
                return _Layout(out_shape, layout.axis, layout.k)
            return f"could not follow `{op}`"
        return _reshape(layout, out_shape, units)
    return mixed


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _reshape(layout: _Layout, new: tuple[int, ...], units: int) -> _Layout | str:
    """Locate the unit axis after a view: unit ``i`` spans ``k·inner`` consecutive elements."""
    old = layout.shape
    outer, span = _prod(old[: layout.axis]), layout.k * _prod(old[layout.axis + 1 :])
    if new[:1] != old[:1]:
        return "a view merges the batch dimension with others"
    for b in range(1, len(new)):
        inner = _prod(new[b + 1 :])
        if _prod(new[:b]) == outer and new[b] % units == 0 and (new[b] // units) * inner == span:
            return _Layout(new, b, new[b] // units)
    return "a view splits its units across dimensions"


def _walk(
    name: str,
    module: nn.Module,
    trace: Trace,
    parents: Mapping[Node, list[Node]],
    owner: Mapping[Node, str],
) -> tuple[list[tuple[str, _Layout]], list[str], list[str]] | str:
    """Walk upwards from producer ``name``; return (consumer reads, norms, ops) or a reason."""
    call = trace.calls[name]
    units = num_units(module)
    axis = len(call.out_shape) - 1 if isinstance(module, nn.Linear) else 1
    reads: list[tuple[str, _Layout]] = []
    norms: list[str] = []
    ops: list[str] = []
    stack: list[tuple[Node, _Layout]] = [(call.out_node, _Layout(call.out_shape, axis))]
    seen: set[Node] = set()
    while stack:
        node, layout = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in trace.roots:
            return OUTPUT
        if node in trace.hidden and not parents.get(node):
            return "its units reach a tensor forward() does not return (an auxiliary loss?)"
        for parent in parents.get(node, []):
            consumer = owner.get(parent)
            if consumer is not None:
                entered = trace.calls[consumer]
                if all(node is not n for n in (entered.in_node, *(i for i, _ in entered.more))):
                    return f"its output reaches `{consumer}` other than as that layer's input"
                reads.append((consumer, layout))
                continue
            nxt = _step(parent, layout, units, trace.shapes)
            if isinstance(nxt, str):  # mixed: by the model, or by what reads its output
                outside = trace.inside is not None and parent not in trace.inside
                return OUTPUT if outside else nxt
            op = _op_name(parent)
            if op not in ops:
                ops.append(op)
            if parent in trace.norms and trace.norms[parent] not in norms:
                norms.append(trace.norms[parent])
            stack.append((parent, nxt))
    return reads, norms, ops


def _read_edge(
    consumer: nn.Module, consumer_name: str, layout: _Layout, units: int, reference: str
) -> Edge | str:
    """Check that ``consumer`` reads the units on its feature axis, then build the edge."""
    feature_axis = len(layout.shape) - 1 if isinstance(consumer, nn.Linear) else 1
    if layout.axis != feature_axis:
        return f"its consumer `{consumer_name}` does not read its units on its feature axis"
    edge = edge_for(consumer, consumer_name, units, reference)
    if isinstance(edge, Edge) and edge.columns_per_unit != layout.k:
        return f"its consumer `{consumer_name}` reads its units in an order that cannot be mapped"
    return edge


def discover(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    reference: str,
    checks: Checks | None = None,
) -> tuple[dict[str, LayerInfo], dict[str, str]]:
    """Run one forward pass of ``model`` and find every eligible producer and its consumers.

    The caller is responsible for making the pass side-effect free (buffers, RNG).

    Args:
        model: the model (wrappers are stripped).
        args, kwargs: one batch of inputs for ``model``.
        reference: the reference asked for (``"mean"`` or ``"zero"``).
        checks: what the reset must not write (default: `Checks.of` the model).

    Returns:
        ``(layers, skipped)``: eligible producers by name, and ``{name: reason}`` for every
        Linear/Conv layer that is not eligible.
    """
    root = unwrap_model(model)
    return analyse(root, trace_forward(root, args, kwargs), reference=reference, checks=checks)


def analyse(
    root: nn.Module, trace: Trace, *, reference: str, checks: Checks | None = None
) -> tuple[dict[str, LayerInfo], dict[str, str]]:
    """Find every eligible producer of ``root`` and its consumers in a recorded pass."""
    checks = Checks.of(root) if checks is None else checks
    modules = producer_modules(root)
    named = dict(root.named_modules())
    parents = _parents(trace.roots | trace.hidden)
    owner = _internal_owner(trace.calls)
    layers: dict[str, LayerInfo] = {}
    skipped: dict[str, str] = {
        name: f"a subclass of a Linear/Conv layer (`{type(module).__name__}`), not handled"
        for name, module in root.named_modules()
        if isinstance(module, PRODUCER_TYPES) and name not in modules
    }

    def problem(name: str) -> str:
        """What the reset must not write first, then how the pass called the layer."""
        return checks.layer(name, modules[name]) or _call_problem(
            trace.calls.get(name), trace.scope
        )

    for name, module in modules.items():
        found = problem(name) or _walk(name, module, trace, parents, owner)
        if isinstance(found, str):
            skipped[name] = found
            continue
        reads, norms, ops = found
        why = next((w for n in norms if (w := checks.norm(n, named[n], trace.norm_calls[n]))), "")
        if why:
            skipped[name] = why
            continue
        edges: list[Edge] = []
        for consumer, layout in reads:
            if consumer not in modules:
                skipped[name] = f"its consumer `{consumer}` is {skipped[consumer]}"
                break
            reason = problem(consumer)
            edge = (
                f"its consumer `{consumer}` is {reason}"
                if reason
                else _read_edge(modules[consumer], consumer, layout, num_units(module), reference)
            )
            if isinstance(edge, str):
                skipped[name] = edge
                break
            edges.append(edge)
        else:
            if not edges:
                skipped[name] = "no layer reads its units"
            else:
                layers[name] = LayerInfo(
                    name, num_units(module), tuple(edges), tuple(norms), tuple(ops)
                )
    return layers, skipped


def _call_problem(call: Call | None, scope: str) -> str:
    """Why a producer's calls in the pass rule it out (``''`` if they do not)."""
    if call is None:
        return NOT_CALLED
    if call.calls > 1:
        return f"called {call.calls} times {scope} (shared weights)"
    if call.out_node is None:
        return "without gradient in the forward pass (frozen?)"
    return ""
