"""Unit scores (the reset criteria) as pure functions, and the table that names them.

Every criterion ranks the units of one producer layer; the units with the lowest utility are
reset first. A score function sees one backward pass and returns per-sample scores ``[N, U]``;
GXDReset sums them over the producer's consumers, takes the absolute value per sample,
averages over samples and keeps an exponential moving average per unit (bias-corrected like
Adam): the **utility**. The tensors a score can read:

* ``h``: ``[N, U, P]``, the units as a consumer reads them (``N`` samples, ``U`` units, ``P``
  positions: spatial positions, tokens, flattened columns),
* ``grad``: ``[N, U, P]``, ``∂ℓ/∂h`` through this consumer,
* ``reference``: ``[U]``, the value ``r`` the reset would substitute; ``mean``: ``[U]``, the
  running mean of ``h``,
* the consumer's outgoing weights and the producer's incoming weights,
* ``output_grad``: ``[N, U, P]``, ``∂ℓ/∂z`` for the producer's output ``z`` (before its
  activation), for the gradient criterion.

Scores are computed per consumer from the current weights, so the weight factors of
`contribution` and `adaptable_contribution` enter the moving average step by step, as in
continual backprop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "CRITERIA",
    "UTILITIES",
    "ConsumerView",
    "Criterion",
    "UtilityFn",
    "activation",
    "adaptable_contribution",
    "check_scores",
    "contribution",
    "gradient",
    "gxd",
    "layer_normalised",
    "predicted_cost",
    "predicted_sum",
    "random_scores",
]

_TINY = 1e-30

UtilityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""A custom criterion ``fn(h, grad, reference) -> scores``: ``[N,U,P], [N,U,P], [U] -> [N,U]``."""


def gxd(h: Tensor, grad: Tensor, reference: Tensor) -> Tensor:
    """Gradient times difference from reference, per sample.

    $$
    a_i(x) = \\sum_{p} \\frac{\\partial \\ell(x)}{\\partial h_{i,p}} \\, (h_{i,p}(x) - r_i)
    $$

    Replacing unit ``i`` by ``r_i`` changes the loss of sample ``x`` by ``-a_i(x)`` to first
    order, so ``mean_x |a_i(x)|`` is the expected functional cost of the reset.

    Examples:
        >>> h = torch.tensor([[[1.0, 3.0]]]); g = torch.tensor([[[0.5, -1.0]]])
        >>> gxd(h, g, torch.tensor([1.0]))
        tensor([[-2.]])
    """
    return (grad * (h - reference[:, None])).sum(-1)


def contribution(h: Tensor, out_weight: Tensor) -> Tensor:
    """Continual backprop's contribution utility, per sample.

    $$
    s_i(x) = \\operatorname{mean}_p |h_{i,p}(x)| \\cdot \\sum_{o} |W^{out}_{o,i}|
    $$

    Args:
        h: ``[N, U, P]`` the units as the consumer reads them.
        out_weight: ``[U]``, ``Σ|W_out|`` over the consumer's weights that read each unit.

    Examples:
        >>> h = torch.tensor([[[1.0, -3.0], [0.0, 2.0]]])
        >>> contribution(h, torch.tensor([0.5, 2.0]))
        tensor([[1., 2.]])
    """
    return h.abs().mean(-1) * out_weight


def adaptable_contribution(
    h: Tensor, mean: Tensor, out_weight: Tensor, in_weight: Tensor
) -> Tensor:
    """Continual backprop's adaptable contribution utility, per sample.

    $$
    s_i(x) = \\frac{\\operatorname{mean}_p |h_{i,p}(x) - \\bar h_i| \\cdot
        \\sum_{o} |W^{out}_{o,i}|}{\\sum_{j} |W^{in}_{i,j}|}
    $$

    with ``h̄`` the running mean of the unit.

    Args:
        h: ``[N, U, P]`` the units as the consumer reads them.
        mean: ``[U]`` running mean of each unit.
        out_weight: ``[U]``, ``Σ|W_out|`` over the consumer's weights that read each unit.
        in_weight: ``[U]``, ``Σ|W_in|`` over the producer's weights of each unit.

    Examples:
        >>> h = torch.tensor([[[1.0, 3.0]]])
        >>> adaptable_contribution(h, torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([4.0]))
        tensor([[0.5000]])
    """
    return (h - mean[:, None]).abs().mean(-1) * out_weight / in_weight.clamp_min(_TINY)


