"""What every benchmark report records: the machine, the source, the load; and how it is written.

Example:
    >>> from gxd_optim.bench.common import other_cpu_percent
    >>> other_cpu_percent((10.0, 100.0, 1.0), (25.0, 120.0, 11.0))
    25.0
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import __version__

__all__ = [
    "cpu_seconds",
    "environment",
    "environment_text",
    "load_average",
    "machine_info",
    "other_cpu_percent",
    "progress_bar",
    "source_info",
    "write_json",
]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
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
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "gpu": None,
        "cuda": torch.version.cuda,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


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

    Example:
        >>> other_cpu_percent((10.0, 100.0, 1.0), (25.0, 120.0, 11.0))
        25.0
    """
    if start is None or end is None or end[1] <= start[1]:
        return None
    others = (end[0] - start[0]) - (end[2] - start[2])
    return max(0.0, 100.0 * others / (end[1] - start[1]))


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


def environment_text(environment: Mapping[str, Any]) -> str:
    """The load average at the start and other processes' CPU share, in words."""
    load, others = environment["load_average_at_start"], environment["other_processes_cpu_percent"]
    parts = [] if load is None else [f"load average {load[0]:.2f} at the start"]
    if others is not None:
        parts.append(f"other processes used {others:.0f}% of the CPU time during the run")
    return "; ".join(parts) or "machine load unknown"


def environment(
    load_start: list[float] | None, cpu_start: tuple[float, float, float] | None
) -> dict[str, Any]:
    """The ``environment`` entry of a report, from readings taken at the start of the run."""
    return {
        "load_average_at_start": load_start,
        "other_processes_cpu_percent": other_cpu_percent(cpu_start, cpu_seconds()),
    }


def write_json(data: Mapping[str, Any], out_dir: Path, name: str) -> Path:
    """Write ``data`` as indented JSON to ``out_dir / name`` (the directory is created).

    Returns:
        The file written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def progress_bar(total: int, unit: str, enabled: bool) -> Any:
    """A tqdm progress bar on stderr (a disabled one when ``enabled`` is false)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=not enabled, file=sys.stderr)
