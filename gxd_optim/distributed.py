"""Data parallelism: statistics reduced across processes, and a check that replicas agree.

Under ``DistributedDataParallel`` (or FSDP2's ``fully_shard``) every process sees its own
data, so the per-unit statistics differ between ranks while the gradients (and hence the
weights) do not. When `GXDReset` is given the DDP-wrapped (or sharded) model, every commit
first sums the pending statistics of all ranks (`AllReduceStatistics`): ``Σ|a|``, ``Σh`` and
their sample counts. Every rank then folds the same numbers into the same EMAs, picks the same
units, and draws the same new weights from its identically seeded generator, so the replicas
never diverge (under FSDP2 each rank writes its own rows of them: `gxd_optim.sharded`).

When to reduce must be decided alike on every rank without asking the others. A step
reduces when this rank ran a backward pass through a tracked layer since the last step. DDP
makes every rank run the backward pass that synchronises the gradients, so all ranks agree,
however many ``no_sync()`` passes each accumulated before it; the zero-gradient step of
``torch.distributed.checkpoint`` runs no backward pass anywhere, so no rank reduces. The one
collective per step is issued from ``opt.step()``, so collectives keep the order of the steps.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .discovery import unwrap_model
from .sharded import fsdp_mesh, issue, mesh_group, register, whole
from .tracking import Tracker

__all__ = ["AllReduceStatistics", "assert_replicas_in_sync", "find_ddp", "reducer_for"]

_run = issue  # every collective here keeps its work object alive (see `sharded.issue`)


def find_ddp(model: nn.Module) -> nn.Module | None:
    """The ``DistributedDataParallel`` module in ``model``'s chain of wrappers, if any.

    Examples:
        >>> find_ddp(torch.nn.Linear(2, 2)) is None
        True
    """
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return model
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if not isinstance(inner, nn.Module):
            return None
        model = inner


def reducer_for(model: nn.Module) -> AllReduceStatistics | None:
    """The reduction a `GXDReset` over ``model`` needs before each commit (``None``: none).

    A DDP-wrapped model reduces over its process group, a model sharded by FSDP2
    (``fully_shard``) over all the ranks of its mesh (`gxd_optim.sharded.mesh_group`). A plain
    model in a job of several processes is trained independently per rank, as far as the
    wrapper can tell: it warns.

    Examples:
        >>> reducer_for(torch.nn.Linear(2, 2)) is None  # one process, no DDP: nothing to reduce
        True
    """
    ddp = find_ddp(model)
    if ddp is not None:
        return AllReduceStatistics(ddp.process_group)
    root = unwrap_model(model)
    register(root)  # layers sharded since the wrapper was built
    mesh = fsdp_mesh(root)
    if mesh is not None:
        return AllReduceStatistics(mesh_group(mesh))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        warnings.warn(
            "GXDReset: torch.distributed runs several processes but the model is not "
            "DistributedDataParallel, so unit statistics are not reduced across ranks and "
            "replicas that share weights would reset different units. Pass the DDP-wrapped "
            "(or fully_shard-ed) model to GXDReset.",
            stacklevel=4,
        )
    return None


class AllReduceStatistics:
    """Sum a tracker's pending statistics over the ranks of a process group, in place.

    One flat float64 buffer per device holds every layer's ``Σ|a|``, every pair's ``Σh``
    and (on the first device) the sample counts; float64 keeps the counts exact and the sums
    the same on every rank, where they are rounded back to the statistics' dtype.

    Args:
        group: the process group (``None``: the default group).

    Examples:
        >>> AllReduceStatistics().group is None  # the default group
        True
    """

    def __init__(self, group: Any = None) -> None:
        self.group = None if group is dist.GroupMember.WORLD else group

    def __call__(self, tracker: Tracker) -> None:
        layers = list(tracker.layers.values())
        if not any(layer.has_pending for layer in layers):
            return  # no backward pass on this rank, hence on none (see the module docstring)
        sums = [layer.pending_abs for layer in layers]
        sums += [edge.pending_h for layer in layers for edge in layer.edges]
        counts = [float(layer.pending_samples) for layer in layers]
        counts += [float(edge.pending_count) for layer in layers for edge in layer.edges]
        totals: list[float] = []
        by_device: dict[torch.device, list[Tensor]] = {}
        for t in sums:
            by_device.setdefault(t.device, []).append(t)
        with torch.no_grad():
            for i, (device, tensors) in enumerate(by_device.items()):
                parts = [t.to(torch.float64).flatten() for t in tensors]
                if i == 0:
                    parts.append(torch.tensor(counts, dtype=torch.float64, device=device))
                flat = torch.cat(parts)
                _run(dist.all_reduce, flat, group=self.group)
                offset = 0
                for t in tensors:
                    t.copy_(flat[offset : offset + t.numel()].view_as(t))
                    offset += t.numel()
                if i == 0:
                    totals = flat[offset:].tolist()
        it = iter(int(c) for c in totals)
        for layer in layers:
            layer.pending_samples = next(it)
        for layer in layers:
            for edge in layer.edges:
                edge.pending_count = next(it)

    def __deepcopy__(self, memo: dict[int, Any]) -> AllReduceStatistics:
        return self  # a copied wrapper reduces over the same group


def assert_replicas_in_sync(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    buffers: bool = False,
    group: Any = None,
) -> None:
    """Check that every rank holds bit-identical parameters and optimizer state.

    Call it on every rank of the group (it is a collective). The optimizer's full
    ``state_dict()`` is compared, so for a `GXDReset` that includes its statistics, budgets,
    step count and generator state. Buffers are compared only when asked: DDP broadcasts rank
    0's buffers at the start of each forward pass, so after a training forward the BatchNorm
    running statistics legitimately differ until the next one. Sharded tensors (FSDP2's
    parameters and their optimizer state) are gathered and compared whole.

    Args:
        model: the model (DDP-wrapped or not).
        optimizer: the optimizer to compare as well, if any.
        buffers: compare the model's buffers too.
        group: the process group (``None``: the default group).

    Raises:
        AssertionError: on every rank, naming the first tensor (in a fixed order) that some
            rank holds differently from rank 0 of the group, and those ranks.

    Examples:
        >>> assert_replicas_in_sync(torch.nn.Linear(2, 2))  # a single process: trivially true
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    named = _named_tensors(model, optimizer, buffers)
    names = [name for name, _ in named]
    device = _comm_device(group)
    digest = hashlib.sha256("\n".join(names).encode()).digest()
    mine_digest = torch.tensor(list(digest), dtype=torch.uint8, device=device)
    digests = [torch.empty_like(mine_digest) for _ in range(dist.get_world_size(group))]
    _run(dist.all_gather, digests, mine_digest, group=group)
    if any(not torch.equal(d, mine_digest) for d in digests):
        everyone: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(everyone, names, group=group)  # only to say what differs
        for rank, theirs in enumerate(everyone):
            if theirs != names:
                extra = sorted(set(theirs) ^ set(names))[:5]
                raise AssertionError(
                    f"replicas differ: rank {rank} of the group holds other tensors than this "
                    f"rank (e.g. {extra})"
                )
    mine = [t.detach().to(device).reshape(-1).contiguous().view(torch.uint8) for _, t in named]
    flat = torch.cat(mine) if mine else torch.zeros(0, dtype=torch.uint8, device=device)
    reference = flat.clone()
    source = 0 if group is None else dist.get_global_rank(group, 0)
    _run(dist.broadcast, reference, src=source, group=group)
    first = len(named)
    offset = 0
    for i, t in enumerate(mine):
        end = offset + t.numel()
        if not torch.equal(flat[offset:end], reference[offset:end]):
            first = i
            break
        offset = end
    mine_first = torch.tensor([first], dtype=torch.int64, device=device)
    firsts_t = [torch.empty_like(mine_first) for _ in range(dist.get_world_size(group))]
    _run(dist.all_gather, firsts_t, mine_first, group=group)
    firsts = [int(t) for t in firsts_t]
    worst = min(firsts)
    if worst < len(named):
        ranks = [r for r, f in enumerate(firsts) if f == worst]
        raise AssertionError(
            f"replicas differ: `{names[worst]}` on rank(s) {ranks} of the group is not "
            "bit-identical to rank 0's"
        )


def _named_tensors(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, buffers: bool
) -> list[tuple[str, Tensor]]:
    """Parameters, buffers and optimizer state flattened to named tensors, in a fixed order."""
    root = unwrap_model(model)
    params = root.named_parameters()
    out: list[tuple[str, Tensor]] = [(f"parameter {n}", whole(p)) for n, p in params]
    if buffers:
        out += [(f"buffer {n}", b) for n, b in root.named_buffers()]
    if optimizer is not None:
        _flatten("optimizer", optimizer.state_dict(), out)
    return out


def _flatten(prefix: str, value: Any, out: list[tuple[str, Tensor]]) -> None:
    if isinstance(value, Tensor):
        out.append((prefix, value.cpu() if value.is_sparse else whole(value)))
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            _flatten(f"{prefix}.{key}", value[key], out)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _flatten(f"{prefix}.{i}", item, out)
    elif isinstance(value, (bool, int, float)):
        out.append((prefix, torch.tensor(float(value), dtype=torch.float64)))


def _comm_device(group: Any) -> torch.device:
    """Where the backend of ``group`` takes tensors: the current GPU for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
