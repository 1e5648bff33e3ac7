"""Sharded training: FSDP2 (``fully_shard``) parameters, and ZeroRedundancyOptimizer's state.

Under FSDP2 every parameter of a sharded module is a ``DTensor`` split along dim 0 over one
dimension of a device mesh, as ``torch.chunk`` splits it: rank ``c`` of that mesh dimension
holds rows ``[c·⌈n/w⌉, (c+1)·⌈n/w⌉)`` (clipped to ``n``, possibly none). The optimizer's state
tensors are DTensors of the same layout. A reset never needs a whole tensor: the producer's
rows are written on the rank that holds them, the consumer's input columns and bias rows on
each rank's local rows (`Shard`). The few quantities that span ranks (a bias fold read from
rows another rank holds, the mean of a second moment, a predicted cost) are summed with one
small all-reduce over the shard group; every rank issues it, whether or not it holds rows.

Between steps FSDP2 registers the sharded parameters on the modules; during a forward or
backward pass it swaps in the unsharded ones. `held` maps a module's attribute back to the
sharded parameter, so that discovery, the statistics and the resets name the parameters the
optimizer holds whenever they run (`register` records them when the wrapper is built).

``ZeroRedundancyOptimizer`` keeps whole parameters on every rank but the state of each in
its owner's local optimizer only: the resets clear `optimizer_state`, that local state.
"""

from __future__ import annotations

import math
import sys
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .utilities import predicted_cost

__all__ = [
    "Shard",
    "all_reduce_sum_",
    "fsdp_mesh",
    "held",
    "is_sharded",
    "issue",
    "mesh_group",
    "optimizer_state",
    "refuse_unsupported",
    "register",
    "shard_of",
    "sharded_cost",
    "whole",
]

_RETAINED: deque[Any] = deque(maxlen=16)
"""The work objects of the latest collectives issued here, kept alive on purpose.

A gloo worker thread may hold the last reference to a finished collective (directly, or
through a later ``barrier`` that waited for it). Freeing it there frees its tensors, which
needs the interpreter lock; if the process group is being destroyed at that moment (it
joins its threads while holding that lock, e.g. when DDP's reducer is freed at exit), the
process hangs. Holding the work objects here makes the last release happen in Python.
"""

