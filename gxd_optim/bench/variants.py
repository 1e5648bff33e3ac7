r"""Variants of GXD the cost benchmark can compare with the built-in criteria, by name.

A variant is a custom criterion ``fn(h, grad, reference) -> [N, U]`` (see
`gxd_optim.utilities.UtilityFn`) that ``GXDReset(utility=fn)`` accepts; the benchmark runs it
under its name here. None of them is a library criterion: they are what was tried.

``gxd_batch`` aggregates over the batch before the absolute value. Resetting unit $i$ changes
the mean loss of a batch $B$ by, to first order,

$$
\Delta L_B \approx -\frac{1}{|B|}\sum_{x \in B} a_i(x),
\qquad a_i(x) = \sum_p \frac{\partial \ell(x)}{\partial h_{i,p}} (h_{i,p}(x) - r_i),
$$

so $|\operatorname{mean}_x a_i(x)|$ is the first-order size of the change of the *batch*
loss, while GXD's $\operatorname{mean}_x |a_i(x)|$ is the size of the change per sample. By the
triangle inequality the second is never smaller; they differ where per-sample costs of
opposite sign cancel. The score of every sample is the batch mean, so the wrapper's per-sample
absolute value and mean give $|\operatorname{mean}_x a_i(x)|$ (summed over consumers first).

``gxd_fisher`` adds the second-order term where the first-order one vanishes (at a minimum of
the batch loss $\operatorname{mean}_x a_i(x) \approx 0$ for every unit). With the empirical
Fisher in place of the Hessian of the per-sample loss with respect to $h_i$,
$\nabla^2_h \ell(x) \approx \nabla_h \ell(x) \nabla_h \ell(x)^\top$, replacing $h_i$ by
$r_i$ changes the loss of sample $x$ by

$$
\Delta\ell(x) \approx -a_i(x) + \tfrac12 a_i(x)^2,
$$

and the batch loss by the mean of that over the batch; the score of every sample is that
mean. The wrapper's gradients are those of the batch's *mean* loss, $\frac1N$ of the
per-sample ones, so the score multiplies the attribution by the batch size $N$ first (it
assumes a mean-reduced loss, as every benchmark problem has).

Examples:
    >>> import torch
    >>> h = torch.tensor([[[1.0]], [[3.0]]]); g = torch.tensor([[[1.0]], [[1.0]]])
    >>> gxd_batch(h, g, torch.tensor([2.0]))  # per sample -1 and +1: they cancel
    tensor([[0.],
            [0.]])
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from torch import Tensor

from ..utilities import UtilityFn, gxd

__all__ = ["NAMES", "SAMPLED", "VARIANTS", "gxd_batch", "gxd_fisher", "wrapper_options"]


def gxd_batch(h: Tensor, grad: Tensor, reference: Tensor) -> Tensor:
    """GXD's attribution averaged over the batch, given to every sample: ``[N, U]``."""
    scores = gxd(h, grad, reference)
    return scores.mean(0, keepdim=True).expand_as(scores)


def gxd_fisher(h: Tensor, grad: Tensor, reference: Tensor) -> Tensor:
    """The batch's second-order cost (empirical Fisher), given to every sample: ``[N, U]``.

    Examples:
        >>> import torch
        >>> h = torch.tensor([[[1.0]], [[3.0]]]); g = torch.tensor([[[0.5]], [[0.5]]])
        >>> gxd_fisher(h, g, torch.tensor([2.0]))  # a = ∓1 per sample: first order cancels
        tensor([[0.5000],
                [0.5000]])
    """
    a = gxd(h, grad, reference) * h.shape[0]
    cost = -a + 0.5 * a * a
    return cost.mean(0, keepdim=True).expand_as(cost)


VARIANTS: Mapping[str, UtilityFn] = MappingProxyType(
    {"gxd_batch": gxd_batch, "gxd_fisher": gxd_fisher}
)
"""The variants by the name the benchmark reports them under."""

SAMPLED: Mapping[str, int] = MappingProxyType({"gxd_every4": 4, "gxd_every16": 16})
"""GXD with ``track_every=k`` by name: the statistics of one scored batch in ``k``."""

NAMES: tuple[str, ...] = (*VARIANTS, *SAMPLED)
"""Every name the cost benchmark runs besides the library's criteria."""


def wrapper_options(name: str) -> dict[str, Any]:
    """The ``GXDReset`` options that run a criterion, a variant or a sampled GXD by name.

    Examples:
        >>> wrapper_options("gxd_every4"), wrapper_options("contribution")
        ({'utility': 'gxd', 'track_every': 4}, {'utility': 'contribution'})
    """
    if name in SAMPLED:
        return {"utility": "gxd", "track_every": SAMPLED[name]}
    return {"utility": VARIANTS.get(name, name)}
