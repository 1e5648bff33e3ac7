"""Every script in ``examples/`` runs, quickly, and does what its docstring says."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

TESTED = {
    "continual_demo.py": "test_quick_demo_writes_plot_and_results",
    "quickstart.py": "test_quickstart_trains_and_resets",
    "tensorboard_logging.py": "test_tensorboard_example_falls_back_to_logging",
    "test_my_model.py": "test_the_users_test_file_passes",
    "amp.py": "test_how_to_example_runs",
    "checkpointing.py": "test_how_to_example_runs",
    "compile.py": "test_how_to_example_runs",
    "ddp.py": "test_how_to_example_runs",
    "ema.py": "test_how_to_example_runs",
}
"""Each example and the test below that runs it."""

USERS_TEST = "examples/test_my_model.py"


def load_example(name: str) -> ModuleType:
    """Import (and so run the top level of) ``examples/<name>.py``; it is not a package."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def test_every_example_is_run_by_a_test() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(TESTED)
    assert all(callable(globals()[test]) for test in TESTED.values())


def test_quickstart_trains_and_resets(capsys: pytest.CaptureFixture[str]) -> None:
    state = torch.get_rng_state()
    quickstart = load_example("quickstart")
    torch.set_rng_state(state)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == [f"task {t}" for t in range(4)]
    assert set(quickstart.opt.layers) == {"0", "2"} and set(quickstart.opt.skipped) == {"4"}
    assert all(count > 0 for count in quickstart.opt.reset_counts.values())
    assert quickstart.loss.item() < 0.05  # it still fits the fourth target


def test_the_users_test_file_passes() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "examples/test_my_model.py",
        ],
        cwd=EXAMPLES.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_tensorboard_example_falls_back_to_logging(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    example = load_example("tensorboard_logging")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    caplog.set_level(logging.INFO, logger="gxd_optim")
    opt = example.main(["--quick", "--logdir", str(tmp_path / "runs")])
    assert "tensorboard is not installed (pip install tensorboard)" in capsys.readouterr().err
    tables = [r.getMessage() for r in caplog.records if r.name == "gxd_optim"]
    assert len(tables) == 300 // 250 and all("GXDReset summary" in t for t in tables)
    assert sum(opt.reset_counts.values()) > 0
    assert not (tmp_path / "runs").exists()


class RecordingWriter:
    """Stands in for ``torch.utils.tensorboard.SummaryWriter``: records what it is sent."""

    def __init__(self, logdir: str) -> None:
        self.logdir, self.scalars, self.texts, self.closed = logdir, {}, {}, False
        WRITERS.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.setdefault(tag, []).append((step, value))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.texts.setdefault(tag, []).append((step, text))

    def close(self) -> None:
        self.closed = True


WRITERS: list[RecordingWriter] = []


def test_tensorboard_example_sends_every_layers_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example("tensorboard_logging")
    fake = SimpleNamespace(SummaryWriter=RecordingWriter)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    WRITERS.clear()
    opt = example.main(["--quick", "--log-every", "100", "--logdir", str(tmp_path)])
    [writer] = WRITERS
    assert writer.logdir == str(tmp_path) and writer.closed
    figures = ("dormant", "resets", "eligible", "utility_median")
    expected = {"train/loss"} | {f"gxd/{n}/{f}" for n in opt.layers for f in figures}
    assert set(writer.scalars) == expected
    assert all([s for s, _ in v] == [100, 200, 300] for v in writer.scalars.values())
    assert writer.scalars["gxd/0/resets"][-1] == (300, opt.reset_counts["0"])
    assert all("utility min / median / max" in t for _, t in writer.texts["gxd/summary"])


def test_tensorboard_example_writes_event_files(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    load_example("tensorboard_logging").main(["--quick", "--logdir", str(tmp_path)])
    assert list(tmp_path.glob("events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.parametrize("policy", [None, "zero"])
def test_quick_demo_writes_plot_and_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str | None
) -> None:
    demo = load_example("continual_demo")
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    argv = ["--quick", "--out", str(tmp_path / "out"), "--seed", "3"]
    if policy is not None:
        argv += ["--state-policy", policy]

    returned = demo.main(argv)

    png, results = tmp_path / "out" / "plasticity.png", tmp_path / "out" / "results.json"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(results.read_text())
    assert data == json.loads(json.dumps(returned))
    tasks = data["config"]["tasks"]
    assert tasks == demo.QUICK["tasks"] and data["config"]["seed"] == 3
    for run in ("adam", "gxd_reset"):
        accuracy = data["runs"][run]["accuracy"]
        assert len(accuracy) == tasks
        assert all(0.0 <= a <= 1.0 for a in accuracy)
        assert len(data["runs"][run]["resets"]) == tasks
    assert sum(data["runs"]["adam"]["resets"]) == 0
    assert sum(data["runs"]["gxd_reset"]["resets"]) > 0  # the quick run exercises resets
    expected = policy or demo.LIBRARY_STATE_POLICY
    assert data["gxd_reset"]["state_policy"] == expected
    assert "task" in capsys.readouterr().out
    # the demo leaves the caller's thread count and global random state alone
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)


def test_demo_runs_are_reproducible_and_share_their_start() -> None:
    demo = load_example("continual_demo")
    config = demo.DemoConfig(**{**demo.QUICK, "tasks": 2, "epochs": 2})
    first = demo.train_sequence(config, "gxd_reset", log=False)
    again = demo.train_sequence(config, "gxd_reset", log=False)
    assert first["accuracy"] == again["accuracy"] and first["resets"] == again["resets"]
    a, b = demo.make_mlp(config), demo.make_mlp(config)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_demo_rejects_bad_arguments() -> None:
    demo = load_example("continual_demo")
    with pytest.raises(SystemExit):
        demo.parse_args(["--state-policy", "nonsense"])
    with pytest.raises(SystemExit):
        demo.parse_args(["--tasks", "0"])


HOW_TO_OUTPUT = {
    "amp.py": "resets {'0': ",
    "compile.py": "layers ['0', '2']",
    "checkpointing.py": "resumed run bit-identical: True",
    "ema.py": "mirrored into the teacher",
    "ddp.py": "replicas in sync after 60 steps",
}
"""What each how-to page's example prints when it works."""


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(HOW_TO_OUTPUT))
def test_how_to_example_runs(script: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=EXAMPLES.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert HOW_TO_OUTPUT[script] in done.stdout
