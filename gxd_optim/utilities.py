"""Unit scores as pure functions of one consumer's view of a batch.

A utility function sees, for one (producer, consumer) pair and one backward pass,

* ``h``: ``[N, U, P]``, the units as the consumer reads them (``N`` samples, ``U`` units,
  ``P`` positions: spatial positions, tokens, flattened columns),
* ``grad``: ``[N, U, P]``, ``∂ℓ/∂h`` through this consumer,
* ``reference``: ``[U]``, the value ``r`` the reset would substitute,

and returns per-sample scores ``[N, U]``. GXDReset sums them over the producer's consumers,
takes the absolute value per sample, averages over samples and keeps an exponential moving
average (bias-corrected like Adam) per unit: the **utility**. Units with the lowest utility are
reset first.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["UTILITIES", "UtilityFn", "gxd", "predicted_cost"]

UtilityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``fn(h, grad, reference) -> scores``: ``[N,U,P], [N,U,P], [U] -> [N,U]``."""


def gxd(h: Tensor, grad: Tensor, reference: Tensor) -> Tensor:
    """Gradient times difference from reference, per sample.

    $$
    a_i(x) = \\sum_{p} \\frac{\\partial \\ell(x)}{\\partial h_{i,p}} \\, (h_{i,p}(x) - r_i)
    $$

    Replacing unit ``i`` by ``r_i`` changes the loss of sample ``x`` by ``-a_i(x)`` to first
    order, so ``mean_x |a_i(x)|`` is the expected functional cost of the reset.

    Example:
        >>> import torch
        >>> h = torch.tensor([[[1.0, 3.0]]]); g = torch.tensor([[[0.5, -1.0]]])
        >>> gxd(h, g, torch.tensor([1.0]))
        tensor([[-2.]])
    """
    return (grad * (h - reference[:, None])).sum(-1)


UTILITIES: dict[str, UtilityFn] = {"gxd": gxd}
"""Built-in utilities by the name ``GXDReset(utility=...)`` accepts."""


def predicted_cost(
    weight: Tensor,
    weight_grad: Tensor,
    bias_grad: Tensor | None,
    reference: Tensor | None,
    columns_per_unit: int,
) -> Tensor:
    """Predicted cost of resetting each unit, from one consumer's parameters and gradients.

    $$
    c_i = \\sum_{x,p} \\frac{\\partial L}{\\partial h_{i,p}} (r_i - h_{i,p})
        = r_i \\sum_{x,p} \\frac{\\partial L}{\\partial h_{i,p}}
          - \\sum_{x,p} \\frac{\\partial L}{\\partial h_{i,p}} h_{i,p}
    $$

    Both sums are already in the consumer's gradients. For ``z = W h + b`` (a Linear, or a
    convolution with kernel taps ``κ``), ``∇W[o,j,κ] = Σ ∂L/∂z[o] · h_j`` at the matching
    positions and ``∇b[o] = Σ ∂L/∂z[o]``, so per input column ``j``

    $$
    \\sum \\frac{\\partial L}{\\partial h_j} h_j
        = \\sum_{o,\\kappa} W[o,j,\\kappa]\\,\\nabla W[o,j,\\kappa],
    \\qquad
    \\sum \\frac{\\partial L}{\\partial h_j}
        = \\sum_{o} \\Big(\\sum_\\kappa W[o,j,\\kappa]\\Big) \\nabla b[o]
    $$

    (the second for unpadded convolutions, the only ones with a mean reference). Unit ``i``
    owns columns ``[i·k, (i+1)·k)``.

    Args:
        weight: consumer weight ``[out, in, *kernel]``.
        weight_grad: its gradient.
        bias_grad: the consumer bias's gradient (needed only with a reference).
        reference: ``r`` per unit ``[U]``, or ``None`` for the zero reference.
        columns_per_unit: ``k``.

    Returns:
        ``[U]``: the first-order change of the loss if each unit alone were reset.

    Example:
        >>> import torch
        >>> w = torch.tensor([[1.0, 2.0]]); gw = torch.tensor([[0.5, -1.0]])
        >>> predicted_cost(w, gw, torch.tensor([2.0]), torch.tensor([1.0, 0.0]), 1)
        tensor([1.5000, 2.0000])
    """
    products = (weight * weight_grad).reshape(weight.shape[0], weight.shape[1], -1)
    cost = -products.sum((0, 2))
    if reference is not None:
        assert bias_grad is not None, "a mean reference needs the consumer's bias gradient"
        per_column = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(2)
        grad_sum = per_column.t() @ bias_grad
        cost = cost + grad_sum * reference.repeat_interleave(columns_per_unit)
    return cost.reshape(-1, columns_per_unit).sum(1)
