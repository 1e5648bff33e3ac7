"""Find the units: which Linear/Conv layers produce them and which layers read them.

Discovery records the autograd graph of one training pass and walks it upwards from every
producer's output. The walk may pass through per-unit operations (activations, dropout,
BatchNorm, pooling, casts, flatten/view); it stops at the first Linear/Conv that reads the
tensor as its input (a *consumer*). Anything that mixes units (a residual add, a
concatenation, LayerNorm, attention, a permutation) or hands them to the model's output makes
the producer ineligible, with the reason recorded; so does anything the reset must not write
(`Checks`): an excluded, frozen or shared layer, a BatchNorm shared by two producers.

The pass is either a replay of the model's ``forward`` on one batch (`discover`) or the
user's own training pass, recorded as it runs until its backward (`PassRecorder`): the second
serves models trained through another method than ``forward`` (a policy's
``evaluate_actions``, a LightningModule's ``training_step`` that calls a submodule).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

__all__ = [
    "NOT_CALLED",
    "OUTPUT",
    "PRODUCER_TYPES",
    "Checks",
    "Edge",
    "LayerInfo",
    "PassRecorder",
    "analyse",
    "discover",
    "explicit_layers",
    "is_replaying",
    "producer_modules",
    "replaying",
    "unwrap_model",
]

PRODUCER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Module types whose output units GXDReset can reset."""

NOT_CALLED = "not called in the forward pass"
"""The reason recorded for a Linear/Conv layer the discovery pass did not call."""

OUTPUT = "its units are part of the model's output"
"""The reason recorded for a layer whose units leave the model before any consumer."""

_STATE = threading.local()


@contextmanager
def replaying() -> Iterator[None]:
    """Mark a discovery pass of this thread: the wrappers' hooks ignore the calls it makes."""
    depth = getattr(_STATE, "replays", 0)
    _STATE.replays = depth + 1
    try:
        yield
    finally:
        _STATE.replays = depth


def is_replaying() -> bool:
    """Whether this thread is running a discovery pass (see `replaying`)."""
    return getattr(_STATE, "replays", 0) > 0


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


def _edge_for(
    consumer: nn.Module, consumer_name: str, num_units: int, reference: str
) -> Edge | str:
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


def _params(module: nn.Module) -> list[tuple[str, Tensor]]:
    """A layer's (or BatchNorm's) weight and bias, where it has them."""
    found = ((name, getattr(module, name, None)) for name in ("weight", "bias"))
    return [(name, param) for name, param in found if isinstance(param, Tensor)]


@dataclass(frozen=True)
class Checks:
    """What the reset must never write, whatever the graph says.

    A layer is untouchable when the user excluded it, when its weights cannot be written in
    place (`weight_problem`), when a parameter of it is frozen (``requires_grad=False``), held
    by another module too (tied weights) or not in the optimizer.

    Attributes:
        exclude: names of the layers the user asked to leave alone (``exclude=``).
        trainable: identities of the optimizer's parameters (``None``: every parameter).
        holders: for every parameter that several modules hold, their names.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> net[2].requires_grad_(False)
        Linear(in_features=3, out_features=1, bias=True)
        >>> Checks.of(net).layer("2", net[2])
        'frozen (its weight has requires_grad=False)'
    """

    exclude: frozenset[str] = frozenset()
    trainable: frozenset[int] | None = None
    holders: Mapping[int, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        model: nn.Module,
        exclude: Iterable[str] = (),
        trainable: Iterable[Tensor] | None = None,
    ) -> Checks:
        """The checks for ``model``, with ``exclude`` and the optimizer's parameters."""
        holders: dict[int, list[tuple[str, nn.Module]]] = {}
        for name, module in unwrap_model(model).named_modules(remove_duplicate=False):
            for param in module._parameters.values():
                if param is not None:
                    held = holders.setdefault(id(param), [])
                    if all(other is not module for _, other in held):
                        held.append((name, module))
        return cls(
            frozenset(exclude),
            None if trainable is None else frozenset(id(p) for p in trainable),
            {key: tuple(n for n, _ in held) for key, held in holders.items() if len(held) > 1},
        )

    def layer(self, name: str, module: nn.Module) -> str:
        """Why the reset must not write this Linear/Conv layer (``''`` if it may)."""
        if name in self.exclude:
            return "excluded by the user (exclude=)"
        return weight_problem(module) or self._parameters(name, module)

    def norm(self, name: str, norm: nn.Module, calls: int = 1) -> str:
        """Why the reset must not write this BatchNorm (``''`` if it may)."""
        if calls > 1:
            return f"its BatchNorm `{name}` is called {calls} times per pass (shared by layers)"
        problem = self._parameters(name, norm)
        return f"its BatchNorm `{name}` is {problem}" if problem else ""

    def _parameters(self, name: str, module: nn.Module) -> str:
        for attr, param in _params(module):
            if not param.requires_grad:
                return f"frozen (its {attr} has requires_grad=False)"
            others = [n for n in self.holders.get(id(param), ()) if n != name]
            if others:
                return f"sharing its {attr} with `{others[0]}` (tied weights)"
            if self.trainable is not None and id(param) not in self.trainable:
                return (
                    "not in the optimizer" if attr == "weight" else f"not in the optimizer ({attr})"
                )
        return ""


