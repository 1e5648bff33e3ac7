"""Save and resume with torch.distributed.checkpoint: DCP keeps the optimizer's `state` and
`param_groups`; the wrapper's own state travels next to it via reset_state_dict()."""

import tempfile
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from gxd_optim import GXDReset


def build() -> tuple[nn.Module, GXDReset]:
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, GXDReset(inner, model, replacement_rate=0.01, maturity=5)


def train(model: nn.Module, opt: GXDReset, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x = torch.randn(32, 20, generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), x[:, :5].argmax(1)).backward()
        opt.step()


def save(model: nn.Module, opt: GXDReset, where: Path) -> None:
    state = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, opt),
    }
    dcp.save(state, checkpoint_id=where / "dcp")
    torch.save(opt.reset_state_dict(), where / "gxd_reset.pt")


def load(model: nn.Module, opt: GXDReset, where: Path) -> None:
    opt.load_reset_state_dict(torch.load(where / "gxd_reset.pt"))  # first: see the how-to
    state = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, opt),
    }
    dcp.load(state, checkpoint_id=where / "dcp")
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])


if __name__ == "__main__":
    torch.manual_seed(0)
    model, opt = build()
    train(model, opt, range(50))
    with tempfile.TemporaryDirectory() as tmp:
        save(model, opt, Path(tmp))
        train(model, opt, range(50, 100))  # the uninterrupted run
        resumed_model, resumed_opt = build()
        load(resumed_model, resumed_opt, Path(tmp))
        train(resumed_model, resumed_opt, range(50, 100))
    same = all(
        torch.equal(a, b)
        for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True)
    )
    print(f"resumed run bit-identical: {same}; resets {resumed_opt.reset_counts}")
    assert same
