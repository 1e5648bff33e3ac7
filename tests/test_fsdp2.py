"""FSDP2 (``fully_shard``) and ZeroRedundancyOptimizer on 2 gloo processes: the same resets,
weights and optimizer state as DistributedDataParallel with a plain optimizer, and a
``torch.distributed.checkpoint`` round trip that resumes exactly."""

from __future__ import annotations

from pathlib import Path

import ddp_worker
import fsdp2_worker
import pytest
import torch
import torch.distributed as dist

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

STEPS = 12


def test_fully_shard_resets_what_ddp_resets(tmp_path: Path) -> None:
    """Every rank asserts equal reset logs, reset units, utilities, predicted costs, gathered
    parameters, Adam moments and BatchNorm buffers (float64, rtol 1e-6); here the coverage."""
    ddp_worker.run_ranks(fsdp2_worker.same_as_ddp, tmp_path, str(tmp_path), STEPS)
    summary = torch.load(tmp_path / "summary.pt")
    mlp, convnet = summary["mlp"], summary["convnet"]
    assert mlp["layers"] == ["0", "3"] and convnet["layers"] == ["0", "2"]
    # units on both ranks' rows: 31 rows split 16 / 15, 20 split 10 / 10, 6 split 3 / 3
    for units, split in ((mlp["units"]["0"], 16), (mlp["units"]["3"], 10)):
        assert min(units) < split <= max(units)
    for units in convnet["units"].values():
        assert min(units) < 3 <= max(units)
    assert min(mlp["resets"].values()) >= 20 and min(convnet["resets"].values()) >= 5
    assert mlp["worst"] < 1e-7 and convnet["worst"] < 1e-7


def test_distributed_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    ddp_worker.run_ranks(fsdp2_worker.checkpoint_resumes, tmp_path, str(tmp_path), 6)
    saved = torch.load(tmp_path / "checkpoint.pt")
    assert saved["steps"] == 12 and sum(saved["resets"].values()) > 0


def test_zero_redundancy_optimizer_resets_what_adam_resets(tmp_path: Path) -> None:
    ddp_worker.run_ranks(fsdp2_worker.zero_same_as_adam, tmp_path, str(tmp_path), STEPS)
    saved = torch.load(tmp_path / "zero.pt")
    assert sum(saved["resets"].values()) >= 10
    assert 0 < saved["owned"] < 9  # rank 0 holds the state of some of the 9 parameters
