"""Process bodies of the FSDP2 and ZeRO tests (spawned processes import this module).

Every body trains the same model, from the same seeds and on the same data per rank, once
as the reference (DistributedDataParallel, with a plain optimizer) and once sharded, side by
side, and checks on every rank that both reset the same units and end with the same weights
and optimizer state (gathered). Rank 0 saves what it compared for the test to report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

from gxd_optim import GXDReset, assert_replicas_in_sync
from gxd_optim.sharded import whole

SETTINGS: dict[str, Any] = {"replacement_rate": 0.2, "maturity": 2, "seed": 3}
TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}
"""float64 throughout; the orders of summation differ (a second moment's refill is a float32
mean, summed per shard here and over the whole there), so values agree to ~1e-9."""


def mlp() -> nn.Module:
    """Uneven shards (31 rows over 2 ranks), BatchNorms between producer and consumer, a
    bias-free consumer whose mean goes into a BatchNorm's running mean, and a consumer with
    one output row (rank 1 holds none of it)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 31),
        nn.BatchNorm1d(31),
        nn.ReLU(),
        nn.Linear(31, 20, bias=False),
        nn.BatchNorm1d(20),
        nn.Tanh(),
        nn.Linear(20, 1),
    )


def convnet() -> nn.Module:
    """A grouped consumer whose group straddles the shards, and a flatten into a Linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 6, 1, groups=3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(96, 3),
    )


MODELS: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "mlp": (mlp, True),
    "convnet": (convnet, False),
}
"""Each model, and whether every layer is sharded on its own (else the root alone)."""


def batch(model: str, seed: int, n: int = 12) -> tuple[Tensor, Tensor]:
    """A batch for ``model``: inputs and regression targets."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, 8) if model == "mlp" else (n, 2, 6, 6)
    out = 1 if model == "mlp" else 3
    return torch.randn(shape, generator=g), torch.randn(n, out, generator=g)


def sharded(model: nn.Module, per_layer: bool = True) -> nn.Module:
    """FSDP2 as users apply it: every Linear/Conv a group of its own, then the root; or the
    root alone (then discovery runs while FSDP2 has the unsharded weights registered)."""
    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    for layer in model if per_layer else ():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def train(pairs: list[tuple[nn.Module, GXDReset]], model: str, rank: int, steps: range) -> None:
    """The same steps for every (model, wrapper): rank-dependent data, MSE loss."""
    for step in steps:
        x, y = batch(model, 1000 * step + rank)
        for net, opt in pairs:
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()


def units_seen(opt: GXDReset) -> dict[str, set[int]]:
    """Record every unit index each layer resets."""
    seen: dict[str, set[int]] = {}
    opt.register_reset_hook(lambda name, index: seen.setdefault(name, set()).update(index.tolist()))
    return seen


def compare(reference: nn.Module, other: nn.Module, ref_opt: Any, opt: Any) -> float:
    """Assert equal parameters, buffers and Adam state (gathered); the largest difference."""
    worst = 0.0
    ref_params = dict(reference.named_parameters())
    for name, param in other.named_parameters():
        mine, theirs = whole(param.detach()), ref_params[f"module.{name}"].detach()
        torch.testing.assert_close(mine, theirs, **TOLERANCE, msg=f"parameter {name}")
        worst = max(worst, float((mine - theirs).abs().max()))
        for key in ("exp_avg", "exp_avg_sq"):
            state = whole(opt.state[param][key])
            expected = ref_opt.state[ref_params[f"module.{name}"]][key]
            torch.testing.assert_close(state, expected, **TOLERANCE, msg=f"{key} of {name}")
    ref_buffers = dict(reference.named_buffers())
    for name, buffer in other.named_buffers():
        torch.testing.assert_close(buffer, ref_buffers[f"module.{name}"], **TOLERANCE)
    return worst


