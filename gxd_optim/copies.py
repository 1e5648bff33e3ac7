"""Model copies (EMA teachers, ``AveragedModel``): mirror the wrapper's resets into them.

A copy made with ``copy.deepcopy`` (as ``torch.optim.swa_utils.AveragedModel`` does) carries
the wrapper's hooks along, but they are inert there (`gxd_optim.hooks`): the copy never
feeds the statistics. Its weights, however, average the trained model's, so right after a
reset the two disagree on the reset units. `mirror_resets` applies every reset to the copy
as well, with the same operator:

1. before the reset, each consumer of the copy gets ``W_out·r`` folded into its bias and the
   unit's outgoing weights zeroed, with the copy's own ``W_out`` and the wrapper's ``r``;
2. after it, the copy takes the unit's new incoming weights from the model (the same draw),
   and its BatchNorm entries are restored.

Then the copy reads each reset unit as the same constant the model does, and both start the
unit from the same new weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from .discovery import layer_params, unwrap_model
from .operator import reset_norm_entries_
from .tracking import fold_edge_

if TYPE_CHECKING:
    from .reset import GXDReset

__all__ = ["MirrorHandle", "mirror_resets"]


class MirrorHandle:
    """Undo `mirror_resets`: ``remove()`` unregisters both of its hooks.

    Example:
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

    Example:
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
    for name, info in opt.layers.items():
        _check_copy(named, source, (name, *info.consumers, *info.norms))

    def fold(name: str, index: Tensor) -> None:
        info = opt.layers[name]  # the layers may have been found again since
        _check_copy(named, source, (name, *info.consumers, *info.norms))
        for edge in opt._require_tracker().layers[name].edges:
            fold_edge_(edge, named[edge.edge.consumer], index)

    def take_new_weights(name: str, index: Tensor) -> None:
        with torch.no_grad():
            for mine, theirs in zip(
                layer_params(named[name]), layer_params(source[name]), strict=True
            ):
                if mine is not None and theirs is not None:
                    at = index.to(theirs.device)
                    mine.index_copy_(0, at.to(mine.device), theirs.index_select(0, at).to(mine))
        for norm in opt.layers[name].norms:
            reset_norm_entries_(cast(_BatchNorm, named[norm]), index)

    return MirrorHandle(
        [opt.register_reset_pre_hook(fold), opt.register_reset_hook(take_new_weights)]
    )


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
