"""The reduction kernels: ``(h, ∂ℓ/∂h)`` of one consumer to per-unit sums, as pure functions.

Per backward pass and consumer the hot path reads the activation and its gradient once, in
chunks with one temporary each (see `make_plan`): each chunk of ``h`` gives ``Σ_x h`` (for a mean
reference) and then, as ``h − r`` times the gradient while it is in cache, per-sample
``a(x) = Σ_pos g·(h − r)`` (`chunk_scores`). The knobs of this path are `Limits`; every
choice of them gives the same statistics up to the order of additions (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_LIMITS",
    "Layout",
    "Limits",
    "Plan",
    "as_units",
    "chunk_scores",
    "finite",
    "layout",
    "make_plan",
    "token_ones",
    "token_sums",
]


@dataclass(frozen=True)
class Limits:
    """The knobs of the reduction; none changes the statistics, only their speed.

    Attributes:
        chunk: elements per chunk of a mean-reference reduction: its one temporary.
        chunk_zero: elements per chunk of a zero-reference reduction (see `make_plan`).
        defer: consumer inputs with at most this many elements are reduced at the commit,
            back to back (between the large kernels of a backward pass the interpreter runs
            from a cold cache; small inputs cost little memory to keep); -1 reduces all at once.
        plans: input shapes a pair keeps plans for (varying sequence lengths start over).
        host_reads: whether the commit reads its finiteness check on the host when every
            statistic lives on the CPU, where a read waits for nothing (off: the path a GPU
            takes, which never waits).
        flat_commits: whether a commit in which every layer and pair saw data folds whole
            buffers at once (off: segment by segment, as when some saw none).
    """

    chunk: int = 1 << 19
    chunk_zero: int = 1 << 21
    defer: int = 1 << 15
    plans: int = 64
    host_reads: bool = True
    flat_commits: bool = True


DEFAULT_LIMITS = Limits()
"""The limits a new tracker takes."""


def finite(squares: list[Tensor]) -> Tensor:
    """A 0-d bool on the first tensor's device: whether every batch mean is finite and small
    enough that its square does not overflow (in float32, below ``1.8e19``), given each
    tensor's sum of squares.

    Larger means come from an overflowing batch (a loss of inf, inputs scaled by 1e20):
    folded into a running mean, one would make every reset fold an absurd ``W·r`` into a
    bias for hundreds of steps. (One sum of squares per tensor, where ``isfinite`` over
    every element takes nine kernels on a CPU.)
    """
    total = squares[0]
    for more in squares[1:]:
        total = total + more.to(total.device)
    return torch.isfinite(total)


Layout = tuple[tuple[int, ...], tuple[int, ...], int]  # view shape, positions, unit dimension


@lru_cache(maxsize=1024)
def layout(shape: torch.Size, units: int, linear: bool) -> Layout:
    """The fewest dimensions that keep a consumer input's samples, units and positions apart.

    Returns the shape to view the input as, its position dimensions (summed per sample) and
    its unit dimension: ``[N, U]`` for a flat Linear input, ``[N, U, k]`` for a flatten's
    columns per unit, ``[N, T, U]`` for tokens, ``[N, T, U, k]`` for tokens with columns per
    unit, and a convolution's own ``[N, U, *spatial]`` (no view, so a channels-last input is
    not copied). (Cached: a model feeds few distinct shapes.)
    """
    n, numel = shape[0], shape.numel()
    if not linear:
        return tuple(shape), tuple(range(2, len(shape))), 1
    k = shape[-1] // units
    pre = numel // (n * shape[-1]) if n else 1
    if pre == 1:
        return ((n, units), (), 1) if k == 1 else ((n, units, k), (2,), 1)
    if k == 1:
        return (n, pre, units), (1,), 2
    return (n, pre, units, k), (1, 3), 2


@dataclass(frozen=True)
class Plan:
    """How one pair reduces its inputs of one shape: built once per shape by `make_plan`.

    Attributes:
        view: the shape to view the input as (`layout`), or ``None`` where its own serves.
        positions: the dimensions summed per sample.
        others: every dimension but the units' (``Σ h`` sums them).
        reference: the pair's ``r``, shaped to broadcast over the viewed input (a view of
            its statistics, so it follows their in-place updates).
        ones: the row ``[1, T]`` that sums tokens (`token_sums`), for ``[N, T, U]`` only.
        rows: samples per chunk (at least the batch's samples where one chunk holds it all).
        count: positions per unit, ``h.numel() / U``: what ``Σ h`` sums over.
    """

    view: tuple[int, ...] | None
    positions: tuple[int, ...]
    others: tuple[int, ...]
    reference: Tensor
    ones: Tensor | None
    rows: int
    count: int


def make_plan(
    shape: torch.Size, reference: Tensor, linear: bool, mean: bool, limits: Limits = DEFAULT_LIMITS
) -> Plan:
    """The `Plan` of a pair's inputs of ``shape``, given its ``r`` (``[U]``), whether its
    consumer is a Linear and whether ``r`` is a running mean (else zero).

    A mean reference reads each chunk of ``h`` twice (its sum, then ``h − r``) and its
    temporary twice (the product, a sum), so small chunks keep both in cache. A zero
    reference writes one product that one sum reads: fewer, larger kernels are faster, and its
    pairs are mostly zero-padded convolutions, whose large inputs the backward pass reaches
    last, after autograd freed most of what it saved.
    """
    units = reference.numel()
    view, positions, unit_dim = layout(shape, units, linear)
    dims = len(view)
    samples, numel = shape[0], shape.numel()
    limit = limits.chunk if mean else limits.chunk_zero
    return Plan(
        view=None if view == tuple(shape) else view,
        positions=positions,
        others=tuple(d for d in range(dims) if d != unit_dim),
        reference=reference.view(units, *(1,) * (dims - 1 - unit_dim)),
        ones=reference.new_ones(1, view[1]) if positions == (1,) else None,
        rows=max(1, limit * samples // max(1, numel)),
        count=numel // units,
    )


def as_units(t: Tensor, units: int, linear: bool) -> Tensor:
    """View a consumer input as ``[N, pre, U, k·post]`` (a view for contiguous layouts)."""
    if linear:
        return t.reshape(t.shape[0], -1, units, t.shape[-1] // units)
    return t.reshape(t.shape[0], 1, units, -1)


def chunk_scores(
    h: Tensor, g: Tensor, plan: Plan, mean: bool, dtype: torch.dtype, ones: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Per-sample ``a = Σ_pos ∂ℓ/∂h · (h − r)`` of a chunk viewed as its `Plan` says.

    Args:
        h: the chunk of the consumer's input.
        g: its gradient, shaped as ``h``.
        plan: the pair's plan for the input's shape.
        mean: whether ``r`` is a running mean, whose ``Σ_x h`` the statistics need.
        dtype: the statistics' dtype.
        ones: the row of ones that sums tokens as a product (`token_sums`), where that
            keeps full precision; ``None`` for plain sums.

    Returns:
        ``a`` (``[rows, U]`` or, without positions, the chunk-sized temporary itself) and, for
        a mean reference, the chunk's ``Σ h`` per unit (``None`` otherwise), read just before
        ``h − r``, so that the chunk is in cache for the second read.
    """
    h_sum: Tensor | None = None
    if mean:
        h_sum = token_sums(h, ones).sum(0) if ones is not None else h.sum(plan.others, dtype=dtype)
    product = (h - plan.reference).mul_(g) if mean else h * g
    if ones is not None:
        return token_sums(product, ones), h_sum
    return (product.sum(plan.positions) if plan.positions else product), h_sum


def token_ones(plan: Plan, h: Tensor, dtype: torch.dtype) -> Tensor | None:
    """The plan's row of ones where sums over tokens are matrix products, else ``None``.

    Products where they keep full precision and are worth it: a CPU input in the statistics'
    dtype, float64 or float32 at full-precision products (not the bfloat16 that
    ``torch.set_float32_matmul_precision`` may allow).
    """
    if plan.ones is None or h.dtype != dtype or h.device.type != "cpu":
        return None
    full = h.dtype == torch.float64 or torch.get_float32_matmul_precision() == "highest"
    return plan.ones if full else None


def token_sums(t: Tensor, ones: Tensor) -> Tensor:
    """``t.sum(1)`` of a ``[rows, T, U]`` tensor, as a product with a row of ones ``[1, T]``.

    The matrix product reads each element once; PyTorch's CPU reduction over a middle
    dimension took about twice as long on the inputs measured.
    """
    return torch.matmul(ones, t).squeeze(1)