def same_as_ddp(rank: int, out: str, steps: int) -> None:
    """FSDP2 and DDP, side by side: the same resets (layers, steps, units) and weights."""
    torch.set_default_dtype(torch.float64)
    summary: dict[str, Any] = {}
    for name, (make, per_layer) in MODELS.items():
        ddp = DistributedDataParallel(make(), broadcast_buffers=False)
        fsdp = sharded(make(), per_layer)
        ref_opt = GXDReset(torch.optim.Adam(ddp.parameters(), lr=1e-2), ddp, **SETTINGS)
        opt = GXDReset(torch.optim.Adam(fsdp.parameters(), lr=1e-2), fsdp, **SETTINGS)
        seen, ref_seen = units_seen(opt), units_seen(ref_opt)
        train([(ddp, ref_opt), (fsdp, opt)], name, rank, range(steps))
        assert list(opt.layers) == list(ref_opt.layers), (opt.layers, ref_opt.skipped)
        assert seen == ref_seen
        log = [(r.step, r.layer, r.units) for r in opt.reset_log]
        assert log == [(r.step, r.layer, r.units) for r in ref_opt.reset_log]
        predicted = [
            (r.predicted, s.predicted)
            for r, s in zip(opt.reset_log, ref_opt.reset_log, strict=True)
        ]
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in predicted)
        for layer, values in ref_opt.utilities().items():
            torch.testing.assert_close(opt.utilities()[layer], values, **TOLERANCE)
        x, _ = batch(name, 7)  # the predicted cost of every unit, from a fresh backward
        for net, wrapper in ((ddp, ref_opt), (fsdp, opt)):
            wrapper.zero_grad()
            net(x).pow(2).mean().backward()
        for layer in opt.layers:
            torch.testing.assert_close(
                opt.predicted_cost(layer), ref_opt.predicted_cost(layer), **TOLERANCE
            )
        worst = compare(ddp, fsdp, ref_opt, opt)
        assert_replicas_in_sync(fsdp, opt)  # shards gathered: the wrapper's state agrees too
        summary[name] = {
            "layers": list(opt.layers),
            "resets": opt.reset_counts,
            "units": {k: sorted(v) for k, v in seen.items()},
            "worst": worst,
            "skipped": dict(opt.skipped),
        }
        opt.close()
        ref_opt.close()
    if rank == 0:
        torch.save(summary, f"{out}/summary.pt")


def checkpoint_resumes(rank: int, out: str, steps: int) -> None:
    """``torch.distributed.checkpoint`` saves the sharded model, the inner optimizer and
    ``reset_state_dict()``; a fresh model and wrapper restored from it go on exactly."""
    torch.set_default_dtype(torch.float64)
    model = sharded(convnet())
    opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-2), model, **SETTINGS)
    train([(model, opt)], "convnet", rank, range(steps))
    saved = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, opt),
        "gxd_reset": opt.reset_state_dict(),
    }
    dcp.save(saved, checkpoint_id=Path(out) / "checkpoint")

    restored = sharded(convnet())
    twin = GXDReset(torch.optim.Adam(restored.parameters(), lr=1e-2), restored, **SETTINGS)
    twin.discover(batch("convnet", 0)[0])  # the units: the template below has their entries
    template = {
        "model": get_model_state_dict(restored),
        "optim": get_optimizer_state_dict(restored, twin),
        "gxd_reset": twin.reset_state_dict(),
    }
    dcp.load(template, checkpoint_id=Path(out) / "checkpoint")
    set_model_state_dict(restored, template["model"])
    twin.load_reset_state_dict(template["gxd_reset"])
    set_optimizer_state_dict(restored, twin, template["optim"])
    assert twin.steps == opt.steps and twin.reset_counts == opt.reset_counts

    train([(model, opt), (restored, twin)], "convnet", rank, range(steps, steps + 6))
    assert [(r.step, r.layer, r.units) for r in twin.reset_log] == [
        (r.step, r.layer, r.units) for r in opt.reset_log if r.step > steps
    ]
    for (name, mine), theirs in zip(restored.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(whole(mine.detach()), whole(theirs.detach())), name
    if rank == 0:
        torch.save({"resets": opt.reset_counts, "steps": opt.steps}, f"{out}/checkpoint.pt")


def zero_same_as_adam(rank: int, out: str, steps: int) -> None:
    """ZeroRedundancyOptimizer(Adam) and Adam under DDP: the same resets, weights and state
    (each rank clears the state of the parameters it owns)."""
    torch.set_default_dtype(torch.float64)
    ddp, zero_ddp = (DistributedDataParallel(mlp(), broadcast_buffers=False) for _ in range(2))
    ref_opt = GXDReset(torch.optim.Adam(ddp.parameters(), lr=1e-2), ddp, **SETTINGS)
    zero = ZeroRedundancyOptimizer(zero_ddp.parameters(), optimizer_class=torch.optim.Adam, lr=1e-2)
    opt = GXDReset(zero, zero_ddp, **SETTINGS)
    train([(ddp, ref_opt), (zero_ddp, opt)], "mlp", rank, range(steps))
    assert [(r.step, r.layer, r.units) for r in opt.reset_log] == [
        (r.step, r.layer, r.units) for r in ref_opt.reset_log
    ]
    for (name, mine), theirs in zip(zero_ddp.named_parameters(), ddp.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, **TOLERANCE, msg=name)
    owned = zero.optim.state  # this rank's parameters' state: cleared where it lives
    for mine, theirs in zip(zero_ddp.parameters(), ddp.parameters(), strict=True):
        if mine in owned:
            for key in ("exp_avg", "exp_avg_sq"):
                expected = ref_opt.state[theirs][key]
                torch.testing.assert_close(owned[mine][key], expected, **TOLERANCE)
    zero.consolidate_state_dict(to=0)  # every rank; then the whole state dict on rank 0
    if rank == 0:
        saved = opt.state_dict()
        assert saved["gxd_reset"]["steps"] == steps and len(saved["state"]) == 9
        torch.save({"resets": opt.reset_counts, "owned": len(owned)}, f"{out}/zero.pt")
