"""Process bodies of the DistributedDataParallel tests (spawned processes import this module)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
from torch.nn.parallel import DistributedDataParallel

from gxd_optim import GXDReset
from gxd_optim.distributed import assert_replicas_in_sync

WORLD = 2


def run_ranks(fn: Callable[..., None], tmp: Path, *args: Any, timeout: float = 120.0) -> None:
    """Run ``fn(rank, store, *args)`` in ``WORLD`` spawned processes; raise what they raise."""
    context = mp.start_processes(
        _entry, args=(fn, str(tmp / "store"), *args), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {WORLD} ranks did not finish in {timeout} s (a hang?)")


def _entry(rank: int, fn: Callable[..., None], store: str, *args: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
        dist.barrier()  # no rank tears its connections down while another still reads from them
    finally:
        dist.destroy_process_group()


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.Tanh(),
        nn.Linear(32, 4),
    )


def data(seed: int, n: int = 16) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def train_in_sync(rank: int, out: str, steps: int) -> None:
    """Different data and numbers of backward passes per rank, frequent resets: in sync."""
    ddp = DistributedDataParallel(make_model())
    opt = GXDReset(
        torch.optim.Adam(ddp.parameters(), lr=1e-2), ddp, replacement_rate=0.2, maturity=2
    )
    get_optimizer_state_dict(ddp, opt)  # its zero-gradient step: no backward, no collective
    loss_fn = nn.functional.cross_entropy
    for step in range(steps):
        opt.zero_grad()
        for micro in range((step + rank) % 3):  # 0, 1 or 2 accumulated passes, per rank
            x, y = data(1000 * step + 10 * rank + micro)
            with ddp.no_sync():
                loss_fn(ddp(x), y).backward()
        x, y = data(1000 * step + 10 * rank + 9)
        loss_fn(ddp(x), y).backward()
        opt.step()
    assert_replicas_in_sync(ddp, opt)
    assert opt.steps == steps
    torch.save({"resets": opt.reset_counts, "names": sorted(opt.layers)}, f"{out}/{rank}.pt")
    if rank == 1:  # the helper names the first tensor that differs
        with torch.no_grad():
            ddp.module[3].bias[0] += 1.0
    try:
        assert_replicas_in_sync(ddp, opt)
    except AssertionError as error:
        torch.save(str(error), f"{out}/error{rank}.pt")


def first_step_matches_one_process(rank: int, out: str) -> None:
    """Reduced statistics equal those of one process on both ranks' data (times 2: DDP
    averages the per-rank mean losses, so each rank's gradients are twice the global ones)."""
    ddp = DistributedDataParallel(make_model(), broadcast_buffers=False)
    opt = GXDReset(torch.optim.SGD(ddp.parameters(), lr=0.1), ddp, replacement_rate=0.0)
    x, y = data(rank)
    nn.functional.cross_entropy(ddp(x), y).backward()
    opt.step()
    if rank == 0:
        model = make_model()
        alone = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, replacement_rate=0.0)
        x0, y0 = data(0)
        x1, y1 = data(1)
        model.train()
        # BatchNorm normalises per rank under DDP: run the two halves through it separately
        logits = torch.cat([model(x0), model(x1)])
        nn.functional.cross_entropy(logits, torch.cat([y0, y1])).backward()
        alone.step()
        torch.save({"ddp": opt.utilities(), "alone": alone.utilities()}, f"{out}/utilities.pt")
