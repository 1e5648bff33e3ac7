"""Every script in ``examples/`` runs, quickly, and does what its docstring says."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import runpy
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import cast

import processes
import pytest
import torch
from requirements import needs

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
    "wrap.py": "test_page_shows_what_its_example_prints",
    "wrap_custom_utility.py": "test_page_shows_what_its_example_prints",
    "wrap_loop.py": "test_wrap_loop_steps_once_per_two_micro_batches",
    "wrap_checkpoint.py": "test_page_shows_what_its_example_prints",
    "wrap_copy.py": "test_page_shows_what_its_example_prints",
    "wrap_again.py": "test_page_shows_what_its_example_prints",
    "architectures.py": "test_page_shows_what_its_example_prints",
    "diagnostics.py": "test_page_shows_what_its_example_prints",
    "skipped.py": "test_page_shows_what_its_example_prints",
    "faq_no_resets.py": "test_page_shows_what_its_example_prints",
    "faq_eval_mode.py": "test_page_shows_what_its_example_prints",
    "faq_plain_checkpoint.py": "test_page_shows_what_its_example_prints",
    "comparison.py": "test_page_shows_what_its_example_prints",
    "rl_q_learning.py": "test_page_shows_what_its_example_prints",
    "sb3_policy.py": "test_with_sb3.py::test_ppo_resumes_with_the_wrappers_state",
    "lightning_submodule.py": "test_with_lightning.py::test_a_checkpoint_restores_the_wrapper",
    "hf_trainer.py": "test_with_transformers.py::test_bert_trains_with_resets_and_resumes",
    "continual_heads.py": "test_with_continual_heads.py::test_the_loop_of_the_page_runs",
}
"""Each example and the test that runs it (in this file unless another is named)."""

USERS_TEST = "examples/test_my_model.py"

DOCS = EXAMPLES.parent / "docs"


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
    for test in TESTED.values():
        where, _, name = test.rpartition("::")
        if where:
            assert f"def {name}(" in (Path(__file__).parent / where).read_text(), test
        else:
            assert callable(globals()[name]), test


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
    result = processes.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", USERS_TEST],
        timeout=300,
        cwd=EXAMPLES.parent,
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
    done = processes.run(
        [sys.executable, str(EXAMPLES / script)], timeout=120, cwd=EXAMPLES.parent, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert HOW_TO_OUTPUT[script] in done.stdout


SHOWN_ON = "index.md", "faq.md", "comparison.md", "howto/*.md"
"""The pages whose ```` ```text ```` blocks show what the example included above them prints."""

NEEDS = {
    "sb3_policy.py": ("stable_baselines3", "gymnasium"),
    "lightning_submodule.py": ("lightning",),
    "hf_trainer.py": ("transformers", "accelerate"),
}
"""Examples that need an optional library (installed by the ``integration`` extra)."""

PRINTS_MORE = {"hf_trainer.py": re.compile(r"^\{'train_runtime'")}
"""Lines that an example's libraries print of their own, which its page does not show."""

NOT_PROGRAM_OUTPUT = {"test_my_model.py"}
"""Examples whose page shows what pytest prints for them, not what they print when run."""

FENCE = re.compile(
    r"^(?P<indent> *)```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)
