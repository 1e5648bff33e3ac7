"""Hostile input: every case either works or fails at once with an error that names the
problem, and then nothing has changed (parameters, buffers, optimizer state, the wrapper's
own state and hooks, compared bit for bit).

Cases that must *work* train with a learning rate of 0, so that every change to a weight is
a reset's: "never written" is then checked exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gxd_optim import GXDReset, mirror_resets
from gxd_optim.testing.models import MLP, MLPSpec
from gxd_optim.tracking import kernels

X = torch.randn(16, 4, generator=torch.Generator().manual_seed(5))


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP(MLPSpec(4, (8, 6), 2))


def _wrap(model: nn.Module, lr: float = 0.05, **kwargs: Any) -> GXDReset:
    settings: dict[str, Any] = {"replacement_rate": 0.2, "maturity": 1}
    settings.update(kwargs)
    return GXDReset(torch.optim.Adam(model.parameters(), lr=lr), model, **settings)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, x: Tensor = X) -> None:
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _same(a: Any, b: Any, where: str = "") -> None:
    """Bit-for-bit equality of nested dicts, lists and tensors."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (
            (a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num())
        ), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), where


def _everything(model: nn.Module, opt: GXDReset | None) -> dict[str, Any]:
    hooks = [
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    ]
    state: dict[str, Any] = {"model": copy.deepcopy(model.state_dict()), "hooks": hooks}
    if opt is not None:
        state["inner"] = copy.deepcopy(opt.optimizer.state_dict())
        state["wrapper"] = copy.deepcopy(opt.reset_state_dict())
        state["attributes"] = sorted(vars(opt))
    return state


@contextmanager
def unchanged(model: nn.Module, opt: GXDReset | None = None) -> Iterator[None]:
    """Assert that the block changes nothing of ``model`` and ``opt``."""
    before = _everything(model, opt)
    yield
    _same(before, _everything(model, opt))


# -- construction: bad settings raise and leave the model untouched ---------------------------
BAD_SETTINGS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"utility": "magnitude"}, ValueError, "unknown utility 'magnitude'"),
    ({"utility": 3}, TypeError, "utility must be a name or a callable"),
    ({"reference": "median"}, ValueError, "unknown reference 'median'"),
    ({"replacement_rate": 5}, ValueError, r"replacement_rate must be in \[0, 1\]"),
    ({"replacement_rate": -0.1}, ValueError, r"replacement_rate must be in \[0, 1\]"),
    ({"replacement_rate": float("nan")}, TypeError, "replacement_rate must be a finite number"),
    ({"replacement_rate": "0.1"}, TypeError, "replacement_rate must be a finite number"),
    ({"maturity": 2**70}, ValueError, r"maturity must be in \[0, 2\*\*62\]"),
    ({"maturity": 1.5}, TypeError, "maturity must be an int"),
    ({"maturity": True}, TypeError, "maturity must be an int"),
    ({"decay": 1.0}, ValueError, r"decay must be in \[0, 1\)"),
    ({"seed": 2**80}, ValueError, "seed must fit in 64 bits"),
    ({"threshold": 0.2}, ValueError, "only to selection='threshold'"),
    ({"selection": "threshold", "interval": 0}, ValueError, "interval must be in"),
    ({"selection": "random"}, ValueError, "unknown selection"),
    ({"state_policy": "keep"}, ValueError, "unknown state_policy 'keep'"),
    ({"exclude": ["nope"]}, ValueError, r"exclude= names \['nope'\]"),
    ({"layers": {"nope": ["head"]}}, ValueError, r"layers= names \['nope'\]"),
    ({"layers": {"hidden.0": "hidden.1"}}, ValueError, "must be a non-empty list"),
    ({"layers": [("hidden.0", ["hidden.1"])]}, TypeError, "layers= must be a mapping"),
    ({"layers": {"hidden.1": ["hidden.1"]}}, ValueError, "producer as its own consumer"),
    (
        {"layers": {"hidden.0": ["hidden.1"]}, "exclude": ["hidden.1"]},
        ValueError,
        r"its consumer `hidden.1` is excluded by the user",
    ),
    (
        {"layers": {"hidden.0": ["hidden.1"]}, "exclude": ["hidden.0"]},
        ValueError,
        r"both in layers= and exclude=",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"), BAD_SETTINGS, ids=[str(k) for k, _, _ in BAD_SETTINGS]
)
def test_bad_settings_raise_and_change_nothing(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    model = _mlp()
    with unchanged(model), pytest.raises(error, match=match):
        _wrap(model, **kwargs)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda m: (object(), m), TypeError, "must be a torch.optim.Optimizer"),
        (lambda m: (_wrap(m), m), TypeError, "already a GXDReset"),
        (lambda m: (torch.optim.SGD(m.parameters(), lr=0.1), "model"), TypeError, "nn.Module"),
        (lambda m: (torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), m), ValueError, "none"),
        (
            lambda m: (torch.optim.SGD(nn.LayerNorm(3).parameters(), lr=0.1), nn.LayerNorm(3)),
            ValueError,
            "no Linear or Conv",
        ),
    ],
    ids=["not-an-optimizer", "wrapped-twice", "not-a-module", "foreign-optimizer", "no-layers"],
)
def test_bad_models_and_optimizers_raise(
    make: Callable[[nn.Module], tuple[Any, Any]], error: type[Exception], match: str
) -> None:
    model = _mlp()
    optimizer, target = make(model)
    with pytest.raises(error, match=match):
        GXDReset(optimizer, target)


