"""The benchmarks are an optional part: ``import gxd_optim`` works without them and without
numpy, scipy, matplotlib or scikit-learn, which only the ``bench`` extra installs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH_ONLY = ("numpy", "scipy", "matplotlib", "sklearn")

WITHOUT_BENCH_PACKAGES = f"""
import sys
for name in {BENCH_ONLY!r}:
    sys.modules[name] = None  # any import of it now fails
import torch
import gxd_optim
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
opt = gxd_optim.GXDReset(torch.optim.Adam(model.parameters()), model, maturity=0)
for _ in range(3):
    opt.zero_grad()
    model(torch.randn(16, 4)).square().mean().backward()
    opt.step()
loaded = [
    name for name, module in sys.modules.items()
    if module is not None
    and (name.startswith("gxd_optim.bench") or name.split(".")[0] in {BENCH_ONLY!r})
]
print(sorted(loaded))
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_the_library_trains_without_the_benchmark_packages() -> None:
    done = _python(WITHOUT_BENCH_PACKAGES)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_importing_the_benchmarks_needs_their_packages() -> None:
    """The check above is not vacuous: the benchmarks do import what it blocks."""
    done = _python("import sys; sys.modules['scipy'] = None; import gxd_optim.bench.cli")
    assert done.returncode != 0 and "scipy" in done.stderr


def test_numpy_is_a_benchmark_dependency_only() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [spec.split(">")[0].split("=")[0].strip() for spec in project["dependencies"]]
    bench = [spec.split(">")[0].strip() for spec in project["optional-dependencies"]["bench"]]
    assert "numpy" not in names and "torch" in names
    assert {"numpy", "scipy", "matplotlib", "scikit-learn", "tqdm"} <= set(bench)


def test_the_command_line_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gxd_optim.bench", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "{overhead,list,run,sweep,cost}" in done.stdout
