"""Run a model without leaving a trace: its buffers and the random number generators restored."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["untouched"]


@contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Restore ``model``'s buffers (BatchNorm statistics) and the RNG state on exit.

    Examples:
        >>> net = nn.BatchNorm1d(2)
        >>> with untouched(net):
        ...     _ = net(torch.randn(8, 2) + 5.0)
        >>> net.running_mean
        tensor([0., 0.])
    """
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