def explicit_layers(
    model: nn.Module,
    layers: Mapping[str, Sequence[str]],
    reference: str,
    checks: Checks | None = None,
) -> tuple[dict[str, LayerInfo], dict[str, str]]:
    """Build layer infos from a user's ``{producer: [consumers]}`` map, trusting the paths.

    Raises:
        ValueError: a name that is not a Linear/Conv layer of the model, a producer without
            consumers or among its own consumers, a layer the reset must not write (`Checks`),
            or shapes that cannot line up.
    """
    checks = Checks.of(model) if checks is None else checks
    if not isinstance(layers, Mapping):
        raise TypeError(f"layers= must be a mapping {{producer: [consumers]}}, got {layers!r}")
    clash = sorted(set(checks.exclude) & set(layers))
    if clash:
        raise ValueError(f"layers {clash} are both in layers= and exclude=")
    modules = producer_modules(model)
    infos: dict[str, LayerInfo] = {}
    claimed: dict[str, str] = {}
    for producer, consumers in layers.items():
        if isinstance(consumers, str) or not isinstance(consumers, Sequence) or not consumers:
            raise ValueError(f"layers[{producer!r}] must be a non-empty list of consumer names")
        names = [producer, *consumers]
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ValueError(
                f"layers= names {unknown} that are not Linear/Conv layers of the model; "
                f"known: {sorted(modules)}"
            )
        if producer in consumers:
            raise ValueError(f"layers[{producer!r}] lists the producer as its own consumer")
        for name in names:
            problem = checks.layer(name, modules[name])
            if problem:
                role = "the producer" if name == producer else f"its consumer `{name}`"
                raise ValueError(f"layers[{producer!r}]: {role} is {problem}")
        units = _num_units(modules[producer])
        edges = []
        for consumer in consumers:
            if consumer in claimed:
                raise ValueError(
                    f"layers: `{consumer}` is listed as a consumer of both "
                    f"`{claimed[consumer]}` and `{producer}`; a consumer reads one producer"
                )
            claimed[consumer] = producer
            edge = _edge_for(modules[consumer], consumer, units, reference)
            if isinstance(edge, str):
                raise ValueError(f"layers[{producer!r}]: {edge}")
            if edge.columns_per_unit > 1 and isinstance(modules[producer], nn.Linear):
                raise ValueError(
                    f"layers[{producer!r}]: `{consumer}` has {edge.columns_per_unit}x more "
                    "inputs than the producer has units; a Linear producer must feed it alone"
                )
            edges.append(edge)
        infos[producer] = LayerInfo(producer, units, tuple(edges))
    return infos, {}


