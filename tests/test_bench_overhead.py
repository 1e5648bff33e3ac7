"""``python -m gxd_optim.bench overhead --quick`` runs and writes a complete report.

No timing is asserted: how fast the wrapper is belongs to the benchmark, not to the tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gxd_optim.bench.cli import main
from gxd_optim.bench.overhead import (
    CASES,
    GOALS,
    Goal,
    Settings,
    failed_goals,
    median_ci,
    overhead_table,
    select_cases,
    summarise_times,
    time_interleaved,
    trace_peaks,
)


def test_quick_overhead_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    argv = ["overhead", "--quick", "--cases", "d,g,j", "--threads", "1", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0

    report = json.loads((tmp_path / "out" / "overhead.json").read_text())
    assert {"settings", "machine", "source", "method", "goals", "cases", "seconds"} <= set(report)
    assert report["settings"]["quick"] and report["settings"]["threads"] == 1
    machine = report["machine"]
    assert machine["threads"] == 1 and machine["device"] == "cpu"
    assert machine["torch"] == torch.__version__ and machine["cpu"] and machine["logical_cores"]
    assert {"timing", "memory"} <= set(report["method"])
    allocator = report["method"]["allocator"]  # pinned on glibc, said otherwise
    assert allocator.startswith("glibc: mmap threshold") or allocator.startswith("default (")

    cases = {case["name"]: case for case in report["cases"]}
    assert list(cases) == ["mlp-b1-sgd", "reset-step-mlp-b256-adam", "contribution-mlp-b1-sgd"]
    for case in cases.values():
        timing, memory = case["timing"], case["memory"]
        for arm in ("baseline_ms", "candidate_ms"):
            assert timing[arm]["median"] > 0
            assert len(timing["samples"][arm]) == timing["pairs"] > 0
        assert timing["ratio"]["median"] > 0
        assert memory["baseline_peak_bytes"] > 0 and memory["candidate_peak_bytes"] > 0
        assert memory["run_candidate_peak_bytes"] >= memory["candidate_peak_bytes"]
        assert math.isfinite(memory["increase_percent"])
        assert math.isfinite(memory["run_increase_percent"])

    plain = cases["mlp-b1-sgd"]
    assert plain["compares"] == "wrapped / bare" and plain["goal"]["max_ratio"] == 1.10
    assert isinstance(plain["within_goal"], bool)
    assert plain["arms"]["candidate"]["layers"] == ["0", "2", "4"]
    assert sum(plain["arms"]["candidate"]["resets"].values()) == 0
    contribution = cases["contribution-mlp-b1-sgd"]  # continual backprop's criterion, no goal
    assert contribution["compares"] == "contribution / bare" and contribution["goal"] is None
    assert contribution["arms"]["candidate"]["layers"] == ["0", "2", "4"]
    resetting = cases["reset-step-mlp-b256-adam"]
    assert resetting["compares"] == "resetting / wrapped" and resetting["goal"] is None
    assert resetting["arms"]["candidate"]["resets_per_step"] >= 1  # every step resets
    # --quick builds 2 copies of each arm: one warm-up call each, then 3 pairs between them
    assert report["settings"]["copies"] == 2
    assert resetting["arms"]["candidate"]["copies"] == 2
    assert resetting["arms"]["candidate"]["training_steps"] == 2 * 1 + 3
    assert [len(case["timing"]["per_copy"]) for case in cases.values()] == [2, 2, 2]

    out = capsys.readouterr().out
    assert "| case |" in out and "mlp-b1-sgd" in out and "overhead.json" in out
    plot = tmp_path / "out" / "overhead.png"  # every pair's ratio, one panel per case
    assert plot.read_bytes().startswith(b"\x89PNG") and str(plot) in out
    # the run leaves the caller's thread count and global random state alone
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)


def test_case_selection_and_goals() -> None:
    assert select_cases("a,mlp-b1-sgd,a") == ("mlp-b256-adam", "mlp-b1-sgd")
    assert select_cases("all") == tuple(case.name for case in CASES)
    assert [case.key for case in CASES] == list("abcdefghijklmnopqrs")
    assert set(GOALS) <= {case.name for case in CASES}
    with pytest.raises(ValueError, match="unknown case"):
        select_cases("a,nonsense")
    with pytest.raises(SystemExit):
        main(["overhead", "--cases", "nonsense"])
    with pytest.raises(SystemExit):
        main(["overhead", "--repeats", "0"])
    with pytest.raises(SystemExit):
        main([])  # a command is required


def _memory(ts: float, total: int, change: int, device: int = 0) -> dict[str, Any]:
    args = {"Device Type": device, "Total Allocated": total, "Bytes": change}
    return {"name": "[memory]", "ph": "i", "ts": ts, "args": args}


def test_memory_peaks_are_read_from_the_trace() -> None:
    """Peaks count from what was live before the first event; the step's peak includes what
    was live when the marked call began; other devices' events and other names are ignored."""
    events = [
        _memory(5.0, 510, 10),  # 500 live before the window
        _memory(1.0, 500, 0, device=1),  # a CUDA event: not counted
        _memory(6.0, 530, 20),
        _memory(7.0, 505, -25),
        {"name": "last", "ph": "X", "ts": 8.0, "dur": 2.0},
        {"name": "other", "ph": "X", "ts": 0.0, "dur": 1.0},
        _memory(9.0, 545, 40),
        _memory(10.0, 500, -45),
        _memory(11.0, 2000, 1500),  # after the last call: the run's peak only
    ]
    assert trace_peaks(events, "last") == (1500, 45)
    assert trace_peaks(events[4:6], "last") == (0, 0)  # no memory events
    with pytest.raises(RuntimeError, match="one 'last' event"):
        trace_peaks(events[:4], "last")


