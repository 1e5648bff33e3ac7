"""The wrapper as a torch optimizer: interface, statistics semantics, checkpoints, copies."""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from gxd_optim import GXDReset, gxd
from gxd_optim.testing.models import MLP, MLPSpec
from tests.optimizers import OPTIMIZERS

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
Y = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))


def _model(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(MLPSpec(4, (16, 8), 2))


def _wrap(model: nn.Module, optimizer: str = "adam", **kwargs: object) -> GXDReset:
    settings: dict[str, object] = {"replacement_rate": 0.05, "maturity": 2}
    settings.update(kwargs)
    return GXDReset(OPTIMIZERS[optimizer](model.parameters()), model, **settings)  # type: ignore[arg-type]


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        index = torch.arange(step * 8, step * 8 + 8) % 64
        opt.zero_grad()
        (model(X[index]) - Y[index]).pow(2).mean().backward()
        opt.step()


def _stats(opt: GXDReset) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in opt.utilities().items()}


# -- the optimizer interface ---------------------------------------------------------------
def test_is_an_optimizer_and_delegates_groups_state_defaults() -> None:
    model = _model()
    inner = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt = GXDReset(inner, model)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is inner.param_groups and opt.state is inner.state
    assert opt.defaults is inner.defaults
    opt.param_groups[0]["lr"] = 0.5
    assert inner.param_groups[0]["lr"] == 0.5


def test_step_after_zero_grad_and_step_hooks() -> None:
    model = _model()
    opt = _wrap(model)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    opt.zero_grad()
    _train(model, opt, range(1))
    assert calls == ["pre", "post"]


def test_global_step_hooks_and_the_profiler_see_the_wrapper_step() -> None:
    """Without hooks or a profiler the step skips `torch.optim.Optimizer`'s wrapper; with a
    global step hook, or under the profiler, it goes through it as every optimizer's does."""
    model = _model()
    opt = _wrap(model)
    calls: list[str] = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, *a: calls.append(f"pre {type(o).__name__}")),
        register_optimizer_step_post_hook(lambda o, *a: calls.append(f"post {type(o).__name__}")),
    ]
    try:
        _train(model, opt, range(1))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == ["pre GXDReset", "pre Adam", "post Adam", "post GXDReset"]
    with torch.profiler.profile() as profiler:
        _train(model, opt, range(1))
    names = {event.name for event in profiler.events()}
    assert "Optimizer.step#GXDReset.step" in names and "Optimizer.step#Adam.step" in names
    assert getattr(type(opt).step, "hooked", False)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=20),
    ],
)
def test_lr_schedulers_drive_the_inner_optimizer(make: Callable[..., object]) -> None:
    model = _model()
    opt = _wrap(model)
    scheduler = make(opt)
    before = opt.optimizer.param_groups[0]["lr"]
    _train(model, opt, range(3))
    for _ in range(3):
        scheduler.step()  # type: ignore[attr-defined]
    assert opt.optimizer.param_groups[0]["lr"] != before
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    lr = opt.optimizer.param_groups[0]["lr"]
    scheduler.step()  # type: ignore[attr-defined]
    assert opt.optimizer.param_groups[0]["lr"] != lr  # still bound after the groups were rebound


def test_lbfgs_with_closure() -> None:
    model = _model()
    opt = GXDReset(torch.optim.LBFGS(model.parameters(), max_iter=3), model, maturity=0)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = (model(X) - Y).pow(2).mean()
        loss.backward()
        return loss

    first = float(opt.step(closure))
    assert float(opt.step(closure)) < first
    assert all(bool((u > 0).any()) for u in opt.utilities().values())


# -- statistics semantics -------------------------------------------------------------------
def test_statistics_count_only_when_step_runs() -> None:
    model = _model()
    opt = _wrap(model, replacement_rate=0.0)
    _train(model, opt, range(3))
    before = _stats(opt)
    (model(X) - Y).pow(2).mean().backward()
    opt.zero_grad()  # e.g. GradScaler skipped the step
    opt.optimizer.step()
    opt.step()  # no backward since zero_grad: nothing is committed
    assert all(torch.equal(before[k], v) for k, v in opt.utilities().items())