_HELD: weakref.WeakKeyDictionary[nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()
"""Module -> {attribute: FSDP2's record of the parameter} (see `register`)."""


def issue(collective: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Issue ``collective`` asynchronously, wait for it, and keep its work object (see
    `_RETAINED`)."""
    work = collective(*args, async_op=True, **kwargs)
    if work is not None:
        work.wait()
        _RETAINED.append(work)


def is_sharded(tensor: object) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a sharded parameter, its gradient or its state).

    Examples:
        >>> is_sharded(torch.zeros(2))
        False
    """
    module = sys.modules.get("torch.distributed.tensor")  # none before DTensor is imported
    return module is not None and isinstance(tensor, module.DTensor)


@dataclass(frozen=True)
class Shard:
    """The rows of dim 0 that this rank holds of a tensor: ``local`` is rows
    ``[start, start + len(local))`` of the whole.

    Attributes:
        local: this rank's rows (the tensor itself where it is not sharded); writes into it
            are writes into the sharded tensor.
        start: the first row it holds.
        size: the rows of the whole tensor.
        group: the process group that splits dim 0 (``None``: not sharded).

    Examples:
        >>> part = shard_of(torch.zeros(3, 2))
        >>> (part.start, part.stop, part.group)
        (0, 3, None)
    """

    local: Tensor
    start: int
    size: int
    group: Any = None

    @property
    def stop(self) -> int:
        """One past the last row this rank holds."""
        return self.start + int(self.local.shape[0])

    def block(self, rows: slice) -> Tensor:
        """The rows of the whole slice ``rows`` (a step of 1) that this rank holds, from
        `local` (empty if none)."""
        start = max(rows.start or 0, self.start)
        stop = max(min(self.size if rows.stop is None else rows.stop, self.stop), start)
        return self.local.narrow(0, min(start, self.stop) - self.start, stop - start)

    def mean_outside(self, block: Tensor, dim: int, index: Tensor) -> float:
        """The mean over every rank of the entries outside slices ``index`` (along ``dim``)
        of their `block` of a tensor: each adds the sum and count of its own (a collective
        every rank must reach, holding rows or not); 0 if there are none."""
        totals = torch.zeros(2, dtype=torch.float64, device=block.device)
        if block.numel():
            keep = torch.ones(block.shape[dim], dtype=torch.bool, device=block.device)
            keep.index_fill_(0, index, False)
            kept = block.index_select(dim, keep.nonzero().flatten())
            totals[0], totals[1] = kept.float().double().sum(), kept.numel()
        all_reduce_sum_(totals, self.group)
        mean = (totals[0] / totals[1]).float()  # rounded as the unsharded refill's float mean
        return float(mean) if totals[1] > 0 else 0.0

    def rows(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Of the rows ``index`` of the whole: which this rank holds (``at``, positions in
        ``index``) and where they lie in `local` (``index[at] - start``)."""
        mine = (index >= self.start) & (index < self.stop)
        at = mine.nonzero().flatten()
        return at, index.index_select(0, at) - self.start


def shard_of(tensor: Tensor) -> Shard:
    """Where this rank's part of ``tensor`` lies (the whole of a tensor that is not sharded).

    Raises:
        NotImplementedError: a DTensor laid out otherwise than FSDP2 lays out parameters
            (dim 0 split over one mesh dimension, replicated over the others).
    """
    if not is_sharded(tensor):
        return Shard(tensor, 0, int(tensor.shape[0]))
    dim, mesh = _shard_dim(tensor), tensor.device_mesh  # type: ignore[attr-defined]
    ranks, coordinate = mesh.size(dim), mesh.get_coordinate()
    assert coordinate is not None, "this rank is not in the parameter's mesh"
    rows = int(tensor.shape[0])
    start = min(coordinate[dim] * math.ceil(rows / ranks), rows)
    with torch.no_grad():
        local = tensor.to_local()  # type: ignore[attr-defined]
    if int(local.shape[0]) != min(math.ceil(rows / ranks), rows - start):
        raise NotImplementedError(
            f"a DTensor of shape {tuple(tensor.shape)} whose local shard has "
            f"{int(local.shape[0])} rows is not split as torch.chunk splits it"
        )
    return Shard(local, start, rows, mesh.get_group(dim))


def _shard_dim(tensor: Any) -> int:
    """The mesh dimension that splits dim 0 of a DTensor laid out as FSDP2 lays them out."""
    kinds = [(p.is_shard(), p.is_replicate(), getattr(p, "dim", None)) for p in tensor.placements]
    shards = [i for i, (shard, _, dim) in enumerate(kinds) if shard and dim == 0]
    if (
        len(shards) != 1
        or any(not (shard or rep) for shard, rep, _ in kinds)
        or sum(shard for shard, _, _ in kinds) != 1
    ):
        raise NotImplementedError(
            f"GXDReset supports DTensor parameters sharded on dim 0 over one mesh dimension "
            f"(fully_shard's layout), not placements {tuple(tensor.placements)}"
        )
    return shards[0]


def all_reduce_sum_(tensor: Tensor, group: Any) -> Tensor:
    """Sum ``tensor`` over ``group`` in place (nothing without a group); return it."""
    if group is not None:
        issue(dist.all_reduce, tensor, group=group)
    return tensor


def sharded_cost(
    consumer: nn.Module,
    weight: Tensor,
    shift: Tensor | None,
    reference: Tensor | None,
    index: Tensor | None,
    k: int,
) -> Tensor:
    """`gxd_optim.utilities.predicted_cost` of one consumer whose weight FSDP2 shards, for
    the units ``index`` (all: ``None``), summed over the ranks: every rank must call it.

    A Linear or ungrouped convolution, sharded on its output rows, adds up each rank's rows
    (one all-reduce of ``[U]``); a grouped convolution or a transposed ``Conv1D`` gathers its
    weight and gradient first.

    Args:
        consumer: the consumer layer.
        weight: its (sharded) weight, whose ``grad`` is set.
        shift: ``Σ ∂L/∂z`` per output (its bias gradient), or ``None`` (zero reference).
        reference: ``r`` per unit ``[U]``, or ``None``.
        index: the units to price, or ``None`` for all.
        k: the consumer's input columns per unit.
    """
    grad, groups = weight.grad, int(getattr(consumer, "groups", 1))
    assert grad is not None
    transposed = type(consumer).__name__ == "Conv1D" and hasattr(consumer, "nf")
    if groups > 1 or transposed:  # gathered: `Shard` splits neither their units nor groups
        weight, grad = whole(weight), whole(grad)
        weight, grad = (weight.t(), grad.t()) if transposed else (weight, grad)
        shift = None if shift is None else whole(shift)
        part = Shard(weight, 0, int(weight.shape[0]))
    else:
        part = shard_of(weight)
        grad = shard_of(grad).local
        if shift is not None:
            shift = shard_of(shift).local if is_sharded(shift) else shift[part.start : part.stop]
    local = part.local
    if index is not None and groups == 1:
        columns = (index[:, None] * k + torch.arange(k, device=index.device)).flatten()
        columns = columns.to(local.device)
        local, grad = local.index_select(1, columns), grad.index_select(1, columns)
        reference = None if reference is None else reference.index_select(0, index)
    if local.shape[0]:
        cost = predicted_cost(local, grad, shift, reference, k, groups)
    else:  # no rows here: this rank adds nothing (and still joins the sum)
        cost = local.new_zeros(int(local.shape[1]) // k)
    if index is not None and groups > 1:
        cost = cost.index_select(0, index.to(cost.device))
    return all_reduce_sum_(cost.contiguous(), part.group)


def whole(tensor: Tensor) -> Tensor:
    """The whole of ``tensor``: a DTensor gathered (a collective), any other tensor as is."""
    if is_sharded(tensor):
        with torch.no_grad():
            return tensor.full_tensor()  # type: ignore[attr-defined,no-any-return]
    return tensor


def _param_groups(module: nn.Module) -> list[Any]:
    """FSDP2's parameter groups of a ``fully_shard``ed module (none for another module)."""
    getter = getattr(module, "_get_fsdp_state", None)
    if getter is None or not any(c.__name__ == "FSDPModule" for c in type(module).__mro__):
        return []
    state = getter()
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is None:  # torch < 2.11: one group per state
        group = getattr(state, "_fsdp_param_group", None)
        groups = [] if group is None else [group]
    return list(groups)


def _fsdp_params(model: nn.Module) -> Iterator[Any]:
    for module in model.modules():
        for group in _param_groups(module):
            yield from group.fsdp_params


def register(model: nn.Module) -> None:
    """Record, for every parameter FSDP2 shards in ``model``, the module attributes that hold
    it, so that `held` finds the sharded parameter while FSDP2 has swapped it out."""
    for param in _fsdp_params(model):
        info = param._module_info
        owners = [(info.module, info.param_name)]
        owners += list(zip(info.shared_modules, info.shared_param_names, strict=True))
        for module, name in owners:
            _HELD.setdefault(module, {})[name] = param


def held(module: nn.Module, name: str, value: Any) -> Any:
    """The parameter the optimizer holds for ``module.<name>``: FSDP2's sharded one (also
    while a forward or backward pass has the unsharded one registered), else ``value``."""
    records = _HELD.get(module)
    if records is None or name not in records:
        return value
    return records[name].sharded_param


def fsdp_mesh(model: nn.Module) -> Any:
    """The device mesh FSDP2 shards ``model``'s parameters over (``None``: not sharded).

    Raises:
        NotImplementedError: parameters sharded over several meshes.
    """
    meshes = {_mesh_key(p.mesh_info.mesh): p.mesh_info.mesh for p in _fsdp_params(model)}
    if len(meshes) > 1:
        raise NotImplementedError(
            "GXDReset supports a model sharded by fully_shard over one device mesh, not "
            f"{len(meshes)} (e.g. expert parameters on a mesh of their own)"
        )
    return next(iter(meshes.values()), None)


def _mesh_key(mesh: Any) -> tuple[Any, ...]:
    """What makes two meshes the same: device type and ranks in place (two calls of
    ``init_device_mesh`` with the same arguments give equal meshes)."""
    return (mesh.device_type, tuple(mesh.shape), tuple(mesh.mesh.flatten().tolist()))


def mesh_group(mesh: Any) -> Any:
    """The process group of all of ``mesh``'s ranks (``None``: the default group).

    Every rank of an FSDP2 mesh trains on its own data (HSDP's replicas too), so the unit
    statistics are summed over them all.

    Raises:
        NotImplementedError: a mesh of several dimensions that is not the whole world.
    """
    if mesh.ndim == 1:
        return mesh.get_group(0)
    if mesh.size() == dist.get_world_size():
        return None
    raise NotImplementedError(
        f"GXDReset reduces unit statistics over the ranks of the FSDP mesh; a mesh of shape "
        f"{tuple(mesh.shape)} that is part of a larger job has no such process group. Use a "
        "1-D mesh, or one that spans every process"
    )


def optimizer_state(optimizer: torch.optim.Optimizer) -> Mapping[Tensor, MutableMapping[str, Any]]:
    """The optimizer state a reset clears: ``ZeroRedundancyOptimizer``'s local optimizer's
    (this rank's parameters), any other optimizer's own ``state``."""
    local = getattr(optimizer, "optim", None) if _is_zero(optimizer) else None
    if isinstance(local, torch.optim.Optimizer):
        return local.state
    return optimizer.state


def _is_zero(optimizer: object) -> bool:
    return type(optimizer).__name__ == "ZeroRedundancyOptimizer"


def refuse_unsupported(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Refuse the sharded setups GXDReset cannot reset correctly; record FSDP2's parameters.

    Raises:
        NotImplementedError: FSDP's first version (``FullyShardedDataParallel``), DTensor
            parameters that ``fully_shard`` did not create or lays out otherwise, FSDP2 with
            CPU offloading or over several meshes, or ``ZeroRedundancyOptimizer`` with
            ``overlap_with_ddp=True``.
    """
    if _is_zero(optimizer) and getattr(optimizer, "_overlap_with_ddp", False):
        raise NotImplementedError(
            "GXDReset does not support ZeroRedundancyOptimizer(overlap_with_ddp=True): its "
            "steps run inside DDP's communication hook, where no reset can follow them. Use "
            "overlap_with_ddp=False (the default)"
        )
    for module in model.modules():
        if type(module).__name__ == "FullyShardedDataParallel":
            raise NotImplementedError(
                "GXDReset does not support FullyShardedDataParallel (FSDP1: its flat "
                "parameters hide the layers' weights); shard the model with "
                "torch.distributed.fsdp.fully_shard (FSDP2) instead, or use "
                "DistributedDataParallel"
            )
    records = list(_fsdp_params(model))
    if any(getattr(p, "offload_to_cpu", False) for p in records):
        raise NotImplementedError(
            "GXDReset does not support fully_shard with CPUOffloadPolicy yet (the sharded "
            "parameters live on the CPU, the activations on the accelerator); leave "
            "offload_policy at its default"
        )
    fsdp_mesh(model)
    sharded = {id(p.sharded_param) for p in records}
    for name, param in model.named_parameters():
        if is_sharded(param) and id(param) not in sharded:
            raise NotImplementedError(
                f"GXDReset supports DTensor parameters that fully_shard (FSDP2) created; "
                f"`{name}` is another DTensor (tensor parallelism?). Shard the model with "
                "fully_shard alone, or use DistributedDataParallel"
            )
        if is_sharded(param):
            _shard_dim(param)
    register(model)
