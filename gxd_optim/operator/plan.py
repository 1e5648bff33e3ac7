"""The reset of one layer's units as a plan (`ResetPlan`) and its application (`apply_reset_`)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..discovery.layers import canonical, is_transposed, layer_params, layer_tensors
from ..grad_mode import no_grad
from ..sharded import Shard, all_reduce_sum_, is_sharded, shard_of
from .tensors import (
    clear_state_slices_,
    copy_units_,
    fold_and_zero_inputs_,
    input_blocks,
    mark_written,
    reinit_units_,
    reset_norm_entries_,
    unit_columns,
    write_slices_,
)

__all__ = ["ConsumerFold", "ResetPlan", "apply_reset_", "unit_indices"]

CONV1D_STD = 0.02
"""The standard deviation of transformers' ``Conv1D`` init, which its resets draw from."""


@dataclass(frozen=True)
class ConsumerFold:
    """One consumer's part of a reset.

    Attributes:
        name: the consumer's qualified name.
        columns_per_unit: ``k``: unit ``i`` is read on input columns ``[i·k, (i+1)·k)``.
        reference: ``r`` per unit (``[U]``), folded into the consumer's bias; ``None`` for the
            zero reference (nothing is folded).
        norm: the BatchNorm whose ``running_mean`` takes the fold, for a consumer without bias.
    """

    name: str
    columns_per_unit: int
    reference: Tensor | None
    norm: str = ""