def test_explicit_layers_refuse_frozen_and_tied_consumers() -> None:
    model = _mlp()
    model.hidden[1].requires_grad_(False)
    with unchanged(model), pytest.raises(ValueError, match=r"`hidden\.1` is frozen"):
        _wrap(model, layers={"hidden.0": ["hidden.1"]})
    tied = MLP(MLPSpec(4, (6, 6, 6), 2))
    tied.hidden[2].weight = tied.hidden[1].weight
    with unchanged(tied), pytest.raises(ValueError, match=r"sharing its weight with `hidden\.2`"):
        _wrap(tied, layers={"hidden.1": ["hidden.2"]})
    with unchanged(tied), pytest.raises(ValueError, match=r"`hidden\.1` is sharing its weight"):
        _wrap(tied, layers={"hidden.0": ["hidden.1"], "hidden.2": ["head"]}, exclude=[])


def test_numpy_and_zero_dimensional_tensor_settings_are_numbers() -> None:
    model = _mlp()
    opt = _wrap(
        model,
        replacement_rate=np.float32(0.25),
        maturity=np.int64(3),
        decay=torch.tensor(0.9),
        seed=torch.tensor(7),
    )
    config = opt.config
    assert (config.replacement_rate, config.maturity, config.decay, config.seed) == (
        0.25,
        3,
        pytest.approx(0.9),
        7,
    )
    assert type(config.maturity) is int and type(config.decay) is float
    _train(model, opt, 5)
    assert sum(opt.reset_counts.values()) > 0


# -- what must never be written -------------------------------------------------------------
def _deep() -> MLP:
    torch.manual_seed(0)
    return MLP(MLPSpec(4, (8, 6, 6), 2))


def test_a_frozen_layer_in_the_optimizer_is_never_written() -> None:
    model = _deep()
    model.hidden[1].requires_grad_(False)
    opt = _wrap(model, lr=0.0)
    frozen = copy.deepcopy(model.hidden[1].state_dict())
    _train(model, opt, 12)
    _same(frozen, model.hidden[1].state_dict())
    assert opt.skipped["hidden.1"] == "frozen (its weight has requires_grad=False)"
    assert "its consumer `hidden.1` is frozen" in opt.skipped["hidden.0"]
    assert set(opt.layers) == {"hidden.2"} and opt.reset_counts["hidden.2"] > 0


def test_tied_weights_are_never_written() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 6)
            self.d, self.out = nn.Linear(6, 6), nn.Linear(6, 2)
            self.d.weight = self.b.weight
            self.e, self.f = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = F.relu(self.c(F.relu(self.b(F.relu(self.a(x))))))
            return self.out(F.relu(self.d(h))) + self.f(F.relu(self.e(x)))

    model = Tied()
    opt = _wrap(model, lr=0.0)
    tied = model.b.weight.detach().clone()
    _train(model, opt, 12)
    assert torch.equal(model.b.weight, tied)
    assert opt.skipped["b"] == "sharing its weight with `d` (tied weights)"
    assert opt.skipped["a"] == "its consumer `b` is sharing its weight with `d` (tied weights)"
    assert opt.skipped["c"] == "its consumer `d` is sharing its weight with `b` (tied weights)"
    assert set(opt.layers) == {"e"} and opt.reset_counts["e"] > 0


