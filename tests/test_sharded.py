"""Sharded training in one process: FSDP2 (``fully_shard``) trains as the plain model does, and
the sharded setups a reset cannot write correctly are refused in ``__init__`` with a
NotImplementedError that names what is missing and what to use instead, changing nothing.
(Two processes: ``tests/test_fsdp2.py``.)"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from gxd_optim import GXDReset
from gxd_optim.sharded import whole

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]


@pytest.fixture
def one_process_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def assert_untouched(model: nn.Module) -> None:
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def mesh() -> object:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (1,))


def test_fully_shard_trains_as_the_plain_model_does(one_process_group: None) -> None:
    from torch.distributed.fsdp import fully_shard

    plain, sharded = mlp(), mlp()
    fully_shard(sharded[0], mesh=mesh())
    fully_shard(sharded, mesh=mesh())
    settings = {"replacement_rate": 0.3, "maturity": 1}
    opts = [
        GXDReset(torch.optim.Adam(m.parameters(), lr=1e-2), m, **settings) for m in (plain, sharded)
    ]
    for step in range(8):
        x = torch.randn(6, 4, generator=torch.Generator().manual_seed(step))
        for model, opt in zip((plain, sharded), opts, strict=True):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    assert opts[0].reset_counts == opts[1].reset_counts and opts[1].reset_counts["0"] > 0
    for a, b in zip(plain.parameters(), sharded.parameters(), strict=True):
        torch.testing.assert_close(whole(b.detach()), a.detach())


def test_fsdp_v1_is_refused(one_process_group: None) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FSDP v1's deprecation notice
        model = FullyShardedDataParallel(mlp(), device_id=torch.device("cpu"))
    with pytest.raises(NotImplementedError, match=r"FullyShardedDataParallel.*fully_shard"):
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    assert_untouched(model)


def test_dtensors_fully_shard_did_not_make_are_refused(one_process_group: None) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    model = mlp()
    model[2].weight = nn.Parameter(distribute_tensor(model[2].weight.detach(), mesh(), [Shard(1)]))
    with pytest.raises(NotImplementedError, match=r"`2\.weight` is another DTensor.*fully_shard"):
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    assert_untouched(model)


def test_sharding_on_another_dim_is_refused(one_process_group: None) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    model = mlp()
    fully_shard(model, mesh=mesh(), shard_placement_fn=lambda param: Shard(param.dim() - 1))
    with pytest.raises(NotImplementedError, match=r"sharded on dim 0.*not placements"):
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)


def test_cpu_offloading_is_refused(one_process_group: None) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    model = mlp()
    fully_shard(model, mesh=mesh(), offload_policy=CPUOffloadPolicy(pin_memory=False))
    with pytest.raises(NotImplementedError, match=r"CPUOffloadPolicy.*offload_policy"):
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)


def test_zero_overlapped_with_ddp_is_refused(one_process_group: None) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    model = mlp()
    zero = ZeroRedundancyOptimizer(
        model.parameters(), optimizer_class=torch.optim.SGD, overlap_with_ddp=True, lr=0.1
    )
    with pytest.raises(NotImplementedError, match=r"overlap_with_ddp=True.*overlap_with_ddp=False"):
        GXDReset(zero, model)
    assert_untouched(model)


def test_zero_redundancy_optimizer_is_accepted(one_process_group: None) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    model = mlp()
    zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.Adam, lr=0.1)
    opt = GXDReset(zero, model, replacement_rate=0.5, maturity=0)
    model(torch.randn(4, 4)).pow(2).mean().backward()
    opt.step()
    assert opt.reset_counts["0"] > 0
    assert opt.optimizer.optim.state  # the local optimizer's state, the one resets clear