@dataclass(frozen=True)
class ResetPlan:
    """Everything a reset of one producer's units writes, by qualified module name.

    `GXDReset.reset_plan` gives the plan of an eligible layer, with the references its
    statistics hold now; `apply_reset_` carries it out, on the model or on a copy of it.

    Attributes:
        producer: the layer whose units are reset.
        consumers: one `ConsumerFold` per layer that reads them.
        norms: BatchNorm layers between the producer and its consumers.
        partners: producers whose rows are part of the same units (a gated MLP's ``up``).
    """

    producer: str
    consumers: tuple[ConsumerFold, ...]
    norms: tuple[str, ...] = ()
    partners: tuple[str, ...] = ()

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module the reset writes: producers, consumers and BatchNorms."""
        absorbing = tuple(c.norm for c in self.consumers if c.norm)
        consumers = tuple(c.name for c in self.consumers)
        return (self.producer, *self.partners, *consumers, *self.norms, *absorbing)


def apply_reset_(
    modules: Mapping[str, nn.Module],
    plan: ResetPlan,
    index: Tensor,
    new_weights: torch.Generator | Mapping[str, nn.Module],
    optimizer_state: Mapping[Tensor, MutableMapping[str, Any]] | None = None,
    policy: str = "mean_scale",
) -> None:
    """Reset units ``index`` of ``plan.producer``: the whole operator, in this order.

    1. each consumer reads ``r`` instead of the units: ``b += W_out[:, i]·r_i`` (or, without a
       bias, a following BatchNorm's ``running_mean -= W_out[:, i]·r_i``), ``W_out[:, i] = 0``
       (`fold_and_zero_inputs_`);
    2. the units' incoming weights are redrawn from the producer's default init
       (`reinit_units_`), or copied from the same layer of another model (`copy_units_`);
       the same for each partner's rows;
    3. the BatchNorm entries between them are restored (`reset_norm_entries_`);
    4. the optimizer state of every touched slice is cleared under ``policy``
       (`clear_state_slices_`): consumer input columns, producer and BatchNorm rows.

    Right after it, each consumer's pre-activation has changed by exactly
    ``W_out[:, i]·(r_i − h_i)``; nothing else in the network moves.

    Args:
        modules: the modules by qualified name (``dict(model.named_modules())``, or a copy's).
        plan: what to write (`ResetPlan`).
        index: the unit indices, int64, unique.
        new_weights: the CPU generator the new weights are drawn from, or the modules of a
            model already reset (by name) to copy them from (to mirror a reset into a copy).
        optimizer_state: ``optimizer.state`` (``None``: no state to clear, e.g. for a copy).
        policy: one of `STATE_POLICIES`.

    Examples:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> plan = ResetPlan("0", (ConsumerFold("2", 1, torch.full((4,), 0.5)),))
        >>> apply_reset_(dict(net.named_modules()), plan, torch.tensor([1]), torch.Generator())
        >>> float(net[2].weight[:, 1].detach().abs().sum())
        0.0
    """

    def clear(module: nn.Module, param: Tensor | None, dim: int, at: Tensor) -> None:
        state = None if optimizer_state is None or param is None else optimizer_state.get(param)
        if state:
            param = cast(Tensor, param)
            transposed = is_transposed(module) and param.dim() == 2
            groups = int(getattr(module, "groups", 1)) if dim == 1 else 1
            clear_state_slices_(state, param, 1 - dim if transposed else dim, at, policy, groups)

    index = index.to(layer_params(modules[plan.producer])[0].device)
    for fold in plan.consumers:
        consumer = modules[fold.name]
        weight, bias = layer_params(consumer)
        k = fold.columns_per_unit
        columns = unit_columns(index, k).to(weight.device)
        values = None
        if fold.reference is not None:
            values = fold.reference.index_select(0, index.to(fold.reference.device))
            values = (values if k == 1 else values.repeat_interleave(k)).to(weight.device)
        norm = cast(_BatchNorm, modules[fold.norm]) if fold.norm else None
        apply_fold = _fold_sharded if is_sharded(weight) or is_sharded(bias) else _fold
        apply_fold(
            consumer,
            weight,
            bias,
            columns,
            values if bias is not None or (norm and norm.running_mean is not None) else None,
            None if norm is None else norm.running_mean,
        )
        clear(consumer, weight, 1, columns)
    touched: list[tuple[nn.Module, Tensor | None]] = []
    for name in (plan.producer, *plan.partners):
        module = modules[name]
        weight, bias = layer_params(module)
        if isinstance(new_weights, torch.Generator):
            std = CONV1D_STD if is_transposed(module) else None
            if is_sharded(weight) or is_sharded(bias):
                _reinit_sharded(module, weight, bias, index, new_weights, std)
            else:
                reinit_units_(canonical(weight, module), bias, index, new_weights, std)
        else:
            source = layer_params(new_weights[name])
            copy_units_(
                canonical(weight, module), bias, index, canonical(source[0], module), source[1]
            )
        touched += [(module, weight), (module, bias)]
    for name in plan.norms:
        norm = cast(_BatchNorm, modules[name])
        reset_norm_entries_(norm, index)
        touched += [(norm, param) for _, param in layer_tensors(norm)]
    for module, param in touched:
        clear(module, param, 0, index)


def _fold(
    consumer: nn.Module,
    weight: Tensor,
    bias: Tensor | None,
    columns: Tensor,
    values: Tensor | None,
    running_mean: Tensor | None,
) -> None:
    """Step 1 of `apply_reset_` for one consumer (`fold_and_zero_inputs_`)."""
    groups = int(getattr(consumer, "groups", 1))
    view = canonical(weight, consumer)
    fold_and_zero_inputs_(view, bias, columns, values, groups=groups, running_mean=running_mean)


def _fold_sharded(
    consumer: nn.Module,
    weight: Tensor,
    bias: Tensor | None,
    columns: Tensor,
    values: Tensor | None,
    running_mean: Tensor | None,
) -> None:
    """`_fold` of a consumer whose parameters FSDP2 shards on dim 0.

    Each rank folds and zeroes the input columns in the weight rows it holds, into a shift
    vector over all outputs; one all-reduce sums the shifts of all ranks (the rows of a
    Linear's outputs, or the input rows of a transposed ``Conv1D``), and each rank adds its
    rows of the sum to its bias rows (or all of it to a BatchNorm's running mean).
    """
    part = shard_of(weight)
    outputs = int(canonical(weight, consumer).shape[0])
    shift = (
        None if values is None else torch.zeros(outputs, dtype=weight.dtype, device=weight.device)
    )
    for block, local, picked, rows in _local_blocks(consumer, weight, part, columns):
        fold_and_zero_inputs_(
            block,
            None,
            local,
            None if values is None else values[picked],
            running_mean=None if shift is None else shift[rows],  # takes -W·r
        )
    mark_written(weight)
    if shift is None:
        return
    all_reduce_sum_(shift, part.group)
    if bias is not None:
        mine = shard_of(bias)
        with no_grad():
            mine.local.sub_(shift[mine.start : mine.stop].to(mine.local))
        mark_written(bias)
    elif running_mean is not None:
        running_mean.add_(shift.to(running_mean.dtype))


def _local_blocks(
    consumer: nn.Module, weight: Tensor, part: Shard, columns: Tensor
) -> list[tuple[Tensor, Tensor, Tensor | slice, slice]]:
    """Where this rank's shard reads input ``columns``: ``(block, local columns, positions in
    columns, output rows)`` per block of the consumer's ``[out, in, *kernel]`` view, as
    `input_blocks` gives them for the whole weight."""
    if is_transposed(consumer):  # stored [in, out]: dim 0 splits the input columns
        picked, local = part.rows(columns)
        return [(part.local.t(), local, picked, slice(None))]
    blocks: list[tuple[Tensor, Tensor, Tensor | slice, slice]] = []
    for rows, local, positions in input_blocks(
        weight, columns, int(getattr(consumer, "groups", 1))
    ):
        block = part.block(rows)
        start = min(max(rows.start or 0, part.start), part.stop)
        blocks.append((block, local, positions, slice(start, start + int(block.shape[0]))))
    return blocks


def _reinit_sharded(
    module: nn.Module,
    weight: Tensor,
    bias: Tensor | None,
    index: Tensor,
    generator: torch.Generator,
    std: float | None,
) -> None:
    """Step 2 of `apply_reset_` for a producer whose parameters FSDP2 shards: every rank
    draws the units' whole rows from the generator, as `reinit_units_` draws them for an
    unsharded layer, and writes the part it holds."""
    count = int(index.numel())
    shape = (count, *canonical(weight, module).shape[1:])
    new = torch.empty(shape, dtype=weight.dtype, device=index.device)
    new_bias = None if bias is None else torch.empty(count, dtype=bias.dtype, device=index.device)
    reinit_units_(new, new_bias, torch.arange(count, device=index.device), generator, std)
    if is_transposed(module):  # the units are columns of the stored [in, out] weight
        write_slices_(weight, 1, index, new.t())
    else:
        write_slices_(weight, 0, index, new)
    if bias is not None and new_bias is not None:
        write_slices_(bias, 0, index, new_bias)


def unit_indices(indices: Tensor | Sequence[int], units: int, layer: str) -> Tensor:
    """Check a user's unit indices of a layer of ``units`` units; return them sorted, unique,
    int64 (empty if there are none).

    Raises:
        ValueError: not a 1-D sequence of integers, or an index outside ``[0, units)``.

    Examples:
        >>> unit_indices([3, 1, 3], 4, "fc")
        tensor([1, 3])
    """
    index = torch.as_tensor(indices)
    if index.numel() == 0 and index.dim() <= 1:
        return index.reshape(0).to(torch.int64)
    integers = not (index.dtype == torch.bool or index.is_floating_point() or index.is_complex())
    if not integers or index.dim() > 1:
        raise ValueError(
            f"indices must be a 1-D sequence of ints, got {index.dtype} of shape "
            f"{tuple(index.shape)}"
        )
    index = index.reshape(-1).to(torch.int64)
    if int(index.min()) < 0 or int(index.max()) >= units:
        raise ValueError(
            f"indices must lie in [0, {units}) for layer {layer!r}, got {index.tolist()}"
        )
    unique: Tensor = torch.unique(index)
    return unique
