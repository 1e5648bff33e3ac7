"""The reset criteria: hand-computed scores, their values inside the wrapper, threshold mode,
the reset log and the realised-cost meter."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.diagnostics import measure_realised_cost
from gxd_optim.sandbox import untouched
from gxd_optim.utilities import (
    CRITERIA,
    UTILITIES,
    activation,
    adaptable_contribution,
    contribution,
    gradient,
    gxd,
    layer_normalised,
    predicted_cost,
    predicted_sum,
    random_scores,
)

X = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
Y = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 2),
    )


def _loss(model: nn.Module, x: Tensor = X, y: Tensor = Y) -> Tensor:
    return (model(x) - y).pow(2).mean()


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor = X, y: Tensor = Y) -> None:
    opt.zero_grad()
    _loss(model, x, y).backward()
    opt.step()


# -- the pure functions, on hand-computed examples ----------------------------------------
H = torch.tensor([[[1.0, -3.0], [0.0, 2.0]], [[2.0, 2.0], [-4.0, 0.0]]])  # [N=2, U=2, P=2]
G = torch.tensor([[[0.5, 1.0], [1.0, -1.0]], [[0.0, 1.0], [0.25, 2.0]]])


def test_gxd_by_hand() -> None:
    # sample 0, unit 0: 0.5*(1-1) + 1*(-3-1) = -4; unit 1: 1*(0-0) - 1*(2-0) = -2
    # sample 1, unit 0: 0*(2-1) + 1*(2-1) = 1;    unit 1: 0.25*(-4) + 2*0 = -1
    expected = torch.tensor([[-4.0, -2.0], [1.0, -1.0]])
    assert torch.equal(gxd(H, G, torch.tensor([1.0, 0.0])), expected)


def test_contribution_by_hand() -> None:
    # mean|h|: [[2, 1], [2, 2]] times Σ|w_out| = [1, 3]
    expected = torch.tensor([[2.0, 3.0], [2.0, 6.0]])
    assert torch.equal(contribution(H, torch.tensor([1.0, 3.0])), expected)


def test_adaptable_contribution_by_hand() -> None:
    # mean|h - h̄| with h̄ = [1, -1]: [[(0+4)/2, (1+3)/2], [(1+1)/2, (3+1)/2]] = [[2, 2], [1, 2]]
    # times Σ|w_out| = [1, 3], divided by Σ|w_in| = [2, 4]
    out = adaptable_contribution(
        H, torch.tensor([1.0, -1.0]), torch.tensor([1.0, 3.0]), torch.tensor([2.0, 4.0])
    )
    assert torch.equal(out, torch.tensor([[1.0, 1.5], [0.5, 1.5]]))


def test_activation_and_gradient_by_hand() -> None:
    assert torch.equal(activation(H), torch.tensor([[2.0, 1.0], [2.0, 2.0]]))
    assert torch.equal(gradient(G), torch.tensor([[0.75, 1.0], [0.5, 1.125]]))
    assert torch.equal(layer_normalised(torch.tensor([1.0, 3.0])), torch.tensor([0.5, 1.5]))


def test_random_scores_are_a_function_of_seed_step_and_layer() -> None:
    a = random_scores(8, 0, 5, 0)
    assert torch.equal(a, random_scores(8, 0, 5, 0))
    for other in (random_scores(8, 1, 5, 0), random_scores(8, 0, 6, 0), random_scores(8, 0, 5, 1)):
        assert not torch.equal(a, other)
    assert bool(((a >= 0) & (a < 1)).all())


# -- the criteria inside the wrapper ------------------------------------------------------
def _tracking_only(utility: str, model: nn.Module) -> GXDReset:
    """Weights that do not move, no resets, utilities of the last step alone (decay 0)."""
    inner = torch.optim.SGD(model.parameters(), lr=0.0)
    return GXDReset(inner, model, utility=utility, replacement_rate=0.0, decay=0.0)


def _one_step(utility: str, model: nn.Module) -> dict[str, Tensor]:
    opt = _tracking_only(utility, model)
    _step(model, opt)
    return opt.utilities()


def _hidden(model: nn.Sequential) -> Tensor:
    return torch.relu(model[0](X))


def test_contribution_in_the_wrapper_matches_the_formula() -> None:
    model = _mlp()
    expected = _hidden(model).abs().mean(0) * model[2].weight.abs().sum(0)
    torch.testing.assert_close(_one_step("contribution", model)["0"], expected)


def test_activation_in_the_wrapper_is_normalised_by_the_layer_mean() -> None:
    model = _mlp()
    score = _hidden(model).abs().mean(0)
    torch.testing.assert_close(_one_step("activation", model)["0"], score / score.mean())


def test_gradient_reads_the_output_before_an_in_place_relu() -> None:
    model = _cnn()
    with torch.no_grad():
        model[1].bias[1] = -100.0  # channel 1 is off after the ReLU for every input
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    z = model[0](x)
    z.retain_grad()
    (model[1:](z) - Y).pow(2).mean().backward()
    assert z.grad is not None
    score = z.grad.abs().mean((2, 3)).mean(0) * x.shape[0]  # ∂ℓ(x)/∂z: per-sample loss
    opt = _tracking_only("gradient", model)
    opt.zero_grad()
    (model(x) - Y).pow(2).mean().mul(x.shape[0]).backward()
    opt.step()
    utility = opt.utilities()["0"]
    torch.testing.assert_close(utility, score / score.mean())
    assert float(utility[1]) == 0.0


def test_adaptable_contribution_uses_the_running_mean() -> None:
    model = _mlp()
    opt = _tracking_only("adaptable_contribution", model)
    first, second = X[:16], X[16:]
    _step(model, opt, first, Y[:16])
    _step(model, opt, second, Y[16:])
    h1, h2 = torch.relu(model[0](first)), torch.relu(model[0](second))
    expected = (
        (h2 - h1.mean(0)).abs().mean(0)
        * model[2].weight.abs().sum(0)
        / model[0].weight.abs().sum(1)
    )
    torch.testing.assert_close(opt.utilities()["0"], expected)


def test_random_utilities_change_per_step_and_agree_between_copies() -> None:
    a, b = _mlp(), _mlp()
    opts = [GXDReset(torch.optim.SGD(m.parameters(), lr=0.1), m, utility="random") for m in (a, b)]
    _step(a, opts[0])
    _step(b, opts[1])
    first = opts[0].utilities()["0"]
    assert torch.equal(first, opts[0].utilities()["0"])  # reading does not draw
    assert torch.equal(first, opts[1].utilities()["0"])
    _step(a, opts[0])
    assert not torch.equal(first, opts[0].utilities()["0"])


@pytest.mark.parametrize("utility", UTILITIES)
@pytest.mark.parametrize("build", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_every_criterion_trains_resets_and_round_trips(utility: str, build: object) -> None:
    assert callable(build)
    model = build()
    x = X if build is _mlp else torch.randn(32, 1, 8, 8)

    def make(net: nn.Module) -> GXDReset:
        inner = torch.optim.Adam(net.parameters(), lr=1e-2)
        return GXDReset(inner, net, utility=utility, replacement_rate=0.2, maturity=2)

    opt = make(model)
    for _ in range(6):
        _step(model, opt, x)
    assert sum(opt.reset_counts.values()) > 0
    for values in opt.utilities().values():
        assert bool(values.isfinite().all())
    twin = build()
    twin.load_state_dict(model.state_dict())
    twin_opt = make(twin)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if saved to disk
    for _ in range(4):
        _step(model, opt, x)
        _step(twin, twin_opt, x)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert opt.reset_counts == twin_opt.reset_counts


def test_criteria_table_names_every_utility() -> None:
    assert set(UTILITIES) == set(CRITERIA)
    assert UTILITIES[0] == "gxd"


# -- threshold selection ------------------------------------------------------------------
def test_threshold_mode_resets_every_eligible_unit_at_or_below_tau_every_interval() -> None:
    model = _mlp()
    opt = GXDReset(
        torch.optim.SGD(model.parameters(), lr=0.05),
        model,
        utility="activation",
        selection="threshold",
        threshold=0.8,
        interval=3,
        maturity=1,
    )
    seen: list[tuple[int, list[int], Tensor]] = []
    opt.register_reset_pre_hook(
        lambda name, index: seen.append((opt.steps, index.tolist(), opt.utilities()[name]))
    )
    for _ in range(9):
        _step(model, opt)
    assert seen and {step for step, _, _ in seen} <= {3, 6, 9}
    for _, index, utility in seen:
        normalised = layer_normalised(utility)
        assert index == torch.nonzero(normalised <= 0.8).reshape(-1).tolist()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"selection": "best"}, "unknown selection"),
        ({"threshold": 0.1}, "only to selection='threshold'"),
        ({"interval": 10}, "only to selection='threshold'"),
        ({"selection": "threshold", "threshold": -1.0}, "threshold must be >= 0"),
        ({"selection": "threshold", "interval": 0}, r"interval must be in \[1, 2\*\*62\]"),
        ({"selection": "threshold", "interval": 2.5}, "interval must be an int"),
        ({"utility": "magnitude"}, "unknown utility"),
    ],
)
def test_bad_selection_settings_raise(kwargs: dict[str, object], message: str) -> None:
    model = _mlp()
    with pytest.raises((ValueError, TypeError), match=message):
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, **kwargs)  # type: ignore[arg-type]


# -- the reset log and realised costs -----------------------------------------------------
def test_reset_log_records_the_predicted_cost_before_the_inner_step() -> None:
    model = _mlp()
    inner = torch.optim.SGD(model.parameters(), lr=0.5)
    # the zero reference does not move with this step's statistics, unlike the running mean
    opt = GXDReset(inner, model, replacement_rate=0.5, maturity=1, reference="zero")
    for _ in range(2):
        _step(model, opt)
    opt.zero_grad()
    _loss(model).backward()
    cost = opt.predicted_cost("0")  # the gradients the step will see
    chosen: list[Tensor] = []
    opt.register_reset_pre_hook(lambda name, index: chosen.append(index))
    opt.step()
    (record,) = opt.reset_log[-1:]
    assert opt.reset_log.total == len(opt.reset_log) >= 2 and opt.reset_log[-1] is record
    assert record.step == opt.steps == 3 and record.layer == "0"
    assert record.units == len(chosen[0]) >= 1
    assert record.predicted == pytest.approx(float(cost[chosen[0]].sum()), rel=1e-6)
    assert math.isnan(record.realised)


def test_meter_measures_the_loss_change_of_each_reset_alone_and_leaves_no_trace() -> None:
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    models = [_cnn(), _cnn()]  # BatchNorm: the meter's forward passes must not move its stats
    opts = [
        GXDReset(torch.optim.SGD(m.parameters(), lr=0.01), m, replacement_rate=0.5, maturity=1)
        for m in models
    ]
    model, opt = models[0], opts[0]
    losses: list[float] = []

    def loss_now(*_: object) -> None:
        with untouched(model), torch.no_grad():
            losses.append(float(_loss(model, x)))

    meter = measure_realised_cost(opt, lambda: _loss(model, x))
    opt.register_reset_pre_hook(loss_now)
    opt.register_reset_hook(loss_now)
    for _ in range(3):
        for m, o in zip(models, opts, strict=True):
            _step(m, o, x)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    record = opts[0].reset_log[-1]
    assert record.realised == pytest.approx(losses[-1] - losses[-2], abs=1e-6)
    assert math.isnan(opts[1].reset_log[-1].realised)
    meter.remove()
    _step(model, opt, x)
    assert opt.reset_log[-1].step == opt.steps and math.isnan(opt.reset_log[-1].realised)


@given(
    out=st.integers(1, 6),
    units=st.integers(1, 6),
    mean=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_predicted_sum_of_a_linear_consumer_is_the_sum_of_the_predicted_costs(
    out: int, units: int, mean: bool, seed: int
) -> None:
    """What a reset step records (one sum, in fewer kernels) is what `predicted_cost` sums."""
    generator = torch.Generator().manual_seed(seed)
    weight, grad = (torch.randn(out, units, generator=generator, dtype=torch.float64) for _ in "wg")
    bias_grad = torch.randn(out, generator=generator, dtype=torch.float64)
    reference = torch.randn(units, generator=generator, dtype=torch.float64) if mean else None
    total = predicted_sum(weight, grad, bias_grad, reference)
    assert total.dim() == 0
    expected = predicted_cost(weight, grad, bias_grad, reference, 1).sum()
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-12)


def test_the_predicted_sum_of_a_bfloat16_consumer_is_computed_in_the_references_dtype() -> None:
    """A bf16 model keeps its statistics in float32: the sum mixes both without an error."""
    generator = torch.Generator().manual_seed(0)
    weight, grad = (torch.randn(5, 3, generator=generator) for _ in "wg")
    bias_grad, reference = torch.randn(5, generator=generator), torch.randn(3, generator=generator)
    low = [t.bfloat16() for t in (weight, grad, bias_grad)]
    total = predicted_sum(*low, reference)
    assert total.dtype == torch.float32
    expected = predicted_cost(*(t.float() for t in low), reference, 1).sum()
    torch.testing.assert_close(total, expected)
