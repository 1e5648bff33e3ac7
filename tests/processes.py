"""Run a command in a process group of its own, and end the whole group on every path.

``subprocess.run(..., timeout=...)`` kills only the process it started; a script that spawns
workers (``torch.multiprocessing.spawn``) would leave them running after a timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any


def run(command: Sequence[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Like ``subprocess.run(command, capture_output=True, text=True, timeout=timeout)``, but
    the command and everything it started are killed if it times out or the caller fails."""
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:
        _kill_group(process)
        raise
    _kill_group(process)  # workers it left behind, if any
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
