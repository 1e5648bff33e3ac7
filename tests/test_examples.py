"""The how-to examples (``examples/*.py``) run as scripts and print what the pages promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {
    "amp.py": "resets {'0': ",
    "compile.py": "layers ['0', '2']",
    "checkpointing.py": "resumed run bit-identical: True",
    "ema.py": "mirrored into the teacher",
    "ddp.py": "replicas in sync after 60 steps",
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert EXPECTED[script] in done.stdout
