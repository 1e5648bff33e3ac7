"""What the wrapper did: one `ResetRecord` per layer and step, kept in a bounded `ResetLog`."""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, overload

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["ResetHook", "ResetLog", "ResetRecord", "ResetSource"]

ResetHook = Callable[[str, Tensor], None]
"""``hook(layer_name, unit_indices)``, called around each layer's reset."""


@dataclass
class ResetRecord:
    """One layer's reset at one step (an entry of `GXDReset.reset_log`).

    Attributes:
        step: the committed step (`GXDReset.steps`) at which it happened.
        layer: the producer's qualified name.
        units: how many units were reset.
        predicted: ``Σ c_i`` over those units: the first-order change of the batch loss,
            from the gradients of that step and the references the reset substitutes,
            computed before the inner optimizer's update (NaN where the gradients were not
            fresh, e.g. with a closure).
        realised: the measured change of the batch loss, ``L(after) − L(before)``, around the
            reset itself, so after the inner optimizer's update; NaN unless a
            `RealisedCostMeter` was attached.

    Examples:
        >>> ResetRecord(step=120, layer="fc1", units=2, predicted=3e-4)
        ResetRecord(step=120, layer='fc1', units=2, predicted=0.0003, realised=nan)
    """

    step: int
    layer: str
    units: int
    predicted: float
    realised: float = math.nan


class ResetLog(Sequence[ResetRecord]):
    """The latest resets, oldest first: `GXDReset.reset_log`, a read-only sequence.

    Indexing either end is O(1). ``total`` counts every record ever appended, so
    ``log[len(log) - (log.total - seen):]`` are the records since ``seen`` (while no more
    than ``maxlen`` have arrived in between).

    Examples:
        >>> log = ResetLog(maxlen=2)
        >>> for step in range(3):
        ...     log.append(ResetRecord(step, "fc", 1, 0.0))
        >>> [r.step for r in log], log.total, log[-1].step
        ([1, 2], 3, 2)
    """

    def __init__(self, maxlen: int) -> None:
        self._records: deque[ResetRecord] = deque(maxlen=maxlen)
        self.total = 0

    def append(self, record: ResetRecord) -> None:
        """Add a record (the wrapper does, at every reset), dropping the oldest if full."""
        self._records.append(record)
        self.total += 1

    @overload
    def __getitem__(self, index: int) -> ResetRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[ResetRecord]: ...

    def __getitem__(self, index: int | slice) -> ResetRecord | list[ResetRecord]:
        if isinstance(index, slice):
            start, stop, stride = index.indices(len(self._records))
            return list(itertools.islice(self._records, start, stop, stride))
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[ResetRecord]:
        return iter(self._records)

    def __repr__(self) -> str:
        return f"ResetLog({len(self)} of {self.total} records)"


class ResetSource(Protocol):
    """What reads a wrapper's resets needs of it (`GXDReset` is one)."""

    @property
    def model(self) -> nn.Module: ...

    @property
    def reset_log(self) -> ResetLog: ...

    def register_reset_hook(self, hook: ResetHook) -> RemovableHandle: ...

    def register_reset_pre_hook(self, hook: ResetHook) -> RemovableHandle: ...
