"""Sharded training is not supported yet: FSDP (v1 and fully_shard) and ZeroRedundancyOptimizer
are refused in ``__init__`` with a NotImplementedError that says what to use instead."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from gxd_optim import GXDReset

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
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def assert_untouched(model: nn.Module) -> None:
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_zero_redundancy_optimizer_is_refused(one_process_group: None) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    model = mlp()
    sharded = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.SGD, lr=0.1)
    with pytest.raises(
        NotImplementedError, match=r"ZeroRedundancyOptimizer.*DistributedDataParallel"
    ):
        GXDReset(sharded, model)
    assert_untouched(model)


def test_fsdp_v1_is_refused(one_process_group: None) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FSDP v1's deprecation notice
        model = FullyShardedDataParallel(mlp(), device_id=torch.device("cpu"))
    with pytest.raises(NotImplementedError, match=r"FSDP.*DistributedDataParallel"):
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    assert_untouched(model)


def test_fully_shard_is_refused(one_process_group: None) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = mlp()
    fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
    with pytest.raises(NotImplementedError, match=r"FSDP.*DistributedDataParallel"):
        GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
