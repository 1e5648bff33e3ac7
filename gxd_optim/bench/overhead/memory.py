"""Peak memory of an arm: built with one batch and run for a few calls.

On CPU the peaks come from the allocation and free events that `torch.profiler` records with
``profile_memory=True``, read from its Chrome trace (`torch.profiler.profile.export_chrome_trace`);
on CUDA from `torch.cuda.max_memory_allocated`.

Examples:
    >>> def memory(ts, total, change):
    ...     return {"name": "[memory]", "ph": "i", "ts": ts,
    ...             "args": {"Device Type": 0, "Total Allocated": total, "Bytes": change}}
    >>> events = [memory(1, 1100, 100), memory(2, 1150, 50), memory(3, 1050, -100),
    ...           {"name": "last", "ph": "X", "ts": 4, "dur": 5},
    ...           memory(5, 1250, 200), memory(6, 1000, -250)]
    >>> trace_peaks(events, "last")
    (250, 250)
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from .arms import Arm
from .cases import Workload
from .timing import Tick

__all__ = ["MEMORY_METHOD", "arm_memory", "memory_peaks", "summarise_memory", "trace_peaks"]

MEMORY_METHOD: Mapping[str, str] = MappingProxyType(
    {
        "cpu": (
            "Peak of the bytes live in PyTorch's CPU allocator, from the allocation and free "
            "events recorded by torch.profiler (profile_memory=True), over a window that starts "
            "before the arm builds its batch (one), model, optimizer and wrapper and ends after "
            "`memory_steps` calls of the arm. It counts parameters, gradients, optimizer state, "
            "activations saved for backward, the wrapper's statistics and every temporary "
            "tensor, including the one-time discovery pass and the optimizer's lazily created "
            "state; it does not count Python objects or memory that kernels allocate outside "
            "PyTorch's allocator. The figure is deterministic for a given build. Increase = "
            "(candidate peak - baseline peak) / baseline peak."
        ),
        "cuda": (
            "torch.cuda.max_memory_allocated after torch.cuda.reset_peak_memory_stats, minus "
            "torch.cuda.memory_allocated before, over a window that starts before the arm builds "
            "its batch (one), model, optimizer and wrapper and ends after `memory_steps` calls of "
            "the arm. Increase = (candidate peak - baseline peak) / baseline peak."
        ),
    }
)

_LAST_CALL = "gxd_bench::last_call"
"""Profiler label of the final call inside a memory window."""
_CPU = 0
"""``Device Type`` of the CPU in a trace's memory events (`torch.device` type index)."""


def trace_peaks(events: Sequence[Mapping[str, Any]], last_call: str) -> tuple[int, int]:
    """Peak bytes live in the CPU allocator over a Chrome trace, and during one marked range.

    Args:
        events: the trace's ``traceEvents``; each CPU ``[memory]`` event carries the bytes
            allocated (or freed: negative) and the allocator's total after it.
        last_call: name of the one complete (``"X"``) event that marks the last call.

    Returns:
        Above what was live before the first memory event: the peak over the whole trace, and
        the peak from the start to the end of ``last_call`` (what was live when it began
        included).

    Raises:
        RuntimeError: not exactly one ``last_call`` event.
    """
    marks = [e for e in events if e.get("name") == last_call and e.get("ph") == "X"]
    if len(marks) != 1:
        raise RuntimeError(f"expected one {last_call!r} event in the profile, got {len(marks)}")
    begin, end = marks[0]["ts"], marks[0]["ts"] + marks[0]["dur"]
    memory = sorted(
        (
            (e["ts"], int(e["args"]["Total Allocated"]), int(e["args"]["Bytes"]))
            for e in events
            if e.get("name") == "[memory]" and e["args"].get("Device Type") == _CPU
        ),
        key=lambda event: event[0],
    )
    if not memory:
        return 0, 0
    start = memory[0][1] - memory[0][2]
    before = [total for ts, total, _ in memory if ts < begin]
    during = [total for ts, total, _ in memory if begin <= ts <= end]
    run_peak = max(total for _, total, _ in memory)
    step_peak = max([before[-1] if before else start, *during])
    return max(run_peak - start, 0), step_peak - start


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines) for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peaks(prepare: Callable[[], Callable[[], None]]) -> tuple[int, int]:
    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    )
    with _native_stderr_silenced():
        profiler.start()
    try:
        last = prepare()
        with torch.profiler.record_function(_LAST_CALL):
            last()
        del last
    finally:
        with _native_stderr_silenced():
            profiler.stop()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(path))
        trace = json.loads(path.read_text(), parse_float=Decimal)  # exact microseconds
    return trace_peaks(trace["traceEvents"], _LAST_CALL)


def memory_peaks(
    prepare: Callable[[], Callable[[], None]], device: torch.device
) -> tuple[int, int]:
    """Peak bytes of tensors on ``device``, above what was live before ``prepare()`` ran.

    Args:
        prepare: builds what is measured, runs all calls but the last and returns the last.
        device: where the tensors live. See `MEMORY_METHOD` for what is counted.

    Returns:
        The peak over the whole window (``prepare()`` and the last call), and the peak during
        the last call (everything still live from ``prepare()`` included).
    """
    if device.type != "cuda":
        return _cpu_peaks(prepare)
    torch.cuda.synchronize(device)
    start = int(torch.cuda.memory_allocated(device))
    torch.cuda.reset_peak_memory_stats(device)
    last = prepare()
    torch.cuda.synchronize(device)
    prepared = int(torch.cuda.max_memory_allocated(device))
    torch.cuda.reset_peak_memory_stats(device)
    last()
    torch.cuda.synchronize(device)
    during = int(torch.cuda.max_memory_allocated(device))
    return max(prepared, during) - start, during - start


def arm_memory(
    kind: str, workload: Workload, device: torch.device, calls: int, tick: Tick | None = None
) -> tuple[int, int]:
    """Memory peaks (see `memory_peaks`) of building an arm with one batch and ``calls`` calls.

    The first figure includes one-time costs (GXDReset's discovery pass, lazily created
    optimizer state); the second is the steady-state peak of the last call.
    """
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")

    def prepare() -> Callable[[], None]:
        arm = Arm(kind, workload, workload.batches(device, count=1), device)
        for i in range(calls - 1):
            arm(i)
            if tick is not None:
                tick(1)

        def last() -> None:
            arm(calls - 1)
            if tick is not None:
                tick(1)

        return last

    gc.collect()
    return memory_peaks(prepare, device)


def summarise_memory(baseline: tuple[int, int], candidate: tuple[int, int]) -> dict[str, Any]:
    """Both arms' peaks and the candidate's increase, in bytes and in % of the baseline.

    Args:
        baseline: the baseline's ``(run peak, step peak)`` from `arm_memory`.
        candidate: the candidate's.

    Returns:
        ``baseline_peak_bytes``, ``candidate_peak_bytes``, ``increase_bytes`` and
        ``increase_percent`` for the steady-state step, and the same with ``run_`` in front
        for the whole window (build and first steps included).

    Examples:
        >>> summarise_memory((1200, 1000), (1260, 1015))["increase_percent"]
        1.5
    """
    out: dict[str, Any] = {}
    for prefix, base, cand in (
        ("", baseline[1], candidate[1]),
        ("run_", baseline[0], candidate[0]),
    ):
        increase = cand - base
        out |= {
            f"{prefix}baseline_peak_bytes": base,
            f"{prefix}candidate_peak_bytes": cand,
            f"{prefix}increase_bytes": increase,
            f"{prefix}increase_percent": 100.0 * increase / base if base else float("nan"),
        }
    return out