def activation(h: Tensor) -> Tensor:
    """ReDo's activation score, per sample: ``mean_p |h_{i,p}(x)|``.

    Reported divided by the layer's mean (`layer_normalised`), as ReDo thresholds it.

    Examples:
        >>> activation(torch.tensor([[[1.0, -3.0], [0.0, 0.0]]]))
        tensor([[2., 0.]])
    """
    return h.abs().mean(-1)


def gradient(output_grad: Tensor) -> Tensor:
    """GraMa's gradient-magnitude score, per sample: ``mean_p |∂ℓ/∂z_{i,p}(x)|``.

    ``z`` is the producer's output before any activation, so a unit that a ReLU has switched
    off for every sample scores 0. Reported divided by the layer's mean (`layer_normalised`).

    Examples:
        >>> gradient(torch.tensor([[[0.5, -1.5], [0.0, 0.0]]]))
        tensor([[1., 0.]])
    """
    return output_grad.abs().mean(-1)


def random_scores(units: int, seed: int, step: int, layer: int) -> Tensor:
    """Uniform scores in ``[0, 1)``, a pure function of ``(seed, step, layer)``.

    The random criterion draws new scores at every selection; deriving them from the step
    keeps them identical on every process and independent of how often they are read.

    Examples:
        >>> a, b = random_scores(4, 0, 7, 1), random_scores(4, 0, 7, 1)
        >>> bool((a == b).all()), a.shape
        (True, torch.Size([4]))
    """
    generator = torch.Generator().manual_seed(((seed * 1_000_003) + step) * 1_009 + layer)
    return torch.rand(units, generator=generator, dtype=torch.float64)


def layer_normalised(utility: Tensor) -> Tensor:
    """Utilities divided by their layer's mean, as ReDo and GraMa compare them to ``τ``.

    Examples:
        >>> layer_normalised(torch.tensor([1.0, 2.0, 3.0]))
        tensor([0.5000, 1.0000, 1.5000])
    """
    return utility / utility.mean().clamp_min(_TINY)


@dataclass(frozen=True)
class ConsumerView:
    """What a score function sees of one (producer, consumer) pair in one backward pass.

    Attributes:
        h: ``[N, U, P]`` the units as the consumer reads them.
        grad: ``[N, U, P]`` ``∂ℓ/∂h`` through this consumer.
        reference: ``[U]`` the value the reset substitutes.
        mean: ``[U]`` the running mean of ``h``.
        consumer_weight: the consumer's weight ``[out, U·k, *kernel]``.
        producer_weight: the producer's weight ``[U, in, *kernel]``.

    Examples:
        >>> h = torch.ones(1, 2, 1); w_out = torch.tensor([[1.0, -2.0]]); w_in = torch.ones(2, 3)
        >>> view = ConsumerView(h, h, torch.zeros(2), torch.zeros(2), w_out, w_in)
        >>> view.out_weight(), view.in_weight()
        (tensor([1., 2.]), tensor([3., 3.]))
    """

    h: Tensor
    grad: Tensor
    reference: Tensor
    mean: Tensor
    consumer_weight: Tensor
    producer_weight: Tensor

    def out_weight(self) -> Tensor:
        """``[U]``: ``Σ|W_out|`` over the consumer weights that read each unit."""
        w = self.consumer_weight.detach()
        return w.abs().reshape(w.shape[0], self.h.shape[1], -1).sum((0, 2)).to(self.h.dtype)

    def in_weight(self) -> Tensor:
        """``[U]``: ``Σ|W_in|`` over the producer weights of each unit."""
        w = self.producer_weight.detach()
        return w.abs().reshape(w.shape[0], -1).sum(1).to(self.h.dtype)


