"""Guards for a model that changes under the wrapper, and for two wrappers on one model.

`ModelWatch` notices the changes that continual-learning code makes between tasks: a head
replaced or added (``model.head = nn.Linear(...)``, ``model.append(...)``, a growing
classifier), weights assigned anew (``layer.weight = nn.Parameter(...)``,
``load_state_dict(assign=True)``). Every module and parameter registration goes through
``torch.nn.Module``'s global registration hooks, so the watch sees them without a per-step
cost. A removal registers nothing; `ModelWatch.moved` checks, before anything is written,
that each layer is still the module the model holds under its name.

`claim` records which parameters a wrapper's resets write, so that a second wrapper over the
same parameters fails at once instead of resetting the same units twice.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)
from torch.utils.hooks import RemovableHandle

__all__ = ["ModelWatch", "check_claims", "claim", "release"]


class ModelWatch:
    """Notices modules and parameters assigned on any module of ``model``.

    Args:
        model: the model's root module (wrappers stripped).
        touched: names of the modules the resets write.

    Attributes:
        change: what changed first (``None`` while nothing has).

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> watch = ModelWatch(net, ["0", "2"])
        >>> net[2] = nn.Linear(3, 4)
        >>> watch.change
        'module `2` was assigned'
        >>> watch.close()
    """

    def __init__(self, model: nn.Module, touched: Iterable[str]) -> None:
        self.root = model
        self.change: str | None = None
        self._names: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary(
            {module: name for name, module in model.named_modules()}
        )
        self._touched = {name: weakref.ref(model.get_submodule(name)) for name in touched}
        me = weakref.ref(self)

        def on_module(module: nn.Module, name: str, value: Any) -> None:
            watch = me()
            if watch is not None:
                watch._note(module, name, "module")

        def on_parameter(module: nn.Module, name: str, value: Any) -> None:
            watch = me()
            if watch is not None:
                watch._note(module, name, "parameter")

        self._handles = [
            register_module_module_registration_hook(on_module),
            register_module_parameter_registration_hook(on_parameter),
        ]
        weakref.finalize(self, _remove, self._handles)

    def _note(self, module: nn.Module, name: str, kind: str) -> None:
        where = self._names.get(module)
        if where is not None and self.change is None:
            self.change = f"{kind} `{f'{where}.{name}' if where else name}` was assigned"

    def installed(self) -> dict[str, nn.Module]:
        """The watched modules as they were when the watch began (those still alive)."""
        return {
            name: module for name, ref in self._touched.items() if (module := ref()) is not None
        }

    def moved(self, names: Iterable[str]) -> str | None:
        """The first of ``names`` that the model no longer holds as the watched module."""
        for name in names:
            module = self._touched[name]() if name in self._touched else None
            try:
                current = self.root.get_submodule(name)
            except AttributeError:
                return f"`{name}` is no longer in the model"
            if current is not module:
                return f"`{name}` is no longer the module it was"
        return None

    def close(self) -> None:
        """Stop watching."""
        _remove(self._handles)


def _remove(handles: list[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()


_WRITERS: dict[int, tuple[weakref.ref[Tensor], weakref.ref[Any]]] = {}
"""Parameter identity -> (the parameter, the wrapper whose resets write it)."""


def _conflicts(owner: object, params: dict[str, Tensor]) -> list[str]:
    found = []
    for name, param in params.items():
        entry = _WRITERS.get(id(param))
        if entry is not None and entry[0]() is param:
            other = entry[1]()
            if other is not None and other is not owner:
                found.append(name)
    return found


def claim(owner: object, params: dict[str, Tensor]) -> None:
    """Record that ``owner``'s resets write ``params`` (named for the error).

    Raises:
        ValueError: another live wrapper writes one of them; nothing is recorded.
    """
    check_claims(owner, params)
    for stale in [k for k, (p, o) in _WRITERS.items() if p() is None or o() is None]:
        del _WRITERS[stale]
    for param in params.values():
        _WRITERS[id(param)] = (weakref.ref(param), weakref.ref(owner))


def check_claims(owner: object, params: dict[str, Tensor]) -> None:
    """Raise if another live wrapper writes any of ``params`` (see `claim`).

    Raises:
        ValueError: naming the parameters, with the fix.
    """
    conflicts = _conflicts(owner, params)
    if conflicts:
        gc.collect()  # a wrapper dropped without close() may only wait for the collector
        conflicts = _conflicts(owner, params)
    if conflicts:
        raise ValueError(
            f"another GXDReset already resets {conflicts[:4]}{' ...' if len(conflicts) > 4 else ''}"
            " of this model. Call close() on that wrapper before wrapping the model again "
            "(e.g. for a new task), or give each wrapper an optimizer over other parameters."
        )


def release(owner: object) -> None:
    """Forget every parameter ``owner`` claimed."""
    for key in [k for k, (_, o) in _WRITERS.items() if o() is owner or o() is None]:
        del _WRITERS[key]