def test_a_batchnorm_shared_by_two_layers_is_never_written() -> None:
    class SharedNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 6)
            self.norm = nn.BatchNorm1d(6)
            self.c, self.d = nn.Linear(6, 2), nn.Linear(6, 2)
            self.e = nn.Linear(4, 6)
            self.f = nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            shared = self.c(F.relu(self.norm(self.a(x)))) + self.d(F.relu(self.norm(self.b(x))))
            return shared + self.f(F.relu(self.e(x)))

    model = SharedNorm()
    opt = _wrap(model, lr=0.0)
    norm = copy.deepcopy(model.norm.state_dict())
    weights = [model.a.weight.detach().clone(), model.b.weight.detach().clone()]
    _train(model, opt, 12)
    assert (
        opt.skipped["a"]
        == opt.skipped["b"]
        == ("its BatchNorm `norm` is called 2 times per pass (shared by layers)")
    )
    assert set(opt.layers) == {"e"} and opt.reset_counts["e"] > 0
    assert torch.equal(norm["weight"], model.norm.weight)
    assert torch.equal(weights[0], model.a.weight) and torch.equal(weights[1], model.b.weight)


def test_an_excluded_layer_is_never_written() -> None:
    model = _deep()
    opt = _wrap(model, lr=0.0, exclude=["hidden.1"])
    excluded = copy.deepcopy(model.hidden[1].state_dict())
    _train(model, opt, 12)
    _same(excluded, model.hidden[1].state_dict())
    assert opt.skipped["hidden.0"] == "its consumer `hidden.1` is excluded by the user (exclude=)"
    assert set(opt.layers) == {"hidden.2"} and opt.reset_counts["hidden.2"] > 0


