"""``python -m gxd_optim.bench list | run | sweep`` at tiny scales, and the summaries they print."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gxd_optim.bench.cli import main
from gxd_optim.bench.metrics import degradation_onset, spearman, summarise_criterion
from gxd_optim.bench.problems import PROBLEMS
from gxd_optim.bench.runner import ARMS, Job, Options, train_run
from gxd_optim.utilities import UTILITIES

PNG = b"\x89PNG\r\n\x1a\n"
TINY_BITFLIP = ["--set", "examples=1200", "--set", "bin=400", "--set", "flip_after=200"]


def test_list_shows_problems_and_criteria(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PROBLEMS)
    assert all(name in out for name in ARMS) and "examples=1000000" in out


def test_run_writes_report_plots_and_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    argv = ["run", "bitflip", "--quick", *TINY_BITFLIP, "--utilities", "gxd,random"]
    argv += ["--replacement-rate", "0.005", "--maturity", "20", "--seeds", "2", "--no-progress"]
    assert main([*argv, "--reference", "zero", "--out", str(tmp_path)]) == 0

    report = json.loads((tmp_path / "run.json").read_text())
    assert json.loads((tmp_path / "summary.json").read_text())["runs"][1]["records"] > 0
    for name in ("curves.png", "costs.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert report["criteria"] == ["none", "gxd", "random"] and report["seeds"] == 2
    assert report["reset"] == {"replacement_rate": 0.005, "maturity": 20, "reference": "zero"}
    assert report["problem"]["settings"]["examples"] == 1200 and report["machine"]["threads"] == 1
    assert len(report["runs"]) == 6
    for run in report["runs"]:
        assert len(run["performance"]) == len(run["dormant"]) == len(run["resets"]) == 3
        assert run["steps"] == 1200
        assert all(0.0 <= d <= 1.0 for d in run["dormant"])
        if run["criterion"] == "none":
            assert run["records"] == [] and sum(run["resets"]) == 0
        else:
            assert run["gxd"]["utility"] == run["criterion"] and run["gxd"]["reference"] == "zero"
            assert sum(r[2] for r in run["records"]) == sum(run["resets"]) > 0
            assert all(math.isfinite(r[3]) and math.isfinite(r[4]) for r in run["records"])
    summary = report["summary"]["gxd"]
    assert summary["records"] > 0 and summary["mean_abs_realised_per_unit"] >= 0
    assert report["summary"]["none"]["records"] == 0

    out = capsys.readouterr().out
    assert "| criterion | early squared error |" in out and "| gxd |" in out
    assert "run.json" in out
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng)


def test_sweep_writes_table_plot_and_onsets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sweep", "bitflip", "--quick", *TINY_BITFLIP, "--utilities", "gxd,activation"]
    argv += ["--rates", "0.01,1e-3", "--maturity", "20", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0

    report = json.loads((tmp_path / "sweep.json").read_text())
    assert (tmp_path / "sweep.png").read_bytes()[:8] == PNG
    assert report["rates"] == [0.001, 0.01]
    assert [r["criterion"] for r in report["runs"]] == ["none", "gxd", "activation"] * 1 + [
        "gxd",
        "activation",
    ]
    assert set(report["summary"]["gxd"]) == {"0.001", "0.01"}
    assert set(report["onset"]) == {"gxd", "activation"}
    out = capsys.readouterr().out
    assert "degrades from" in out and "| gxd |" in out


def _sweep_report(seeds: int) -> dict[str, object]:
    """A ``sweep`` report of two criteria at two rates, as `run_sweep` summarises it."""

    def cell(average: float, low: float, high: float) -> dict[str, object]:
        bounds = [low, high] if seeds > 1 else [math.nan, math.nan]
        return {"average": average, "average_ci95": bounds}

    return {
        "rates": [1e-4, 1e-2],
        "seeds": seeds,
        "tolerance": 0.05,
        "problem": {"name": "memorisation", "metric": "training accuracy", "quick": False},
        "reset": {},
        "summary": {
            "none": {"any": cell(0.2, 0.19, 0.21)},
            "gxd": {"0.0001": cell(0.98, 0.97, 0.99), "0.01": cell(0.8, 0.7, 0.9)},
        },
        "onset": {"gxd": 0.01},
        "runs": [],
    }


def test_sweep_table_shows_intervals_over_seeds_and_plots_them(tmp_path: Path) -> None:
    from gxd_optim.bench.plots import sweep_plot
    from gxd_optim.bench.report import sweep_table

    table = sweep_table(_sweep_report(5))
    assert "mean over 5 seeds [95% interval]" in table
    assert "| gxd | 0.98 [0.97, 0.99] | 0.8 [0.7, 0.9] | 0.01 |" in table
    assert "| none | 0.2 [0.19, 0.21] | 0.2 [0.19, 0.21] | (no resets) |" in table
    single = sweep_table(_sweep_report(1))
    assert "interval" not in single and "| gxd | 0.98 | 0.8 | 0.01 |" in single
    for seeds in (1, 5):
        path = sweep_plot(_sweep_report(seeds), tmp_path / f"sweep{seeds}.png")
        assert path.read_bytes()[:8] == PNG


def test_threshold_selection_and_file_problems_run(tmp_path: Path) -> None:
    from test_bench_data import write_mnist

    write_mnist(tmp_path, count=64)
    argv = ["run", "mnist", "--quick", "--data-dir", str(tmp_path), "--utilities", "gradient"]
    argv += ["--selection", "threshold", "--threshold", "2", "--interval", "1", "--maturity", "0"]
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    gradient = next(r for r in report["runs"] if r["criterion"] == "gradient")
    assert gradient["gxd"]["selection"] == "threshold" and sum(gradient["resets"]) > 0
    assert all(0.0 <= a <= 1.0 for a in gradient["performance"])


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    out = ["--out", str(tmp_path)]
    for argv in (
        ["run", "mnist", "--quick"],  # needs --data-dir
        ["run", "bitflip", "--utilities", "gxd,nonsense"],
        ["run", "bitflip", "--set", "width=3"],
        ["run", "bitflip", "--set", "examples"],
        ["run", "bitflip", "--data-dir", str(tmp_path / "missing")],
        ["sweep", "bitflip", "--rates", "0,1e-3"],
        ["sweep", "bitflip", "--selection", "threshold"],
        ["run", "mnist", "--quick", "--data-dir", str(tmp_path)],  # no MNIST files there
    ):
        with pytest.raises(SystemExit):
            main([*argv, *out])
    assert not (tmp_path / "run.json").exists()


def test_every_library_criterion_trains() -> None:
    problem = PROBLEMS["memorisation"]
    settings = problem.settings(quick=True, overrides={"tasks": "1", "epochs": "3"})
    reset = {"replacement_rate": 0.05, "maturity": 2}
    for criterion in UTILITIES:
        run = train_run(problem, settings, Job(criterion, 0, reset), Options())
        assert sum(run["resets"]) > 0 and run["records_lost"] == 0, criterion
        assert run["records"][0][1] in {"0", "2"}
    with pytest.raises(ValueError, match="unknown criterion"):
        train_run(problem, settings, Job("nonsense", 0), Options())


def test_summaries() -> None:
    assert spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert spearman([1, 1, 2, 3], [5, 6, 7, 8]) == pytest.approx(0.9486832980505138)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, 2], [2, 1]))
    run = {
        "performance": [float(v) for v in range(20)],
        "dormant": [0.0] * 20,
        "resets": [1] * 20,
        "records": [[1, "0", 2, -0.5, 1.0], [2, "0", 1, float("nan"), 3.0], [3, "0", 1, 1.0, -1.0]],
    }
    s = summarise_criterion([run, {**run, "performance": [v + 1 for v in run["performance"]]}])
    assert (s["early"], s["final"], s["average"]) == (1.0, 19.0, 10.0)
    assert s["records"] == 4 and s["mean_abs_realised_per_unit"] == pytest.approx(4 / 6)
    assert degradation_onset([1e-3, 1e-4, 1e-2], [0.5, 0.5, 0.6], False, 0.05) == 1e-2
    assert degradation_onset([1e-4, 1e-3, 1e-2], [0.5, 0.9, 0.5], False, 0.05) is None


def test_the_table_helper() -> None:
    from gxd_optim.bench.tables import markdown_table, number

    assert markdown_table(["a", "b"], [["1", "2"]]).splitlines() == [
        "| a | b |",
        "|---|---|",
        "| 1 | 2 |",
    ]
    assert [number(v) for v in (None, math.nan, math.inf, 0.123456, 12345.0)] == [
        "—",
        "—",
        "—",
        "0.123",
        "1.23e+04",
    ]
    with pytest.raises(ValueError, match="1 cells under 2 columns"):
        markdown_table(["a", "b"], [["1"]])