def test_the_median_interval_is_scipys_exact_one() -> None:
    assert median_ci([float(v) for v in range(100)]) == (39.0, 60.0)
    assert median_ci([12.0, 3.0, 1.0, 2.0, 5.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]) == (3.0, 10.0)
    assert all(math.isnan(end) for end in median_ci([1.0, 2.0, 3.0]))  # too few for 95%


def test_pure_helpers() -> None:
    assert failed_goals(None, 9.0, 50.0) is None
    assert failed_goals(Goal(1.05), 1.04, 1.0) == []
    assert failed_goals(Goal(1.05), 1.06, 3.0) == ["ratio", "memory"]
    summary = summarise_times([0.01, 0.02], [0.011, 0.022])
    assert summary["pairs"] == 2 and summary["ratio"]["median"] == pytest.approx(1.1)
    with pytest.raises(ValueError):
        summarise_times([0.01], [])
    by_copy = summarise_times([0.01, 0.02, 0.03, 0.04], [0.011, 0.026, 0.033, 0.052], copies=2)
    assert [c["ratio"] for c in by_copy["per_copy"]] == pytest.approx([1.1, 1.3])
    assert [c["baseline_ms"] for c in by_copy["per_copy"]] == pytest.approx([20.0, 30.0])
    for copies in (0, 5):
        with pytest.raises(ValueError, match="copies"):
            summarise_times([0.01] * 4, [0.01] * 4, copies=copies)


def test_the_table_says_which_figure_missed_its_goal() -> None:
    """A ratio that rounds to its goal (1.0303 against 1.03) is shown with the figure that
    missed, not as a bare "no" next to "1.030"."""

    def record(key: str, ratio: float, memory: float, goal: Goal | None) -> dict[str, Any]:
        failed = failed_goals(goal, ratio, memory)
        return {
            "key": key,
            "name": f"case-{key}",
            "compares": "wrapped / bare",
            "timing": {
                "pairs": 10,
                "baseline_ms": {"median": 100.0},
                "candidate_ms": {"median": 100.0 * ratio},
                "ratio": {"median": ratio, "median_ci95": [ratio - 0.01, ratio + 0.01]},
            },
            "memory": {"increase_percent": memory},
            "goal": None if goal is None else dataclasses.asdict(goal),
            "within_goal": None if failed is None else not failed,
            "failed": failed,
        }

    rows = overhead_table(
        [
            record("a", 1.03031, 0.21, Goal(1.03)),
            record("b", 1.0612, 2.5, Goal(1.05)),
            record("c", 1.02, 0.5, Goal(1.03)),
            record("d", 1.4, 20.0, None),
            record("g", 1.6, 80.0, Goal(1.5, None)),  # no memory limit
        ]
    ).splitlines()[2:]
    assert rows[0].endswith(
        "| 1.030 | 1.020–1.040 | +0.21% | ratio ≤ 1.03, memory ≤ +2% | no (ratio 1.0303 > 1.03) |"
    )
    assert rows[1].endswith("| no (ratio 1.0612 > 1.05, memory +2.50% > +2%) |")
    assert rows[2].endswith("| yes |") and rows[3].endswith("| — | — |")
    assert rows[4].endswith("| +80.00% | ratio ≤ 1.50 | no (ratio 1.6000 > 1.50) |")
    few = record("f", 1.02, 0.5, Goal(1.03))  # too few pairs for a 95% interval
    few["timing"]["ratio"]["median_ci95"] = [math.nan, math.nan]
    (row,) = overhead_table([few]).splitlines()[2:]
    assert "| 1.020 | — | +0.50% |" in row
    # figures that round onto their goal get the places it takes to tell them apart
    (close,) = overhead_table([record("e", 1.10003, 2.004, Goal(1.10))]).splitlines()[2:]
    assert close.endswith("| no (ratio 1.10003 > 1.10, memory +2.004% > +2%) |")


