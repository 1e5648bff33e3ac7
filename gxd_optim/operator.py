"""The reset operator as pure, in-place tensor functions.

Every function here writes into existing tensors with ``index_copy_``, ``index_fill_``
or ``add_``; none replaces a ``Parameter`` and none indexes with a tensor on the left of an
assignment (``w[idx].uniform_()`` writes into a copy and silently does nothing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .discovery.layers import layer_params

__all__ = [
    "SECOND_MOMENT_KEYS",
    "STATE_POLICIES",
    "ConsumerFold",
    "ResetPlan",
    "apply_reset_",
    "clear_state_slices_",
    "copy_units_",
    "fold_and_zero_inputs_",
    "reinit_units_",
    "reset_norm_entries_",
    "unit_columns",
    "unit_indices",
]

STATE_POLICIES = ("zero", "mean_scale")
"""Names accepted by ``GXDReset(state_policy=...)``."""

SECOND_MOMENT_KEYS = frozenset(
    {"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "acc_delta", "exp_inf"}
)
"""Optimizer-state keys holding non-negative scale statistics (second moments).

Adam/AdamW/NAdam/RAdam ``exp_avg_sq`` and ``max_exp_avg_sq``, RMSprop ``square_avg``,
Adagrad ``sum``, Adadelta ``square_avg``/``acc_delta`` and Adamax ``exp_inf``. Under
``state_policy="mean_scale"`` these are refilled instead of zeroed; every other key is zeroed.
"""


def unit_columns(index: Tensor, columns_per_unit: int) -> Tensor:
    """Consumer input columns that read the given units.

    Unit ``i`` occupies columns ``[i·k, (i+1)·k)`` of its consumer's input (``k > 1`` after a
    flatten of ``k`` spatial positions per channel).

    Args:
        index: unit indices, shape ``[m]``, int64.
        columns_per_unit: ``k``.

    Returns:
        Column indices, shape ``[m·k]``, ordered unit by unit.

    Example:
        >>> unit_columns(torch.tensor([0, 2]), 3)
        tensor([0, 1, 2, 6, 7, 8])
    """
    if columns_per_unit == 1:
        return index
    offsets = torch.arange(columns_per_unit, device=index.device)
    return (index[:, None] * columns_per_unit + offsets).flatten()


def reinit_units_(
    weight: Tensor, bias: Tensor | None, index: Tensor, generator: torch.Generator
) -> None:
    """Redraw the incoming weights of the given units from the layer's default init.

    ``nn.Linear`` and ``nn.Conv*d`` initialise weight and bias from
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = in_features · prod(kernel)``
    (``kaiming_uniform_(a=sqrt(5))`` reduces to that bound). Values are drawn on the CPU from
    ``generator`` in float32 (float64 for float64 weights), so the draw is the same on every
    device and every process seeded alike, then cast to the parameter's dtype and device.

    Args:
        weight: producer weight ``[out, in, *kernel]``; rows ``index`` are overwritten.
        bias: producer bias ``[out]`` or ``None``.
        index: unit (row) indices, int64, on ``weight``'s device.
        generator: CPU generator the draw consumes.

    Example:
        >>> layer = nn.Linear(4, 3)
        >>> reinit_units_(layer.weight, layer.bias, torch.tensor([1]), torch.Generator())
        >>> bool(layer.weight[1].abs().max() <= 0.5)  # within 1/sqrt(fan_in)
        True
    """
    fan_in = weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    draw_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    count = int(index.numel())

    def draw(shape: tuple[int, ...]) -> Tensor:
        u = torch.rand(shape, generator=generator, dtype=draw_dtype)
        return (u * (2 * bound) - bound).to(device=weight.device, dtype=weight.dtype)

    with torch.no_grad():
        weight.index_copy_(0, index, draw((count, *weight.shape[1:])))
        if bias is not None:
            bias.index_copy_(0, index, draw((count,)))


def copy_units_(
    weight: Tensor, bias: Tensor | None, index: Tensor, source: Tensor, source_bias: Tensor | None
) -> None:
    """Copy the incoming weights of the given units from ``source`` (cast to ``weight``).

    Example:
        >>> a, b = nn.Linear(2, 3), nn.Linear(2, 3)
        >>> copy_units_(a.weight, a.bias, torch.tensor([1]), b.weight, b.bias)
        >>> torch.equal(a.weight[1], b.weight[1])
        True
    """
    with torch.no_grad():
        for mine, theirs in ((weight, source), (bias, source_bias)):
            if mine is not None and theirs is not None:
                at = index.to(theirs.device)
                mine.index_copy_(0, index.to(mine.device), theirs.index_select(0, at).to(mine))


def fold_and_zero_inputs_(
    weight: Tensor, bias: Tensor | None, columns: Tensor, values: Tensor | None
) -> None:
    """Make a consumer read the constant ``values`` on ``columns`` instead of its input.

    For a Linear consumer `y = W x + b` and a valid (unpadded) convolution alike:

    ```text
    b  += Σ_{j ∈ columns} (Σ_kernel W[:, j]) · values_j
    W[:, columns] = 0
    ```

    after which ``y`` equals the old layer applied to ``x`` with ``x_j := values_j`` on
    ``columns`` (exactly: the fold sums the kernel because every output position of an
    unpadded convolution sees the whole kernel).

    Args:
        weight: consumer weight ``[out, in, *kernel]``.
        bias: consumer bias ``[out]``; required when ``values`` is given.
        columns: input columns (dim 1 of ``weight``) to replace, int64.
        values: the constants ``r_j`` per column, or ``None`` for the zero reference.

    Example:
        >>> layer, x = nn.Linear(3, 2), torch.tensor([[1.0, 2.0, 3.0]])
        >>> expected = layer(torch.tensor([[1.0, 0.5, 3.0]]))  # input 1 read as 0.5
        >>> fold_and_zero_inputs_(layer.weight, layer.bias, torch.tensor([1]), torch.tensor([0.5]))
        >>> torch.allclose(layer(x), expected)
        True
    """
    with torch.no_grad():
        if values is not None:
            if bias is None:
                raise ValueError("a bias fold needs a consumer bias")
            block = weight.index_select(1, columns)
            per_column = block.flatten(2).sum(2) if block.dim() > 2 else block
            bias.add_(per_column @ values.to(per_column.dtype))
        weight.index_fill_(1, columns, 0.0)


def reset_norm_entries_(norm: nn.modules.batchnorm._BatchNorm, index: Tensor) -> None:
    """Restore a BatchNorm's per-channel entries of the given units to their initial values.

    ``weight = 1``, ``bias = 0``, ``running_mean = 0``, ``running_var = 1`` on ``index``;
    ``num_batches_tracked`` (a scalar) is left alone.

    Example:
        >>> norm = nn.BatchNorm1d(3)
        >>> _ = norm.running_var.fill_(4.0)
        >>> reset_norm_entries_(norm, torch.tensor([0]))
        >>> norm.running_var
        tensor([1., 4., 4.])
    """
    with torch.no_grad():
        for tensor, value in (
            (norm.weight, 1.0),
            (norm.bias, 0.0),
            (norm.running_mean, 0.0),
            (norm.running_var, 1.0),
        ):
            if tensor is not None:
                tensor.index_fill_(0, index, value)


def clear_state_slices_(
    state: MutableMapping[str, Any], param: Tensor, dim: int, index: Tensor, policy: str
) -> None:
    """Clear the optimizer state of the touched slices of one parameter.

    Every state tensor with ``param``'s shape (momentum, Adam moments, Adagrad sums, ... of any
    optimizer) has its slices ``index`` along ``dim`` cleared; other state (the scalar ``step``,
    factored statistics) is left alone, since it cannot be reset per unit.

    Policies:
        ``"zero"``: every touched slice is zeroed. With Adam late in training this makes the
        unit's first step ``≈ (1-β1)/sqrt(1-β2) ≈ 3.2×`` the learning rate.
        ``"mean_scale"``: first-moment (signed) buffers are zeroed; second-moment buffers
        (`SECOND_MOMENT_KEYS`) are set to the mean of their untouched entries, so the
        unit's next steps have the layer's usual size.

    Args:
        state: ``optimizer.state[param]``, modified in place.
        param: the parameter the state belongs to.
        dim: the dimension that ``index`` selects along (0 for rows, 1 for input columns).
        index: touched indices, int64.
        policy: one of `STATE_POLICIES`.

    Example:
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
    with torch.no_grad():
        for key, value in state.items():
            if not isinstance(value, Tensor) or value.shape != param.shape:
                continue
            fill = 0.0
            if policy == "mean_scale" and key in SECOND_MOMENT_KEYS:
                fill = _mean_outside(value, dim, index)
            value.index_fill_(dim, index.to(value.device), fill)


