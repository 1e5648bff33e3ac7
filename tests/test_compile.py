"""torch.compile: both orders give eager's utilities and resets, without recompiling each step.

The tests use the ``aot_eager`` backend (dynamo and AOT autograd, no code generation), which
exercises the same graph capture as ``inductor`` without needing a C compiler's minutes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch._dynamo
from torch import Tensor, nn

from gxd_optim import GXDReset

STEPS = 25


def build(order: str) -> tuple[Callable[[Tensor], Tensor], GXDReset]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 16),
        nn.Tanh(), nn.Linear(16, 3),
    )  # fmt: skip
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    options = {"replacement_rate": 0.1, "maturity": 2}
    if order == "eager":
        return model, GXDReset(inner, model, **options)  # type: ignore[arg-type]
    if order == "wrap_then_compile":
        opt = GXDReset(inner, model, **options)  # type: ignore[arg-type]
        return torch.compile(model, backend="aot_eager"), opt
    compiled = torch.compile(model, backend="aot_eager")
    return compiled, GXDReset(inner, compiled, **options)  # type: ignore[arg-type]


def train(order: str, check_recompiles: bool = False) -> tuple[dict[str, Tensor], dict[str, int]]:
    forward, opt = build(order)
    g = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        if check_recompiles and step == 3:  # after discovery and the first resets
            torch._dynamo.config.error_on_recompile = True
        x, y = torch.randn(16, 2, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(forward(x), y).backward()
        opt.step()
    return opt.utilities(), opt.reset_counts


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=False, recompile_limit=4):
        yield
    torch._dynamo.reset()


@pytest.mark.parametrize("order", ["wrap_then_compile", "compile_then_wrap"])
def test_compiled_matches_eager_without_recompiling(order: str) -> None:
    utilities, resets = train("eager")
    assert sum(resets.values()) > 10
    compiled_utilities, compiled_resets = train(order, check_recompiles=True)
    assert compiled_resets == resets
    assert compiled_utilities.keys() == utilities.keys() == {"0", "4"}
    for name, value in utilities.items():
        torch.testing.assert_close(compiled_utilities[name], value, rtol=1e-4, atol=1e-6)


def test_hooks_stay_off_the_compiled_graph() -> None:
    forward, opt = build("compile_then_wrap")
    x = torch.randn(4, 2, 8, 8)
    forward(x).sum().backward()
    opt.step()
    explained = torch._dynamo.explain(forward)(x)
    # the graph breaks at every hook (producers' forward hooks, consumers' pre-hooks) ...
    assert explained.graph_break_count >= 2
    # ... so the probe that reports gradients is never traced into a graph
    traced = [str(node.target) for g in explained.graphs for node in g.graph.nodes]
    assert traced and not any("Probe" in t or "OwnedHook" in t for t in traced)