def test_a_tensor_returned_in_a_dataclass_is_part_of_the_output() -> None:
    @dataclasses.dataclass
    class Output:
        logits: Tensor
        features: Tensor

    class Returns(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Output:
            features = F.relu(self.b(F.relu(self.a(x))))
            return Output(self.c(features), features)

    model = Returns()
    opt = _wrap(model)
    opt.discover(X)
    assert opt.skipped["b"] == "its units are part of the model's output"
    assert set(opt.layers) == {"a"}


@pytest.mark.parametrize("host_reads", [True, False], ids=["read-on-host", "device-path"])
def test_an_overflowing_batch_commits_nothing(
    host_reads: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "DEFAULT_LIMITS", kernels.Limits(host_reads=host_reads))
    model = _mlp()
    opt = _wrap(model, lr=0.0, replacement_rate=0.5)
    _train(model, opt, 3)
    tracker = opt.tracker
    assert tracker is not None
    before = {name: copy.deepcopy(opt.reset_state_dict()["stats"][name]) for name in opt.layers}
    resets = dict(opt.reset_counts)
    weights = copy.deepcopy(model.state_dict())
    opt.zero_grad()
    model(X * 1e20).pow(2).mean().backward()  # the loss overflows to inf
    opt.step()
    after = opt.reset_state_dict()["stats"]
    for name, stats in before.items():
        for key in ("utility_ema", "weight_ema", "mean_ema", "edge_weight_ema"):
            _same(stats[key], after[name][key], f"{name}.{key}")
    assert opt.reset_counts == resets
    _same(weights, model.state_dict())
    _train(model, opt, 3)  # and training goes on with resets
    assert sum(opt.reset_counts.values()) > sum(resets.values())


@pytest.mark.parametrize("host_reads", [True, False], ids=["read-on-host", "device-path"])
def test_a_nan_batch_commits_nothing(host_reads: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "DEFAULT_LIMITS", kernels.Limits(host_reads=host_reads))
    model = _mlp()
    opt = _wrap(model, lr=0.0)
    _train(model, opt, 3)
    utilities = {k: v.clone() for k, v in opt.utilities().items()}
    opt.zero_grad()
    (model(X).pow(2).mean() * float("nan")).backward()
    opt.step()
    _same(utilities, opt.utilities())


# -- models that change ---------------------------------------------------------------------
def test_a_replaced_head_is_never_written_and_the_new_one_is_found() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = GXDReset(
        torch.optim.SGD(model.parameters(), lr=0.0), model, replacement_rate=0.3, maturity=1
    )
    _train(model, opt, 5)
    old = model[4]
    saved = copy.deepcopy(old.state_dict())
    model[4] = nn.Linear(8, 3)
    opt.add_param_group({"params": model[4].parameters()})
    _train(model, opt, 10)
    _same(saved, old.state_dict())
    assert opt.layers["2"].consumers == ("4",) and opt.reset_counts["2"] > 0
    with pytest.raises(ValueError, match="not an eligible layer"):
        opt.predicted_cost("4")


def test_an_appended_layer_is_found_and_a_removed_one_is_never_written() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = GXDReset(
        torch.optim.SGD(model.parameters(), lr=0.0), model, replacement_rate=0.3, maturity=1
    )
    _train(model, opt, 4)
    model.append(nn.ReLU())
    model.append(nn.Linear(2, 2))
    opt.add_param_group({"params": model[6].parameters()})
    _train(model, opt, 4)
    assert opt.layers["4"].consumers == ("6",)
    removed = model[6]
    saved = copy.deepcopy(removed.state_dict())
    del model[6]  # a removal registers nothing: the step notices that `6` saw no data
    del model[5]
    _train(model, opt, 6)
    _same(saved, removed.state_dict())
    assert opt.skipped["4"] == "its units are part of the model's output"
    assert opt.reset_counts["2"] > 0


def test_two_wrappers_on_one_model_before_any_forward_name_the_conflict() -> None:
    model = _mlp()
    first = _wrap(model)
    second = _wrap(model)
    with pytest.raises(ValueError, match="another GXDReset already resets"):
        model(X).sum().backward()
    assert set(first.layers) == {"hidden.0", "hidden.1"}
    with unchanged(model, second), pytest.raises(RuntimeError, match="first training pass"):
        _ = second.layers


def test_a_step_after_a_pass_the_wrapper_did_not_see_raises_and_steps_nothing() -> None:
    model = _mlp()
    opt = _wrap(model)
    (X @ model.hidden[0].weight.t()).sum().backward()  # the layer's weight, not the module
    with unchanged(model, opt), pytest.raises(RuntimeError, match="saw no training pass"):
        opt.step()


def test_training_in_eval_mode_raises_with_the_fix() -> None:
    model = _mlp().eval()
    opt = _wrap(model)
    model(X).sum().backward()
    with unchanged(model, opt), pytest.raises(RuntimeError, match=r"call model\.train\(\)"):
        opt.step()


# -- custom utilities -------------------------------------------------------------------------
def per_unit(h: Tensor, grad: Tensor, reference: Tensor) -> Tensor:
    return (grad * h).sum((0, 2))  # [U]: summed over the samples too


def nothing(h: Tensor, grad: Tensor, reference: Tensor) -> Tensor:
    return None  # type: ignore[return-value]


def not_finite(h: Tensor, grad: Tensor, reference: Tensor) -> Tensor:
    return (grad * h).sum(-1) / 0.0


@pytest.mark.parametrize(
    ("utility", "match"),
    [
        (per_unit, r"utility=per_unit returned a tensor of shape \[3\]: .* \[N, U\] = \[2, 3\]"),
        (nothing, "utility=nothing returned NoneType"),
        (not_finite, "utility=not_finite returned scores that are not all finite"),
    ],
)
def test_a_bad_custom_utility_is_refused_at_once(
    utility: Callable[[Tensor, Tensor, Tensor], Tensor], match: str
) -> None:
    model = _mlp()
    with unchanged(model), pytest.raises(ValueError, match=match):
        _wrap(model, utility=utility)


def test_a_custom_utility_is_checked_on_the_real_batch_too() -> None:
    def per_unit_on_real_batches(h: Tensor, grad: Tensor, reference: Tensor) -> Tensor:
        scores = (grad * h).sum(-1)
        return scores if h.shape[0] == 2 else scores.sum(0)  # right on the probe only

    def zero_log(h: Tensor, grad: Tensor, reference: Tensor) -> Tensor:
        return (grad * h.abs().log()).sum(-1)  # -inf where a ReLU is off

    for utility, match in [
        (per_unit_on_real_batches, r"returned a tensor of shape \[\d\]: .* = \[16, \d\]"),
        (zero_log, "zero_log returned scores that are not all finite"),
    ]:
        model = _mlp()
        opt = _wrap(model, utility=utility)
        model(X).pow(2).mean().backward()
        weights, inner = (
            copy.deepcopy(model.state_dict()),
            copy.deepcopy(opt.optimizer.state_dict()),
        )
        with pytest.raises(ValueError, match=match):
            opt.step()  # the scores are reduced before the inner step: it does not happen
        _same(weights, model.state_dict())
        _same(inner, opt.optimizer.state_dict())
        assert opt.steps == 0


# -- the step is all or nothing -------------------------------------------------------------
class Failing(torch.optim.SGD):
    def step(self, closure: Any = None) -> Any:
        raise RuntimeError("the inner step failed")


def test_an_inner_step_that_raises_commits_nothing() -> None:
    model = _mlp()
    opt = GXDReset(Failing(model.parameters(), lr=0.1), model, replacement_rate=0.5, maturity=0)
    model(X).sum().backward()
    opt.optimizer.step = torch.optim.SGD.step.__get__(opt.optimizer)  # type: ignore[method-assign]
    opt.step()
    del opt.optimizer.step
    model(X).sum().backward()
    with unchanged(model, opt), pytest.raises(RuntimeError, match="the inner step failed"):
        opt.step()
    assert opt.steps == 1


def test_a_grad_scaler_step_that_raises_leaves_no_scaler_state() -> None:
    model = _mlp()
    opt = GXDReset(Failing(model.parameters(), lr=0.1), model)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(model(X).pow(2).mean()).backward()
    with pytest.raises(RuntimeError, match="the inner step failed"):
        scaler.step(opt)
    assert not hasattr(opt, "found_inf") and not hasattr(opt, "grad_scale")
    assert opt.steps == 0
    opt.optimizer.step = torch.optim.SGD.step.__get__(opt.optimizer)  # type: ignore[method-assign]
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    opt.step()  # a plain step no longer divides the gradients by the old scale
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))