def test_eval_and_no_grad_forwards_change_nothing() -> None:
    model = _model()
    opt = _wrap(model, replacement_rate=0.0)
    _train(model, opt, range(3))
    before = _stats(opt)
    with torch.no_grad():
        model(X)
    with torch.inference_mode():
        model(X)
    model.eval()
    model(X).sum().backward()
    model.train()
    opt.optimizer.zero_grad()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in opt.utilities().items())


def test_gradient_accumulation_equals_one_big_batch_for_the_signed_sums() -> None:
    model = _model()
    twin = copy.deepcopy(model)
    a, b = _wrap(model, "sgd", replacement_rate=0.0), _wrap(twin, "sgd", replacement_rate=0.0)
    _train(model, a, range(2))
    _train(twin, b, range(2))
    a.zero_grad()
    b.zero_grad()
    (model(X) - Y).pow(2).sum().backward()
    for half in (slice(0, 32), slice(32, 64)):
        (twin(X[half]) - Y[half]).pow(2).sum().backward()
    for name in a.layers:
        torch.testing.assert_close(a.predicted_cost(name), b.predicted_cost(name))
    a.step()
    b.step()
    for name in a.layers:
        torch.testing.assert_close(a.utilities()[name], b.utilities()[name])


def test_custom_utility_callable_matches_builtin() -> None:
    model = _model()
    twin = copy.deepcopy(model)
    a = _wrap(model, "sgd", replacement_rate=0.0)
    b = _wrap(twin, "sgd", replacement_rate=0.0, utility=lambda h, g, r: gxd(h, g, r))
    _train(model, a, range(4))
    _train(twin, b, range(4))
    for name in a.layers:
        torch.testing.assert_close(a.utilities()[name], b.utilities()[name])
    assert any(bool((u > 0).any()) for u in a.utilities().values())


def test_utilities_rank_units_and_are_bias_corrected() -> None:
    model = _model()
    opt = _wrap(model, "sgd", replacement_rate=0.0, decay=0.9)
    _train(model, opt, range(1))
    # one step with decay 0.9: EMA = 0.1 * batch, bias correction 1 - 0.9 = 0.1 -> batch value
    layer = opt.tracker.layers["hidden.0"]  # type: ignore[union-attr]
    torch.testing.assert_close(opt.utilities()["hidden.0"], layer.utility_ema / 0.1)


def test_zero_gradient_step_resets_nothing() -> None:
    model = _model()
    opt = _wrap(model, replacement_rate=1.0, maturity=0)
    _train(model, opt, range(2))
    counts = dict(opt.reset_counts)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # what torch.distributed.checkpoint does on a fresh optimizer: no backward
    assert opt.reset_counts == counts


def test_selection_follows_budget_maturity_and_lowest_utility() -> None:
    model = _model()
    opt = _wrap(model, "sgd", replacement_rate=0.25, maturity=3)
    chosen: list[tuple[str, list[int], Tensor]] = []
    opt.register_reset_pre_hook(  # the utilities the selection saw
        lambda name, index: chosen.append((name, index.tolist(), opt.utilities()[name].clone()))
    )
    _train(model, opt, range(3))
    assert not chosen  # ages 1..3 are not above maturity 3: nothing eligible, nothing accrues
    _train(model, opt, range(3, 4))
    # hidden.0: 16 eligible * 0.25 = 4 units; hidden.1: 8 * 0.25 = 2 units
    assert opt.reset_counts == {"hidden.0": 4, "hidden.1": 2}
    for name, index, utility in chosen:
        rest = [i for i in range(len(utility)) if i not in index]
        assert float(utility[index].max()) <= float(utility[rest].min()), name