def _mean_outside(value: Tensor, dim: int, index: Tensor) -> float:
    """Mean of ``value`` over the slices along ``dim`` that are not in ``index`` (0 if none)."""
    keep = torch.ones(value.shape[dim], dtype=torch.bool, device=value.device)
    keep.index_fill_(0, index.to(value.device), False)
    if not bool(keep.any()):
        return 0.0
    return float(value.index_select(dim, keep.nonzero().flatten()).float().mean())


@dataclass(frozen=True)
class ConsumerFold:
    """One consumer's part of a reset.

    Attributes:
        name: the consumer's qualified name.
        columns_per_unit: ``k``: unit ``i`` is read on input columns ``[i·k, (i+1)·k)``.
        reference: ``r`` per unit (``[U]``), folded into the consumer's bias; ``None`` for the
            zero reference (nothing is folded).
    """

    name: str
    columns_per_unit: int
    reference: Tensor | None


@dataclass(frozen=True)
class ResetPlan:
    """Everything a reset of one producer's units writes, by qualified module name.

    `GXDReset.reset_plan` gives the plan of an eligible layer, with the references its
    statistics hold now; `apply_reset_` carries it out, on the model or on a copy of it.

    Attributes:
        producer: the layer whose units are reset.
        consumers: one `ConsumerFold` per layer that reads them.
        norms: BatchNorm layers between the producer and its consumers.
    """

    producer: str
    consumers: tuple[ConsumerFold, ...]
    norms: tuple[str, ...] = ()

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module the reset writes: the producer, its consumers and its BatchNorms."""
        return (self.producer, *(c.name for c in self.consumers), *self.norms)


def apply_reset_(
    modules: Mapping[str, nn.Module],
    plan: ResetPlan,
    index: Tensor,
    new_weights: torch.Generator | Mapping[str, nn.Module],
    optimizer_state: Mapping[Tensor, MutableMapping[str, Any]] | None = None,
    policy: str = "mean_scale",
) -> None:
    """Reset units ``index`` of ``plan.producer``: the whole operator, in this order.

    1. each consumer reads ``r`` instead of the units: ``b += W_out[:, i]·r_i``,
       ``W_out[:, i] = 0`` (`fold_and_zero_inputs_`);
    2. the units' incoming weights are redrawn from the producer's default init
       (`reinit_units_`), or copied from the same layer of another model (`copy_units_`);
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

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> plan = ResetPlan("0", (ConsumerFold("2", 1, torch.full((4,), 0.5)),))
        >>> apply_reset_(dict(net.named_modules()), plan, torch.tensor([1]), torch.Generator())
        >>> float(net[2].weight[:, 1].detach().abs().sum())
        0.0
    """

    def clear(param: Tensor | None, dim: int, at: Tensor) -> None:
        state = None if optimizer_state is None or param is None else optimizer_state.get(param)
        if state:
            clear_state_slices_(state, cast(Tensor, param), dim, at, policy)

    weight, bias = layer_params(modules[plan.producer])
    index = index.to(weight.device)
    for fold in plan.consumers:
        consumer_weight, consumer_bias = layer_params(modules[fold.name])
        k = fold.columns_per_unit
        columns = unit_columns(index, k).to(consumer_weight.device)
        values = None
        if fold.reference is not None:
            values = fold.reference.index_select(0, index.to(fold.reference.device))
            values = values.repeat_interleave(k).to(consumer_weight.device)
        fold_and_zero_inputs_(consumer_weight, consumer_bias, columns, values)
        clear(consumer_weight, 1, columns)
    if isinstance(new_weights, torch.Generator):
        reinit_units_(weight, bias, index, new_weights)
    else:
        copy_units_(weight, bias, index, *layer_params(new_weights[plan.producer]))
    touched: list[Tensor | None] = [weight, bias]
    for name in plan.norms:
        norm = cast(_BatchNorm, modules[name])
        reset_norm_entries_(norm, index)
        touched += [norm.weight, norm.bias]
    for param in touched:
        clear(param, 0, index)


def unit_indices(indices: Tensor | Sequence[int], units: int, layer: str) -> Tensor:
    """Check a user's unit indices of a layer of ``units`` units; return them sorted, unique,
    int64 (empty if there are none).

    Raises:
        ValueError: not a 1-D sequence of integers, or an index outside ``[0, units)``.

    Example:
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
