"""``no_grad()``: `torch.no_grad`, or nothing where grad mode is off already.

The reset operator and the statistics are written under ``no_grad`` by every function that
writes them, so each is safe to call alone; called one after another inside an outer
``no_grad`` (a reset step), they then skip the mode switch, which costs as much as a small
kernel each time.

Examples:
    >>> with torch.no_grad():
    ...     no_grad() is no_grad()  # the same do-nothing context
    True
    >>> type(no_grad()).__name__
    'no_grad'
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

__all__ = ["no_grad"]

_NOTHING = contextlib.nullcontext()


def no_grad() -> AbstractContextManager[None]:
    """`torch.no_grad`, or a context that does nothing where grad mode is off already."""
    return torch.no_grad() if torch.is_grad_enabled() else _NOTHING
