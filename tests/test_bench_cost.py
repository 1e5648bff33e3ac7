"""``python -m gxd_optim.bench cost``: every criterion chooses on the same states, with the same
budgets, and the report says how their realised costs compare; the problems' ``activation``."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from repo_scripts import load_script
from scipy import stats
from torch import nn

from gxd_optim.bench.cli import main
from gxd_optim.bench.cost import paired_difference, state_segments
from gxd_optim.bench.metrics import interval
from gxd_optim.bench.models import ACTIVATIONS
from gxd_optim.bench.problems import PROBLEMS

PNG = b"\x89PNG\r\n\x1a\n"


def test_quick_cost_compares_the_criteria_on_identical_states(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["cost", "memorisation", "--quick", "--set", "activation=tanh", "--seeds", "2"]
    argv += ["--states", "2", "--scoring", "3", "--budgets", "0.05,0.5", "--no-progress"]
    assert main([*argv, "--utilities", "gxd,activation,random", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "cost.json").read_text())
    assert (tmp_path / "cost.png").read_bytes()[:8] == PNG
    assert report["benchmark"] == "cost" and report["problem"]["settings"]["activation"] == "tanh"
    measured = report["measurements"]
    assert len(measured) == 2 * 2 * 3 * 2  # seeds x states x criteria x budgets
    same_state: dict[tuple[int, int, float], list[dict[str, object]]] = defaultdict(list)
    for m in measured:
        same_state[(m["seed"], m["segment"], m["budget"])].append(m)
    width = report["problem"]["settings"]["width"]
    for (_, _, budget), group in same_state.items():
        assert sorted(m["criterion"] for m in group) == ["activation", "gxd", "random"]
        assert len({m["before"] for m in group}) == 1  # the same state, the same data
        assert len({json.dumps(m["units"]) for m in group}) == 1  # the same budget
        assert set(group[0]["units"].values()) == {max(1, round(budget * width))}
        assert all(math.isfinite(m["realised"]) and math.isfinite(m["predicted"]) for m in group)
    summary = report["summary"]
    assert list(summary) == ["0.05", "0.5"]
    for entries in summary.values():
        assert sorted(e["rank"] for e in entries.values()) == [1, 2, 3]
        assert "minus_gxd" not in entries["gxd"]
        assert entries["random"]["minus_gxd"]["verdict"] in ("lower", "higher", "no difference")
        assert entries["gxd"]["realised"]["n"] == 4
    out = capsys.readouterr().out
    assert "| 50% | " in out and "minus GXD's" in out and "2 state(s) per seed" in out
    table = load_script("cost_summary").summary([report], "0.5").splitlines()
    assert table[0].startswith("| problem | activation | GXD's realised cost | activation − GXD")
    assert table[2].startswith("| memorisation | tanh | ")


def test_a_small_reset_costs_about_what_gxd_predicts() -> None:
    """At the smallest budget the realised cost of GXD's choice follows its prediction."""
    from gxd_optim.bench.cost import CostPlan, run_cost

    problem = PROBLEMS["memorisation"]
    plan = CostPlan(problem, problem.settings(quick=True), ("gxd",), 1, 2, 3, (0.05,))
    for m in run_cost(plan)["measurements"]:
        assert abs(m["realised"] - m["predicted"]) <= 0.5 * abs(m["predicted"]) + 1e-3


def test_bad_cost_arguments_are_usage_errors(tmp_path: Path) -> None:
    for extra in (["--budgets", "0.5,2"], ["--set", "activation=swish"], ["--utilities", "none"]):
        with pytest.raises(SystemExit):
            main(["cost", "memorisation", "--quick", *extra, "--out", str(tmp_path)])


@given(segments=st.integers(1, 60), states=st.integers(1, 12))
def test_states_are_evenly_spaced_and_end_with_the_last_segment(segments: int, states: int) -> None:
    chosen = state_segments(segments, states)
    assert chosen == sorted(set(chosen)) and chosen[-1] == segments - 1
    assert len(chosen) == min(segments, states) and chosen[0] >= 0


@given(values=st.lists(st.floats(-10, 10), min_size=2, max_size=20))
def test_the_interval_is_students(values: list[float]) -> None:
    mean, low, high = interval(values)
    expected = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    if math.isfinite(expected[0]):
        assert low == pytest.approx(expected[0], abs=1e-9)
        assert high == pytest.approx(expected[1], abs=1e-9)
    assert low <= mean <= high or not math.isfinite(low)


