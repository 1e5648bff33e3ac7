"""The optimised statistics against a brute-force oracle.

The oracle captures every consumer's input ``h`` and gradient ``∂L/∂h`` with plain hooks and
recomputes, naively and per layer, what GXDReset keeps: running means (the references),
bias-corrected utilities and predicted costs. This checks the fused per-backward reduction,
the batched (foreach) commit across layers and the gradient-derived predicted cost.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import pickle
import unittest.mock
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from gxd_optim import Edge, GXDReset, LayerInfo
from gxd_optim.testing.models import CNN, MLP, CNNSpec, MLPSpec
from gxd_optim.tracking import kernels
from gxd_optim.tracking.storage import Batch


class Tokens(nn.Module):
    """A Linear producer read by a Linear consumer on ``[batch, tokens, features]``."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(4, 6)
        self.down = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x))).mean(1)


CASES = {
    "mlp": (lambda: MLP(MLPSpec(4, (6, 5), 2, two_heads=True)), (7, 4)),
    "cnn-flatten": (lambda: CNN(CNNSpec(2, (3, 2), 8, 2, pool="max", hidden=4)), (5, 2, 8, 8)),
    "tokens": (Tokens, (3, 5, 4)),
    # plain [N, U] inputs, one without bias (a zero reference): reduced together when small
    "mlp-plain": (
        lambda: nn.Sequential(
            nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5, bias=False), nn.Tanh(), nn.Linear(5, 2)
        ),
        (7, 4),
    ),
    # two small inputs (deferred) between two large ones: two accumulated backward passes
    # defer as many inputs as the model has pairs, though not every pair
    "mlp-mixed": (
        lambda: nn.Sequential(
            nn.Linear(4, 6),
            nn.ReLU(),
            nn.Linear(6, 5000),
            nn.ReLU(),
            nn.Linear(5000, 6),
            nn.ReLU(),
            nn.Linear(6, 5000),
            nn.ReLU(),
            nn.Linear(5000, 2),
        ),
        (7, 4),
    ),
    # zero-padded convolutions after batch norm (zero references) read as [N, U, P]
    "cnn-padded": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, 2),
        ),
        (5, 2, 6, 6),
    ),
}


def _capture(
    model: nn.Module, consumers: list[str]
) -> tuple[dict[str, list[Tensor]], list[RemovableHandle]]:
    seen: dict[str, list[Tensor]] = {name: [] for name in consumers}
    handles = []
    modules = dict(model.named_modules())
    for name in consumers:

        def pre(module: nn.Module, args: tuple[Tensor, ...], name: str = name) -> None:
            x = args[0]
            if x.requires_grad:
                seen[name].append(x.detach().clone())
                x.register_hook(lambda g, name=name: seen[name].append(g.detach().clone()))

        handles.append(modules[name].register_forward_pre_hook(pre))
    return seen, handles


def _per_unit(t: Tensor, units: int, linear: bool) -> Tensor:
    """``[N, U, P]`` by plain indexing."""
    if linear:
        k = t.shape[-1] // units
        return (
            t.reshape(t.shape[0], -1, units, k).permute(0, 2, 1, 3).reshape(t.shape[0], units, -1)
        )
    return t.reshape(t.shape[0], units, -1)


