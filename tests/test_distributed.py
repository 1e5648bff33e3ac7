"""DistributedDataParallel on 2 gloo processes: reduced statistics, replicas that stay in sync."""

from __future__ import annotations

from pathlib import Path

import ddp_worker
import pytest
import torch
import torch.distributed as dist
from torch import nn

from gxd_optim import GXDReset
from gxd_optim.distributed import AllReduceStatistics, assert_replicas_in_sync, reducer_for

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")


def test_replicas_stay_in_sync_with_frequent_resets(tmp_path: Path) -> None:
    ddp_worker.run_ranks(ddp_worker.train_in_sync, tmp_path, str(tmp_path), 30)
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(ddp_worker.WORLD)]
    assert results[0] == results[1]
    assert results[0]["names"] == ["0", "3"]  # names carry no "module." prefix
    assert sum(results[0]["resets"].values()) >= 20  # resets happened, identically
    for rank in range(ddp_worker.WORLD):
        error = torch.load(tmp_path / f"error{rank}.pt")
        assert "`parameter 3.bias` on rank(s) [1]" in error


def test_reduced_statistics_are_those_of_the_global_batch(tmp_path: Path) -> None:
    ddp_worker.run_ranks(ddp_worker.first_step_matches_one_process, tmp_path, str(tmp_path))
    saved = torch.load(tmp_path / "utilities.pt")
    for name, alone in saved["alone"].items():
        torch.testing.assert_close(saved["ddp"][name], 2 * alone, rtol=1e-5, atol=1e-7)


def test_a_single_process_needs_no_reduction() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert reducer_for(model) is None
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
    model(torch.randn(4, 4)).sum().backward()
    opt.step()
    assert_replicas_in_sync(model, opt)  # no process group: nothing to compare
    assert AllReduceStatistics(None).group is None
