"""Recording one training pass: which producer was called on what, and every node's shape.

A pass is either a replay of ``forward`` (`trace_forward`) or the user's own pass, recorded
as it runs until its backward (`PassRecorder`).
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from .layers import Node, is_layer

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
        self.nonzero_pads: set[Node] = set()
        self._outputs: dict[Node, weakref.ref[Tensor]] = {}  # to notice a node replaced
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
                self._outputs.setdefault(tensor.grad_fn, weakref.ref(tensor))
        if func is F.pad and isinstance(out, Tensor) and _pad_value(args, kwargs) != 0:
            self.nonzero_pads.add(out.grad_fn)
        return out

    def replaced(self, node: Node) -> bool:
        """Whether the tensor ``node`` made was modified in place since: an in-place op on a
        view of it (dropout after a flatten) gave it another node, and ``node`` is dead."""
        ref = self._outputs.get(node)
        tensor = None if ref is None else ref()
        return tensor is not None and tensor.grad_fn is not node


def _pad_value(args: Any, kwargs: Mapping[str, Any]) -> float:
    """The constant of an ``F.pad`` call (0 for its other modes)."""
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
    value = kwargs.get("value", args[3] if len(args) > 3 else None)
    return float(value or 0.0) if mode == "constant" else 0.0


@dataclass
class Call:
    in_node: Node
    out_node: Node
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    calls: int = 1
    more: list[tuple[Node, Node]] = field(default_factory=list)  # (in, out) of later calls


def _record_call(calls: dict[str, Call], name: str, inputs: tuple[Any, ...], output: Any) -> None:
    """Note one call of producer ``name``: its input's and output's nodes and shapes."""
    x = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
    in_node = x.grad_fn if x is not None else None
    out_node = output.grad_fn if isinstance(output, Tensor) else None
    if name in calls:
        calls[name].calls += 1
        calls[name].more.append((in_node, out_node))
        return
    calls[name] = Call(
        in_node,
        out_node,
        tuple(x.shape) if x is not None else (),
        tuple(output.shape) if isinstance(output, Tensor) else (),
    )


@dataclass
class _Notes:
    """What module hooks report of a pass: producer calls and BatchNorm calls."""

    calls: dict[str, Call] = field(default_factory=dict)
    norms: dict[Node, str] = field(default_factory=dict)  # a BatchNorm's output: its name
    norm_inputs: dict[Node, str] = field(default_factory=dict)
    norm_calls: Counter[str] = field(default_factory=Counter)

    def note(self, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        """Module ``name`` returned ``output`` from ``inputs``."""
        if is_layer(module):
            _record_call(self.calls, name, inputs, output)
        elif isinstance(module, _BatchNorm):
            self.norm_calls[name] += 1
            if isinstance(output, Tensor) and output.grad_fn is not None:
                self.norms[output.grad_fn] = name
            x = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
            if x is not None and x.grad_fn is not None:
                self.norm_inputs[x.grad_fn] = name


@dataclass
class Trace:
    calls: dict[str, Call]
    norms: dict[Node, str]
    shapes: dict[Node, tuple[int, ...]]
    roots: set[Node]
    hidden: set[Node]  # computed in forward() but not returned: auxiliary losses, stored tensors
    keep_alive: Any
    norm_calls: Counter[str] = field(default_factory=Counter)
    inside: set[Node] | None = None  # nodes made inside the model's modules (None: all)
    scope: str = "per forward pass"  # what a count of calls is counted over
    norm_inputs: dict[Node, str] = field(default_factory=dict)  # a BatchNorm's input: its name
    nonzero_pads: set[Node] = field(default_factory=set)  # padded with a constant other than 0


def trace_forward(root: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Trace:
    """Run ``root`` on one batch and record the pass (the caller restores buffers and RNG)."""
    notes = _Notes()
    handles = [
        module.register_forward_hook(partial(_on_call, notes, name))
        for name, module in root.named_modules()
        if is_layer(module) or isinstance(module, _BatchNorm)
    ]
    try:
        with torch.enable_grad(), replaying(), _ShapeRecorder() as recorder:
            out = root(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    roots = set(_nodes_of(out))
    returned = reachable(roots)
    hidden = {n for n in recorder.shapes if n not in returned and not recorder.replaced(n)}
    for call in notes.calls.values():  # a consumer's input shape is known even if unrecorded
        if call.in_node is not None:
            recorder.shapes.setdefault(call.in_node, call.in_shape)
    return Trace(
        notes.calls,
        notes.norms,
        recorder.shapes,
        roots,
        hidden,
        out,
        notes.norm_calls,
        norm_inputs=notes.norm_inputs,
        nonzero_pads=recorder.nonzero_pads,
    )


def _on_call(
    notes: _Notes, name: str, module: nn.Module, inputs: tuple[Any, ...], output: Any
) -> None:
    notes.note(name, module, inputs, output)


def reachable(roots: set[Node]) -> set[Node]:
    seen: set[Node] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(child for child, _ in node.next_functions if child is not None)
    return seen


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

    Examples:
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
        >>> from gxd_optim.discovery import analyse
        >>> analyse(net, seen[0], reference="mean")[0]["0"].consumers
        ('2',)
    """

    def __init__(self, on_backward: Callable[[list[Tensor]], None]) -> None:
        self.notes = _Notes()
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
            self.notes.note(name, module, args, output)
        if not self._entered:
            self.tops.append((inputs, _nodes_of(output)))

    def trace(self, tensors: Iterable[Tensor] | None = None) -> Trace:
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
        notes = self.notes
        for call in notes.calls.values():
            if call.in_node is not None:
                shapes.setdefault(call.in_node, call.in_shape)
        return Trace(
            notes.calls,
            notes.norms,
            shapes,
            roots,
            set(),
            None,
            notes.norm_calls,
            inside,
            "in one training step",
            notes.norm_inputs,
            self._shapes.nonzero_pads,
        )