def test_the_plot_draws_awkward_reports(tmp_path: Path) -> None:
    """One case with every pair equal and one copy, or with a pair that is not a number and
    one that is infinite (an edited report), still gives a picture."""
    from gxd_optim.bench.plots import overhead_plot

    def case(key: str, base: list[float], cand: list[float], copies: int) -> dict[str, Any]:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = float(np.nanmedian(np.divide(cand, base)))
        return {
            "key": key,
            "name": f"case-{key}",
            "compares": "wrapped / bare",
            "timing": {
                "samples": {"baseline_ms": base, "candidate_ms": cand},
                "per_copy": [{"ratio": ratio}] * copies,
                "ratio": {"median": ratio},
            },
            "goal": {"max_ratio": 1.03, "max_memory_percent": 2.0},
            "within_goal": False,
            "failed": ["memory"],
        }

    machine = {"device": "cpu", "cpu": "cpu", "usable_cores": 2, "threads": 2, "gpu": None}
    common = {
        "machine": {**machine, "torch": torch.__version__},
        "source": {"gxd_optim": "0", "git_commit": None, "git_dirty": False},
        "settings": {"quick": True},
    }
    for name, cases in {
        "equal": [case("a", [2.0] * 4, [2.0] * 4, 1)],
        "not-finite": [
            case("b", [1.0, 1.0, 1.0, 1.0, 0.0], [1.01, math.nan, 1.02, math.inf, 1.0], 2)
        ],
    }.items():
        path = overhead_plot({**common, "cases": cases}, tmp_path / f"{name}.png")
        assert path.read_bytes().startswith(b"\x89PNG")


def test_pairs_take_the_copies_in_turn() -> None:
    """Every copy is warmed up; pair ``r`` runs copy ``r mod 3`` of both workloads, and each
    copy's pairs alternate which runs first."""
    calls: list[tuple[str, int]] = []

    def work(name: str) -> Callable[[int], None]:
        return lambda i: calls.append((name, i))

    base, cand = time_interleaved(
        [work(f"a{j}") for j in range(3)], [work(f"b{j}") for j in range(3)], 12, warmup=1
    )
    assert len(base) == len(cand) == 12
    assert calls[:6] == [("a0", 0), ("b0", 0), ("a1", 0), ("b1", 0), ("a2", 0), ("b2", 0)]
    timed = calls[6:]
    for j in range(3):  # copy j: pairs j, j + 3, j + 6, j + 9, the first arm alternating
        pairs = [timed[2 * r : 2 * r + 2] for r in range(j, 12, 3)]
        assert [[name for name, _ in pair] for pair in pairs] == [
            [f"a{j}", f"b{j}"],
            [f"b{j}", f"a{j}"],
            [f"a{j}", f"b{j}"],
            [f"b{j}", f"a{j}"],
        ]
        assert [pair[0][1] for pair in pairs] == [1 + r for r in range(j, 12, 3)]
    for baseline, candidate in (([], []), ([work("a")], [work("b"), work("c")])):
        with pytest.raises(ValueError, match="copies"):
            time_interleaved(baseline, candidate, 1)
    with pytest.raises(SystemExit):
        main(["overhead", "--copies", "0"])
    # a case builds no more copies than it times pairs, so every copy is timed
    few = Settings(repeats=2, warmup=0, copies=3)
    (case,) = [c for c in CASES if c.key == "g"]
    assert few.copies_of(case) == 2 and few.calls(case) == 2 * (0 + 2 + few.memory_steps)