@dataclass(frozen=True)
class Criterion:
    """How one criterion is computed.

    Attributes:
        name: the name ``GXDReset(utility=...)`` accepts.
        reads: ``"consumer"`` (scores from each consumer's `ConsumerView`), ``"output"``
            (scores from the producer's output gradient) or ``"none"`` (random).
        score: ``ConsumerView -> [N, U]`` for ``"consumer"``, ``[N, U, P] -> [N, U]`` for
            ``"output"``; ``None`` for ``"none"``.
        normalised: whether utilities are reported divided by their layer's mean.
        streamed: whether its score is GXD's ``|Σ_pos g·(h − r)|``, which the tracker
            reduces without building a `ConsumerView` (`gxd_optim.tracking.kernels`).
        custom: whether it is a user's callable, whose scores are checked before they count.

    Examples:
        >>> CRITERIA["activation"].reads, CRITERIA["activation"].normalised
        ('consumer', True)
        >>> Criterion.of(gxd).custom
        True
    """

    name: str
    reads: Literal["consumer", "output", "none"]
    score: Callable[..., Tensor] | None
    normalised: bool = False
    streamed: bool = False
    custom: bool = False

    @staticmethod
    def of(fn: UtilityFn) -> Criterion:
        """A criterion from a user's ``fn(h, grad, reference) -> [N, U]``."""
        name = getattr(fn, "__qualname__", type(fn).__name__)
        return Criterion(name, "consumer", partial(_on_view, fn), custom=True)


def check_scores(name: str, scores: object, shape: tuple[int, int], values: bool) -> None:
    """Refuse a custom utility's output that is not per-sample scores of ``shape`` ``[N, U]``
    (and, with ``values``, not all finite: that reads the values).

    Raises:
        ValueError: naming the utility and what it returned.

    Examples:
        >>> try:
        ...     check_scores("mine", torch.ones(4), (2, 4), values=True)
        ... except ValueError as error:
        ...     print(str(error)[:43])
        utility=mine returned a tensor of shape [4]
    """
    what = (
        f"a tensor of shape {list(scores.shape)}"
        if isinstance(scores, Tensor)
        else type(scores).__name__
    )
    if not isinstance(scores, Tensor) or tuple(scores.shape) != shape:
        raise ValueError(
            f"utility={name} returned {what}: it must return per-sample scores of shape "
            f"[N, U] = {list(shape)} (fn(h, grad, reference) with h and grad [N, U, P], "
            "reference [U])"
        )
    if values and not bool(torch.isfinite(scores).all()):
        raise ValueError(f"utility={name} returned scores that are not all finite")


def probe(fn: UtilityFn) -> None:
    """Call a custom utility on a small random pair and check what it returns.

    Raises:
        ValueError: it fails, or returns anything but finite scores ``[N, U]``.
    """
    name = getattr(fn, "__qualname__", type(fn).__name__)
    g = torch.Generator().manual_seed(0)
    h, grad = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    try:
        with torch.no_grad():
            scores = fn(h, grad, torch.zeros(3))
    except Exception as error:
        raise ValueError(
            f"utility={name} failed on a probe with h and grad of shape [2, 3, 4] and "
            f"reference [3]: {error!r}"
        ) from error
    check_scores(name, scores, (2, 3), values=True)


def _on_view(fn: UtilityFn, view: ConsumerView) -> Tensor:
    return fn(view.h, view.grad, view.reference)


def _contribution(view: ConsumerView) -> Tensor:
    return contribution(view.h, view.out_weight())


def _adaptable_contribution(view: ConsumerView) -> Tensor:
    return adaptable_contribution(view.h, view.mean, view.out_weight(), view.in_weight())


def _activation(view: ConsumerView) -> Tensor:
    return activation(view.h)


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("gxd", "consumer", partial(_on_view, gxd), streamed=True),
        Criterion("contribution", "consumer", _contribution),
        Criterion("adaptable_contribution", "consumer", _adaptable_contribution),
        Criterion("activation", "consumer", _activation, normalised=True),
        Criterion("gradient", "output", gradient, normalised=True),
        Criterion("random", "none", None),
    )
}
"""The built-in criteria by name."""

UTILITIES: tuple[str, ...] = tuple(CRITERIA)
"""Names accepted by ``GXDReset(utility=...)``: gxd and the baselines."""


