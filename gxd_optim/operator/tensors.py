"""The reset operator's parts as pure, in-place tensor functions.

Every function here writes into existing tensors with ``index_copy_``, ``index_fill_``, basic
slices or ``add_``; none replaces a ``Parameter`` and none indexes with a tensor on the left of
an assignment (``w[idx].uniform_()`` writes into a copy and silently does nothing).
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any

import torch
from torch import Tensor, nn

from ..grad_mode import no_grad
from ..sharded import is_sharded, shard_of

__all__ = [
    "PARAMETER_KEYS",
    "SECOND_MOMENT_KEYS",
    "STATE_POLICIES",
    "clear_state_slices_",
    "copy_units_",
    "fill_slices_",
    "fold_and_zero_inputs_",
    "input_blocks",
    "mark_written",
    "reinit_units_",
    "reset_norm_entries_",
    "unit_columns",
    "write_slices_",
]

STATE_POLICIES = ("zero", "mean_scale")
"""Names accepted by ``GXDReset(state_policy=...)``."""

SECOND_MOMENT_KEYS = frozenset(
    {
        *("exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "acc_delta", "exp_inf"),
        *("step_size", "variance", "exp_avg_var", "max_exp_avg_var"),
    }
)
"""Optimizer-state keys holding non-negative scale statistics (second moments, step sizes).

