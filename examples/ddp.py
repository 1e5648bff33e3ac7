"""DistributedDataParallel with GXDReset on 2 CPU processes (gloo): statistics are reduced across
ranks, every rank resets the same units with the same new weights."""

import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gxd_optim import GXDReset, assert_replicas_in_sync

WORLD = 2


def train(rank: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway
    model = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
    )
    ddp = DistributedDataParallel(model)
    # pass the DDP-wrapped model: its process group reduces the statistics; the same seed on
    # every rank draws the same new weights
    opt = GXDReset(
        torch.optim.Adam(ddp.parameters(), lr=1e-3),
        ddp,
        replacement_rate=0.01,
        maturity=10,
    )
    data = torch.Generator().manual_seed(rank)  # each rank sees its own data
    for _step in range(60):
        opt.zero_grad()
        with ddp.no_sync():  # gradient accumulation: one local pass ...
            x = torch.randn(32, 20, generator=data)
            nn.functional.cross_entropy(ddp(x), x[:, :5].argmax(1)).backward()
        x = torch.randn(32, 20, generator=data)  # ... and the pass that syncs gradients
        nn.functional.cross_entropy(ddp(x), x[:, :5].argmax(1)).backward()
        opt.step()
    assert_replicas_in_sync(ddp, opt)  # raises, naming the first differing tensor, if not
    if rank == 0:
        print(f"replicas in sync after {opt.steps} steps; resets {opt.reset_counts}")
    dist.barrier()  # no rank tears its connections down while another still reads from them
    dist.destroy_process_group()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(train, args=(f"{tmp}/store",), nprocs=WORLD)