def test_workloads_build_the_shared_models_from_one_seed() -> None:
    """The overhead cases train the benchmark models of `gxd_optim.bench.models`, with the
    same weights every time and whatever the global random state."""
    from gxd_optim.bench.models import mlp

    by_key = {case.key: case.workload for case in CASES}
    torch.manual_seed(123)
    first = by_key["a"].model()
    torch.manual_seed(456)
    again = by_key["a"].model()
    reference = mlp((784, 2000, 2000, 2000, 10), seed=0)
    for p, q, r in zip(first.parameters(), again.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q) and torch.equal(p, r)

    cnn = by_key["e"].model()
    kinds = [type(m).__name__ for m in cnn]
    assert kinds.count("Conv2d") == 5 and kinds.count("MaxPool2d") == 3
    assert [i for i, k in enumerate(kinds) if k == "MaxPool2d"] == [6, 13, 17]  # blocks 2, 4, 5
    x, _ = by_key["e"].batches(torch.device("cpu"), count=1)[0]
    assert cnn(x).shape == (64, 10) and cnn[-1].in_features == 2048
    ffn = by_key["f"].model()
    assert [type(m).__name__ for m in ffn] == ["Linear", "GELU", "Linear"]
    assert ffn[0].out_features == 4 * ffn[0].in_features == 1024


def test_the_reinforcement_learning_cases() -> None:
    """Stable-baselines3's default networks (2x64 tanh at batch 64, 2x256 ReLU at batch 256) and
    the Nature DQN CNN at batch 32, each wrapped against bare and, resetting on every step in
    every layer, against wrapped; the limits are the ones required."""
    from gxd_optim.bench.overhead.arms import Arm

    by_key = {case.key: case for case in CASES}
    assert [by_key[k].compares for k in "klmnop"] == ["wrapped / bare"] * 3 + [
        "resetting / wrapped"
    ] * 3
    assert [by_key[k].goal.max_ratio for k in "klmnop"] == [1.10, 1.05, 1.05, 1.5, 1.5, 1.5]
    cpu = torch.device("cpu")
    mlp64, mlp256, cnn = (by_key[k].workload for k in "klm")
    assert [type(m).__name__ for m in mlp64.model()] == ["Linear", "Tanh"] * 2 + ["Linear"]
    assert [m.out_features for m in mlp256.model() if isinstance(m, torch.nn.Linear)] == [
        256,
        256,
        4,
    ]
    x, _ = cnn.batches(cpu, count=1)[0]
    net = cnn.model()
    assert x.shape == (32, 4, 84, 84) and net(x).shape == (32, 4)
    convs = [(m.out_channels, m.kernel_size, m.stride) for m in net if hasattr(m, "stride")]
    assert convs == [(32, (8, 8), (4, 4)), (64, (4, 4), (2, 2)), (64, (3, 3), (1, 1))]
    for workload, layers in ((mlp64, ["0", "2"]), (cnn, ["0", "2", "4", "7"])):
        arm = Arm("resetting", workload, workload.batches(cpu, count=2), cpu)
        for i in range(3):
            arm(i)
        report = arm.report()
        assert report["layers"] == layers
        assert all(count >= 3 for count in report["resets"].values())  # every step, every layer


def test_the_sampled_cases_time_whole_cycles_of_track_every_steps() -> None:
    """``q`` … ``s`` are ``k`` … ``m`` with ``track_every`` steps per call on both sides; the
    wrapped side collects statistics on the first step of each call only."""
    from gxd_optim.bench.overhead.arms import Arm
    from gxd_optim.bench.overhead.cases import RL_TRACK_EVERY

    by_key = {case.key: case for case in CASES}
    for sampled, plain in zip("qrs", "klm", strict=True):
        case = by_key[sampled]
        assert case.compares == "sampled / bare" and case.goal == by_key[plain].goal
        assert case.workload.steps == RL_TRACK_EVERY
    cpu = torch.device("cpu")
    workload = by_key["q"].workload
    bare = Arm("bare", workload, workload.batches(cpu, count=2), cpu)
    arm = Arm("sampled", workload, workload.batches(cpu, count=2), cpu)
    for i in range(2):
        bare(i)
        arm(i)
    assert bare.steps == arm.steps == 2 * RL_TRACK_EVERY
    assert arm.wrapper is not None and arm.wrapper.config.track_every == RL_TRACK_EVERY
    assert arm.wrapper.steps == 2 * RL_TRACK_EVERY  # two commits, one per call
