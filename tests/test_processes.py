"""The test helper that runs scripts ends everything they started, timeouts included."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import processes
import pytest

SPAWNS_A_WORKER = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(worker.pid))
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def test_a_timed_out_script_leaves_no_worker_behind(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    with pytest.raises(subprocess.TimeoutExpired):
        processes.run([sys.executable, "-c", SPAWNS_A_WORKER, str(pid_file)], timeout=3)
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


def test_a_finished_script_gives_its_output_and_exit_code() -> None:
    done = processes.run([sys.executable, "-c", "print('hi'); raise SystemExit(3)"], timeout=30)
    assert (done.returncode, done.stdout) == (3, "hi\n")