# -- copies -----------------------------------------------------------------------------------
def test_mirror_resets_refuses_the_model_itself_a_tied_copy_and_another_architecture() -> None:
    model = _mlp()
    opt = _wrap(model)
    opt.discover(X)
    with unchanged(model, opt), pytest.raises(ValueError, match="not the model itself"):
        mirror_resets(opt, model)
    tied = copy.deepcopy(model)
    tied.hidden[0].weight = model.hidden[0].weight
    with unchanged(model, opt), pytest.raises(ValueError, match="shares parameters"):
        mirror_resets(opt, tied)
    other = MLP(MLPSpec(4, (8, 7), 2))
    with unchanged(model, opt), pytest.raises(ValueError, match=r"`hidden.1` \(Linear"):
        mirror_resets(opt, other)
    assert not opt._reset_hooks and not opt._reset_pre_hooks


def test_reset_units_of_a_frozen_layer_raises_and_changes_nothing() -> None:
    model = _mlp()
    opt = _wrap(model)
    _train(model, opt, 2)
    model.hidden[1].requires_grad_(False)
    with unchanged(model, opt), pytest.raises(ValueError, match=r"`hidden\.1\.weight` was frozen"):
        opt.reset_units("hidden.0", [1])


# -- checkpoints: checked whole before anything loads --------------------------------------
def _saved() -> tuple[MLP, GXDReset, dict[str, Any]]:
    model = _mlp()
    opt = _wrap(model)
    _train(model, opt, 4)
    saved = copy.deepcopy(opt.state_dict())
    _train(model, opt, 2)  # the wrapper moves on: a load would change it
    return model, opt, saved


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda entry: entry.pop(key)


