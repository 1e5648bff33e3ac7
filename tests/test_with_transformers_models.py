"""transformers' GPT-2 (Conv1D layers) and Llama (SwiGLU MLPs), built from small configs: every
MLP hidden unit is eligible, resets are exact to first order, and training resets them."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from requirements import needs
from torch import Tensor, nn

from gxd_optim import GXDReset
from gxd_optim.testing import assert_first_order, assert_reset_invariants

transformers = needs("transformers")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=8)
    return transformers.GPT2LMHeadModel(config)


def llama() -> nn.Module:
    config = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=16,
        intermediate_size=24,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=40,
    )
    return transformers.LlamaForCausalLM(config)


class Logits(nn.Module):
    """A causal LM returning its logits (what `assert_first_order`'s loss reads)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> Tensor:
        return self.model(input_ids=ids).logits  # type: ignore[no-any-return]


IDS = torch.randint(0, 40, (3, 8), generator=torch.Generator().manual_seed(0))


def _wrapped(model: nn.Module) -> GXDReset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model, maturity=0)
        opt.discover(IDS)
    return opt


def test_gpt2s_mlp_units_are_all_eligible() -> None:
    opt = _wrapped(Logits(gpt2()))
    assert {n: i.consumers for n, i in opt.layers.items()} == {
        f"model.transformer.h.{b}.mlp.c_fc": (f"model.transformer.h.{b}.mlp.c_proj",)
        for b in range(2)
    }
    assert all(i.num_units == 64 and i.edges[0].reference == "mean" for i in opt.layers.values())


def test_llamas_gated_mlp_units_are_all_eligible() -> None:
    opt = _wrapped(Logits(llama()))
    prefix = "model.model.layers"
    assert {n: (i.partners, i.consumers) for n, i in opt.layers.items()} == {
        f"{prefix}.{b}.mlp.gate_proj": (
            (f"{prefix}.{b}.mlp.up_proj",),
            (f"{prefix}.{b}.mlp.down_proj",),
        )
        for b in range(2)
    }
    assert all(i.edges[0].reference == "zero" for i in opt.layers.values())  # no bias in down


def _loss(target: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda logits: nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


def test_gpt2_resets_are_exact_to_first_order() -> None:
    """(Llama's RMSNorm computes in float32, below this float64 check's resolution: its gated
    MLP is checked, built by hand, in test_units_in_reach.py.)"""
    torch.manual_seed(0)
    model = Logits(gpt2())
    opt = _wrapped(model)
    units = {name: [[0, 5]] for name in opt.layers}
    opt.close()
    assert_first_order(model, (IDS,), _loss(torch.randint(0, 40, (3, 8))), units=units, warmup=2)


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama"])
def test_resets_touch_only_their_units(make: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    model = Logits(make())
    loss = _loss(torch.randint(0, 40, (3, 8)))
    opt = _wrapped(model)
    for _ in range(2):
        opt.zero_grad()
        loss(model(IDS)).backward()
        opt.step()
    for name in opt.layers:
        assert_reset_invariants(opt, name, [1, 7])
