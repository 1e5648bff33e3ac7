"""The wrapper's hold on its model: which units it tracks, and what happens when that changes.

A `ModelBinding` goes through these states:

- *waiting*: the units are not known yet; `gxd_optim.lazy` finds them at the first training
  pass (or `discover` does, from an example batch);
- *tracking*: a `gxd_optim.tracking.Tracker` collects statistics of the eligible layers; a
  `gxd_optim.watch.ModelWatch` notices a layer replaced, added or removed;
- *retired*: the model changed; the units are found again at the next training pass, and the
  layers that did not change keep their statistics;
- *closed*: every hook is gone; the wrapper only steps its inner optimizer.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import distributed
from .config import Config, optimizer_params
from .discovery import (
    NOT_CALLED,
    Checks,
    LayerInfo,
    analyse,
    discover,
    layer_params,
    layer_tensors,
    producer_modules,
    unwrap_model,
)
from .hooks import OwnedHook
from .lazy import LazyDiscovery
from .sandbox import untouched
from .selection import BudgetSelector
from .tracking import Tracker
from .watch import ModelWatch, claim, release

__all__ = ["ModelBinding", "written_params"]

_LOG = logging.getLogger("gxd_optim")
Found = tuple[dict[str, LayerInfo], dict[str, str]]


class ModelBinding:
    """What the wrapper knows of its model's units, and the hooks that keep it current.

    Args:
        model: the model (wrappers such as DDP and ``torch.compile`` are looked through).
        optimizer: the inner optimizer (its parameters are the ones a reset may write).
        config: the wrapper's settings.
        exclude: layers never to touch.
        selector: the wrapper's selector; layers that change lose their budgets.
        owner: the wrapper, which claims the parameters its resets write.

    Attributes:
        tracker: the tracker while tracking, else ``None``.
        layers: eligible producers (empty until the units are found).
        skipped: every other Linear/Conv layer, with the reason.
        closed: whether `close` was called.
        phase: optimizer steps since the last one whose statistics were collected, modulo
            ``track_every`` (0: the next step's are; see `advance`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: Config,
        exclude: tuple[str, ...],
        selector: BudgetSelector,
        owner: object,
    ) -> None:
        self.model, self.optimizer, self.config = model, optimizer, config
        self.exclude, self.selector, self.owner = exclude, selector, owner
        self.modules = producer_modules(model)
        self.tracker: Tracker | None = None
        self.layers: dict[str, LayerInfo] = {}
        self.skipped: dict[str, str] = {}
        self.closed = False
        self.phase = 0
        self._lazy: LazyDiscovery | None = None
        self._late_handles: dict[str, RemovableHandle] = {}
        self._watch: ModelWatch | None = None
        self._previous: tuple[Tracker, dict[str, nn.Module]] | None = None  # before a change

    @property
    def retired(self) -> bool:
        """Whether the model changed and its units are not found again yet."""
        return self._previous is not None

    @property
    def steps(self) -> int:
        """Committed steps, also while retired."""
        if self.tracker is not None:
            return self.tracker.steps
        return 0 if self._previous is None else self._previous[0].steps

    @property
    def collecting(self) -> bool:
        """Whether the statistics of the coming step are collected (its phase is 0)."""
        return self.phase == 0

    def advance(self) -> None:
        """An optimizer step went through: move the phase on, and pause the hooks for the
        ``track_every − 1`` steps whose statistics are not collected (`Tracker.pause`)."""
        if self.config.track_every > 1:
            self.set_phase(self.phase + 1)

    def set_phase(self, phase: int) -> None:
        """Set the phase (modulo ``track_every``), with the hooks on or off to match."""
        self.phase = phase % self.config.track_every
        if self.tracker is not None and not self.closed:
            if self.phase == 0:
                self.tracker.resume()
            else:
                self.tracker.pause()

    def checks(self) -> Checks:
        """What the resets must never write, for the model as it is now."""
        return Checks.of(self.model, self.exclude, optimizer_params(self.optimizer))

    # -- finding the units ------------------------------------------------------------------
    def wait(self) -> None:
        """Find the units at the next training pass."""
        if self._lazy is not None:
            self._lazy.close()
        self._lazy = LazyDiscovery(self.model, self._replayed, self._recorded)
        self._lazy.arm()

    def discover(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Find the units from one example batch, leaving no trace in buffers or RNGs."""
        if self.tracker is not None:
            return
        root = unwrap_model(self.model)
        with untouched(root):
            found = discover(
                root, args, kwargs, reference=self.config.reference, checks=self.checks()
            )
        self.adopt(found)

    def _replayed(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.discover(args, kwargs)

    def _recorded(self, trace: Any) -> None:
        root = unwrap_model(self.model)
        self.adopt(analyse(root, trace, reference=self.config.reference, checks=self.checks()))

    def settle(self, stepping: bool) -> None:
        """End a recorded first pass at ``step()``/``zero_grad()`` (see `gxd_optim.lazy`)."""
        lazy = self._lazy
        if lazy is not None:
            lazy.settle(stepping)
            if lazy.idle:
                self._lazy = None

    def adopt(self, found: Found) -> None:
        """Track what discovery found. Nothing eligible is an error at first; after the model
        changed (a layer frozen, say), a warning: nothing is reset until it changes again.

        Raises:
            ValueError: no layer is eligible (the message lists why each was skipped).
        """
        layers, skipped = found
        if not layers:
            lines = "\n".join(f"  {n}: {why}" for n, why in skipped.items())
            if self._previous is None:
                raise ValueError(
                    "GXDReset found no layer whose units it can reset. Skipped:\n"
                    f"{lines}\nPass layers={{producer: [consumers]}} to name them yourself."
                )
            warnings.warn(
                "GXDReset: since the model changed, no layer's units can be reset; it resets "
                f"nothing until the model changes again. Skipped:\n{lines}",
                stacklevel=3,
            )
        self.install(layers, skipped)

    def install(
        self,
        layers: dict[str, LayerInfo],
        skipped: dict[str, str],
        tracker: Tracker | None = None,
        fresh: bool = False,
    ) -> None:
        """Start tracking ``layers`` (with ``tracker``, a copy's, or a new one); statistics of
        layers unchanged since the model changed are carried over unless ``fresh``.

        Raises:
            ValueError: another open wrapper resets some of these parameters (nothing changed).
        """
        root = unwrap_model(self.model)
        named = dict(root.named_modules())
        claim(self.owner, written_params(named, layers))
        modules = producer_modules(root)
        config = self.config
        if tracker is None:
            tracker = Tracker(
                layers, named, config.criterion, config.decay, config.seed, config.maturity,
                config.track_every,
            )  # fmt: skip
        if fresh:
            self._previous = None
        if self._previous is not None:
            self._carry_over(tracker, layers, named)
        tracker.collecting = self.collecting
        tracker.attach()
        tracker.before_commit = distributed.reducer_for(self.model)
        if self._lazy is not None:
            self._lazy.disarm()
        self.modules = modules
        self.tracker, self.layers, self.skipped = tracker, layers, skipped
        self._watch = ModelWatch(root, {n for info in layers.values() for n in info.touched})
        self._arm_late_warnings()

    def _carry_over(
        self, tracker: Tracker, layers: Mapping[str, LayerInfo], named: Mapping[str, nn.Module]
    ) -> None:
        """Give a new tracker what the retired one knew of the layers that did not change."""
        assert self._previous is not None
        old, old_named = self._previous
        same = [
            name
            for name, info in layers.items()
            if name in old.layers
            and old.layers[name].info == info
            and all(named[n] is old_named.get(n) for n in info.touched)
        ]
        tracker.load_stats_dict(old.stats_dict(same))
        for name, layer in tracker.layers.items():  # counts of what was done carry on
            if name in old.layers and name not in same:
                layer.resets = old.layers[name].resets
        tracker.steps = old.steps
        self.selector.keep(same)
        self._previous = None

    def retire(self, why: str) -> None:
        """The model changed: stop tracking; find the units again at the next training pass."""
        tracker = self.require_tracker()
        assert self._watch is not None
        installed = self._watch.installed()  # the modules as they were, not as they are
        self.unhook()
        self._previous = (tracker, installed)
        self.tracker = None
        _LOG.info("GXDReset: %s; the units are found again at the next training pass", why)
        self.wait()

    def forget(self) -> None:
        """Back to before the units were found (a checkpoint saved then was loaded)."""
        if self.tracker is not None or self._previous is not None:
            self.unhook()
            self.tracker, self.layers, self.skipped = None, {}, {}
            self._previous = None
            if not self.closed:
                self.wait()

    def close(self) -> None:
        """Remove every hook; nothing is tracked from now on."""
        self.closed = True
        if self._lazy is not None:
            self._lazy.close()
            self._lazy = None
        self.unhook()
        self._previous = None

    def unhook(self) -> None:
        """Remove the tracker's hooks, the late-call warnings, the watch and the claims."""
        for handle in self._late_handles.values():
            handle.remove()
        self._late_handles.clear()
        if self.tracker is not None:
            self.tracker.detach()
            self.tracker.discard()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        release(self.owner)

    def _arm_late_warnings(self) -> None:
        """Warn when a layer the discovery pass did not call is called in training."""
        for name, reason in self.skipped.items():
            if reason == NOT_CALLED and name in self.modules:
                hook = OwnedHook(self, self.modules[name], "_warn_late_call", name)
                self._late_handles[name] = self.modules[name].register_forward_pre_hook(hook)

    def _warn_late_call(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not (torch.is_grad_enabled() and module.training) or name not in self._late_handles:
            return
        self._late_handles.pop(name).remove()  # warn once
        warnings.warn(
            f"GXDReset: layer `{name}` was not called when the units were discovered, so "
            "the units it reads are not known to be safe to reset. Call opt.discover(...) "
            "with a batch that runs every layer before training, or pass layers=.",
            stacklevel=3,
        )

    # -- what may be read and written now ---------------------------------------------------
    def require_tracker(self) -> Tracker:
        """The tracker.

        Raises:
            RuntimeError: the units are not known yet.
        """
        if self.tracker is None:
            when = (
                "the model changed, and they are found again on the next training pass"
                if self._previous is not None
                else "they are found on the first training pass"
            )
            raise RuntimeError(
                f"GXDReset has not found the model's units yet: {when} "
                "(or call opt.discover(example_input))"
            )
        return self.tracker

    def current_tracker(self) -> Tracker | None:
        """The tracker, retired first if the model changed since it was built."""
        if self._watch is not None and self._watch.change is not None:
            self.retire(self._watch.change)
        return self.tracker

    def check_name(self, name: str) -> None:
        """Refuse a name that is not an eligible layer (saying why it is not).

        Raises:
            ValueError: ``name`` is not an eligible layer.
            RuntimeError: the units are not known (yet, or again).
        """
        if self.current_tracker() is None:
            self.require_tracker()
        if name not in self.layers:
            why = self.skipped.get(name)
            detail = f"it was skipped: {why}" if why else f"eligible layers: {sorted(self.layers)}"
            raise ValueError(f"{name!r} is not an eligible layer ({detail})")

    def moved(self, names: set[str]) -> str | None:
        """Whether one of the layers ``names`` touch left the model (what happened, if so)."""
        if self._watch is None:
            return None
        return self._watch.moved({n for name in names for n in self.layers[name].touched})

    def unwritable(self, name: str) -> str:
        """Why a reset of layer ``name`` must not write now (``''`` if it may): a layer it
        touches left the model, or a parameter it writes was frozen since discovery."""
        touched = self.layers[name].touched
        moved = self._watch.moved(touched) if self._watch is not None else None
        if moved:
            return moved
        for module_name, module in self.touched_modules(name).items():
            for attr, param in layer_tensors(module):
                if not param.requires_grad:
                    return f"`{module_name}.{attr}` was frozen (requires_grad=False)"
        return ""

    def touched_modules(self, name: str) -> dict[str, nn.Module]:
        """The modules a reset of layer ``name`` writes, by name: the watched ones (the model
        still holds them once `unwritable` said so), else looked up in the model."""
        touched = self.layers[name].touched
        if self._watch is not None:
            installed = self._watch.installed()
            if all(n in installed for n in touched):
                return {n: installed[n] for n in touched}
        named = dict(unwrap_model(self.model).named_modules())
        return {n: named[n] for n in touched}

    def refuse_unseen_gradients(self) -> None:
        """Before the units are known: fail if a backward reached the model's layers unseen.

        Raises:
            RuntimeError: the optimizer holds gradients of the model's layers, but no
                training pass of the model was seen.
        """
        if self.tracker is not None or self._previous is not None or self.closed:
            return
        owned = {id(p) for p in optimizer_params(self.optimizer)}
        with torch.no_grad():
            seen = [
                name
                for name, module in self.modules.items()
                for param in (layer_params(module)[0],)
                if id(param) in owned and param.grad is not None and bool(param.grad.any())
            ]
        if not seen:
            return
        root = unwrap_model(self.model)
        hint = (
            "the model is in eval mode (GXDReset tracks training-mode passes: call model.train())"
            if not root.training
            else "its layers were used without calling their modules (functional code?), or "
            "the wrapper was given another module than the one trained"
        )
        raise RuntimeError(
            f"GXDReset saw no training pass of the model, but the optimizer is stepping "
            f"gradients of its layers {seen[:3]}: {hint}. Wrap the module whose layers are "
            "trained, or name the layers with layers={producer: [consumers]}."
        )

    # -- copies -----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_lazy=None, _late_handles={}, _watch=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A copy starts between steps, with hooks of its own on its own model."""
        state.setdefault("phase", 0)  # pickled before track_every
        self.__dict__.update(state)
        tracker = self.tracker
        if self.closed:
            return
        if tracker is not None:
            tracker.discard()
            self.tracker = None
            self.install(self.layers, self.skipped, tracker)
        else:
            self.wait()


def written_params(
    named: Mapping[str, nn.Module], layers: Mapping[str, LayerInfo]
) -> dict[str, Tensor]:
    """The parameters the resets of ``layers`` write, by qualified name."""
    touched = {n for info in layers.values() for n in info.touched}
    return {
        f"{name}.{attr}": param
        for name in sorted(touched)
        if name in named
        for attr, param in layer_tensors(named[name])
    }
