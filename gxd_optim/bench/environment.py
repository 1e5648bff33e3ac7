"""Where a benchmark ran: the machine, the measured source, and the load on the machine.

Examples:
    >>> other_cpu_percent((10.0, 100.0, 1.0), (25.0, 120.0, 11.0))
    25.0
    >>> describe_source({"gxd_optim": "0.1.0", "git_commit": "0123456789abcdef", "git_dirty": True})
    '0123456789ab + local changes'
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils import collect_env

from .. import __version__

__all__ = [
    "Session",
    "cpu_seconds",
    "describe_source",
    "environment",
    "environment_text",
    "load_average",
    "machine_info",
    "other_cpu_percent",
    "session",
    "source_info",
]

_CPU_NAME_KEYS = ("Model name", "Name")
"""Keys of the CPU's name in `collect_env.get_cpu_info` (``lscpu`` on Linux, Windows)."""


def _cpu_model() -> str:
    """The CPU's name as `torch.utils.collect_env` finds it; the platform's guess otherwise."""
    text = str(collect_env.get_cpu_info(collect_env.run) or "")  # type: ignore[no-untyped-call]
    if sys.platform == "darwin" and text.strip():
        return text.strip()  # sysctl's brand string
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in _CPU_NAME_KEYS and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def machine_info(device: torch.device) -> dict[str, Any]:
    """The machine and software a run measured, with the current torch thread settings."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda,
    }


def source_info() -> dict[str, Any]:
    """The measured library: version, git commit, local changes (and a hash of the package's)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    diff = _git("diff", "HEAD", "--", "..")  # the whole gxd_optim package
    return {
        "gxd_optim": __version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "package_diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None,
    }


def describe_source(source: Mapping[str, Any]) -> str:
    """A report's ``source`` as a short commit, with ``+ local changes`` where it had some."""
    commit = str(source["git_commit"] or "unknown commit")[:12]
    return commit + (" + local changes" if source["git_dirty"] else "")


def load_average() -> list[float] | None:
    """The system's 1, 5 and 15-minute load averages (``None`` where unknown)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_seconds() -> tuple[float, float, float] | None:
    """(busy, total) CPU seconds of the whole machine from /proc/stat, and this process's."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        tick = float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, AttributeError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / tick, total / tick, time.process_time()


def other_cpu_percent(
    start: tuple[float, float, float] | None, end: tuple[float, float, float] | None
) -> float | None:
    """Share of the machine's CPU time that other processes used between two readings.

    Args:
        start: `cpu_seconds` at the start.
        end: `cpu_seconds` at the end.

    Returns:
        Percent of all cores' time busy outside this process; ``None`` where unknown.
    """
    if start is None or end is None or end[1] <= start[1]:
        return None
    others = (end[0] - start[0]) - (end[2] - start[2])
    return max(0.0, 100.0 * others / (end[1] - start[1]))


def environment(
    load_start: list[float] | None, cpu_start: tuple[float, float, float] | None
) -> dict[str, Any]:
    """The ``environment`` entry of a report, from readings taken at the start of the run."""
    return {
        "load_average_at_start": load_start,
        "other_processes_cpu_percent": other_cpu_percent(cpu_start, cpu_seconds()),
    }


def environment_text(environment: Mapping[str, Any]) -> str:
    """The load average at the start and other processes' CPU share, in words."""
    load, others = environment["load_average_at_start"], environment["other_processes_cpu_percent"]
    parts = [] if load is None else [f"load average {load[0]:.2f} at the start"]
    if others is not None:
        parts.append(f"other processes used {others:.0f}% of the CPU time during the run")
    return "; ".join(parts) or "machine load unknown"


@dataclass
class Session:
    """One benchmark run as its report records it.

    Attributes:
        created: when it started (UTC, ISO 8601).
        machine: `machine_info`, read with the run's thread settings.
    """

    created: str
    machine: dict[str, Any] = field(default_factory=dict)
    _start: float = field(default_factory=time.perf_counter)
    _load: list[float] | None = field(default_factory=load_average)
    _cpu: tuple[float, float, float] | None = field(default_factory=cpu_seconds)

    def closing(self) -> dict[str, Any]:
        """The report's last entries: ``seconds`` since the start and the ``environment``."""
        return {
            "seconds": time.perf_counter() - self._start,
            "environment": environment(self._load, self._cpu),
        }


@contextmanager
def session(device: torch.device, threads: int | None) -> Iterator[Session]:
    """Run a benchmark with ``torch.set_num_threads(threads)`` (``None``: leave it), restored
    afterwards; yields what its report records about when and where it ran."""
    before = torch.get_num_threads()
    run = Session(datetime.now(timezone.utc).isoformat(timespec="seconds"))
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        run.machine = machine_info(device)
        yield run
    finally:
        torch.set_num_threads(before)