def _set_stat(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda entry: entry["stats"]["hidden.0"].__setitem__(key, value)


MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "no-generator": (_drop("generator"), r"lacks \['generator'\]"),
    "no-config": (_drop("config"), r"lacks \['config'\]"),
    "corrupt-generator": (
        lambda e: e.__setitem__("generator", e["generator"][:7]),
        "generator state is corrupt",
    ),
    "float-generator": (
        lambda e: e.__setitem__("generator", e["generator"].float()),
        "generator state is not a uint8 tensor",
    ),
    "text-budget": (_set_stat("budget", "many"), "budget must be a finite number"),
    "nan-budget": (_set_stat("budget", float("nan")), "budget must be a finite number"),
    "nan-utility": (
        lambda e: e["stats"]["hidden.0"]["utility_ema"].__setitem__(0, float("nan")),
        "utility_ema is not finite",
    ),
    "short-utility": (_set_stat("utility_ema", torch.zeros(3)), "do not match its 8 units"),
    "negative-age": (_set_stat("age", -torch.ones(8, dtype=torch.int64)), "age must hold"),
    "norm-above-one": (_set_stat("weight_ema", torch.full((8,), 2.0)), r"in \[0, 1\]"),
    "negative-steps": (lambda e: e.__setitem__("steps", -1), "steps must be a count"),
    "no-stats": (lambda e: e.__setitem__("stats", None), "has layers but no statistics"),
    "version": (lambda e: e.__setitem__("format_version", 99), "unsupported GXDReset"),
    "bad-layers": (lambda e: e.__setitem__("layers", {"hidden.0": {}}), "layers are malformed"),
    "pending-count": (_set_stat("pending_samples", 1.5), "pending samples"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_entry_is_refused_before_anything_loads(case: str) -> None:
    model, opt, saved = _saved()
    spoil, match = MALFORMED[case]
    spoil(saved["gxd_reset"])
    with unchanged(model, opt), pytest.raises(ValueError, match=match):
        opt.load_state_dict(saved)
    with unchanged(model, opt), pytest.raises(ValueError, match=match):
        opt.load_reset_state_dict(saved["gxd_reset"])


def test_an_entry_that_is_not_a_dict_is_refused() -> None:
    model, opt, saved = _saved()
    saved["gxd_reset"] = ["not", "a", "dict"]
    with unchanged(model, opt), pytest.raises(ValueError, match="is a list, not a dict"):
        opt.load_state_dict(saved)


def test_a_bad_inner_state_leaves_the_wrapper_as_it_was() -> None:
    model, opt, saved = _saved()
    saved["param_groups"] = saved["param_groups"] * 2
    with unchanged(model, opt), pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict(saved)


def test_a_checkpoint_taken_before_discovery_returns_a_trained_wrapper_to_that_state() -> None:
    model = _mlp()
    opt = _wrap(model)
    early = copy.deepcopy(opt.state_dict())
    _train(model, opt, 4)
    assert opt.steps == 4
    opt.load_state_dict(early)
    assert opt.steps == 0
    with pytest.raises(RuntimeError, match="first training pass"):
        _ = opt.reset_counts
    _train(model, opt, 3)  # found again, as on a fresh wrapper
    assert opt.steps == 3 and set(opt.layers) == {"hidden.0", "hidden.1"}


def test_a_checkpoint_taken_mid_accumulation_resumes_bit_for_bit() -> None:
    def accumulate(model: nn.Module, opt: GXDReset, seeds: range) -> None:
        for seed in seeds:
            x = torch.randn(16, 4, generator=torch.Generator().manual_seed(seed))
            model(x).pow(2).mean().backward()

    model = _mlp()
    opt = _wrap(model, seed=3)
    _train(model, opt, 3)
    opt.zero_grad()
    accumulate(model, opt, range(2))  # half of the step's batches
    saved_opt, saved_model = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    accumulate(model, opt, range(2, 4))
    opt.step()
    _train(model, opt, 4)

    twin = _mlp()
    twin.load_state_dict(saved_model)
    resumed = _wrap(twin, seed=3)
    resumed.load_state_dict(saved_opt)
    for p, g in zip(twin.parameters(), grads, strict=True):
        p.grad = g.clone()
    accumulate(twin, resumed, range(2, 4))
    resumed.step()
    _train(twin, resumed, 4)
    _same(model.state_dict(), twin.state_dict())
    _same(opt.reset_state_dict()["stats"], resumed.reset_state_dict()["stats"])
