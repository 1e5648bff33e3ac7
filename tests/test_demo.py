"""The continual-learning demo (``examples/continual_demo.py``) runs and writes its outputs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

DEMO = Path(__file__).resolve().parent.parent / "examples" / "continual_demo.py"


def load_demo() -> ModuleType:
    """Import ``examples/continual_demo.py`` (``examples`` is not a package)."""
    spec = importlib.util.spec_from_file_location("continual_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("policy", [None, "zero"])
def test_quick_demo_writes_plot_and_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str | None
) -> None:
    demo = load_demo()
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
    demo = load_demo()
    config = demo.DemoConfig(**{**demo.QUICK, "tasks": 2, "epochs": 2})
    first = demo.train_sequence(config, "gxd_reset", log=False)
    again = demo.train_sequence(config, "gxd_reset", log=False)
    assert first["accuracy"] == again["accuracy"] and first["resets"] == again["resets"]
    a, b = demo.make_mlp(config), demo.make_mlp(config)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_demo_rejects_bad_arguments() -> None:
    demo = load_demo()
    with pytest.raises(SystemExit):
        demo.parse_args(["--state-policy", "nonsense"])
    with pytest.raises(SystemExit):
        demo.parse_args(["--tasks", "0"])