def predicted_sum(
    weight: Tensor, weight_grad: Tensor, bias_grad: Tensor | None, reference: Tensor | None
) -> Tensor:
    """``Σ_i c_i`` of `predicted_cost` over the columns of a Linear consumer given (``k = 1``):

    $$
    \\sum_i c_i = \\sum_i r_i \\sum_o W[o,i]\\,\\nabla b[o] - \\sum_{o,i} W[o,i]\\,\\nabla W[o,i]
    = -\\sum_{o,i} W[o,i]\\,\\big(\\nabla W[o,i] - \\nabla b[o]\\,r_i\\big)
    $$

    (the last form in two kernels).

    Args:
        weight: the consumer's weight columns ``[out, m]``.
        weight_grad: their gradient.
        bias_grad: the consumer's bias gradient (needed only with a reference).
        reference: ``r`` of the ``m`` units, or ``None`` for the zero reference.

    Returns:
        A 0-d tensor.

    Examples:
        >>> w, g, b, r = torch.randn(3, 2), torch.randn(3, 2), torch.randn(3), torch.randn(2)
        >>> torch.allclose(predicted_sum(w, g, b, r), predicted_cost(w, g, b, r, 1).sum())
        True
    """
    if reference is None:
        return torch.dot(weight.flatten(), weight_grad.flatten()).neg()
    assert bias_grad is not None, "a mean reference needs the consumer's bias gradient"
    shifted = torch.addcmul(weight_grad, bias_grad[:, None], reference, value=-1)  # ∇W − ∇b·rᵀ
    return torch.dot(weight.flatten().to(shifted.dtype), shifted.flatten()).neg()


def predicted_cost(
    weight: Tensor,
    weight_grad: Tensor,
    bias_grad: Tensor | None,
    reference: Tensor | None,
    columns_per_unit: int,
    groups: int = 1,
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
    owns columns ``[i·k, (i+1)·k)``. In a grouped convolution, input channel ``j`` is read
    only by the outputs of its group, on weight column ``j mod (in / groups)``.

    Args:
        weight: consumer weight ``[out, in, *kernel]``.
        weight_grad: its gradient.
        bias_grad: ``Σ ∂L/∂z[o]``: the consumer bias's gradient (needed only with a
            reference; for a consumer without bias, what a BatchNorm after it passes back).
        reference: ``r`` per unit ``[U]``, or ``None`` for the zero reference.
        columns_per_unit: ``k``.
        groups: the consumer's groups (a grouped convolution reads ``U = groups · in``).

    Returns:
        ``[U]``: the first-order change of the loss if each unit alone were reset.

    Examples:
        >>> import torch
        >>> w = torch.tensor([[1.0, 2.0]]); gw = torch.tensor([[0.5, -1.0]])
        >>> predicted_cost(w, gw, torch.tensor([2.0]), torch.tensor([1.0, 0.0]), 1)
        tensor([1.5000, 2.0000])
    """
    if groups > 1:
        blocks = (groups, weight.shape[0] // groups, weight.shape[1], -1)
        w, g = weight.reshape(blocks), weight_grad.reshape(blocks)
        cost = -(w * g).sum((1, 3)).reshape(-1)
        if reference is not None:
            assert bias_grad is not None, "a mean reference needs the consumer's bias gradient"
            b = bias_grad.reshape(groups, -1)
            cost = cost + torch.einsum("goj,go->gj", w.sum(3), b).reshape(-1) * reference
        return cost
    if weight.dim() == 2 and columns_per_unit == 1:  # a Linear: the sums below, in fewer kernels
        cost = -(weight * weight_grad).sum(0)
        if reference is None:
            return cost
        assert bias_grad is not None, "a mean reference needs the consumer's bias gradient"
        return cost + weight.t().mv(bias_grad) * reference
    products = (weight * weight_grad).reshape(weight.shape[0], weight.shape[1], -1)
    cost = -products.sum((0, 2))
    if reference is not None:
        assert bias_grad is not None, "a mean reference needs the consumer's bias gradient"
        per_column = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(2)
        grad_sum = per_column.t() @ bias_grad
        cost = cost + grad_sum * reference.repeat_interleave(columns_per_unit)
    return cost.reshape(-1, columns_per_unit).sum(1)
