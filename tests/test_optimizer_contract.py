"""The wrapper's contract, run over every optimizer of the registry (`tests/optimizers.py`).

For each optimizer, on a small MLP and a small CNN with BatchNorm: training with resets runs
and resets happen; a reset changes exactly the touched slices of every per-element state
tensor, as the state policy says; with no resets the wrapper steps bit-identically to the bare
optimizer; a checkpoint resumes bit-identically; learning-rate changes reach the inner
optimizer. Entries that cannot take a model's parameters are skipped with the reason, and
what the wrapper does with them instead is asserted at the end.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.operator import STATE_POLICIES
from tests.optimizers import REGISTRY, OptimizerInfo


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tensors this small step fastest on one intra-op thread, and stay fast on a busy machine
    (idle threads of a pool spin for cores that other processes hold)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class MLP(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 12, bias=bias)
        self.fc2 = nn.Linear(12, 8, bias=bias)
        self.head = nn.Linear(8, 2, bias=bias)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.act(self.fc2(self.act(self.fc1(x)))))
        return out


class CNN(nn.Module):
    """conv → BatchNorm → ReLU → conv → ReLU → flatten (4 positions per channel) → Linear."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, bias=bias)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, bias=bias)
        self.fc = nn.Linear(3 * 2 * 2, 2, bias=bias)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.conv2(self.act(self.bn(self.conv1(x)))))
        out: Tensor = self.fc(x.flatten(1))
        return out


@dataclass(frozen=True)
class Reset:
    """The units of one layer that a test resets, and where they live."""

    units: tuple[int, ...]
    consumers: tuple[tuple[str, int], ...]  # (consumer, input columns per unit)
    norms: tuple[str, ...] = ()

    def touched(self, layer: str) -> dict[str, tuple[int, Tensor]]:
        """Parameter name → (dim, indices) of the slices a reset of ``units`` writes."""
        rows = torch.tensor(self.units)
        slices = {
            f"{name}.{kind}": (0, rows)
            for name in (layer, *self.norms)
            for kind in ("weight", "bias")
        }
        for consumer, k in self.consumers:
            columns = (rows[:, None] * k + torch.arange(k)).flatten()
            slices[f"{consumer}.weight"] = (1, columns)
        return slices


@dataclass(frozen=True)
class Case:
    """A model, its data, and the units the state test resets in each eligible layer."""

    name: str
    build: Callable[[bool], nn.Module]
    inputs: Tensor
    targets: Tensor
    resets: Mapping[str, Reset]


def _data(seed: int, *shape: int) -> Tensor:
    return torch.randn(32, *shape, generator=torch.Generator().manual_seed(seed))


CASES = (
    Case(
        "mlp",
        MLP,
        _data(1, 4),
        _data(2, 2),
        {"fc1": Reset((0, 5, 11), (("fc2", 1),)), "fc2": Reset((2, 3), (("head", 1),))},
    ),
    Case(
        "cnn",
        CNN,
        _data(3, 2, 6, 6),
        _data(4, 2),
        {"conv1": Reset((1, 2), (("conv2", 1),), ("bn",)), "conv2": Reset((0, 2), (("fc", 4),))},
    ),
)


def _not_applicable(info: OptimizerInfo, case: Case) -> str:
    if info.sparse_only:
        return f"{info.name} takes only sparse gradients, which Linear/Conv layers never produce"
    if info.matrices_only and case.name != "mlp":
        return f"{info.name} takes only 2-D parameters: no Conv, no BatchNorm"
    return ""


def _combos(*policies: str) -> list[Any]:
    """(optimizer, model[, policy]) for every registry entry, skipped or xfailed with a reason."""
    params = []
    for info in REGISTRY:
        for case in CASES:
            skip = _not_applicable(info, case)
            for policy in policies or ("",):
                marks = [pytest.mark.skip(reason=skip)] if skip else []
                if policy in info.state_gaps:
                    marks.append(pytest.mark.xfail(strict=True, reason=info.state_gaps[policy]))
                ids = [info.name, case.name, *([policy] if policy else [])]
                args = (info, case, policy) if policy else (info, case)
                params.append(pytest.param(*args, marks=marks, id="-".join(ids)))
    return params