def layer_params(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """A Linear/Conv layer's weight and bias, typed."""
    weight, bias = module.weight, module.bias
    assert isinstance(weight, Tensor) and (bias is None or isinstance(bias, Tensor))
    return weight, bias


def _num_units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else int(module.out_channels)  # type: ignore[arg-type]


def _tensors_in(obj: object) -> Iterator[Tensor]:
    """The tensors in a (nested) tuple, list, mapping or dataclass: what a forward returns."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors_in(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from _tensors_in(item)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for item in dataclasses.fields(obj):
            yield from _tensors_in(getattr(obj, item.name))


def _nodes_of(obj: object) -> list[Node]:
    """The autograd nodes that produced the tensors in ``obj``."""
    return [t.grad_fn for t in _tensors_in(obj) if t.grad_fn is not None]


_BACKWARDS: frozenset[Callable[..., Any]] = frozenset({Tensor.backward, torch.autograd.backward})


class _ShapeRecorder(TorchFunctionMode):
    """Remembers the output shape of every autograd node created by a torch function.

    With ``on_backward``, the first backward pass started while it is active is announced
    with the tensors it starts from, before it runs (the graph is still whole then).
    """

    def __init__(self, on_backward: Callable[[list[Tensor]], None] | None = None) -> None:
        super().__init__()
        self.shapes: dict[Node, tuple[int, ...]] = {}
        self.on_backward = on_backward
        self.done = False  # a backward was announced: from now on, only pass calls through

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if self.done:
            return func(*args, **kwargs)
        if self.on_backward is not None and func in _BACKWARDS:
            self.done = True
            self.on_backward(list(_tensors_in(args[0] if args else kwargs.get("tensors"))))
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        for tensor in _tensors_in(out):
            if tensor.grad_fn is not None:
                self.shapes.setdefault(tensor.grad_fn, tuple(tensor.shape))
        return out


@dataclass
class _Call:
    in_node: Node
    out_node: Node
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    calls: int = 1
    more: list[tuple[Node, Node]] = field(default_factory=list)  # (in, out) of later calls


def _record_call(calls: dict[str, _Call], name: str, inputs: tuple[Any, ...], output: Any) -> None:
    """Note one call of producer ``name``: its input's and output's nodes and shapes."""
    x = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
    in_node = x.grad_fn if x is not None else None
    out_node = output.grad_fn if isinstance(output, Tensor) else None
    if name in calls:
        calls[name].calls += 1
        calls[name].more.append((in_node, out_node))
        return
    calls[name] = _Call(
        in_node,
        out_node,
        tuple(x.shape) if x is not None else (),
        tuple(output.shape) if isinstance(output, Tensor) else (),
    )


@dataclass
class _Trace:
    calls: dict[str, _Call]
    norms: dict[Node, str]
    shapes: dict[Node, tuple[int, ...]]
    roots: set[Node]
    hidden: set[Node]  # computed in forward() but not returned: auxiliary losses, stored tensors
    keep_alive: Any
    norm_calls: Counter[str] = field(default_factory=Counter)
    inside: set[Node] | None = None  # nodes made inside the model's modules (None: all)
    scope: str = "per forward pass"  # what a count of calls is counted over


def _trace(root: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Trace:
    calls: dict[str, _Call] = {}
    norms: dict[Node, str] = {}
    norm_calls: Counter[str] = Counter()
    handles = []

    def on_layer(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            _record_call(calls, name, inputs, output)

        return hook

    def on_norm(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            norm_calls[name] += 1
            if isinstance(output, Tensor) and output.grad_fn is not None:
                norms[output.grad_fn] = name

        return hook

    for name, module in root.named_modules():
        if isinstance(module, PRODUCER_TYPES):
            handles.append(module.register_forward_hook(on_layer(name)))
        elif isinstance(module, _BatchNorm):
            handles.append(module.register_forward_hook(on_norm(name)))
    try:
        with torch.enable_grad(), replaying(), _ShapeRecorder() as recorder:
            out = root(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    roots = set(_nodes_of(out))
    returned = _reachable(roots)
    hidden = {node for node in recorder.shapes if node not in returned}
    for call in calls.values():  # a consumer's input shape is known even for unrecorded nodes
        if call.in_node is not None:
            recorder.shapes.setdefault(call.in_node, call.in_shape)
    return _Trace(calls, norms, recorder.shapes, roots, hidden, out, norm_calls)


def _reachable(roots: set[Node]) -> set[Node]:
    seen: set[Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(child for child, _ in node.next_functions if child is not None)
    return seen


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


def _internal_owner(calls: Mapping[str, _Call]) -> dict[Node, str]:
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
    trace: _Trace,
    parents: Mapping[Node, list[Node]],
    owner: Mapping[Node, str],
) -> tuple[list[tuple[str, _Layout]], list[str], list[str]] | str:
    """Walk upwards from producer ``name``; return (consumer reads, norms, ops) or a reason."""
    call = trace.calls[name]
    units = _num_units(module)
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
    edge = _edge_for(consumer, consumer_name, units, reference)
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
    return analyse(root, _trace(root, args, kwargs), reference=reference, checks=checks)


def analyse(
    root: nn.Module, trace: _Trace, *, reference: str, checks: Checks | None = None
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
                else _read_edge(modules[consumer], consumer, layout, _num_units(module), reference)
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
                    name, _num_units(module), tuple(edges), tuple(norms), tuple(ops)
                )
    return layers, skipped


def _call_problem(call: _Call | None, scope: str) -> str:
    """Why a producer's calls in the pass rule it out (``''`` if they do not)."""
    if call is None:
        return NOT_CALLED
    if call.calls > 1:
        return f"called {call.calls} times {scope} (shared weights)"
    if call.out_node is None:
        return "without gradient in the forward pass (frozen?)"
    return ""


class PassRecorder:
    """Records a training pass that entered the model other than through its ``forward``.

    A policy trained through ``evaluate_actions`` or a LightningModule whose
    ``training_step`` calls a submodule never runs the root's ``forward``, so no replay can
    reproduce the pass. Instead the pass itself is recorded as it runs: hooks on the model's
    modules report their calls (`enter`, `leave`), a torch function mode notes every
    operation's output shape, and the first backward announces the tensors it starts from,
    before it runs. `trace` then gives what `analyse` reads. Operations outside the model's
    modules (the loss, an action distribution) read the model's output.

    Args:
        on_backward: called with the tensors the first backward starts from.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> seen = []
        >>> recorder = PassRecorder(lambda tensors: seen.append(recorder.trace(tensors)))
        >>> recorder.start()
        >>> for name, module in net.named_children():  # what the module hooks report
        ...     _ = recorder.enter(module, (), {})
        >>> x = torch.randn(5, 3)
        >>> for name, module in net.named_children():
        ...     y = module(x)
        ...     recorder.leave(name, module, (x,), {}, y)
        ...     x = y
        >>> x.sum().backward()
        >>> recorder.stop()
        >>> analyse(net, seen[0], reference="mean")[0]["0"].consumers
        ('2',)
    """

    def __init__(self, on_backward: Callable[[list[Tensor]], None]) -> None:
        self.calls: dict[str, _Call] = {}
        self.norms: dict[Node, str] = {}
        self.norm_calls: Counter[str] = Counter()
        self.tops: list[tuple[list[Node], list[Node]]] = []  # (inputs, outputs) of outer calls
        self._entered: list[list[Node]] = []  # the input nodes of the calls under way
        self._shapes = _ShapeRecorder(on_backward)
        self.active = False

    @property
    def finished(self) -> bool:
        """Whether the backward of the recorded pass has started."""
        return self._shapes.done

    def start(self) -> None:
        """Begin noting operations (on this thread)."""
        self._shapes.__enter__()  # type: ignore[no-untyped-call]
        self.active = True

    def stop(self) -> None:
        """Stop noting operations: take the mode off this thread's stack, wherever it is."""
        if not self.active:
            return
        self.active = False
        above = []
        while torch._C._len_torch_function_stack():
            top = torch._C._pop_torch_function_stack()
            if top is self._shapes:
                break
            above.append(top)
        for mode in reversed(above):
            torch._C._push_on_torch_function_stack(mode)

    def enter(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A module of the model is called."""
        self._entered.append(_nodes_of((args, kwargs)) if not self._entered else [])

    def leave(
        self,
        name: str,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> None:
        """A module of the model returned ``output``."""
        if not self._entered:
            return  # a call that was under way before the recording started
        inputs = self._entered.pop()
        if torch.is_grad_enabled() and not self.finished:
            if isinstance(module, PRODUCER_TYPES):
                _record_call(self.calls, name, args, output)
            elif isinstance(module, _BatchNorm):
                self.norm_calls[name] += 1
                if isinstance(output, Tensor) and output.grad_fn is not None:
                    self.norms[output.grad_fn] = name
        if not self._entered:
            self.tops.append((inputs, _nodes_of(output)))

    def trace(self, tensors: Iterable[Tensor] | None = None) -> _Trace:
        """The recorded pass, its roots the nodes of ``tensors`` (the backward's start).

        Without ``tensors`` (no backward was announced) every recorded node that no other
        recorded node reads is taken as a root.
        """
        shapes = self._shapes.shapes
        if tensors is None:
            read = {child for node in shapes for child, _ in node.next_functions}
            roots = {node for node in shapes if node not in read}
        else:
            roots = {t.grad_fn for t in tensors if t.grad_fn is not None}
        inside: set[Node] = set()
        for inputs, outputs in self.tops:
            stack = list(outputs)
            while stack:
                node = stack.pop()
                if node in inside or node in inputs or type(node).__name__ == "AccumulateGrad":
                    continue
                inside.add(node)
                stack.extend(child for child, _ in node.next_functions if child is not None)
        for call in self.calls.values():
            if call.in_node is not None:
                shapes.setdefault(call.in_node, call.in_shape)
        return _Trace(
            self.calls,
            self.norms,
            shapes,
            roots,
            set(),
            None,
            self.norm_calls,
            inside,
            "in one training step",
        )