def test_replacement_rate_zero_only_tracks() -> None:
    model = _model()
    opt = _wrap(model, replacement_rate=0.0, maturity=0)
    _train(model, opt, range(5))
    assert opt.reset_counts == {"hidden.0": 0, "hidden.1": 0}


def test_reset_hook_is_called_and_removable() -> None:
    model = _model()
    opt = _wrap(model)
    _train(model, opt, range(1))
    seen: list[tuple[str, list[int]]] = []
    handle = opt.register_reset_hook(lambda name, idx: seen.append((name, idx.tolist())))
    opt.reset_units("hidden.1", [3, 1, 3])
    handle.remove()
    opt.reset_units("hidden.1", [0])
    assert seen == [("hidden.1", [1, 3])]
    assert opt.reset_counts["hidden.1"] == 3


# -- checkpoints ----------------------------------------------------------------------------
def test_plain_optimizer_checkpoint_loads_with_a_warning() -> None:
    model = _model()
    plain = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, plain, range(2))
    opt = _wrap(model)
    with pytest.warns(UserWarning, match="plain optimizer state dict"):
        opt.load_state_dict(plain.state_dict())
    assert len(opt.state) == len(plain.state)


def test_checkpoint_from_another_architecture_is_refused_and_changes_nothing() -> None:
    model = _model()
    opt = _wrap(model)
    _train(model, opt, range(3))
    other = MLP(MLPSpec(4, (16, 9), 2))
    other_opt = _wrap(other)
    _train(other, other_opt, range(3))
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="another architecture"):
        opt.load_state_dict(other_opt.state_dict())
    after = opt.state_dict()
    assert torch.equal(after["gxd_reset"]["generator"], before["gxd_reset"]["generator"])
    for key, state in before["state"].items():
        for name, value in state.items():
            assert torch.equal(after["state"][key][name], value)
    fresh = _wrap(_model())
    with pytest.raises(ValueError, match="another architecture"):
        GXDReset.load_state_dict(fresh, other_opt.state_dict())
    with pytest.raises(RuntimeError, match="first"):
        _ = fresh.layers  # still undiscovered: the refused checkpoint installed nothing


def test_changed_settings_are_reported_on_load() -> None:
    model = _model()
    opt = _wrap(model)
    _train(model, opt, range(2))
    opt.close()
    other = _wrap(model, replacement_rate=0.2)
    with pytest.warns(UserWarning, match="replacement_rate"):
        other.load_state_dict(opt.state_dict())


# -- copies ---------------------------------------------------------------------------------
def test_deepcopy_and_pickle_give_independent_working_wrappers() -> None:
    model = _model()
    opt = _wrap(model)
    torch.optim.lr_scheduler.StepLR(opt, 1)
    _train(model, opt, range(3))
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        before = _stats(opt)
        _train(clone.model, clone, range(3, 6))
        assert all(torch.equal(before[k], v) for k, v in opt.utilities().items())
        assert any(not torch.equal(before[k], v) for k, v in clone.utilities().items())


def test_a_deepcopy_of_the_model_does_not_feed_the_wrapper() -> None:
    model = _model()
    opt = _wrap(model, replacement_rate=0.0)
    _train(model, opt, range(2))
    ema = copy.deepcopy(model)
    before = _stats(opt)
    (ema(X) - Y).pow(2).mean().backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in opt.utilities().items())
    pickle.dumps(model)  # the hooks pickle (as inert hooks)


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"replacement_rate": -0.1}, ValueError, "replacement_rate"),
        ({"decay": 1.0}, ValueError, "decay"),
        ({"decay": -0.1}, ValueError, "decay"),
        ({"maturity": -1}, ValueError, "maturity"),
        ({"maturity": 1.5}, TypeError, "maturity"),
        ({"utility": "nope"}, ValueError, "utility"),
        ({"reference": "median"}, ValueError, "reference"),
        ({"state_policy": "keep"}, ValueError, "state_policy"),
        ({"exclude": ["nope"]}, ValueError, "exclude"),
        ({"layers": {"nope": ["head"]}}, ValueError, "nope"),
        ({"layers": {"hidden.0": []}}, ValueError, "non-empty"),
        ({"layers": {"hidden.0": ["head"]}}, ValueError, "inputs"),
        ({"replacement_rate": float("nan")}, TypeError, "replacement_rate"),
    ],
)
def test_bad_settings_raise_before_anything_changes(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    model = _model()
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    with pytest.raises(error, match=match):
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, **kwargs)  # type: ignore[arg-type]
    assert hooks == [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


def test_bad_models_and_optimizers() -> None:
    model = _model()
    with pytest.raises(ValueError, match="no Linear or Conv"):
        GXDReset(torch.optim.SGD(nn.LayerNorm(3).parameters(), lr=0.1), nn.LayerNorm(3))
    with pytest.raises(ValueError, match="none of the model's parameters"):
        GXDReset(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), model)
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        GXDReset(object(), model)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nn\.Module"):
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), object())  # type: ignore[arg-type]
    opt = _wrap(model)
    with pytest.raises(TypeError, match="already a GXDReset"):
        GXDReset(opt, model)


