"""The walk of a recorded pass: from each producer's output up to the layers that read it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .checks import Checks
from .layers import (
    NOT_CALLED,
    OUTPUT,
    Edge,
    LayerInfo,
    Node,
    edge_for,
    num_units,
    producer_modules,
    reads_features,
    unwrap_model,
)
from .ops import HINTS, Layout, op_name, others, step
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


@dataclass
class _Walk:
    """What lies above one tensor of units: the layers that read it and what it passes.

    Attributes:
        reads: each consumer, with the layout in which it reads the units.
        norms: the BatchNorms between (their entries of the units are reset too).
        ops: the operations passed (autograd names), for `LayerInfo.path`.
        region: every node the walk passed, with the units' layout there.
        gates: products with another tensor of units (``act(gate(x)) * up(x)``): the node,
            its other inputs (which must be another producer's units) and the units' layout
            as they enter it.
    """

    reads: list[tuple[str, Layout]] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    region: dict[Node, Layout] = field(default_factory=dict)
    gates: list[tuple[Node, list[Node], Layout]] = field(default_factory=list)


def _walk(
    start: Node,
    layout: Layout,
    units: int,
    trace: Trace,
    parents: Mapping[Node, list[Node]],
    owner: Mapping[Node, str],
) -> _Walk | str:
    """Walk upwards from a tensor of units (``start``, laid out as ``layout``) to the layers
    that read it; return what it found or why the units are mixed or leave the model."""
    found = _Walk(region={start: layout})
    joins: list[tuple[Node, list[Node], Layout]] = []
    stack: list[tuple[Node, Layout]] = [(start, layout)]
    seen: set[Node] = set()
    while stack:
        node, layout = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in trace.roots:
            return _resolve(found, joins, early=True) or OUTPUT
        if node in trace.hidden and not parents.get(node):
            hidden = "its units reach a tensor forward() does not return (an auxiliary loss?)"
            return _resolve(found, joins, early=True) or hidden
        for parent in parents.get(node, []):
            consumer = owner.get(parent)
            if consumer is not None:
                entered = trace.calls[consumer]
                if all(node is not n for n in (entered.in_node, *(i for i, _ in entered.more))):
                    return f"its output reaches `{consumer}` other than as that layer's input"
                found.reads.append((consumer, layout))
                continue
            nxt = step(parent, node, layout, units, trace.shapes, trace.nonzero_pads)
            if isinstance(nxt, str):  # mixed: by the model, or by what reads its output
                outside = trace.inside is not None and parent not in trace.inside
                return _resolve(found, joins, early=True) or (OUTPUT if outside else nxt)
            extra = others(parent, node)
            if extra and trace.inside is not None and parent not in trace.inside:
                return _resolve(found, joins, early=True) or OUTPUT  # the loss, say
            if extra:
                joins.append((parent, extra, layout))
            op = op_name(parent)
            if op not in found.ops:
                found.ops.append(op)
            if parent in trace.norms and trace.norms[parent] not in found.norms:
                found.norms.append(trace.norms[parent])
            found.region.setdefault(parent, nxt)
            stack.append((parent, nxt))
    return _resolve(found, joins) or found


def _resolve(
    found: _Walk, joins: list[tuple[Node, list[Node], Layout]], early: bool = False
) -> str:
    """Check the binary operations passed: the other operand must be the same units (then
    nothing is mixed) or, for a product, another producer's (a gate, noted in ``found``).
    A walk that ``early`` ended for another reason reports a product as what mixed first."""
    for node, extra, layout in joins:
        ours = [o for o in extra if _same(found.region.get(o), layout)]
        if len(ours) == len(extra):
            continue  # the same units on both sides: x * sigmoid(x), say
        if ours or op_name(node) != "Mul" or early:
            what = HINTS.get(op_name(node), f"`{op_name(node)}`")
            return f"its units are mixed by {what} before any consumer"
        found.gates.append((node, extra, layout))
    return ""


def _same(a: Layout | None, b: Layout) -> bool:
    return a is not None and (a.shape, a.axis, a.k) == (b.shape, b.axis, b.k)


def _start(name: str, module: nn.Module, trace: Trace) -> tuple[Node, Layout]:
    """Where a producer's walk starts: its output, units on the feature or channel axis."""
    call = trace.calls[name]
    axis = len(call.out_shape) - 1 if reads_features(module) else 1
    return call.out_node, Layout(call.out_shape, axis)


def _read_edge(
    consumer: nn.Module,
    consumer_name: str,
    layout: Layout,
    units: int,
    reference: str,
    norm: str,
) -> Edge | str:
    """Check that ``consumer`` reads the units on its feature axis, then build the edge."""
    feature_axis = len(layout.shape) - 1 if reads_features(consumer) else 1
    if layout.axis != feature_axis:
        return f"its consumer `{consumer_name}` does not read its units on its feature axis"
    edge = edge_for(consumer, consumer_name, units, reference, norm, layout.padded)
    if isinstance(edge, Edge) and edge.columns_per_unit != layout.k:
        return f"its consumer `{consumer_name}` reads its units in an order that cannot be mapped"
    return edge


def _norm_after(consumer: str, trace: Trace, parents: Mapping[Node, list[Node]]) -> str:
    """The BatchNorm that alone reads a consumer's output, called once ('' if none)."""
    out = trace.calls[consumer].out_node
    norm = trace.norm_inputs.get(out, "")
    readers = set(parents.get(out, []))
    if not norm or len(readers) != 1 or trace.norm_calls[norm] != 1:
        return ""
    (reader,) = readers
    return norm if trace.norms.get(reader) == norm else ""


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
    skipped: dict[str, str] = {}
    walks: dict[str, _Walk] = {}

    def problem(name: str) -> str:
        """What the reset must not write first, then how the pass called the layer."""
        return checks.layer(name, modules[name]) or _call_problem(
            trace.calls.get(name), trace.scope
        )

    for name, module in modules.items():
        found = problem(name) or _walk(
            *_start(name, module, trace), num_units(module), trace, parents, owner
        )
        if isinstance(found, str):
            skipped[name] = found
        else:
            walks[name] = found
    units: dict[str, tuple[tuple[str, ...], _Walk]] = {}
    for name, walk in walks.items():
        if name in skipped or name in units:
            continue
        if not walk.gates:
            units[name] = ((), walk)
            continue
        gated = _pair_gates(name, walks, modules, trace, parents, owner)
        if isinstance(gated, str):
            skipped[name] = gated
            continue
        primary, partner, merged = gated
        units[primary] = ((partner,), merged)
        skipped[partner] = f"its units are gated by those of `{primary}`: reset with that layer"
    layers: dict[str, LayerInfo] = {}
    for name, (partners, walk) in units.items():
        info = _layer(
            name,
            partners,
            walk,
            modules,
            named,
            skipped,
            problem,
            checks,
            trace,
            parents,
            reference,
        )
        if isinstance(info, str):
            skipped[name] = info
        else:
            layers[name] = info
    return layers, skipped


def _layer(
    name: str,
    partners: tuple[str, ...],
    walk: _Walk,
    modules: Mapping[str, nn.Module],
    named: Mapping[str, nn.Module],
    skipped: Mapping[str, str],
    problem: Callable[[str], str],
    checks: Checks,
    trace: Trace,
    parents: Mapping[Node, list[Node]],
    reference: str,
) -> LayerInfo | str:
    """The `LayerInfo` of producer ``name`` from its walk, or why it is not eligible."""
    why = next((w for n in walk.norms if (w := checks.norm(n, named[n], trace.norm_calls[n]))), "")
    if why:
        return why
    units = num_units(modules[name])
    edges: list[Edge] = []
    for consumer, layout in walk.reads:
        if consumer not in modules:
            return f"its consumer `{consumer}` is {skipped[consumer]}"
        reason = problem(consumer)
        if reason:
            return f"its consumer `{consumer}` is {reason}"
        norm = _norm_after(consumer, trace, parents)
        if norm and checks.norm(norm, named[norm]):
            norm = ""
        edge = _read_edge(modules[consumer], consumer, layout, units, reference, norm)
        if isinstance(edge, str):
            return edge
        edges.append(edge)
    if not edges:
        return "no layer reads its units"
    return LayerInfo(name, units, tuple(edges), tuple(walk.norms), tuple(walk.ops), partners)


def _pair_gates(
    name: str,
    walks: Mapping[str, _Walk],
    modules: Mapping[str, nn.Module],
    trace: Trace,
    parents: Mapping[Node, list[Node]],
    owner: Mapping[Node, str],
) -> tuple[str, str, _Walk] | str:
    """Pair a producer with the one its units are multiplied by (a gated MLP), or say why not.

    Unit ``i`` is then the product of both producers' units ``i``: only the product may reach
    a consumer, through one product node that both walks pass. Returns the first of the two in
    the model's order, the other, and the walk from the product.
    """
    mixed = "its units are mixed by a product of two tensors (gating?) before any consumer"
    excitation = "its units are scaled by a gate of another shape (squeeze-excitation?)"
    walk = walks[name]
    if len(walk.gates) != 1:
        return mixed
    node, extra, ours = walk.gates[0]
    if any(trace.shapes.get(e, ours.shape) != ours.shape for e in extra):
        return excitation
    partner = next(
        (n for n, w in walks.items() if n != name and all(e in w.region for e in extra)), None
    )
    if partner is None:
        return mixed
    theirs = walks[partner]
    if not _same(theirs.region.get(node), walk.region[node]):
        return excitation
    if (
        len(theirs.gates) != 1
        or theirs.gates[0][0] is not node
        or not all(e in walk.region for e in theirs.gates[0][1])
        or num_units(modules[partner]) != num_units(modules[name])
    ):
        return mixed
    merged = _walk(node, walk.region[node], num_units(modules[name]), trace, parents, owner)
    if isinstance(merged, str) or merged.gates:
        return merged if isinstance(merged, str) else mixed
    reads = {c for c, _ in merged.reads}
    if {c for c, _ in walk.reads} != reads or {c for c, _ in theirs.reads} != reads:
        return "its units reach a layer other than through their product with a gate"
    merged.norms = list(dict.fromkeys([*walk.norms, *theirs.norms]))
    merged.ops = list(dict.fromkeys([*walk.ops, *theirs.ops]))
    first, second = sorted((name, partner), key=list(modules).index)
    return first, second, merged


def _call_problem(call: Call | None, scope: str) -> str:
    """Why a producer's calls in the pass rule it out (``''`` if they do not)."""
    if call is None:
        return NOT_CALLED
    if call.calls > 1:
        return f"called {call.calls} times {scope} (shared weights)"
    if call.out_node is None:
        return "without gradient in the forward pass (frozen?)"
    return ""
