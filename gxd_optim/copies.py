"""Model copies (EMA teachers, ``AveragedModel``): mirror the wrapper's resets into them.

A copy made with ``copy.deepcopy`` (as ``torch.optim.swa_utils.AveragedModel`` does) carries
the wrapper's hooks along, but they are inert there (`gxd_optim.hooks`): the copy never
feeds the statistics. Its weights, however, average the trained model's, so right after a
reset the two disagree on the reset units. `mirror_resets` applies every reset to the copy
as well, with the same operator (`gxd_optim.operator.apply_reset_`):

1. before the reset, the wrapper's `GXDReset.reset_plan` is noted (with its references ``r``);
2. after it, the plan is applied to the copy: each consumer gets ``W_out·r`` folded into its
   bias and the unit's outgoing weights zeroed, with the copy's own ``W_out`` and the
   wrapper's ``r``; the unit's new incoming weights are taken from the model (the same draw);
   its BatchNorm entries are restored.

Then the copy reads each reset unit as the same constant the model does, and both start the
unit from the same new weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .discovery import unwrap_model
from .operator import ResetPlan, apply_reset_

if TYPE_CHECKING:
    from .reset import GXDReset

__all__ = ["MirrorHandle", "mirror_resets"]


class MirrorHandle:
    """Undo `mirror_resets`: ``remove()`` unregisters both of its hooks.

    Examples:
        >>> import copy
        >>> from gxd_optim import GXDReset
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
        >>> opt.discover(torch.randn(2, 4))
        >>> handle = mirror_resets(opt, copy.deepcopy(model))
        >>> handle.remove()  # later resets leave the copy alone
    """

    def __init__(self, handles: list[RemovableHandle]) -> None:
        self._handles = handles

    def remove(self) -> None:
        """Stop mirroring."""
        for handle in self._handles:
            handle.remove()


def mirror_resets(opt: GXDReset, copy: nn.Module) -> MirrorHandle:
    """Apply every future reset of ``opt`` to ``copy`` too (see the module docstring).

    Args:
        opt: the wrapper, after its units are known.
        copy: a copy of ``opt.model`` with the same layer names: a ``deepcopy`` or an
            ``AveragedModel`` (its ``module`` is used).

    Returns:
        A handle whose ``remove()`` stops the mirroring.

    Raises:
        ValueError: ``copy`` is the model itself, shares its parameters, or lacks a layer the
            resets touch or holds it with another type or shape (checked again before each
            reset writes anything, since the units may have been found again).

    Examples:
        >>> import copy
        >>> from gxd_optim import GXDReset
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
        >>> opt.discover(torch.randn(2, 4))
        >>> teacher = copy.deepcopy(model)
        >>> handle = mirror_resets(opt, teacher)
        >>> opt.reset_units("0", [3])
        >>> torch.equal(teacher[0].weight[3], model[0].weight[3])
        True
        >>> float(teacher[2].weight[:, 3].detach().abs().sum())
        0.0
    """
    target = unwrap_model(getattr(copy, "module", copy) if _is_averaged(copy) else copy)
    named = dict(target.named_modules())
    source = dict(unwrap_model(opt.model).named_modules())
    if target is source[""]:
        raise ValueError("mirror_resets needs a copy of the model, not the model itself")
    theirs = {id(p) for p in source[""].parameters()}
    shared = [n for n, p in target.named_parameters() if id(p) in theirs]
    if shared:
        raise ValueError(
            f"the copy shares parameters {shared[:3]} with opt.model: mirror into a copy made "
            "with copy.deepcopy or AveragedModel"
        )
    for info in opt.layers.values():
        _check_copy(named, source, info.touched)
    plans: dict[str, ResetPlan] = {}

    def before(name: str, index: Tensor) -> None:
        plans[name] = plan = opt.reset_plan(name)  # the references before the reset
        _check_copy(named, source, plan.modules)  # the layers may have been found again

    def after(name: str, index: Tensor) -> None:
        apply_reset_(named, plans.pop(name), index, new_weights=source)

    return MirrorHandle([opt.register_reset_pre_hook(before), opt.register_reset_hook(after)])


def _check_copy(
    copy: Mapping[str, nn.Module], source: Mapping[str, nn.Module], names: Iterable[str]
) -> None:
    """Refuse a copy whose layers ``names`` are missing or differ in type or shape.

    Raises:
        ValueError: naming the first layer that does not match.
    """
    for name in names:
        mine, theirs = copy.get(name), source[name]
        if mine is None:
            raise ValueError(f"the copy has no layer `{name}`: it is not a copy of opt.model")
        shapes = [(n, tuple(t.shape)) for n, t in mine.named_parameters(recurse=False)]
        if type(mine) is not type(theirs) or shapes != [
            (n, tuple(t.shape)) for n, t in theirs.named_parameters(recurse=False)
        ]:
            raise ValueError(
                f"the copy's `{name}` ({type(mine).__name__} {shapes}) does not match the "
                f"model's: it is not a copy of opt.model"
            )


def _is_averaged(model: nn.Module) -> bool:
    return isinstance(model, torch.optim.swa_utils.AveragedModel)