@pytest.mark.parametrize("backwards", [1, 2], ids=["one-backward", "accumulated"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_statistics_match_a_brute_force_oracle(case: str, backwards: int) -> None:
    make, shape = CASES[case]
    model = make().double()
    decay = 0.8
    opt = GXDReset(
        torch.optim.SGD(model.parameters(), lr=0.05),
        model,
        replacement_rate=0.0,
        decay=decay,
    )
    opt.discover(torch.randn(shape, dtype=torch.float64))
    layers = {name: info for name, info in opt.layers.items()}
    consumers = [e.consumer for info in layers.values() for e in info.edges]
    modules = dict(model.named_modules())
    seen, handles = _capture(model, consumers)

    ema_u = {n: torch.zeros(i.num_units, dtype=torch.float64) for n, i in layers.items()}
    ema_h = {c: torch.zeros(layers_of(layers, c).num_units, dtype=torch.float64) for c in consumers}
    reference = {c: torch.zeros_like(ema_h[c]) for c in consumers}
    for step in range(1, 5):
        for c in consumers:
            seen[c].clear()
        opt.zero_grad()
        for _ in range(backwards):  # with accumulation, several backward passes for one step
            model(torch.randn(shape, dtype=torch.float64)).pow(2).sum().backward()
        # predicted cost from activations, before the step changes anything
        for name, info in layers.items():
            expected_cost = torch.zeros(info.num_units, dtype=torch.float64)
            for edge in info.edges:
                linear = isinstance(modules[edge.consumer], nn.Linear)
                pairs = zip(seen[edge.consumer][0::2], seen[edge.consumer][1::2], strict=True)
                for h, g in pairs:
                    h3, g3 = (_per_unit(t, info.num_units, linear) for t in (h, g))
                    r = _reference(reference, edge)
                    expected_cost += (g3 * (r[:, None] - h3)).sum((0, 2))
            torch.testing.assert_close(opt.predicted_cost(name), expected_cost)
            # the reset step reads only the chosen units' columns: same numbers, any order
            subset = torch.tensor([info.num_units - 1, 0])
            assert opt.tracker is not None
            torch.testing.assert_close(
                opt.tracker.predicted_cost(name, subset), expected_cost[subset]
            )
        opt.step()
        for name, info in layers.items():
            accumulated: list[Tensor] = []
            for edge in info.edges:
                linear = isinstance(modules[edge.consumer], nn.Linear)
                records = seen[edge.consumer]
                for i, (h, g) in enumerate(zip(records[0::2], records[1::2], strict=True)):
                    h3, g3 = (_per_unit(t, info.num_units, linear) for t in (h, g))
                    r = _reference(reference, edge)
                    a = (g3 * (h3 - r[:, None])).sum(2)
                    if len(accumulated) <= i:
                        accumulated.append(a)
                    else:
                        accumulated[i] = accumulated[i] + a
            batch_utility = sum(a.abs().sum(0) for a in accumulated) / sum(
                a.shape[0] for a in accumulated
            )
            ema_u[name] = decay * ema_u[name] + (1 - decay) * batch_utility
            torch.testing.assert_close(opt.utilities()[name], ema_u[name] / (1 - decay**step))
            for edge in info.edges:
                linear = isinstance(modules[edge.consumer], nn.Linear)
                hs = [_per_unit(h, info.num_units, linear) for h in seen[edge.consumer][0::2]]
                mean = torch.cat(
                    [h.transpose(0, 1).reshape(info.num_units, -1) for h in hs], 1
                ).mean(1)
                ema_h[edge.consumer] = decay * ema_h[edge.consumer] + (1 - decay) * mean
                reference[edge.consumer] = ema_h[edge.consumer] / (1 - decay**step)
    for handle in handles:
        handle.remove()


def layers_of(layers: dict[str, LayerInfo], consumer: str) -> LayerInfo:
    return next(info for info in layers.values() if consumer in info.consumers)


def _reference(reference: dict[str, Tensor], edge: Edge) -> Tensor:
    r = reference[edge.consumer]
    return r if edge.reference == "mean" else torch.zeros_like(r)


def test_fused_and_general_reductions_agree() -> None:
    """The flat fast path (2-D Linear input) equals the general ``[N, pre, U, k·post]`` path."""
    model = MLP(MLPSpec(4, (6,), 2)).double()
    twin = copy.deepcopy(model)
    a = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, replacement_rate=0.0)
    b = GXDReset(torch.optim.SGD(twin.parameters(), lr=0.1), twin, replacement_rate=0.0)
    x = torch.randn(9, 4, dtype=torch.float64)
    for _ in range(3):
        for net, opt, inputs in (
            (model, a, x),
            (twin, b, x[:, None, :]),
        ):  # [N, 1, F]: general path
            opt.zero_grad()
            net(inputs).pow(2).sum().backward()
            opt.step()
    torch.testing.assert_close(a.utilities(), b.utilities())


class _NoValueReads(TorchFunctionMode):
    """Fails on every read of a tensor's value into Python (what waits for a GPU), except
    of the integer unit ages, which live on the host."""

    READS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__"})

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        if getattr(func, "__name__", "") in self.READS:
            tensor = args[0]
            if tensor.dtype != torch.int64 or tensor.device.type != "cpu":
                raise AssertionError(f"{func.__name__}() of a {tensor.dtype} tensor in a step")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", ["mlp", "cnn-flatten", "mlp-plain"])
def test_a_step_without_resets_reads_no_tensor_value(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU-side proxy of the no-synchronisation test below, run everywhere.

    Units come of age during the checked steps (the eligible count is recounted from the
    host ages) while the budget stays below one unit, so no reset is due.
    """
    make, shape = CASES[case]
    model = make()
    opt = GXDReset(
        torch.optim.SGD(model.parameters(), lr=0.01), model, maturity=3, replacement_rate=1e-9
    )
    monkeypatch.setattr(kernels, "DEFAULT_LIMITS", kernels.Limits(host_reads=False))  # a GPU's path

    def step() -> None:
        opt.zero_grad()
        model(torch.randn(shape)).pow(2).mean().backward()
        opt.step()

    step()  # discovery
    with _NoValueReads():
        for _ in range(6):
            step()
    assert opt.steps == 7 and sum(opt.reset_counts.values()) == 0
    assert opt.tracker is not None
    assert all(
        layer.eligible_count == layer.info.num_units for layer in opt.tracker.layers.values()
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_device_synchronisation_per_step_on_cuda() -> None:
    device = torch.device("cuda")
    model = MLP(MLPSpec(8, (32, 32), 4)).to(device)
    opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model, maturity=10**6)
    x = torch.randn(16, 8, device=device)
    for _ in range(3):  # discovery and the optimizer's lazy state may synchronise
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
    ("setting", "values"),
    [(("chunk", "chunk_zero"), (1 << 30, 5)), (("defer",), (-1, 1 << 30))],
    ids=["chunked-vs-one-chunk", "immediate-vs-deferred"],
)
def test_reduction_strategies_give_the_same_statistics(
    case: str, setting: tuple[str, ...], values: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunk-by-chunk equals one chunk; reducing at the commit equals reducing at once."""
    make, shape = CASES[case]
    results = []
    for value in values:
        limits = kernels.Limits(**dict.fromkeys(setting, value))
        monkeypatch.setattr(kernels, "DEFAULT_LIMITS", limits)
        torch.manual_seed(0)
        model = make().double()
        opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, replacement_rate=0.0)
        for step in range(4):
            opt.zero_grad()
            for _ in range(2):  # accumulation: several inputs wait for the same commit
                model(torch.randn(shape, dtype=torch.float64)).pow(2).sum().backward()
            if step == 2:  # a manual reset between backward and step drops what waited
                opt.reset_units(next(iter(opt.layers)), [0])
            opt.step()
        results.append((opt.utilities(), opt.state_dict()["gxd_reset"]["stats"]))
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("case", sorted(CASES))
def test_flat_and_segment_commits_agree(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folding whole buffers at once equals folding layer by layer and pair by pair."""
    make, shape = CASES[case]
    results = []
    for flat in (True, False):
        if not flat:  # as if some segment had seen no data: the segment-by-segment path
            monkeypatch.setattr(kernels, "DEFAULT_LIMITS", kernels.Limits(flat_commits=False))
        torch.manual_seed(0)
        model = make().double()
        opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, replacement_rate=0.0)
        for step in range(4):
            opt.zero_grad()
            x = torch.randn(shape, dtype=torch.float64)
            model(x * torch.inf if step == 1 else x).pow(2).sum().backward()  # one bad batch
            opt.step()
        assert opt.tracker is not None
        edges = [e for layer in opt.tracker.layers.values() for e in layer.edges]
        results.append(
            (
                opt.utilities(),
                opt.state_dict()["gxd_reset"]["stats"],
                [e.reference.clone() for e in edges],
            )
        )
    torch.testing.assert_close(results[0], results[1])


def _run(case: str, steps: int, plain_step: bool = False, **settings: Any) -> dict[str, Any]:
    """Train ``case`` with ``steps`` steps (an overflowing batch at step 1, two backward passes at
    step 2, one with ``create_graph``); its statistics, their buffers and its resets."""
    make, shape = CASES[case]
    torch.manual_seed(0)
    model = make().double()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = GXDReset(inner, model, maturity=1, replacement_rate=0.3, **settings)
    for step in range(steps):
        opt.zero_grad()
        for backward in range(2 if step == 2 else 1):
            x = torch.randn(shape, dtype=torch.float64)
            loss = model(x * torch.inf if step == 1 else x).pow(2).sum()
            loss.backward(create_graph=backward == 1)
        if step == 1:  # statistics that overflow, weights that stay finite
            for param in model.parameters():
                param.grad = None
        if plain_step:  # the commit and the deferred reductions under no_grad
            with torch.no_grad():
                opt.step()
        else:
            opt.step()
    assert opt.tracker is not None
    slabs = [slab.state.clone() for slab in opt.tracker.stats.slabs.values()]
    log = [(r.step, r.layer, r.units) for r in opt.reset_log]
    return {"stats": opt.state_dict()["gxd_reset"]["stats"], "slabs": slabs, "log": log}


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["log"] == b["log"]
    torch.testing.assert_close(a["stats"], b["stats"], rtol=0, atol=0)
    torch.testing.assert_close(a["slabs"], b["slabs"], rtol=0, atol=0)


_SCALE = torch.ones((), dtype=torch.float64, requires_grad=True)


def _scaled_activation(h: Tensor, grad: Tensor, reference: Tensor) -> Tensor:
    """A user's criterion that reads a tensor requiring grad."""
    return h.abs().mean(-1) * _SCALE


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize(
    "utility", ["gxd", "contribution", _scaled_activation], ids=["gxd", "contribution", "custom"]
)
@pytest.mark.parametrize("case", ["mlp", "mlp-plain", "mlp-mixed", "cnn-padded"])
def test_commits_and_deferred_reductions_need_no_no_grad(case: str, utility: Any) -> None:
    """The commit and the deferred reductions of GXD run in grad mode, as ``step()`` is called,
    and give exactly what they give under ``no_grad``, with no statistic requiring grad (a
    user's criterion may read tensors that require grad: its deferred reductions still run
    under ``no_grad``)."""
    fast = _run(case, 5, utility=utility)
    plain = _run(case, 5, plain_step=True, utility=utility)
    _same(fast, plain)
    assert not any(slab.requires_grad for slab in fast["slabs"])
    assert fast["log"] and all(slab.isfinite().all() for slab in fast["slabs"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_host_and_the_device_finiteness_checks_agree(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the finiteness of a commit on the host (every statistic on the CPU) leaves
    exactly what the device path leaves, the overflowing step included."""
    host = _run(case, 5)
    monkeypatch.setattr(kernels, "DEFAULT_LIMITS", kernels.Limits(host_reads=False))
    _same(host, _run(case, 5))
    assert host["log"]


def _pickled(obj: Any) -> Any:
    return pickle.loads(pickle.dumps(obj))


def _saved(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize(
    "duplicate", [copy.deepcopy, _pickled, _saved], ids=["deepcopy", "pickle", "torch.save"]
)
@pytest.mark.parametrize("case", ["mlp", "mlp-plain"])
def test_copies_keep_the_statistics_views_on_their_own_buffers(
    duplicate: Callable[[Any], Any], case: str
) -> None:
    """deepcopy, pickle and torch.save copy the flat buffers once: the per-layer statistics are
    views of the copy's buffers and follow its commits, and so do the ages. Where all inputs
    are reduced together (``mlp-plain``), the copy's workspace is its own too."""
    make, shape = CASES[case]
    model = make()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, replacement_rate=0.0)
    x = torch.randn(shape)

    def step(net: nn.Module, wrapper: GXDReset) -> None:
        wrapper.zero_grad()
        net(x).pow(2).sum().backward()
        wrapper.step()

    step(model, opt)
    twin_model, twin = duplicate((model, opt))
    for _ in range(2):
        step(model, opt)
        step(twin_model, twin)
    torch.testing.assert_close(twin.utilities(), opt.utilities(), rtol=0, atol=0)
    tracker = twin.tracker
    (slab,) = tracker.stats.slabs.values()
    for layer in tracker.layers.values():
        assert layer.age.tolist() == [3] * layer.info.num_units
        stats = [layer.utility_ema, layer.correction, layer.pending_abs]
        stats += [t for e in layer.edges for t in (e.mean_ema, e.reference, e.pending_h)]
        buffers = {
            b.untyped_storage().data_ptr()
            for b in (slab.ema, slab.norm, slab.reference, slab.pending)
        }
        assert {t.untyped_storage().data_ptr() for t in stats} <= buffers
    for work in slab._work.values():  # the halves are views of the copy's own buffer
        assert {t.untyped_storage().data_ptr() for t in work[:3]} == {
            work[0].untyped_storage().data_ptr()
        }
    assert bool(slab._work) == (case == "mlp-plain")


@pytest.mark.parametrize(
    ("shape", "linear"),
    [
        ((3, 4), True),
        ((3, 4 * 5), True),
        ((3, 6, 4), True),
        ((3, 6, 4 * 5), True),
        ((3, 4, 2, 3), False),
    ],
    ids=["flat", "flatten", "tokens", "tokens-flatten", "conv"],
)
@pytest.mark.parametrize("mean", [True, False], ids=["mean", "zero"])
def test_chunk_scores_follow_the_definition_in_every_layout(
    shape: tuple[int, ...], linear: bool, mean: bool
) -> None:
    """``a = Σ_pos g·(h − r)`` per sample and unit, and ``Σ h`` for a mean reference, in each
    layout the reduction views a consumer's input in (4 units)."""
    from gxd_optim.tracking.kernels import as_units, chunk_scores, make_plan, token_ones

    torch.manual_seed(0)
    units = 4
    h, g = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    reference = torch.randn(units, dtype=torch.float64) if mean else torch.zeros(units)
    h4, g4 = as_units(h, units, linear), as_units(g, units, linear)  # [N, pre, U, post]
    expected = h4 - reference[:, None]
    # statistics in the inputs' dtype (token sums as products), and in a wider one (AMP)
    for inputs in (torch.float64, torch.float32):
        plan = make_plan(h.shape, reference.to(inputs), linear, mean)
        view = h.shape if plan.view is None else plan.view
        h_in, g_in = h.reshape(view).to(inputs), g.reshape(view).to(inputs)
        ones = token_ones(plan, h_in, torch.float64)
        assert (ones is not None) == (plan.positions == (1,) and inputs == torch.float64)
        scores, h_sum = chunk_scores(h_in, g_in, plan, mean, torch.float64, ones)
        tolerance = {} if inputs == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
        torch.testing.assert_close(scores.double(), (expected * g4).sum((1, 3)), **tolerance)
        if mean:
            assert h_sum is not None and h_sum.dtype == torch.float64
            torch.testing.assert_close(h_sum, h4.sum((0, 1, 3)), **tolerance)
        else:
            assert h_sum is None


def test_plans_view_only_what_needs_a_view() -> None:
    """A convolution's input and ``[N, U]``/``[N, T, U]`` inputs are read as they are (a
    channels-last input is not copied); a flatten's columns and several token dimensions are
    viewed; the reference is a view of the statistics, shaped to broadcast."""
    from gxd_optim.tracking.kernels import make_plan

    reference = torch.arange(4.0)
    cases = {
        ((3, 4, 5, 6), False): (None, (2, 3), (4, 1, 1)),
        ((3, 4), True): (None, (), (4,)),
        ((3, 7, 4), True): (None, (1,), (4,)),
        ((3, 2, 7, 4), True): ((3, 14, 4), (1,), (4,)),
        ((3, 4 * 5), True): ((3, 4, 5), (2,), (4, 1)),
    }
    for (shape, linear), (view, positions, reference_shape) in cases.items():
        plan = make_plan(torch.Size(shape), reference, linear, mean=True)
        assert (plan.view, plan.positions) == (view, positions), shape
        assert plan.reference.shape == reference_shape
        assert plan.reference.data_ptr() == reference.data_ptr()
        assert (plan.ones is not None) == (positions == (1,))
        assert plan.count == math.prod(shape) // 4
    reference += 1.0  # in place, as a commit writes it
    assert plan.reference.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("mean", [True, False], ids=["mean", "zero"])
def test_chunked_scores_come_in_the_samples_order(
    mean: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With several consumers the per-sample scores wait in the batch; reduced chunk by chunk
    (last rows first), they are still ``a = Σ_t g·(h − r)`` of sample 0, 1, … in that order."""

    # 2 of the 7 samples (6 x 6 each) per chunk
    monkeypatch.setattr(kernels, "DEFAULT_LIMITS", kernels.Limits(chunk=80, chunk_zero=80))
    torch.manual_seed(0)
    model = Tokens()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, replacement_rate=0.0)
    model(torch.randn(2, 6, 4)).sum().backward()  # discovery
    tracker = opt.tracker
    layer = tracker.layers["up"]
    edge = layer.edges[0]
    edge.reference.copy_(torch.randn(6) if mean else torch.zeros(6))
    edge.edge = dataclasses.replace(edge.edge, reference="mean" if mean else "zero")
    h, g = torch.randn(7, 6, 6), torch.randn(7, 6, 6)  # chunks of 2, 2, 2 and 1 samples
    batch = Batch(layer, 7)
    batch.read = {"down", "another consumer"}  # keeps the scores until both have reported
    tracker.collector.reduce(edge, batch, h, g)
    assert batch.acc is not None
    torch.testing.assert_close(batch.acc, ((h - edge.reference) * g).sum(1))


class TwoReaders(nn.Module):
    """One token layer read by two consumers: with a bias (a mean reference), without (zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(4, 6)
        self.mean_reader = nn.Linear(6, 3)
        self.zero_reader = nn.Linear(6, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.up(x))
        return (self.mean_reader(h) * self.zero_reader(h)).mean(1)


def test_consumers_chunked_differently_give_the_statistics_of_one_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two consumers of one layer whose inputs are cut into different chunks (1 and 3 samples)
    add their per-sample scores sample by sample: the utilities are those of one chunk each."""

    results = []
    for limits in ((1 << 30, 1 << 30), (30, 100)):  # one chunk; chunks of 1 and 3 samples
        chunk, chunk_zero = limits  # defer=-1: reduced at once, not at the commit
        monkeypatch.setattr(
            kernels, "DEFAULT_LIMITS", kernels.Limits(chunk=chunk, chunk_zero=chunk_zero, defer=-1)
        )
        torch.manual_seed(0)
        model = TwoReaders().double()
        opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, replacement_rate=0.0)
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(7, 5, 4, dtype=torch.float64)).pow(2).sum().backward()
            opt.step()
        edges = opt.tracker.layers["up"].edges
        assert sorted(e.edge.reference for e in edges) == ["mean", "zero"]
        results.append(opt.utilities())
    torch.testing.assert_close(results[0], results[1])


def test_channels_last_inputs_give_the_same_statistics() -> None:
    """A channels-last CNN gets the same utilities and running means as a contiguous one."""
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3),
            nn.ReLU(),
            nn.Conv2d(8, 6, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 12 * 12, 2),
        ).to(memory_format=memory_format)
        opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.01), model, replacement_rate=0.0)
        x = torch.randn(16, 3, 14, 14).to(memory_format=memory_format)
        for _ in range(2):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        means = [e.mean_ema.clone() for layer in opt.tracker.layers.values() for e in layer.edges]
        results.append((opt.utilities(), means))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
def test_token_sums_are_products_only_at_full_precision(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Float32 sums over tokens use a matrix product only at full matmul precision (no TF32
    or bfloat16) and for statistics in the inputs' dtype, and give the plain sum either way."""

    used: list[bool] = []
    real = kernels.token_sums

    def spy(t: Tensor, ones: Tensor) -> Tensor:
        used.append(True)
        return real(t, ones)

    monkeypatch.setattr(kernels, "token_sums", spy)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        torch.manual_seed(0)
        h, g = torch.randn(3, 6, 4), torch.randn(3, 6, 4)
        reference = torch.randn(4)
        plan = kernels.make_plan(h.shape, reference, linear=True, mean=True)
        ones = kernels.token_ones(plan, h, torch.float32)
        wider = kernels.token_ones(plan, h, torch.float64)  # statistics wider than the inputs
        scores, h_sum = kernels.chunk_scores(h, g, plan, True, torch.float32, ones)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert bool(used) == (precision == "highest") == (ones is not None)
    assert wider is None
    expected = h.double() - reference.double()
    float32 = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(scores.double(), (expected * g.double()).sum(1), **float32)
    assert h_sum is not None
    torch.testing.assert_close(h_sum.double(), h.double().sum((0, 1)), **float32)


def test_commits_follow_batch_sizes_that_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-segment ``1/count`` scale is refilled whenever the counts change, and only then."""
    make, shape = CASES["mlp"]
    results = []
    for flat in (True, False):
        if not flat:  # the segment-by-segment path divides by each count directly
            monkeypatch.setattr(kernels, "DEFAULT_LIMITS", kernels.Limits(flat_commits=False))
        torch.manual_seed(0)
        model = make().double()
        opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, replacement_rate=0.0)
        for n in [8, 3, 3, 8, 5]:
            opt.zero_grad()
            model(torch.randn((n, *shape[1:]), dtype=torch.float64)).pow(2).sum().backward()
            opt.step()
        results.append(opt.state_dict()["gxd_reset"]["stats"])
    torch.testing.assert_close(results[0], results[1])


class _NoGradient(torch.autograd.Function):
    """The identity whose backward returns no gradient (an undefined one)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> None:
        return None


def test_an_undefined_consumer_gradient_counts_as_zero() -> None:
    """A consumer whose output sends back no gradient gives its input an undefined one, which
    autograd means as zero: the step commits a zero attribution and the running mean of h."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.0), model)
    x = torch.randn(5, 4)
    opt.discover(x)
    h = model[1](model[0](x))
    loss = _NoGradient.apply(model[2](h)).sum() + model[0].weight.sum()
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    assert opt.steps == 1
    assert not opt.utilities()["0"].any()
    edge = opt.tracker.layers["0"].edges[0]
    torch.testing.assert_close(edge.reference, h.detach().mean(0))
    opt.zero_grad()
    model(x).sum().backward()  # a defined gradient afterwards is scored as usual
    opt.step()
    assert opt.steps == 2 and opt.utilities()["0"].any()


def test_consumer_inputs_are_freed_with_what_autograd_saved() -> None:
    """The gradient hooks let go of ``h`` when its gradient arrives, not with the graph."""
    import gc
    import weakref

    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    seen: list[weakref.ref[Tensor]] = []
    model[2].register_forward_pre_hook(lambda m, args: seen.append(weakref.ref(args[0])))
    for n in (8, 1024):  # a deferred (small) input and one reduced during the backward pass
        opt.zero_grad()
        loss = model(torch.randn(n, 4)).pow(2).sum()
        loss.backward()  # the graph (and the hooks on it) stay alive as long as `loss`
        opt.step()
        gc.collect()
        assert seen[-1]() is None, f"the input of {n} samples outlived its backward pass"
        del loss


@given(
    maturity=st.integers(0, 6),
    actions=st.lists(
        st.one_of(
            st.sampled_from(["step", "first-only", "raise", "reload"]),
            st.tuples(st.sampled_from(["0", "2"]), st.lists(st.integers(0, 4), max_size=3)),
        ),
        max_size=25,
    ),
)
def test_the_ages_and_the_host_eligible_count_follow_a_plain_count(
    maturity: int, actions: list[Any]
) -> None:
    """A unit's age (its layer's commits since the unit was last reset) equals a plain count
    through steps, steps in which one layer sees no data, steps whose inner optimizer raises,
    resets and reloads; ``Tracker.eligible`` equals ``(age > maturity).sum()`` throughout."""
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(4, 3)

    def wrap() -> GXDReset:
        inner = torch.optim.SGD(model.parameters(), lr=0.01)
        return GXDReset(inner, model, maturity=maturity, replacement_rate=0.0)

    opt = wrap()
    ages = {"0": [0] * 6, "2": [0] * 5}  # the plain count
    for action in ["step", *actions]:
        if action in ("step", "first-only", "raise"):
            opt.zero_grad()
            if action == "first-only":  # layer 2's consumer never runs: only layer 0 commits
                model[:3](x).pow(2).mean().backward()
            else:
                model(x).pow(2).mean().backward()
            if action == "raise":  # the step does not happen: nothing is committed
                failing = unittest.mock.patch.object(
                    opt.optimizer, "step", side_effect=RuntimeError("inner")
                )
                with pytest.raises(RuntimeError, match="inner"), failing:
                    opt.step()
                continue
            opt.step()
            for name in ages if action == "step" else ["0"]:
                ages[name] = [age + 1 for age in ages[name]]
        elif action == "reload":  # a fresh wrapper, its ages from the checkpoint
            state = opt.state_dict()
            opt.close()
            opt = wrap()
            opt.load_state_dict(state)
        else:
            name, units = action
            units = sorted({u for u in units if u < len(ages[name])})
            opt.reset_units(name, units)
            ages[name] = [0 if i in units else age for i, age in enumerate(ages[name])]
        assert opt.tracker is not None
        for name, expected in ages.items():
            layer = opt.tracker.layers[name]
            assert layer.age.tolist() == expected
            assert opt.tracker.eligible(name) == sum(age > maturity for age in expected)


def test_a_pair_keeps_a_bounded_number_of_plans() -> None:
    """Inputs of ever new shapes (varying sequence lengths) start a pair's plans over instead
    of growing them without bound, and every shape's running-mean sums follow the definition."""

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2))
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.0), model, replacement_rate=0.0)
    opt.discover(torch.randn(2, 5, 3))
    (edge,) = opt.tracker.layers["0"].edges
    first = (
        kernels.DEFAULT_LIMITS.defer // 8 + 1
    )  # 2 samples × 4 units × tokens: reduced during backward
    for tokens in range(first, first + kernels.DEFAULT_LIMITS.plans + 8):
        x = torch.randn(2, tokens, 3)
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        assert 0 < len(edge.plans) <= kernels.DEFAULT_LIMITS.plans
        assert edge.pending_count == 2 * tokens
        with torch.no_grad():
            expected = F.gelu(model[0](x)).sum((0, 1))
        torch.testing.assert_close(edge.pending_h, expected, rtol=1e-5, atol=1e-3)


@given(
    maturity=st.integers(0, 4),
    rate=st.sampled_from([0.1, 0.3, 1.0]),
    steps=st.integers(1, 12),
    reload_at=st.integers(0, 12),
)
def test_the_eligible_count_follows_the_resets_the_selector_makes(
    maturity: int, rate: float, steps: int, reload_at: int
) -> None:
    """Units the selector resets (all of them eligible) leave the count and come of age
    again after ``maturity + 1`` commits without a recount: ``Tracker.eligible`` equals
    ``(age > maturity).sum()`` after every step, a reload from a checkpoint included."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(8, 3)

    def wrap() -> GXDReset:
        inner = torch.optim.SGD(model.parameters(), lr=0.01)
        return GXDReset(inner, model, maturity=maturity, replacement_rate=rate)

    opt = wrap()
    for step in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        if step == reload_at:
            state = opt.state_dict()
            opt.close()
            opt = wrap()
            opt.load_state_dict(state)
        assert opt.tracker is not None
        for name, layer in opt.tracker.layers.items():
            assert opt.tracker.eligible(name) == int((layer.age > maturity).sum())
    if rate == 1.0 and steps > maturity + 1 and reload_at >= steps:  # the first step finds
        assert opt.reset_log  # the units; the log does not outlive the wrapper