def test_parametrized_layers_are_skipped_with_reason() -> None:
    model = MLP(MLPSpec(4, (16, 8, 6), 2))
    nn.utils.parametrizations.weight_norm(model.hidden[1])
    opt = _wrap(model)
    opt.discover(X)
    assert "parametrized" in opt.skipped["hidden.1"]
    assert "parametrized" in opt.skipped["hidden.0"]
    assert set(opt.layers) == {"hidden.2"}


def test_reset_units_rejects_bad_names_and_indices_and_changes_nothing() -> None:
    model = _model()
    opt = _wrap(model)
    _train(model, opt, range(2))
    before = [p.detach().clone() for p in model.parameters()]
    for name, idx, match in [
        ("nope", [0], "not an eligible layer"),
        ("head", [0], "skipped"),
        ("hidden.1", [8], r"\[0, 8\)"),
        ("hidden.1", [-1], r"\[0, 8\)"),
        ("hidden.1", [0.5], "ints"),
        ("hidden.1", [[0]], "1-D"),
    ]:
        with pytest.raises(ValueError, match=match):
            opt.reset_units(name, idx)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=False))


def test_sharded_setups_are_refused() -> None:
    model = _model()

    class ZeroRedundancyOptimizer(torch.optim.SGD):
        _overlap_with_ddp = True  # steps inside DDP's communication hook

    with pytest.raises(NotImplementedError, match=r"ZeroRedundancyOptimizer.*overlap_with_ddp"):
        GXDReset(ZeroRedundancyOptimizer(model.parameters(), lr=0.1), model)

    class FullyShardedDataParallel(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

    with pytest.raises(NotImplementedError, match="FSDP"):
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), FullyShardedDataParallel(model))


def test_warnings_free_normal_use() -> None:
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = _wrap(model)
        _train(model, opt, range(5))
        opt.load_state_dict(opt.state_dict())


def test_close_removes_every_hook() -> None:
    model = _model()
    counts = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    opt = _wrap(model, replacement_rate=0.0)
    _train(model, opt, range(2))
    before = _stats(opt)
    opt.close()
    assert counts == [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    _train(model, opt, range(2, 4))  # still steps the inner optimizer, records nothing
    assert all(torch.equal(before[k], v) for k, v in opt.utilities().items())


def test_summary_reports_every_layer_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    model = _model()
    opt = _wrap(model, replacement_rate=0.25, maturity=2)
    _train(model, opt, range(4))
    with caplog.at_level("INFO", logger="gxd_optim"):
        table = opt.summary()
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["layer", "units", "eligible", "resets", "dormant"]
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert rows["hidden.0"][1:4] == [
        "16",
        str(int((opt.tracker.layers["hidden.0"].age > 2).sum())),
        str(opt.reset_counts["hidden.0"]),
    ]  # type: ignore[union-attr]
    assert "skipped: head: its units are part of the model's output" in table
    assert table in caplog.text