def _setup(
    info: OptimizerInfo, case: Case, *, seed: int = 0, wrapped: bool = True, **settings: Any
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The case's model (bias-free for an optimizer of matrices only) and its optimizer:
    wrapped (no resets unless ``settings`` say so) or bare."""
    torch.manual_seed(seed)
    model = case.build(not info.matrices_only)
    inner = info.make(model.parameters())
    if not wrapped:
        return model, inner
    return model, GXDReset(inner, model, **{"replacement_rate": 0.0, "seed": 3, **settings})


def _train(
    model: nn.Module, opt: torch.optim.Optimizer, info: OptimizerInfo, case: Case, steps: range
) -> None:
    """One step per batch of 8, batch ``s`` the same whatever run reaches step ``s``."""
    for step in steps:
        index = torch.arange(step * 8, step * 8 + 8) % len(case.inputs)
        closure = _closure(model, opt, case.inputs[index], case.targets[index])
        if info.closure:
            opt.step(closure)  # type: ignore[arg-type]
        else:
            closure()
            opt.step()


def _closure(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    return closure


def _same(a: Any, b: Any) -> bool:
    """Bit-identical, through the lists and dicts optimizer state is made of."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, dict[str, Any]]:
    """A copy of the optimizer state by parameter name."""
    return {
        n: copy.deepcopy(dict(opt.state[p])) for n, p in model.named_parameters() if p in opt.state
    }


def _assert_same_params(model: nn.Module, other: nn.Module) -> None:
    for (name, p), q in zip(model.named_parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q), name


# -- training -------------------------------------------------------------------------------
@pytest.mark.parametrize(("info", "case"), _combos())
def test_training_with_resets_runs_and_resets(info: OptimizerInfo, case: Case) -> None:
    model, opt = _setup(info, case, replacement_rate=0.3, maturity=1)
    start = _params(model)
    _train(model, opt, info, case, range(6))
    assert isinstance(opt, GXDReset)
    assert set(opt.layers) == set(case.resets), opt.skipped
    assert all(count > 0 for count in opt.reset_counts.values()), opt.reset_counts
    assert opt.steps == 6
    for name, p in model.named_parameters():
        assert bool(torch.isfinite(p).all()), name
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize(("info", "case"), _combos())
def test_registry_classifies_every_per_element_state(info: OptimizerInfo, case: Case) -> None:
    model, opt = _setup(info, case)
    _train(model, opt, info, case, range(3))
    per_element = {
        key
        for p in model.parameters()
        for key, value in opt.state[p].items()
        if isinstance(value, Tensor) and value.shape == p.shape
    }
    assert per_element == set(info.state), f"{info.name} keeps {sorted(per_element)}"


# -- the state a reset clears ---------------------------------------------------------------
@pytest.mark.parametrize(("info", "case", "policy"), _combos(*STATE_POLICIES))
def test_reset_changes_exactly_the_touched_state_slices(
    info: OptimizerInfo, case: Case, policy: str
) -> None:
    model, opt = _setup(info, case, state_policy=policy)
    assert isinstance(opt, GXDReset)
    _train(model, opt, info, case, range(3))
    for layer, reset in case.resets.items():
        before = _state(model, opt)
        opt.reset_units(layer, list(reset.units))
        after = _state(model, opt)
        touched = reset.touched(layer)
        for name, p in model.named_parameters():
            assert after.get(name, {}).keys() == before.get(name, {}).keys(), name
            for key, old in before.get(name, {}).items():
                new = after[name][key]
                where = f"{layer} reset: {name} state {key!r}"
                if not (isinstance(old, Tensor) and old.shape == p.shape and name in touched):
                    assert _same(new, old), f"{where} changed (only touched slices may)"
                    continue
                dim, index = touched[name]
                mask = torch.zeros_like(p, dtype=torch.bool).index_fill_(dim, index, True)
                assert torch.equal(new[~mask], old[~mask]), f"{where}: untouched slices changed"
                expected = _cleared(info, key, policy, old, mask, p)
                assert torch.allclose(new[mask], expected, rtol=1e-6, atol=0), (
                    f"{where}: touched entries {new[mask].tolist()}, expected {expected.tolist()}"
                )


def _cleared(
    info: OptimizerInfo, key: str, policy: str, old: Tensor, mask: Tensor, param: Tensor
) -> Tensor:
    """What the touched entries ``mask`` of state ``key`` must hold after a reset."""
    kind = info.state[key]
    if kind == "param":
        return param.detach()[mask]
    if kind == "scale" and policy == "mean_scale":
        return old[~mask].float().mean().to(old.dtype).expand(int(mask.sum()))
    return torch.zeros(int(mask.sum()), dtype=old.dtype)


# -- transparency, checkpoints, learning rates ----------------------------------------------
def _run(info: OptimizerInfo, case: Case, *, wrapped: bool, lr_scale: float = 1.0) -> nn.Module:
    """Train 4 steps, the learning rate of every group scaled through the (wrapper's) groups
    after a state-dict round trip (which rebinds them)."""
    model, opt = _setup(info, case, wrapped=wrapped)
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for group in opt.param_groups:
        group["lr"] *= lr_scale
    _train(model, opt, info, case, range(4))
    return model


@pytest.mark.parametrize(("info", "case"), _combos())
def test_without_resets_the_wrapper_steps_like_the_bare_optimizer(
    info: OptimizerInfo, case: Case
) -> None:
    _assert_same_params(_run(info, case, wrapped=True), _run(info, case, wrapped=False))


@pytest.mark.parametrize(("info", "case"), _combos())
def test_learning_rate_changes_act_on_the_inner_optimizer(info: OptimizerInfo, case: Case) -> None:
    slow = _run(info, case, wrapped=True, lr_scale=0.25)
    _assert_same_params(slow, _run(info, case, wrapped=False, lr_scale=0.25))
    fast = _run(info, case, wrapped=True)
    assert any(
        not torch.equal(p, q) for p, q in zip(slow.parameters(), fast.parameters(), strict=True)
    )


@pytest.mark.parametrize(("info", "case"), _combos())
@pytest.mark.parametrize("track_every", [1, 3])
def test_checkpoint_resume_is_bit_identical(
    info: OptimizerInfo, case: Case, track_every: int
) -> None:
    settings: dict[str, Any] = {
        "replacement_rate": 0.2,
        "maturity": 1,
        "track_every": track_every,
    }
    model, opt = _setup(info, case, **settings)
    assert isinstance(opt, GXDReset)
    _train(model, opt, info, case, range(4))  # with track_every=3: saved between collections
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    at_save = sum(opt.reset_counts.values())
    _train(model, opt, info, case, range(4, 10))
    assert sum(opt.reset_counts.values()) > at_save  # the resumed run must reproduce resets

    fresh, resumed = _setup(info, case, seed=99, **settings)
    assert isinstance(resumed, GXDReset)
    fresh.load_state_dict(saved_model)
    resumed.load_state_dict(saved_opt)
    _train(fresh, resumed, info, case, range(4, 10))
    _assert_same_params(model, fresh)
    assert resumed.reset_counts == opt.reset_counts
    assert resumed.steps == opt.steps
    for name, utility in opt.utilities().items():
        assert torch.equal(utility, resumed.utilities()[name]), name


# -- where an optimizer cannot take the units ----------------------------------------------
class EmbeddingMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6, sparse=True)
        self.fc = nn.Linear(6, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        out: Tensor = self.head(F.relu(self.fc(self.emb(tokens))))
        return out


SPARSE_ONLY = [pytest.param(info, id=info.name) for info in REGISTRY if info.sparse_only]
MATRICES_ONLY = [pytest.param(info, id=info.name) for info in REGISTRY if info.matrices_only]
TOKENS = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("info", SPARSE_ONLY)
def test_sparse_only_optimizer_over_the_embedding_is_refused(info: OptimizerInfo) -> None:
    """The one way such an optimizer trains an Embedding+Linear model: the embedding alone.
    Then no unit is in it, and the wrapper says so, naming each layer, before any step."""
    model = EmbeddingMLP()
    before = _params(model)
    opt = GXDReset(info.make([model.emb.weight]), model, maturity=0, replacement_rate=1.0)
    opt.zero_grad()
    with pytest.raises(ValueError, match=r"fc: not in the optimizer[\s\S]*head: not in"):
        model(TOKENS)  # the first training forward is where the wrapper finds the units
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("info", SPARSE_ONLY)
def test_sparse_only_optimizer_over_dense_layers_fails_on_step_and_commits_nothing(
    info: OptimizerInfo,
) -> None:
    model = EmbeddingMLP()
    before = _params(model)
    opt = GXDReset(info.make(model.parameters()), model, maturity=0, replacement_rate=1.0)
    opt.zero_grad()
    model(TOKENS).pow(2).mean().backward()
    with pytest.raises(RuntimeError, match="dense gradients"):
        opt.step()
    assert opt.steps == 0 and opt.reset_counts == {"fc": 0}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("info", MATRICES_ONLY)
def test_matrices_only_optimizer_without_the_biases_is_refused(info: OptimizerInfo) -> None:
    model = MLP()
    matrices = [p for p in model.parameters() if p.dim() == 2]
    opt = GXDReset(info.make(matrices), model)
    with pytest.raises(ValueError, match=r"fc1: not in the optimizer \(bias\)"):
        opt.discover(CASES[0].inputs)