INCLUDE = re.compile(r'--8<-- "examples/(?P<file>[\w.]+\.py)(?::[\w-]+)?"')
NUMBER = re.compile(r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


def shown_outputs(page: Path) -> dict[str, list[list[str]]]:
    """Per example, the lines of each text block that follows its code on ``page``."""
    shown: dict[str, list[list[str]]] = {}
    current = None
    for block in FENCE.finditer(page.read_text()):
        lang, indent = block["lang"], block["indent"]
        if lang == "python":
            included = INCLUDE.findall(block["body"])
            current = included[-1] if included else None
            current = None if current in NOT_PROGRAM_OUTPUT else current
        elif lang == "text" and current is not None:
            lines = [line.removeprefix(indent) for line in block["body"].splitlines()]
            shown.setdefault(current, []).append(lines)
    return shown


def pages_with_outputs() -> list[tuple[str, str]]:
    """(page, example) for every example whose output a page shows."""
    pages = sorted({p for pattern in SHOWN_ON for p in DOCS.glob(pattern)})
    return [
        (str(page.relative_to(DOCS)), example) for page in pages for example in shown_outputs(page)
    ]


def run_example(name: str, capsys: pytest.CaptureFixture[str]) -> tuple[ModuleType, list[str]]:
    """Run ``examples/<name>.py`` in this process as ``python examples/<name>.py`` does (its
    ``if __name__ == "__main__":`` block included); its globals and the lines it printed."""
    state = torch.get_rng_state()
    try:
        names = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    finally:
        torch.set_rng_state(state)
    extra = PRINTS_MORE.get(f"{name}.py")
    printed = [
        line for line in capsys.readouterr().out.splitlines() if not (extra and extra.match(line))
    ]
    return cast(ModuleType, SimpleNamespace(**names)), printed


def same_line(shown: str, printed: str) -> bool:
    """Equal up to runs of spaces, with decimals equal to 1% (other platforms round apart)."""
    a, b = NUMBER.split(" ".join(shown.split())), NUMBER.split(" ".join(printed.split()))
    if len(a) != len(b):
        return False
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        decimal = i % 2 == 1 and any(c in x + y for c in ".e")
        if not (math.isclose(float(x), float(y), rel_tol=0.01) if decimal else x == y):
            return False
    return True


def find_block(block: list[str], printed: list[str]) -> int | None:
    """Where ``block`` starts as consecutive lines of ``printed``, or None."""
    for start in range(len(printed) - len(block) + 1):
        if all(same_line(s, p) for s, p in zip(block, printed[start:], strict=False)):
            return start
    return None


def test_same_line_compares_text_exactly_and_decimals_closely() -> None:
    assert same_line("0:  min 1.47e-05  max 0.5", "0: min 1.4701e-05 max 0.5")
    assert not same_line("0: min 1.47e-05", "0: min 1.6e-05")  # a decimal drifted
    assert not same_line("resets {'0': 62}", "resets {'0': 63}")  # integers are exact
    assert not same_line("reset 2: [4, 11]", "reset 2: [4, 11, 12]")
    assert not same_line("skipped: head", "skipped: stem")


def test_pages_show_the_outputs_of_their_examples() -> None:
    found = dict(pages_with_outputs())
    assert {"howto/wrap.md", "howto/diagnostics.md", "index.md", "faq.md"} <= set(found)


@pytest.mark.slow
@pytest.mark.parametrize(("page", "name"), pages_with_outputs())
def test_page_shows_what_its_example_prints(
    page: str, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for library in NEEDS.get(name, ()):
        needs(library)
    _, printed = run_example(name.removesuffix(".py"), capsys)
    blocks = shown_outputs(DOCS / page)[name]
    assert blocks and printed
    shown: set[int] = set()
    for block in blocks:
        start = find_block(block, printed)
        assert start is not None, (
            f"{page} shows\n"
            + "\n".join(block)
            + "\nbut the example printed\n"
            + "\n".join(printed)
        )
        shown.update(range(start, start + len(block)))
    missing = [line for i, line in enumerate(printed) if i not in shown]
    assert not missing, f"{page} does not show what examples/{name} prints: {missing}"


def test_diagnostics_example_measures_what_the_page_claims(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example, _ = run_example("diagnostics", capsys)
    opt = example.opt
    true_change, estimate = (example.after - example.loss).item(), example.cost[[3, 7]].sum().item()
    assert math.isclose(true_change, estimate, rel_tol=0.2)  # first order, on an unfitted batch
    trained = [r for r in opt.reset_log if r.step < len(example.batches)]  # before meter.remove()
    assert trained and all(math.isfinite(r.realised) for r in trained)  # the meter saw each one
    assert opt.reset_counts["0"] > 55 + 2 + 5  # the loop after mirror_resets reset units too


def test_wrap_loop_steps_once_per_two_micro_batches(capsys: pytest.CaptureFixture[str]) -> None:
    example, printed = run_example("wrap_loop", capsys)
    assert example.opt.steps == 3 * len(example.train_batches) // 2
    lr = 0.1 * (1 + math.cos(math.pi * example.opt.steps / 400)) / 2  # the schedule reached it
    assert example.opt.param_groups[0]["lr"] == pytest.approx(lr)
    assert sum(example.opt.reset_counts.values()) > 0
    assert float(printed[-2].split("val accuracy ")[1].split(",")[0]) > 0.9
