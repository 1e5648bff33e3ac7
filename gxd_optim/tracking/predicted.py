"""Predicted costs of resets from the consumers' gradients: no statistic is collected for
them (see `gxd_optim.utilities.predicted_cost`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..discovery.layers import canonical, layer_params
from ..grad_mode import no_grad
from ..operator import unit_columns
from ..sharded import is_sharded, sharded_cost, whole
from ..utilities import predicted_cost, predicted_sum
from .storage import EdgeStats, LayerStats

__all__ = ["layer_cost", "shift_gradient"]


def layer_cost(
    layer: LayerStats, modules: Mapping[str, nn.Module], index: Tensor | None, total: bool
) -> Tensor:
    """``c_i = Σ_consumers Σ_{x,pos} ∂L/∂h · (r_i − h)`` of a layer's units from its
    consumers' gradients (`gxd_optim.utilities.predicted_cost`), or with ``total`` its sum
    over ``index`` (a 0-d tensor, in fewer kernels where a consumer is a Linear).

    Args:
        layer: the layer's statistics (its pairs' references).
        modules: the model's modules by qualified name.
        index: only these units (in that order), reading only their columns; ``None``: all.
        total: return the sum.

    Raises:
        RuntimeError: no consumer has a gradient, or a consumer's weight was replaced or
            changed since the backward pass.
    """
    name = layer.info.name
    cost: Tensor | None = None  # the sum over the consumers that have a gradient
    with no_grad():
        for edge in layer.edges:
            weight, bias = layer_params(modules[edge.edge.consumer])
            if weight.grad is None:
                continue  # no gradient reached this consumer: it adds nothing
            if weight is not edge.weight:
                raise RuntimeError(
                    f"predicted_cost({name!r}): the weight of `{edge.edge.consumer}` is not "
                    "the parameter it was when GXDReset was built (replaced, e.g. by "
                    "load_state_dict(assign=True)); the inner optimizer still holds the "
                    "old one: build the optimizer and GXDReset again"
                )
            if edge.grad_version is not None and weight._version != edge.grad_version:
                raise RuntimeError(
                    f"predicted_cost({name!r}): `{edge.edge.consumer}` changed since the "
                    "last backward (an optimizer step or a reset): call it right after "
                    "backward()"
                )
            consumer = modules[edge.edge.consumer]
            reference = edge.reference if edge.mean else None
            shift = None if reference is None else shift_gradient(name, edge, bias, modules)
            groups = int(getattr(consumer, "groups", 1))
            k = edge.edge.columns_per_unit
            if is_sharded(weight):  # FSDP2: summed over the ranks (a collective)
                part = sharded_cost(consumer, weight, shift, reference, index, k)
                cost = _added(cost, part, layer.utility_ema.dtype)
                continue
            weight_grad = canonical(weight.grad, consumer)
            weight = canonical(weight, consumer)
            if index is not None and groups == 1:
                columns = unit_columns(index, k).to(weight.device)
                weight = weight.index_select(1, columns)
                weight_grad = weight_grad.index_select(1, columns)
                reference = None if reference is None else reference.index_select(0, index)
                if total and k == 1 and weight.dim() == 2:
                    part = predicted_sum(weight, weight_grad, shift, reference)
                    cost = _added(cost, part, layer.utility_ema.dtype)
                    continue
            part = predicted_cost(weight, weight_grad, shift, reference, k, groups)
            if index is not None and groups > 1:
                part = part.index_select(0, index.to(part.device))
            cost = _added(cost, part, layer.utility_ema.dtype)
    if cost is None:
        raise RuntimeError(
            f"predicted_cost({name!r}) needs the gradients of its consumers: "
            "call it after backward() and before zero_grad()"
        )
    return cost


def shift_gradient(
    name: str, edge: EdgeStats, bias: Tensor | None, modules: Mapping[str, nn.Module]
) -> Tensor:
    """``Σ_{x,pos} ∂L/∂z`` per output of a consumer ``z``: its bias gradient or, without a
    bias, what the BatchNorm that reads ``z`` passes back of a constant shift of it: nothing
    when it normalises with batch statistics, ``γ/√(σ² + ε)·∇β`` with running ones.

    Raises:
        RuntimeError: the gradient it needs is not there.
    """
    consumer = edge.edge.consumer
    if bias is not None:
        if bias.grad is None:
            raise RuntimeError(
                f"predicted_cost({name!r}) needs the bias gradient of `{consumer}` (its "
                "bias does not require grad)"
            )
        return bias.grad
    norm = cast(_BatchNorm, modules[edge.edge.norm])
    batch_statistics = norm.training or norm.running_var is None
    if batch_statistics:
        return torch.zeros(
            norm.num_features, dtype=edge.reference.dtype, device=edge.reference.device
        )
    if norm.bias is None or norm.bias.grad is None:
        raise RuntimeError(
            f"predicted_cost({name!r}) in eval mode needs the bias gradient of the "
            f"BatchNorm `{edge.edge.norm}` after `{consumer}`"
        )
    assert norm.running_var is not None
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * whole(norm.weight)  # FSDP2 shards it, not the running statistics
    return scale * whole(norm.bias.grad)


def _added(total: Tensor | None, part: Tensor, dtype: torch.dtype) -> Tensor:
    """``total + part`` in ``dtype`` (``part`` alone for the first)."""
    return part.to(dtype) if total is None else total + part.to(dtype)
