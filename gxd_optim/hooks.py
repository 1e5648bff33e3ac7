"""Module hooks that serve one module of one owner, and pickle inert.

A model deep-copied for an EMA/SWA teacher, or pickled with ``torch.save``, carries its
hooks along. These hooks hold only weak references, ignore every module but the one they
were registered on, and turn into `Inert` when copied or pickled, so copies never feed (or
trigger) the wrapper that hooked the original.

Under ``torch.compile`` the hooks run eagerly: ``torch.compiler.disable`` makes the graph break
around each call, so the statistics (and the alias whose backward pre-hook reports gradients)
stay off the compiled graphs, and the wrapper's state never becomes a guard that recompiles.
Outside compilation the hook calls its method directly: the disabling wrapper costs a few
microseconds per call, a share of the step on small networks.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

__all__ = ["Inert", "OwnedHook"]


class Inert:
    """What a hook becomes in a pickled or deep-copied model: nothing."""

    def __call__(self, *args: Any) -> None:
        return None


class OwnedHook:
    """Calls ``getattr(owner, method)(key, module, *args)`` for its own module only."""

    def __init__(self, owner: object, module: nn.Module, method: str, key: str) -> None:
        self._owner = weakref.ref(owner)
        self._module = weakref.ref(module)
        self._method = method
        self._key = key

    def __call__(self, module: nn.Module, *args: Any) -> Any:
        if torch.compiler.is_compiling():  # traced: break the graph, run the call eagerly
            return self._eager(module, *args)
        return self._call(module, *args)  # eager already: no wrapper to go through

    def _call(self, module: nn.Module, *args: Any) -> Any:
        owner = self._owner()
        if owner is None or module is not self._module():
            return None
        return getattr(owner, self._method)(self._key, module, *args)

    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _eager(self, module: nn.Module, *args: Any) -> Any:
        return self._call(module, *args)

    def __reduce__(self) -> tuple[type[Inert], tuple[()]]:
        return (Inert, ())
