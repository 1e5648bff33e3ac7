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

__all__ = ["UTILITIES", "UtilityFn", "gxd"]

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
