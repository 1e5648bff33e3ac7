"""Mixed precision: how `GXDReset.step` takes part in ``torch.amp.GradScaler``.

`GXDReset` declares ``_step_supports_amp_scaling``. ``scaler.step(opt)`` then calls
``opt.step()`` on every iteration, skipped or not, after setting two attributes on the
optimizer: ``found_inf`` (non-zero when a gradient is inf or NaN) and ``grad_scale`` (the loss
scale ``S``, or ``None`` when the user already called ``scaler.unscale_(opt)``). The wrapper
then does what the scaler would do for a plain optimizer, and one thing more:

- ``found_inf``: the step is skipped. The inner optimizer does not move, nothing is committed
  or reset, and the statistics of the skipped backward passes are dropped.
- otherwise the gradients are divided by ``S`` (unless ``unscale_`` already did) and so are the
  pending statistics, by ``S**p`` where ``p`` is the criterion's degree in the gradient
  (`gradient_degree`). The hooked gradients carried the loss scale; the committed statistics
  do not, so a dynamic scale (growth, backoff) never mixes scales inside the EMAs.

After ``scaler.unscale_(opt)`` the scaler no longer hands ``S`` to the step, so the wrapper
reads it from ``GXDReset(..., grad_scaler=scaler)`` with the public ``scaler.get_scale()``
(the scale of the backward passes being stepped: ``update()`` only changes it afterwards).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from .tracking import Tracker
from .utilities import Criterion

__all__ = ["gradient_degree", "prepare_step", "unscale_grads_", "unscale_pending_"]

_GRADIENT_FREE = frozenset({"contribution", "adaptable_contribution", "activation"})
"""Built-in criteria whose scores do not read the gradient."""


def gradient_degree(criterion: Criterion) -> int:
    """``p`` such that scaling the loss by ``λ`` scales the criterion's scores by ``λ**p``.

    GXD (``∂ℓ/∂h · (h − r)``), the gradient criterion and custom utilities (documented to be
    linear in ``grad``) have ``p = 1``; the activation and contribution criteria and the random
    one do not read the gradient (``p = 0``).

    Examples:
        >>> from gxd_optim.utilities import CRITERIA
        >>> gradient_degree(CRITERIA["gxd"]), gradient_degree(CRITERIA["activation"])
        (1, 0)
    """
    if criterion.reads == "none" or criterion.name in _GRADIENT_FREE:
        return 0
    return 1


def unscale_grads_(optimizer: torch.optim.Optimizer, grad_scale: Tensor) -> None:
    """Divide every gradient the optimizer holds by ``grad_scale``, in place.

    Multiplies by ``1/S`` computed as ``torch.amp.GradScaler`` does (in float64, then float32),
    one ``_foreach`` kernel per device and dtype; sparse gradients have their values scaled.

    Examples:
        >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.full((2,), 8.0)
        >>> unscale_grads_(torch.optim.SGD([p], lr=0.1), torch.tensor(4.0))
        >>> p.grad
        tensor([2., 2.])
    """
    inverse = grad_scale.double().reciprocal().float()
    grouped: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
    for group in optimizer.param_groups:
        for param in group["params"]:
            grad = param.grad
            if grad is None:
                continue
            values = grad._values() if grad.is_sparse else grad
            grouped[(values.device, values.dtype)].append(values)
    with torch.no_grad():
        for (device, _), grads in grouped.items():
            torch._foreach_mul_(grads, inverse.to(device))


def unscale_pending_(tracker: Tracker, grad_scale: Tensor | float) -> None:
    """Divide the tracker's gradient-dependent pending sums by ``grad_scale ** p``.

    ``p`` is `gradient_degree` of the tracker's criterion; with ``p = 0`` nothing changes.
    The sums of ``h`` (running means) never depend on the gradient.

    Examples:
        >>> from torch import nn
        >>> from gxd_optim import GXDReset
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
        >>> model(torch.randn(16, 4)).sum().mul(1024.0).backward()  # a loss scaled by 1024
        >>> tracker = opt.tracker
        >>> unscale_pending_(tracker, 1024.0)
        >>> bool(tracker.layers["0"].pending_abs.isfinite().all())
        True
    """
    power = gradient_degree(tracker.criterion)
    if power == 0:
        return
    tracker.flush()  # small inputs wait for the commit: reduce them now, with the scale
    with torch.no_grad():
        for layer in tracker.layers.values():
            scale = torch.as_tensor(grad_scale, dtype=torch.float64).to(layer.pending_abs.device)
            inverse = scale.pow(power).reciprocal()
            layer.pending_abs.mul_(inverse.to(layer.pending_abs.dtype))
            for batch in layer.open_batches:
                if batch.acc is not None:
                    batch.acc = batch.acc * inverse.to(batch.acc.dtype)


def prepare_step(
    optimizer: torch.optim.Optimizer,
    found_inf: Tensor,
    grad_scale: Tensor | None,
    grad_scaler: torch.amp.GradScaler | None,
    tracker: Tracker | None,
) -> bool:
    """Inside ``GradScaler.step(opt)``: skip on inf/NaN gradients, else unscale the gradients
    (unless ``scaler.unscale_`` already did) and the tracker's pending statistics.

    Args:
        optimizer: the inner optimizer.
        found_inf: what GradScaler set on the wrapper (``opt.found_inf``).
        grad_scale: the scale GradScaler handed over (``opt.grad_scale``); ``None`` after
            ``scaler.unscale_(opt)``, when the gradients are unscaled already.
        grad_scaler: the scaler given to the wrapper (``grad_scaler=``), if any.
        tracker: the wrapper's tracker, if the units are known.

    Returns:
        Whether the step goes ahead.

    Raises:
        RuntimeError: ``scaler.unscale_(opt)`` was called but the wrapper has no
            ``grad_scaler`` to read the scale its statistics carry from.
    """
    if bool(found_inf):
        if tracker is not None:
            tracker.discard()
        return False
    scale: Tensor | float
    if grad_scale is not None:
        unscale_grads_(optimizer, grad_scale)
        scale = grad_scale
    elif grad_scaler is not None:
        scale = grad_scaler.get_scale()  # unscale_ already divided the gradients
    else:
        raise RuntimeError(
            "scaler.unscale_(opt) was called, so GradScaler does not tell GXDReset the loss "
            "scale its statistics carry: pass it, GXDReset(..., grad_scaler=scaler)"
        )
    if tracker is not None:
        unscale_pending_(tracker, scale)
    return True