def test_paired_differences_say_no_difference_where_the_interval_holds_zero() -> None:
    assert paired_difference([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])["verdict"] == "lower"
    assert paired_difference([2.0, 3.0, 4.1], [1.0, 2.0, 3.0])["verdict"] == "higher"
    assert paired_difference([1.0, 2.0, 3.0], [1.5, 1.5, 3.1])["verdict"] == "no difference"


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_every_problem_builds_the_activation_it_is_given(name: str, activation: str) -> None:
    problem = PROBLEMS[name]
    if problem.data == "required":
        pytest.skip(f"{name} reads local files")
    settings = problem.settings(quick=True, overrides={"activation": activation})
    model = problem.build(settings, 0, torch.device("cpu"), None).model
    kinds = {type(m) for m in model.modules()}
    assert ACTIVATIONS[activation] in kinds and nn.ReLU not in kinds


def test_cartpole_tasks_change_the_observation_map_and_fill_their_held_out_data() -> None:
    """Each task sees CartPole through a new signed permutation; its held-out transitions and
    probe are filled from its own buffer once its last batch is trained."""
    from gxd_optim.bench.control import HELD_OUT, CartPoleSettings, _Agent, dqn_on_cartpole

    settings = CartPoleSettings(tasks=2, steps=40, warmup=32, buffer=128, batch=8)
    agent = _Agent(settings, nn.Linear(4, 2), seed=0)
    maps = []
    for _ in range(3):
        agent.new_task()
        maps.append(agent.map.clone())
        assert sorted(agent.map.abs().sum(0).tolist()) == [1.0] * 4  # a signed permutation
        assert torch.equal(agent.map.abs().sum(1), torch.ones(4))
    assert not torch.equal(maps[0], maps[1]) or not torch.equal(maps[1], maps[2])
    _, _, segments = dqn_on_cartpole(settings, 0, torch.device("cpu"))
    for segment in segments:
        held_states = segment.held_out[0]
        assert not bool(held_states.any())  # nothing before the task has run
        for states, targets in segment.batches:
            assert states.shape == (8, 4) and targets.shape == (8, 2)
            assert set(targets[:, 0].tolist()) <= {0.0, 1.0}
        assert held_states.shape == (HELD_OUT, 4) and bool(held_states.any())
        assert torch.equal(segment.probe, held_states)
        assert math.isfinite(segment.evaluate(None))
    with pytest.raises(ValueError, match="CPU"):
        dqn_on_cartpole(settings, 0, torch.device("meta"))


def test_the_td_loss_reads_the_action_taken() -> None:
    from gxd_optim.bench.control import td_loss

    q = torch.tensor([[1.0, 5.0], [2.0, -1.0]])
    y = torch.tensor([[1.0, 5.0], [0.0, 2.5]])  # (action, target): errors 0 and 0.5
    assert float(td_loss(q, y)) == pytest.approx((0.0 + 0.5 * 0.5**2) / 2)


def test_cartpole_runs_from_the_command_line(tmp_path: Path) -> None:
    argv = ["run", "cartpole", "--quick", "--utilities", "gxd", "--no-progress"]
    assert main([*argv, "--track-every", "4", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "run.json").read_text())
    assert [len(r["performance"]) for r in report["runs"]] == [2, 2]
    assert report["reset"] == {"track_every": 4}


def test_gxd_batch_ranks_by_the_batch_cost() -> None:
    """With the zero reference, ``|mean_x a_i(x)|`` is proportional to ``|c_i|``, the first-
    order change of the batch loss (`GXDReset.predicted_cost`)."""
    from gxd_optim import GXDReset
    from gxd_optim.bench.variants import VARIANTS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    inner = torch.optim.SGD(model.parameters(), lr=0.0)
    opt = GXDReset(inner, model, utility=VARIANTS["gxd_batch"], reference="zero")
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    nn.functional.cross_entropy(model(x), y).backward()
    predicted = opt.predicted_cost("0").abs()
    opt.step()
    ratio = opt.utilities()["0"] / predicted
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)


def test_the_variants_of_gxd_run_in_the_cost_comparison(tmp_path: Path) -> None:
    argv = ["cost", "memorisation", "--quick", "--seeds", "1", "--states", "1", "--scoring", "2"]
    argv += ["--utilities", "gxd,gxd_batch,gxd_fisher,gxd_every4", "--budgets", "0.25"]
    assert main([*argv, "--no-progress", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "cost.json").read_text())
    assert sorted(report["summary"]["0.25"]) == ["gxd", "gxd_batch", "gxd_every4", "gxd_fisher"]
    predicted = [r["predicted"] for r in report["measurements"] if r["criterion"] == "gxd_every4"]
    assert predicted and all(math.isfinite(p) for p in predicted)  # read on a collecting step
    with pytest.raises(SystemExit):  # the variants are the benchmark's, not the library's
        main(["run", "memorisation", "--quick", "--utilities", "gxd_batch"])
