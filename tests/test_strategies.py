"""The hypothesis strategies users fuzz their modules with, and the models they draw."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gxd_optim.testing import describe
from gxd_optim.testing import strategies as gst
from gxd_optim.testing.models import ACTIVATIONS, POOLS, CNNSpec, MLPSpec, activation, build


@given(gst.models())
def test_every_drawn_model_takes_its_batch_and_has_an_eligible_layer(case: gst.Case) -> None:
    model, x, spec = case
    assert model.spec == spec and x.dtype == torch.float32
    assert model(x).shape[0] == x.shape[0]
    assert "eligible layers\n  (none)" not in describe(model, x)


def test_the_specs_reach_every_pattern() -> None:
    seen: set[object] = set()

    @settings(max_examples=300, database=None)
    @given(gst.specs())
    def record(spec: MLPSpec | CNNSpec) -> None:
        seen.update({type(spec).__name__, spec.act, spec.norm})
        if isinstance(spec, MLPSpec):
            seen.add(("two_heads", spec.two_heads))
        else:
            seen.update({spec.pool, ("padding", spec.padding), ("bias", spec.bias)})
            seen.add(("hidden", spec.hidden > 0))

    record()
    wanted = {"MLPSpec", "CNNSpec", True, False, *ACTIVATIONS, *POOLS}
    wanted |= {(k, v) for k in ("two_heads", "bias", "hidden") for v in (True, False)}
    wanted |= {("padding", 0), ("padding", 1)}
    assert wanted <= seen


def test_draws_replay_and_leave_the_global_random_state_alone() -> None:
    strategy = gst.cases(nn.Linear, (3,), in_features=st.just(3), out_features=st.integers(1, 4))

    def run() -> list[gst.Case]:
        drawn: list[gst.Case] = []

        @settings(max_examples=10, derandomize=True, database=None)
        @given(strategy)
        def record(case: gst.Case) -> None:
            drawn.append(case)

        record()
        return drawn

    state = torch.get_rng_state()
    first, again = run(), run()
    assert torch.equal(torch.get_rng_state(), state)
    assert len(first) == len(again) > 1
    for a, b in zip(first, again, strict=True):
        assert a.params == b.params and a.inputs.shape == (a.inputs.shape[0], 3)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.model.weight, b.model.weight)


def test_cases_take_the_input_shape_from_the_drawn_arguments() -> None:
    def conv(channels: int) -> nn.Module:
        return nn.Sequential(nn.Conv1d(channels, 4, 3), nn.ReLU(), nn.Conv1d(4, 1, 3))

    @given(gst.cases(conv, lambda channels: (channels, 7), channels=st.integers(1, 3)))
    def check(case: gst.Case) -> None:
        assert case.inputs.shape[1:] == (case.params["channels"], 7)
        assert case.model(case.inputs).shape[-1] == 3

    check()


def test_unit_sets_cover_the_eligible_layers_only() -> None:
    model = build(CNNSpec(1, (3,), 8, 2, hidden=4))
    strategy = gst.unit_sets(model, torch.randn(2, 1, 8, 8), max_sets=2)

    @given(strategy)
    def check(units: dict[str, list[list[int]]]) -> None:
        assert set(units) == {"convs.0", "fc"}
        assert 1 <= len(units["fc"]) <= 2
        assert all(0 <= i < 3 for chosen in units["convs.0"] for i in chosen)

    check()


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(ValueError, match="kinds"):
        gst.specs(kinds=["transformer"])
    with pytest.raises(ValueError, match="activations"):
        gst.specs(activations=["swish"])
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        activation("swish")
    with pytest.raises(ValueError, match="unknown pool"):
        build(CNNSpec(1, (3,), 8, 2, pool="lp"))
    with pytest.raises(ValueError, match="leaves no pixel"):
        build(CNNSpec(1, (3, 3, 3), 5, 2))


def test_without_hypothesis_only_the_strategies_need_it() -> None:
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "import gxd_optim.testing, gxd_optim.testing.models\n"
        "try:\n"
        "    import gxd_optim.testing.strategies\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "needs hypothesis: pip install hypothesis" in out