Adam/AdamW/NAdam/RAdam ``exp_avg_sq`` and ``max_exp_avg_sq``, RMSprop ``square_avg``,
Adagrad ``sum``, Adadelta ``square_avg``/``acc_delta``, Adamax ``exp_inf``, Rprop's per-element
``step_size``, Adafactor's ``variance`` (of 1-D parameters) and AdaBelief's ``exp_avg_var`` and
``max_exp_avg_var``. Under ``state_policy="mean_scale"`` these are refilled instead of zeroed;
every other key shaped like its parameter is zeroed, except `PARAMETER_KEYS`.
"""

PARAMETER_KEYS = frozenset({"ax"})
"""Optimizer-state keys holding an average of the parameter itself (ASGD's ``ax``): a reset
copies the parameter's new values into their touched slices, under either policy."""


def unit_columns(index: Tensor, columns_per_unit: int) -> Tensor:
    """Consumer input columns that read the given units.

    Unit ``i`` occupies columns ``[i·k, (i+1)·k)`` of its consumer's input (``k > 1`` after a
    flatten of ``k`` spatial positions per channel).

    Args:
        index: unit indices, shape ``[m]``, int64.
        columns_per_unit: ``k``.

    Returns:
        Column indices, shape ``[m·k]``, ordered unit by unit.

    Examples:
        >>> unit_columns(torch.tensor([0, 2]), 3)
        tensor([0, 1, 2, 6, 7, 8])
    """
    if columns_per_unit == 1:
        return index
    offsets = torch.arange(columns_per_unit, device=index.device)
    return (index[:, None] * columns_per_unit + offsets).flatten()


def reinit_units_(
    weight: Tensor,
    bias: Tensor | None,
    index: Tensor,
    generator: torch.Generator,
    std: float | None = None,
) -> None:
    """Redraw the incoming weights of the given units from the layer's default init.

    ``nn.Linear`` and ``nn.Conv*d`` initialise weight and bias from
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = in_features · prod(kernel)``
    (``kaiming_uniform_(a=sqrt(5))`` reduces to that bound). Values are drawn on the CPU from
    ``generator`` in float32 (float64 for float64 weights), so the draw is the same on every
    device and every process seeded alike, then cast to the parameter's dtype and device.

    A layer whose own init is normal (transformers' ``Conv1D``: ``N(0, 0.02²)``, bias 0) is
    redrawn from that instead, with ``std``.

    Args:
        weight: producer weight ``[out, in, *kernel]`` (a view of it will do); rows ``index``
            are overwritten.
        bias: producer bias ``[out]`` or ``None``.
        index: unit (row) indices, int64, on ``weight``'s device.
        generator: CPU generator the draw consumes.
        std: the standard deviation of a normal init (``None``: the uniform one above).

    Examples:
        >>> layer = nn.Linear(4, 3)
        >>> reinit_units_(layer.weight, layer.bias, torch.tensor([1]), torch.Generator())
        >>> bool(layer.weight[1].abs().max() <= 0.5)  # within 1/sqrt(fan_in)
        True
    """
    fan_in = math.prod(weight.shape[1:])
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    draw_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    count = int(index.numel())

    def draw_into(new: Tensor) -> Tensor:
        if std is not None:
            return new.normal_(0.0, std, generator=generator)
        return new.uniform_(-bound, bound, generator=generator)

    # one CPU unit in the draws' dtype: drawn straight into its row (the same numbers)
    in_place = count == 1 and all(
        t.device.type == "cpu" and t.dtype == draw_dtype for t in (weight, bias) if t is not None
    )
    with no_grad():
        if in_place:
            row = int(index)
            draw_into(weight[row])
        else:
            new = draw_into(torch.empty((count, *weight.shape[1:]), dtype=draw_dtype))
            weight.index_copy_(0, index, new.to(weight))
        if bias is not None and std is not None:
            bias.index_fill_(0, index, 0.0)
        elif bias is not None and in_place:
            draw_into(bias[row])
        elif bias is not None:
            bias.index_copy_(0, index, draw_into(torch.empty(count, dtype=draw_dtype)).to(bias))


def copy_units_(
    weight: Tensor, bias: Tensor | None, index: Tensor, source: Tensor, source_bias: Tensor | None
) -> None:
    """Copy the incoming weights of the given units from ``source`` (cast to ``weight``).

    Examples:
        >>> a, b = nn.Linear(2, 3), nn.Linear(2, 3)
        >>> copy_units_(a.weight, a.bias, torch.tensor([1]), b.weight, b.bias)
        >>> torch.equal(a.weight[1], b.weight[1])
        True
    """
    with no_grad():
        for mine, theirs in ((weight, source), (bias, source_bias)):
            if mine is not None and theirs is not None:
                at = index.to(theirs.device)
                mine.index_copy_(0, index.to(mine.device), theirs.index_select(0, at).to(mine))


def fold_and_zero_inputs_(
    weight: Tensor,
    bias: Tensor | None,
    columns: Tensor,
    values: Tensor | None,
    *,
    groups: int = 1,
    running_mean: Tensor | None = None,
) -> None:
    """Make a consumer read the constant ``values`` on ``columns`` instead of its input.

    For a Linear consumer `y = W x + b` and a valid (unpadded) convolution alike:

    ```text
    b  += Σ_{j ∈ columns} (Σ_kernel W[:, j]) · values_j
    W[:, columns] = 0
    ```

    after which ``y`` equals the old layer applied to ``x`` with ``x_j := values_j`` on
    ``columns`` (exactly: the fold sums the kernel because every output position of an
    unpadded convolution sees the whole kernel). A consumer without bias whose output only a
    BatchNorm reads has the fold subtracted from that BatchNorm's ``running_mean`` instead: a
    constant shift of ``y`` is what its mean takes away (the batch mean in training does so
    by itself). A grouped convolution reads input channel ``j`` only in the outputs of the
    group that holds it, with weight column ``j mod (in / groups)``.

    Args:
        weight: consumer weight ``[out, in / groups, *kernel]`` (a view of it will do).
        bias: consumer bias ``[out]`` (or ``None``: then ``running_mean``, if given, takes the
            fold; if neither, ``values`` must be ``None``).
        columns: input columns (channels) to replace, int64, sorted.
        values: the constants ``r_j`` per column, or ``None`` for the zero reference.
        groups: the consumer's groups (1 for a Linear).
        running_mean: the running mean of the BatchNorm that alone reads the consumer.

    Examples:
        >>> layer, x = nn.Linear(3, 2), torch.tensor([[1.0, 2.0, 3.0]])
        >>> expected = layer(torch.tensor([[1.0, 0.5, 3.0]]))  # input 1 read as 0.5
        >>> fold_and_zero_inputs_(layer.weight, layer.bias, torch.tensor([1]), torch.tensor([0.5]))
        >>> torch.allclose(layer(x), expected)
        True
    """
    if values is not None and bias is None and running_mean is None:
        raise ValueError("a fold needs the consumer's bias or a BatchNorm after it")
    with no_grad():
        for rows, local, picked in input_blocks(weight, columns, groups):
            block = weight if groups == 1 else weight[rows]
            if values is not None:
                taken = block.index_select(1, local)
                per_column = taken.flatten(2).sum(2) if taken.dim() > 2 else taken
                read = values if groups == 1 else values[picked]
                shift = per_column @ read.to(per_column.dtype)
                if bias is not None:
                    (bias if groups == 1 else bias[rows]).add_(shift)
                elif running_mean is not None:
                    (running_mean if groups == 1 else running_mean[rows]).sub_(
                        shift.to(running_mean.dtype)
                    )
            block.index_fill_(1, local, 0.0)


def input_blocks(
    weight: Tensor, columns: Tensor, groups: int
) -> list[tuple[slice, Tensor, Tensor | slice]]:
    """Where a consumer reads input ``columns``: ``(rows, local columns, positions)`` per group.

    ``weight[rows]`` holds the outputs of one group, which read the ``local`` columns of that
    group's weight; ``positions`` index into ``columns`` (and the values that go with them):
    ``slice(None)``, all of them, for an ungrouped consumer.

    Examples:
        >>> blocks = input_blocks(torch.zeros(4, 1, 3), torch.tensor([1, 2]), groups=4)
        >>> [(rows.start, rows.stop, local.tolist(), at.tolist()) for rows, local, at in blocks]
        [(1, 2, [0], [0]), (2, 3, [0], [1])]
    """
    if groups == 1:
        return [(slice(None), columns, slice(None))]
    per_in, per_out = weight.shape[1], weight.shape[0] // groups
    owner = torch.div(columns, per_in, rounding_mode="floor")
    blocks = []
    for group in sorted(set(owner.tolist())):
        at = (owner == group).nonzero().flatten()
        rows = slice(group * per_out, (group + 1) * per_out)
        blocks.append((rows, columns.index_select(0, at) - group * per_in, at))
    return blocks


def reset_norm_entries_(norm: nn.modules.batchnorm._BatchNorm, index: Tensor) -> None:
    """Restore a BatchNorm's per-channel entries of the given units to their initial values.

    ``weight = 1``, ``bias = 0``, ``running_mean = 0``, ``running_var = 1`` on ``index``;
    ``num_batches_tracked`` (a scalar) is left alone.

    Examples:
        >>> norm = nn.BatchNorm1d(3)
        >>> _ = norm.running_var.fill_(4.0)
        >>> reset_norm_entries_(norm, torch.tensor([0]))
        >>> norm.running_var
        tensor([1., 4., 4.])
    """
    with no_grad():
        for tensor, value in (
            (norm.weight, 1.0),
            (norm.bias, 0.0),
            (norm.running_mean, 0.0),
            (norm.running_var, 1.0),
        ):
            if tensor is not None:
                fill_slices_(tensor, 0, index, value)


def clear_state_slices_(
    state: MutableMapping[str, Any],
    param: Tensor,
    dim: int,
    index: Tensor,
    policy: str,
    groups: int = 1,
) -> None:
    """Clear the optimizer state of the touched slices of one parameter.

    Every state tensor with ``param``'s shape (momentum, Adam moments, Adagrad sums, ... of any
    optimizer) has its slices ``index`` along ``dim`` cleared; other state (the scalar ``step``,
    factored statistics) is left alone, since it cannot be reset per unit.

    The policies:

    - ``"zero"``: every touched slice is zeroed. With Adam late in training this makes the
      unit's first step ``≈ (1-β1)/sqrt(1-β2) ≈ 3.2×`` the learning rate.
    - ``"mean_scale"``: first-moment (signed) buffers are zeroed; second-moment buffers
      (`SECOND_MOMENT_KEYS`) are set to the mean of their untouched entries, so the unit's
      next steps have the layer's usual size.
    - Under both, averages of the parameter itself (`PARAMETER_KEYS`) take its new values.

    Args:
        state: ``optimizer.state[param]``, modified in place.
        param: the parameter the state belongs to.
        dim: the dimension that ``index`` selects along (0 for rows, 1 for input columns).
        index: touched indices, int64.
        policy: one of `STATE_POLICIES`.
        groups: a grouped convolution's groups, for its input columns (``dim=1``): each is
            cleared in the rows of its group (`input_blocks`), a second moment refilled with
            the mean of that group's untouched entries.

    Examples:
        >>> param = torch.zeros(3, 2)
        >>> state = {"step": torch.tensor(5.0), "exp_avg": torch.ones(3, 2),
        ...          "exp_avg_sq": torch.tensor([[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]])}
        >>> clear_state_slices_(state, param, 0, torch.tensor([2]), "mean_scale")
        >>> state["exp_avg"].select(0, 2)  # zeroed
        tensor([0., 0.])
        >>> state["exp_avg_sq"].select(0, 2)  # the mean of the other rows
        tensor([2., 2.])
        >>> state["step"]  # per-tensor state is left alone
        tensor(5.)
    """
    if policy not in STATE_POLICIES:
        raise ValueError(f"unknown state_policy {policy!r}; expected one of {STATE_POLICIES}")
    if is_sharded(param):
        _clear_sharded_state_slices_(state, param, dim, index, policy, groups)
        return
    blocks = input_blocks(param, index, groups)
    columns = [local.to(param.device) for _, local, _ in blocks]  # where state tensors live
    with no_grad():
        for key, value in state.items():
            if not isinstance(value, Tensor) or value.shape != param.shape:
                continue
            for (rows, _, _), at in zip(blocks, columns, strict=True):
                block = value if groups == 1 else value[rows]
                at = at if at.device == value.device else at.to(value.device)
                if key in PARAMETER_KEYS:  # the parameter holds its new values already
                    block.index_copy_(dim, at, param[rows].index_select(dim, at).to(block))
                    continue
                block.index_fill_(dim, at, 0.0)
                if policy == "mean_scale" and key in SECOND_MOMENT_KEYS:
                    block.index_fill_(dim, at, _mean_of_rest(block, dim, at))


def _mean_of_rest(value: Tensor, dim: int, index: Tensor) -> float:
    """Mean of ``value`` over the slices along ``dim`` not in ``index`` (unique), once those
    are zero: their sum (in float64) over their count, 0 if there are none."""
    rest = value.numel() - index.numel() * (value.numel() // max(value.shape[dim], 1))
    return float(value.sum(dtype=torch.float64)) / rest if rest > 0 else 0.0


def write_slices_(tensor: Tensor, dim: int, index: Tensor, values: Tensor) -> None:
    """``tensor.index_copy_(dim, index, values)``, written into this rank's part of a sharded
    tensor (`gxd_optim.sharded.Shard`): along dim 0 the rows of ``index`` it holds, along
    another dim its rows of ``values`` (which span the whole of dim 0).

    Example:
        >>> t = torch.zeros(2, 3)
        >>> write_slices_(t, 1, torch.tensor([2]), torch.ones(2, 1))
        >>> t[:, 2]
        tensor([1., 1.])
    """
    part = shard_of(tensor)
    with no_grad():
        if dim == 0:
            at, rows = part.rows(index)
            part.local.index_copy_(0, rows, values.index_select(0, at).to(part.local))
        else:
            mine = values.narrow(0, part.start, part.stop - part.start)
            part.local.index_copy_(dim, index, mine.to(part.local))
    mark_written(tensor)


def fill_slices_(tensor: Tensor, dim: int, index: Tensor, value: float) -> None:
    """``tensor.index_fill_(dim, index, value)``; of a sharded tensor, on this rank's part.

    Example:
        >>> t = torch.zeros(3)
        >>> fill_slices_(t, 0, torch.tensor([1]), 2.0)
        >>> t
        tensor([0., 2., 0.])
    """
    if not is_sharded(tensor):
        tensor.index_fill_(dim, index, value)
        return
    part = shard_of(tensor)
    with no_grad():
        part.local.index_fill_(dim, part.rows(index)[1] if dim == 0 else index, value)
    mark_written(tensor)


def mark_written(tensor: Tensor) -> None:
    """Count a write into a sharded tensor's local shard in the version of the tensor itself
    (autograd and `gxd_optim.GXDReset.predicted_cost` read it); nothing for another tensor."""
    if is_sharded(tensor):
        torch.autograd.graph.increment_version(tensor)


def _clear_sharded_state_slices_(
    state: MutableMapping[str, Any],
    param: Tensor,
    dim: int,
    index: Tensor,
    policy: str,
    groups: int,
) -> None:
    """`clear_state_slices_` of a parameter sharded on dim 0: each rank clears its part of
    each touched slice; a second moment is refilled with the mean of the untouched entries of
    every rank (one all-reduce of a sum and a count, which every rank issues)."""
    blocks = input_blocks(param, index, groups) if groups > 1 else [(slice(None), index, index)]
    own = shard_of(param)
    with no_grad():
        for key, value in state.items():
            if not isinstance(value, Tensor) or value.shape != param.shape:
                continue
            part = shard_of(value)
            for rows, touched, _ in blocks:
                block = part.block(rows)  # this rank's rows of the slices (maybe none)
                at = touched.to(block.device)
                at = part.rows(at)[1] if dim == 0 else at
                if key in PARAMETER_KEYS:  # the parameter holds its new values already
                    new = own.block(rows).index_select(dim, at)
                    block.index_copy_(dim, at, new.to(block))
                    continue
                fill = 0.0
                if policy == "mean_scale" and key in SECOND_MOMENT_KEYS:
                    fill = part.mean_outside(block, dim, at)
                block.index_fill_(dim, at, fill)
