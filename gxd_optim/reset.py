"""GXDReset: the optimizer wrapper that scores units with GXD and resets the cheapest."""

from __future__ import annotations

import logging
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from . import amp, checkpoint, distributed
from .config import Config
from .diagnostics import (
    RECENT_RESETS,
    LayerSummary,
    ResetLog,
    ResetRecord,
    format_table,
    summarise_layer,
)
from .discovery import (
    NOT_CALLED,
    Checks,
    LayerInfo,
    _params,
    analyse,
    discover,
    explicit_layers,
    layer_params,
    producer_modules,
    unwrap_model,
)
from .hooks import OwnedHook
from .lazy import LazyDiscovery
from .operator import (
    clear_state_slices_,
    reinit_units_,
    reset_norm_entries_,
)
from .sandbox import untouched
from .selection import accrue, below, lowest
from .tracking import Tracker, fold_edge_
from .utilities import UtilityFn, layer_normalised
from .watch import ModelWatch, check_claims, claim, release

__all__ = ["GXDReset"]

ResetHook = Callable[[str, Tensor], None]
_LOG = logging.getLogger("gxd_optim")

LOG_LENGTH = 10_000
"""How many of the latest resets `GXDReset.reset_log` keeps."""


class GXDReset(torch.optim.Optimizer):
    r"""Wrap an optimizer; after each `step()` reset the units whose reset costs least.

    A *unit* is an output feature of a `Linear` or an output channel of a `Conv{1,2,3}d`
    whose value reaches the next Linear/Conv layers (its *consumers*) only through per-unit
    operations. On the first training forward pass the wrapper finds these units by itself
    (see `layers` and `skipped`). For every unit $i$ and consumer it tracks

    $$
    a_i(x) = \sum_{\text{pos}} \frac{\partial \ell(x)}{\partial h_i} (h_i - r_i),
    \qquad u_i = \mathrm{EMA}_t\big(\operatorname{mean}_x |a_i(x)|\big)
    $$

    where ``h_i`` is the unit as the consumer reads it and ``r_i`` the reference the reset
    substitutes (the running mean of ``h_i``, or 0). Each step adds
    ``replacement_rate × (units older than maturity)`` to a per-layer budget; whole units are
    then reset, lowest utility first: incoming weights redrawn from the layer's default init,
    ``W_out·r`` folded into the consumers' biases and outgoing weights zeroed, BatchNorm
    entries restored, optimizer state slices cleared.

    Args:
        optimizer: any ``torch.optim.Optimizer`` holding (some of) the model's parameters.
        model: the model; ``DistributedDataParallel`` and ``torch.compile`` wrappers are fine.
        utility: the criterion: ``"gxd"`` (default) or a baseline, ``"contribution"``,
            ``"adaptable_contribution"``, ``"activation"``, ``"gradient"``, ``"random"``
            (see `gxd_optim.utilities`); or a callable ``fn(h, grad, reference) -> scores``
            with ``h, grad`` of shape ``[N, U, P]``, ``reference`` ``[U]`` and per-sample
            ``scores`` ``[N, U]``.
        reference: ``"mean"`` (running mean of the unit) or ``"zero"``.
        replacement_rate: fraction of eligible units reset per step; 0 tracks only.
        maturity: a unit is eligible once it has seen more than this many steps.
        decay: EMA decay of utilities and running means, in ``[0, 1)``.
        seed: seed of the wrapper's own generator for the new weights.
        layers: explicit ``{producer: [consumers]}`` for models discovery cannot read.
        exclude: names of Linear/Conv layers never to touch.
        state_policy: ``"mean_scale"`` (default: zero first moments, refill second moments
            with the mean of the untouched entries) or ``"zero"`` (zero every touched slice).
        selection: ``"budget"`` (default: the fractional budget above, lowest utility first)
            or ``"threshold"``: every ``interval`` steps reset every eligible unit whose
            utility divided by its layer's mean is ``<= threshold`` (as ReDo and GraMa do);
            ``replacement_rate`` is then not used.
        threshold: ``τ`` of ``selection="threshold"`` (default 0.1).
        interval: ``F`` of ``selection="threshold"``, in steps (default 1000).
        grad_scaler: the ``torch.amp.GradScaler`` of the training loop; needed only when you
            call ``scaler.unscale_(opt)`` yourself (e.g. to clip gradients), so that the
            statistics can be unscaled too (see `gxd_optim.amp`).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model)
        >>> loss = model(torch.randn(16, 4)).pow(2).mean()
        >>> opt.zero_grad(); loss.backward(); opt.step()
        >>> dict(opt.layers)["0"].consumers
        ('2',)
    """

    _step_supports_amp_scaling = True  # GradScaler.step hands over found_inf and grad_scale

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        *,
        utility: str | UtilityFn = "gxd",
        reference: str = "mean",
        replacement_rate: float = 3e-4,
        maturity: int = 100,
        decay: float = 0.99,
        seed: int = 0,
        layers: Mapping[str, Sequence[str]] | None = None,
        exclude: Iterable[str] = (),
        state_policy: str = "mean_scale",
        selection: str = "budget",
        threshold: float | None = None,
        interval: int | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if isinstance(optimizer, GXDReset):
            raise TypeError("optimizer is already a GXDReset; wrap the inner optimizer once")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        config = Config(
            utility,
            reference,
            replacement_rate,
            maturity,
            decay,
            seed,
            state_policy,
            selection,
            threshold,
            interval,
        )
        _refuse_sharded(optimizer, model)
        modules = producer_modules(model)
        if not modules:
            raise ValueError(
                "the model has no Linear or Conv1d/2d/3d layer: GXDReset has no unit to reset"
            )
        owned = {id(p) for p in _parameters(optimizer)}
        if not any(id(p) in owned for p in model.parameters()):
            raise ValueError("the optimizer holds none of the model's parameters")
        exclude = tuple(exclude) if not isinstance(exclude, str) else (exclude,)
        unknown = [n for n in exclude if n not in modules]
        if unknown:
            raise ValueError(
                f"exclude= names {unknown} that are not Linear/Conv layers; "
                f"known: {sorted(modules)}"
            )
        explicit = None
        if layers is not None:
            explicit = explicit_layers(
                model, layers, config.reference, Checks.of(model, exclude, _parameters(optimizer))
            )

        # torch.optim.Optimizer.__init__ is skipped on purpose: the inner optimizer owns the
        # parameter groups and state. Its hook registries are still needed by step().
        self._optimizer_step_pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Callable[..., Any]] = (
            OrderedDict()
        )
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Callable[..., Any]] = (
            OrderedDict()
        )
        self._patch_step_function()

        self.optimizer = optimizer
        self.model = model
        self.config = config
        self._exclude = exclude
        self._modules = modules
        self._generator = torch.Generator().manual_seed(config.seed)
        self._reset_hooks: OrderedDict[int, ResetHook] = OrderedDict()
        self._reset_pre_hooks: OrderedDict[int, ResetHook] = OrderedDict()
        self._reset_log = ResetLog(LOG_LENGTH)
        self._tracker: Tracker | None = None
        self._layers: dict[str, LayerInfo] = {}
        self._skipped: dict[str, str] = {}
        self._lazy: LazyDiscovery | None = None
        self._late_handles: dict[str, RemovableHandle] = {}
        self._watch: ModelWatch | None = None
        self._previous: tuple[Tracker, dict[str, nn.Module]] | None = None  # before a change
        self._closed = False
        self._grad_scaler = grad_scaler
        self._entry_restored = False  # load_reset_state_dict ran: a plain load needs no warning
        if explicit is not None:
            self._install(*explicit)
        else:
            self._arm_discovery()

    # -- delegation (load_state_dict of the inner optimizer rebinds these) ------------------
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        """The inner optimizer's parameter groups (LR schedulers act through these).

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> group = opt.param_groups[0]
            >>> group["lr"] = 0.05  # what LR schedulers do
            >>> group is opt.optimizer.param_groups[0]
            True
        """
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        """The inner optimizer's per-parameter state."""
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        """The inner optimizer's defaults."""
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the inner optimizer.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model[0].parameters(), lr=0.1), model)
            >>> opt.add_param_group({"params": model[2].parameters(), "lr": 0.01})
            >>> len(opt.optimizer.param_groups)
            2
        """
        self.optimizer.add_param_group(param_group)

    def __repr__(self) -> str:
        return f"GXDReset({self.optimizer!r}, {self.config})"

    # -- discovery --------------------------------------------------------------------------
    def discover(self, *args: Any, **kwargs: Any) -> None:
        """Find the units now from one example batch instead of at the first training pass.

        The example forward leaves no trace: buffers (BatchNorm statistics) and random
        number generators are restored afterwards.

        Raises:
            ValueError: if no layer is eligible (the message lists why each was skipped), or
                another open `GXDReset` already resets these layers.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.discover(torch.randn(2, 4))
            >>> list(opt.layers), dict(opt.skipped)
            (['0'], {'2': "its units are part of the model's output"})
        """
        if self._tracker is not None:
            return
        root = unwrap_model(self.model)
        with untouched(root):
            found = discover(
                root, args, kwargs, reference=self.config.reference, checks=self._checks()
            )
        self._adopt(found)

    def _replayed(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A training pass enters through the root's ``forward``: replay it to find the units."""
        self.discover(*args, **kwargs)

    def _recorded(self, trace: Any) -> None:
        """A training pass entered elsewhere and was recorded: find the units in it."""
        root = unwrap_model(self.model)
        self._adopt(analyse(root, trace, reference=self.config.reference, checks=self._checks()))

    def _checks(self) -> Checks:
        return Checks.of(self.model, self._exclude, _parameters(self.optimizer))

    def _adopt(self, found: tuple[dict[str, LayerInfo], dict[str, str]]) -> None:
        """Install what discovery found. Nothing eligible is an error at first; after the
        model changed (a layer frozen, say), a warning: the wrapper then resets nothing until
        the model changes again."""
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
                stacklevel=2,
            )
        self._install(layers, skipped)

    def close(self) -> None:
        """Remove every hook from the model; the wrapper then only steps the inner optimizer.

        Call this before wrapping the same model again (e.g. a new optimizer per task).

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.discover(torch.randn(2, 4))
            >>> opt.close()  # the model has no hooks of this wrapper any more
            >>> opt.step()  # still steps the inner optimizer
        """
        self._closed = True
        if self._lazy is not None:
            self._lazy.close()
            self._lazy = None
        self._unhook()
        self._previous = None

    def _unhook(self) -> None:
        """Remove the tracker's hooks, the late-call warnings, the watch and the claims."""
        for handle in self._late_handles.values():
            handle.remove()
        self._late_handles.clear()
        if self._tracker is not None:
            self._tracker.detach()
            self._tracker.discard()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        release(self)

    def _arm_discovery(self) -> None:
        if self._lazy is not None:
            self._lazy.close()
        self._lazy = LazyDiscovery(self.model, self._replayed, self._recorded)
        self._lazy.arm()

    def _settle_discovery(self, stepping: bool) -> None:
        """End a recorded first pass at ``step()``/``zero_grad()`` (see `gxd_optim.lazy`)."""
        lazy = self._lazy
        if lazy is not None:
            lazy.settle(stepping)
            if lazy.idle:
                self._lazy = None

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

    def _install(
        self,
        layers: dict[str, LayerInfo],
        skipped: dict[str, str],
        tracker: Tracker | None = None,
    ) -> None:
        """Start tracking ``layers`` (with ``tracker``, a copy's, or a new one); statistics of
        layers unchanged since a retired tracker are carried over.

        Raises:
            ValueError: another open wrapper resets some of these parameters (nothing changed).
        """
        root = unwrap_model(self.model)
        named = dict(root.named_modules())
        claim(self, _written(named, layers))
        modules = producer_modules(root)
        config = self.config
        if tracker is None:
            tracker = Tracker(
                layers, modules, config.criterion, config.decay, config.seed, config.maturity
            )
        if self._previous is not None:
            old, old_named = self._previous
            same = [
                name
                for name, info in layers.items()
                if name in old.layers
                and old.layers[name].info == info
                and all(named[n] is old_named.get(n) for n in _touched(name, info))
            ]
            checkpoint.load_stats(tracker, checkpoint.pack_stats(old, same))
            for name, layer in tracker.layers.items():  # counts of what was done carry on
                if name in old.layers and name not in same:
                    layer.resets = old.layers[name].resets
            tracker.steps = old.steps
            self._previous = None
        tracker.attach()
        tracker.before_commit = distributed.reducer_for(self.model)
        if self._lazy is not None:
            self._lazy.disarm()
        self._modules = modules
        self._tracker, self._layers, self._skipped = tracker, layers, skipped
        self._watch = ModelWatch(root, {n for name, i in layers.items() for n in _touched(name, i)})
        self._arm_late_warnings()

    def _retire(self, why: str) -> None:
        """The model changed: stop tracking, and find the units again at the next training
        pass (layers that did not change keep their statistics)."""
        tracker = self._require_tracker()
        assert self._watch is not None
        installed = self._watch.installed()  # the modules as they were, not as they are
        self._unhook()
        self._previous = (tracker, installed)
        self._tracker = None
        _LOG.info("GXDReset: %s; the units are found again at the next training pass", why)
        self._arm_discovery()

    def _arm_late_warnings(self) -> None:
        """Warn when a layer the discovery pass did not call is called in training."""
        for name, reason in self._skipped.items():
            if reason == NOT_CALLED and name in self._modules:
                hook = OwnedHook(self, self._modules[name], "_warn_late_call", name)
                self._late_handles[name] = self._modules[name].register_forward_pre_hook(hook)

    def _require_tracker(self) -> Tracker:
        if self._tracker is None:
            when = (
                "the model changed, and they are found again on the next training pass"
                if self._previous is not None
                else "they are found on the first training pass"
            )
            raise RuntimeError(
                f"GXDReset has not found the model's units yet: {when} "
                "(or call opt.discover(example_input))"
            )
        return self._tracker

    def _watched_tracker(self) -> Tracker | None:
        """The tracker, retired first if the model changed since it was built."""
        if self._watch is not None and self._watch.change is not None:
            self._retire(self._watch.change)
        return self._tracker

    @property
    def layers(self) -> Mapping[str, LayerInfo]:
        """Eligible producers by qualified name: ``info.num_units``, ``info.consumers``, ...

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.discover(torch.randn(2, 4))
            >>> opt.layers["0"].num_units, opt.layers["0"].consumers
            (8, ('2',))
        """
        self._require_tracker()
        return MappingProxyType(self._layers)

    @property
    def skipped(self) -> Mapping[str, str]:
        """Linear/Conv layers that are not eligible, and why.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.discover(torch.randn(2, 4))
            >>> opt.skipped["2"]
            "its units are part of the model's output"
        """
        self._require_tracker()
        return MappingProxyType(self._skipped)

    # -- the optimizer interface ------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Step the inner optimizer, commit this step's statistics, reset what is due.

        Statistics of the backward passes since the last step count only now; a step that saw
        no backward pass (e.g. the zero-gradient step of a checkpoint loader) resets nothing,
        and neither does one whose statistics overflow (they are left as they were). The
        units to reset are chosen, and their predicted cost recorded in `reset_log`, before
        the inner optimizer moves the weights; they are reset after it. If the inner step
        raises, the commit is undone: nothing is committed, spent or reset. With a
        ``closure`` (which runs backward inside the inner step) everything happens after it.

        Raises:
            RuntimeError: the model's units are not known yet but the optimizer has
                gradients of its layers: the training pass never ran the model's modules in
                training mode (nothing is stepped).

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.zero_grad()
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> opt.step()
            >>> opt.steps
            1
        """
        tracker: Tracker | None = None
        try:
            if getattr(self, "found_inf", None) is not None and not self._amp_prepare():
                return None  # GradScaler found inf/NaN gradients: skip, reset nothing
            self._settle_discovery(stepping=True)
            if self._tracker is None:
                self._refuse_unseen_gradients()
            tracker = None if self._closed else self._watched_tracker()
            due: list[tuple[str, Tensor, float]] = []
            if closure is None:
                due = self._commit_and_choose()
                loss = self.optimizer.step()
            else:
                loss = self.optimizer.step(closure)
        except BaseException:
            if tracker is not None:
                tracker.rollback()  # the step did not happen: neither did the commit
            self._forget_scaler_state()  # GradScaler deletes them only after a step returns
            raise
        if closure is not None:
            self._settle_discovery(stepping=True)
            due = self._commit_and_choose()
        if self._tracker is not None:
            self._tracker.finish()
        for name, index, predicted in due:
            if not self._reset_if_writable(name, index, predicted):
                break
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the inner optimizer's gradients and drop statistics no step has committed.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> opt.zero_grad()  # gradients and uncommitted statistics are gone
            >>> model[0].weight.grad is None, opt.steps
            (True, 0)
        """
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self._settle_discovery(stepping=False)
        if self._tracker is not None:
            self._tracker.discard()

    def _refuse_unseen_gradients(self) -> None:
        """Before the units are known: fail if a backward reached the model's layers unseen."""
        if self._previous is not None or self._closed:
            return  # retired (found again on the next pass) or closed: nothing to see
        owned = {id(p) for p in _parameters(self.optimizer)}
        with torch.no_grad():
            seen = [
                name
                for name, module in self._modules.items()
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

    def _forget_scaler_state(self) -> None:
        for attr in ("found_inf", "grad_scale"):
            self.__dict__.pop(attr, None)

    def _commit_and_choose(self) -> list[tuple[str, Tensor, float]]:
        """Commit the pending statistics; the units due for a reset, with their predicted cost
        (read from the gradients now, before the inner optimizer moves the weights)."""
        tracker = self._tracker
        if tracker is None or self._closed:
            return []
        committed = tracker.commit()
        if len(committed) < len(tracker.layers):  # a layer saw no data: is it still there?
            idle = set(tracker.layers) - set(committed)
            assert self._watch is not None
            moved = self._watch.moved(_all_touched({n: self._layers[n] for n in idle}))
            if moved is not None:
                tracker.rollback()
                self._retire(moved)
                return []
        due = []
        for name in committed:
            index = self._choose(name)
            if index is not None and index.numel():
                due.append((name, index, self._predicted(name, index)))
        return due

    def _choose(self, name: str) -> Tensor | None:
        tracker = self._require_tracker()
        layer = tracker.layers[name]
        config = self.config
        if config.selection == "threshold":
            if tracker.steps % config.every or not tracker.eligible(name) or self._bad_step():
                return None
            utility = tracker.utilities(name)
            eligible = tracker.eligible_units(name).to(utility.device)
            return below(layer_normalised(utility), eligible, config.tau)
        if config.replacement_rate == 0:
            return None
        layer.budget = accrue(layer.budget, tracker.eligible(name), config.replacement_rate)
        count = int(layer.budget)
        if count < 1 or self._bad_step():
            return None
        layer.budget -= count
        utility = tracker.utilities(name)
        return lowest(utility, tracker.eligible_units(name).to(utility.device), count)

    def _bad_step(self) -> bool:
        """Whether the latest commit's statistics were not finite (read only when a reset is
        due: it waits for the device)."""
        finite = self._require_tracker().finite
        return finite is not None and not bool(finite)

    def _predicted(self, name: str, index: Tensor) -> float:
        """``Σ_{i∈index} c_i`` from the current gradients, or NaN where they are stale."""
        tracker = self._require_tracker()
        try:
            cost = tracker.predicted_cost(name, index.to(tracker.layers[name].utility_ema.device))
        except RuntimeError:
            return math.nan
        return float(cost.sum())

    def _unwritable(self, name: str) -> str:
        """Why a reset of layer ``name`` must not write now ('' if it may): a layer it
        touches left the model, or a parameter it writes was frozen since discovery."""
        info = self._layers[name]
        touched = _touched(name, info)
        moved = self._watch.moved(touched) if self._watch is not None else None
        if moved:
            return moved
        named = dict(unwrap_model(self.model).named_modules())
        for module_name in touched:
            for attr, param in _params(named[module_name]):
                if not param.requires_grad:
                    return f"`{module_name}.{attr}` was frozen (requires_grad=False)"
        return ""

    def _reset_if_writable(self, name: str, index: Tensor, predicted: float) -> bool:
        """Reset, unless the model changed under the layer: then retire the tracker."""
        why = self._unwritable(name)
        if why:
            self._retire(why)
            return False
        self._reset(name, index, predicted)
        return True

    # -- queries and manual resets ----------------------------------------------------------
    def utilities(self) -> dict[str, Tensor]:
        """Current bias-corrected utilities per layer (units never scored read 0).

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> opt.step()
            >>> opt.utilities()["0"].shape
            torch.Size([8])
        """
        tracker = self._require_tracker()
        return {name: tracker.utilities(name) for name in self._layers}

    def predicted_cost(self, name: str) -> Tensor:
        """Signed first-order change of the latest batch's loss if each unit alone were reset.

        ``c_i = Σ_consumers Σ_{x,pos} ∂L/∂h_i · (r_i − h_i)`` with the current reference;
        costs add over a set of units. The sums are read from the consumers' gradients
        (see `gxd_optim.utilities.predicted_cost`), so the "latest batch" is whatever the
        gradients hold: call it after ``backward()`` and before the optimizer step (after the
        step the parameters have moved) and before ``zero_grad()``.

        Raises:
            ValueError: ``name`` is not an eligible layer.
            RuntimeError: a consumer has no gradient yet.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> cost = opt.predicted_cost("0")  # after backward(), before step()
            >>> cost.shape
            torch.Size([8])
        """
        self._check_name(name)
        return self._require_tracker().predicted_cost(name)

    def reset_units(self, name: str, indices: Tensor | Sequence[int]) -> None:
        """Apply the reset operator to these units of layer ``name`` now.

        Raises:
            ValueError: unknown layer, indices that are not integers in ``[0, num_units)``,
                or a layer the reset touches is frozen or no longer in the model.
            RuntimeError: the model changed since its units were found (they are found
                again on the next training pass).

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> opt.reset_units("0", [1, 5])
            >>> opt.reset_counts["0"], float(model[2].weight[:, [1, 5]].detach().abs().sum())
            (2, 0.0)
        """
        self._check_name(name)
        units = self._layers[name].num_units
        index = torch.as_tensor(indices)
        if index.numel() == 0 and index.dim() <= 1:
            return
        if (
            index.dtype in (torch.bool,)
            or index.is_floating_point()
            or index.is_complex()
            or index.dim() > 1
        ):
            raise ValueError(
                "indices must be a 1-D sequence of ints, "
                f"got {index.dtype} of shape {tuple(index.shape)}"
            )
        index = index.reshape(-1).to(torch.int64)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= units):
            raise ValueError(
                f"indices must lie in [0, {units}) for layer {name!r}, got {index.tolist()}"
            )
        why = self._unwritable(name)
        if why:
            raise ValueError(f"cannot reset units of {name!r}: {why}")
        if index.numel():
            index = torch.unique(index)
            self._reset(name, index, self._predicted(name, index))

    def layer_summaries(self) -> list[LayerSummary]:
        """The numbers behind `summary`, one `LayerSummary` per eligible layer.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).sum().backward(); opt.step()
            >>> first = opt.layer_summaries()[0]
            >>> (first.name, first.units, first.eligible, first.resets)
            ('0', 8, 0, 0)
        """
        tracker = self._require_tracker()
        return [
            summarise_layer(
                name,
                tracker.utilities(name),
                layer.age,
                self.config.maturity,
                layer.resets,
                [r for r in self._reset_log if r.layer == name][-RECENT_RESETS:],
            )
            for name, layer in tracker.layers.items()
        ]

    def summary(self) -> str:
        """A per-layer table: units, eligible units, resets so far, dormant fraction, utilities.

        The table is also logged at INFO level on the ``gxd_optim`` logger, so a training
        script can route it wherever its logs go; `layer_summaries` gives the numbers.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).sum().backward(); opt.step()
            >>> row = opt.summary().splitlines()[2]
            >>> " ".join(row.split()[:4])
            '0 8 0 0'
        """
        table = format_table(self.layer_summaries(), self._skipped)
        _LOG.info("GXDReset summary\n%s", table)
        return table

    @property
    def reset_counts(self) -> dict[str, int]:
        """Units reset so far, per layer.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.discover(torch.randn(2, 4))
            >>> opt.reset_counts
            {'0': 0}
        """
        tracker = self._require_tracker()
        return {name: layer.resets for name, layer in tracker.layers.items()}

    @property
    def steps(self) -> int:
        """Committed steps: optimizer steps that followed at least one backward pass.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.step()  # no backward pass: nothing to commit
            >>> opt.steps
            0
        """
        if self._tracker is not None:
            return self._tracker.steps
        return 0 if self._previous is None else self._previous[0].steps

    @property
    def reset_log(self) -> ResetLog:
        """The latest resets (at most `LOG_LENGTH`), oldest first, one record per layer and step.

        A read-only sequence of `gxd_optim.diagnostics.ResetRecord`; its ``total`` counts every
        reset ever logged. ``predicted`` is ``Σ c_i`` over the reset units from the gradients
        of that step, before the inner update (NaN where none were fresh); ``realised`` is
        filled in by `gxd_optim.diagnostics.measure_realised_cost`. The log is a diagnostic:
        it is not saved in `state_dict`.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> opt.reset_units("0", [3])
            >>> record = opt.reset_log[-1]
            >>> record.layer, record.units, opt.reset_log.total
            ('0', 1, 1)
        """
        return self._reset_log

    def register_reset_hook(self, hook: ResetHook) -> RemovableHandle:
        """Call ``hook(name, indices)`` after every reset (e.g. to mirror it into an EMA copy).

        Returns:
            A handle whose ``remove()`` unregisters the hook.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.discover(torch.randn(2, 4))
            >>> handle = opt.register_reset_hook(lambda name, index: print(name, index.tolist()))
            >>> opt.reset_units("0", [2])
            0 [2]
            >>> handle.remove()
        """
        return _register(self._reset_hooks, hook)

    def register_reset_pre_hook(self, hook: ResetHook) -> RemovableHandle:
        """Call ``hook(name, indices)`` right before units are reset (after the inner step).

        Returns:
            A handle whose ``remove()`` unregisters the hook.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.discover(torch.randn(2, 4))
            >>> seen = []
            >>> handle = opt.register_reset_pre_hook(
            ...     lambda name, index: seen.append(model[2].weight[:, index].abs().sum() > 0)
            ... )
            >>> opt.reset_units("0", [2])
            >>> bool(seen[0])  # the outgoing weights were still there
            True
        """
        return _register(self._reset_pre_hooks, hook)

    def _check_name(self, name: str) -> None:
        if self._watched_tracker() is None:
            self._require_tracker()
        if name not in self._layers:
            why = self._skipped.get(name)
            detail = f"it was skipped: {why}" if why else f"eligible layers: {sorted(self._layers)}"
            raise ValueError(f"{name!r} is not an eligible layer ({detail})")

    def _reset(self, name: str, index: Tensor, predicted: float) -> None:
        tracker = self._require_tracker()
        layer = tracker.layers[name]
        for hook in list(self._reset_pre_hooks.values()):
            hook(name, index.clone())
        weight, bias = layer_params(self._modules[name])
        index = index.to(weight.device)
        policy = self.config.state_policy
        for edge in layer.edges:
            consumer = self._modules[edge.edge.consumer]
            columns = fold_edge_(edge, consumer, index)
            self._clear_state(layer_params(consumer)[0], 1, columns, policy)
        reinit_units_(weight, bias, index, self._generator)
        touched: list[Tensor | None] = [weight, bias]
        for norm in self._norms(name):
            reset_norm_entries_(norm, index)
            touched += [norm.weight, norm.bias]
        for param in touched:
            if param is not None:
                self._clear_state(param, 0, index, policy)
        tracker.restart(name, index)
        layer.resets += int(index.numel())
        self._reset_log.append(ResetRecord(tracker.steps, name, int(index.numel()), predicted))
        for hook in list(self._reset_hooks.values()):
            hook(name, index.clone())

    def _norms(self, name: str) -> list[_BatchNorm]:
        named = dict(unwrap_model(self.model).named_modules())
        return [cast(_BatchNorm, named[norm]) for norm in self._layers[name].norms]

    def _clear_state(self, param: Tensor, dim: int, index: Tensor, policy: str) -> None:
        state = self.optimizer.state.get(param)
        if state:
            clear_state_slices_(state, param, dim, index, policy)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict plus the wrapper's entry under ``"gxd_reset"``.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> sorted(opt.state_dict())
            ['gxd_reset', 'param_groups', 'state']
        """
        out = self.optimizer.state_dict()
        out[checkpoint.KEY] = self.reset_state_dict()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from `state_dict()` (or a plain optimizer's, with a warning).

        Everything is checked before anything changes: a malformed entry or a checkpoint from
        another architecture raises ``ValueError`` and leaves the wrapper and the inner
        optimizer as they were. An entry saved before the units were found puts the wrapper
        back in that state (they are found again on the next training pass).

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> opt.step()
            >>> saved = opt.state_dict()
            >>> opt.close()  # one wrapper per model: close it before building the next
            >>> twin = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> twin.load_state_dict(saved)
            >>> twin.steps
            1
        """
        state_dict = dict(state_dict)
        entry = state_dict.pop(checkpoint.KEY, None)
        if entry is None:
            if not self._entry_restored:
                warnings.warn(
                    "loading a plain optimizer state dict into GXDReset: the inner optimizer is "
                    "restored, GXDReset's statistics and budgets are not (restore them with "
                    "opt.load_reset_state_dict(...) first)",
                    stacklevel=2,
                )
            self._entry_restored = False
            self.optimizer.load_state_dict(state_dict)
            return
        parsed = self._check_reset_entry(entry)
        self.optimizer.load_state_dict(state_dict)
        self._apply_reset_entry(parsed)

    # -- copies -----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:  # type: ignore[override]
        state = self.__dict__.copy()
        state.pop("step", None)  # an LR scheduler's per-instance wrapper of the original's step
        state["_generator"] = self._generator.get_state()
        state["_lazy"] = None
        state["_late_handles"] = {}
        state["_watch"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator_state = state.pop("_generator")
        self.__dict__.update(state)
        self._generator = torch.Generator()
        self._generator.set_state(generator_state)
        tracker = self._tracker
        if self._closed:
            return
        if tracker is not None:
            tracker.discard()  # the copy starts between steps
            self._tracker = None
            self._install(self._layers, self._skipped, tracker)
        else:
            self._arm_discovery()

    # -- the wrapper's own state, apart from the inner optimizer's ---------------------------
    def reset_state_dict(self) -> dict[str, Any]:
        """The wrapper's own state: what `state_dict` stores under ``"gxd_reset"``.

        Tools that save only an optimizer's ``state`` and ``param_groups`` (such as
        ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``) drop that entry;
        save this next to their output and restore it with `load_reset_state_dict`.

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> entry = opt.reset_state_dict()
            >>> entry.keys() == opt.state_dict()["gxd_reset"].keys()
            True
        """
        tracker = self._tracker
        return {
            "format_version": checkpoint.FORMAT_VERSION,
            "config": self.config.to_dict(),
            "layers": None if tracker is None else checkpoint.layers_to_dict(self._layers),
            "skipped": dict(self._skipped) if tracker is not None else {},
            "stats": None if tracker is None else checkpoint.pack_stats(tracker),
            "steps": self.steps,
            "generator": self._generator.get_state(),
        }

    def load_reset_state_dict(self, entry: Mapping[str, Any]) -> None:
        """Restore the wrapper's own state saved by `reset_state_dict`; the inner optimizer's
        state is left alone.

        Call it before loading the inner state with a tool that keeps only ``state`` and
        ``param_groups``; the plain load that follows then raises no warning.

        Raises:
            ValueError: the entry is malformed or does not fit this model (nothing is changed).

        Example:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> opt.step()
            >>> entry = opt.reset_state_dict()
            >>> opt.close()
            >>> twin = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> twin.load_reset_state_dict(entry)
            >>> twin.steps
            1
        """
        self._apply_reset_entry(self._check_reset_entry(entry))
        self._entry_restored = True

    def _check_reset_entry(self, entry: object) -> checkpoint.Entry:
        """Read an entry and check it against this model and settings, changing nothing."""
        parsed = checkpoint.parse(entry)
        saved = parsed.layers
        if saved is not None:
            root = unwrap_model(self.model)
            named = dict(root.named_modules())
            current = self._layers if self._tracker is not None else None
            checkpoint.check(
                saved,
                current,
                producer_modules(root),
                named,
                self.config.reference,
                self._exclude,
            )
            if self._tracker is None:
                check_claims(self, _written(named, saved))
        return parsed

    def _apply_reset_entry(self, entry: checkpoint.Entry) -> None:
        """Restore a checked entry: layers, statistics, budgets, step count and generator."""
        changed = {
            k: (v, getattr(self.config, k) if k != "utility" else self.config.utility_name)
            for k, v in entry.config.items()
            if k in self.config.to_dict()
            and v != (getattr(self.config, k) if k != "utility" else self.config.utility_name)
        }
        if changed:
            warnings.warn(
                f"checkpoint was saved with other GXDReset settings; keeping this wrapper's: "
                f"{ {k: f'{old} -> {new}' for k, (old, new) in changed.items()} }",
                stacklevel=3,
            )
        if entry.layers is None:  # saved before discovery: back to that state
            if self._tracker is not None or self._previous is not None:
                self._unhook()
                self._tracker, self._layers, self._skipped = None, {}, {}
                self._previous = None
                if not self._closed:
                    self._arm_discovery()
        else:
            if self._tracker is None:
                self._previous = None
                self._install(entry.layers, entry.skipped)
            tracker = self._require_tracker()
            assert entry.stats is not None
            checkpoint.load_stats(tracker, entry.stats)
            tracker.steps = entry.steps
        self._generator.set_state(entry.generator)

    # -- mixed precision (see gxd_optim.amp) -------------------------------------------------
    def _amp_prepare(self) -> bool:
        """Inside ``GradScaler.step``: skip on inf/NaN, else unscale gradients and statistics.

        Returns:
            Whether the step goes ahead.
        """
        found_inf: Tensor = self.found_inf  # type: ignore[attr-defined]
        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        if bool(found_inf):
            if self._tracker is not None:
                self._tracker.discard()
            return False
        scale: Tensor | float
        if grad_scale is not None:
            amp.unscale_grads_(self.optimizer, grad_scale)
            scale = grad_scale
        elif self._grad_scaler is not None:
            scale = self._grad_scaler.get_scale()  # unscale_ already divided the gradients
        else:
            raise RuntimeError(
                "scaler.unscale_(opt) was called, so GradScaler does not tell GXDReset the loss "
                "scale its statistics carry: pass it, GXDReset(..., grad_scaler=scaler)"
            )
        if self._tracker is not None:
            amp.unscale_pending_(self._tracker, scale)
        return True


def _register(hooks: OrderedDict[int, ResetHook], hook: ResetHook) -> RemovableHandle:
    handle = RemovableHandle(hooks)
    hooks[handle.id] = hook
    return handle


def _parameters(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters an optimizer holds."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _touched(name: str, info: LayerInfo) -> tuple[str, ...]:
    """The modules a reset of layer ``name`` writes: it, its consumers and its BatchNorms."""
    return (name, *info.consumers, *info.norms)


def _all_touched(layers: Mapping[str, LayerInfo]) -> set[str]:
    return {n for name, info in layers.items() for n in _touched(name, info)}


def _written(named: Mapping[str, nn.Module], layers: Mapping[str, LayerInfo]) -> dict[str, Tensor]:
    """The parameters the resets of ``layers`` write, by qualified name."""
    return {
        f"{name}.{attr}": param
        for name in sorted(_all_touched(layers))
        if name in named
        for attr, param in _params(named[name])
    }


def _refuse_sharded(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """FSDP, DTensor and ZeroRedundancyOptimizer shard parameters: not supported yet."""
    if type(optimizer).__name__ == "ZeroRedundancyOptimizer":
        raise NotImplementedError(
            "GXDReset does not support ZeroRedundancyOptimizer yet (it shards optimizer state); "
            "wrap a plain optimizer under DistributedDataParallel instead"
        )
    for module in model.modules():
        if type(module).__name__ in {"FullyShardedDataParallel", "FSDPModule"} or any(
            base.__name__ == "FSDPModule" for base in type(module).__mro__
        ):
            raise NotImplementedError(
                "GXDReset does not support FSDP yet (fully_shard / FullyShardedDataParallel); "
                "use DistributedDataParallel, or leave resets off for sharded models"
            )
    for param in model.parameters():
        if type(param).__name__ == "DTensor" or type(param.data).__name__ == "DTensor":
            raise NotImplementedError(
                "GXDReset does not support DTensor (sharded) parameters yet; "
                "use DistributedDataParallel with regular tensors"
            )
