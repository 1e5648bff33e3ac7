"""GXDReset: the optimizer wrapper that scores units with GXD and resets the cheapest.

The façade over the pipeline: `gxd_optim.binding` (which units, kept current as the model
changes) → `gxd_optim.tracking` (their statistics) → `gxd_optim.selection` (which to reset) →
`gxd_optim.operator` (the reset) → `gxd_optim.records` (what was done).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import amp, checkpoint
from .binding import ModelBinding
from .checkpoint import Checkpointing
from .config import Config, check_wrap
from .discovery import explicit_layers
from .inspection import Inspection
from .operator import apply_reset_, unit_indices
from .records import ResetHook, ResetLog, ResetRecord
from .sharded import optimizer_state
from .tracking import Tracker
from .utilities import UtilityFn

__all__ = ["LOG_LENGTH", "GXDReset"]

_LOG = logging.getLogger("gxd_optim")

LOG_LENGTH = 10_000
"""How many of the latest resets `GXDReset.reset_log` keeps."""

_Due = list[tuple[str, Tensor, float]]  # (layer, units, predicted cost) to reset this step


class GXDReset(Inspection, Checkpointing):
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
    entries restored, optimizer state slices cleared (`gxd_optim.operator.apply_reset_`).

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
        threshold: ``τ`` of ``selection="threshold"``; ``None`` means 0.1.
        interval: ``F`` of ``selection="threshold"``, in steps; ``None`` means 1000.
        track_every: collect statistics on one step in this many, and choose and reset
            only on those steps; the hooks are off the model in between, so those steps
            cost what a bare step costs. Each such step stands for ``track_every`` steps:
            the EMAs decay by ``decay ** track_every``, units age by ``track_every`` steps
            and the budget grows by ``track_every × replacement_rate × eligible`` (a step
            resets at most every eligible unit). For small networks (reinforcement-learning
            policies), where the hooks cost more than the arithmetic; the running means rest
            on fewer batches. 1 (default) collects on every step.
        grad_scaler: the ``torch.amp.GradScaler`` of the training loop; needed only when you
            call ``scaler.unscale_(opt)`` yourself (e.g. to clip gradients), so that the
            statistics can be unscaled too (see `gxd_optim.amp`).

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = GXDReset(torch.optim.Adam(model.parameters(), lr=1e-3), model)
        >>> loss = model(torch.randn(16, 4)).pow(2).mean()
        >>> opt.zero_grad(); loss.backward(); opt.step()
        >>> dict(opt.layers)["0"].consumers
        ('2',)
    """

    KEY = checkpoint.KEY
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
        track_every: int = 1,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if isinstance(optimizer, GXDReset):
            raise TypeError("optimizer is already a GXDReset; wrap the inner optimizer once")
        excluded = check_wrap(optimizer, model, exclude)
        config = Config(
            utility, reference, replacement_rate, maturity, decay, seed, state_policy,
            selection, threshold, interval, track_every,
        )  # fmt: skip
        super().__init__(optimizer)
        self.model, self.config = model, config
        self._selector = config.selector()
        self._binding = ModelBinding(model, optimizer, config, excluded, self._selector, self)
        if layers is not None:  # checked before anything is hooked
            found = explicit_layers(model, layers, config.reference, self._binding.checks())
        self._generator = torch.Generator().manual_seed(config.seed)
        self._reset_hooks: OrderedDict[int, ResetHook] = OrderedDict()
        self._reset_pre_hooks: OrderedDict[int, ResetHook] = OrderedDict()
        self._reset_log = ResetLog(LOG_LENGTH)
        self._grad_scaler = grad_scaler
        self._entry_restored = False  # load_reset_state_dict ran: a plain load needs no warning
        if layers is not None:
            self._binding.install(*found)
        else:
            self._binding.wait()

    def __repr__(self) -> str:
        return f"GXDReset({self.optimizer!r}, {self.config})"

    # -- the units ---------------------------------------------------------------------------
    def discover(self, *args: Any, **kwargs: Any) -> None:
        """Find the units now from one example batch instead of at the first training pass.

        The example forward leaves no trace: buffers (BatchNorm statistics) and random
        number generators are restored afterwards.

        Raises:
            ValueError: if no layer is eligible (the message lists why each was skipped), or
                another open `GXDReset` already resets these layers.

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.discover(torch.randn(2, 4))
            >>> list(opt.layers), dict(opt.skipped)
            (['0'], {'2': "its units are part of the model's output"})
        """
        self._binding.discover(args, kwargs)

    def close(self) -> None:
        """Remove every hook from the model; the wrapper then only steps the inner optimizer.

        Call this before wrapping the same model again (e.g. a new optimizer per task).

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.discover(torch.randn(2, 4))
            >>> opt.close()  # the model has no hooks of this wrapper any more
            >>> opt.step()  # still steps the inner optimizer
        """
        self._binding.close()

    # -- the optimizer interface -------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Step the inner optimizer: commit this step's statistics, choose, reset.

        Statistics of the backward passes since the last step count only now; a step that saw
        no backward pass (e.g. the zero-gradient step of a checkpoint loader) resets nothing,
        and neither does one whose statistics overflow (they are left as they were). The
        units to reset are chosen, and their predicted cost recorded in `reset_log`, before
        the inner optimizer moves the weights; they are reset after it. If the inner step
        raises, the commit is undone: nothing is committed, spent or reset. With a
        ``closure`` (which runs backward inside the inner step) everything happens after it.
        With ``track_every=k``, this happens on one step in ``k``; the steps in between
        step the inner optimizer alone. The cycle moves on with each step, except a step
        that was to collect but saw no backward pass, and a step with every learning rate
        and every gradient at 0 (the state-initialising step of
        ``torch.distributed.checkpoint``).

        Raises:
            RuntimeError: the model's units are not known yet but the optimizer has
                gradients of its layers: the training pass never ran the model's modules in
                training mode (nothing is stepped).

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.zero_grad()
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> opt.step()
            >>> opt.steps
            1
        """
        binding, tracker, due, committed = self._binding, None, [], []
        try:
            if getattr(self, "found_inf", None) is not None and not self._amp_ready():
                return None  # GradScaler found inf/NaN gradients: skip, reset nothing
            binding.settle(stepping=True)
            binding.refuse_unseen_gradients()
            counted = binding.collecting  # else a step between those whose statistics count
            tracker = binding.current_tracker() if counted and not binding.closed else None
            if closure is None and counted:
                committed = self._commit(tracker)
                due = self._choose(committed)
            loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        except BaseException:
            if tracker is not None:
                tracker.rollback()  # the step did not happen: neither did the commit
                self._selector.rollback()
            for attr in ("found_inf", "grad_scale"):  # GradScaler deletes them only after
                self.__dict__.pop(attr, None)
            raise
        if not counted:
            if not _state_initialising(self.optimizer):
                binding.advance()
            return loss
        if closure is not None:
            binding.settle(stepping=True)
            committed = self._commit(binding.tracker)
            due = self._choose(committed)
        if binding.tracker is not None:
            binding.tracker.finish()
            self._selector.finish()
        self._apply(due)
        if committed:  # a step that saw no backward pass leaves the collection to the next
            binding.advance()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the inner optimizer's gradients and drop statistics no step has committed."""
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self._binding.settle(stepping=False)
        tracker = self._binding.tracker
        if tracker is not None and tracker.collecting:
            tracker.discard()

    def _commit(self, tracker: Tracker | None) -> list[str]:
        """Commit the pending statistics; the layers that had any. A layer that saw no data
        may have left the model: then nothing is committed and the units are found again."""
        if tracker is None or self._binding.closed:
            return []
        self._selector.begin()
        committed = tracker.commit()
        if len(committed) < len(tracker.layers):  # only a layer that saw no data can have left
            moved = self._binding.moved(set(tracker.layers).difference(committed))
            if moved is not None:
                tracker.rollback()
                self._binding.retire(moved)
                return []
        return committed

    def _choose(self, committed: list[str]) -> _Due:
        """The units due for a reset, with their predicted cost (read from the gradients now,
        before the inner optimizer moves the weights)."""
        tracker = self._binding.tracker
        due = []
        for name in committed:
            assert tracker is not None
            index = self._selector.choose(name, tracker, tracker.overflowed)
            if index is not None and index.numel():
                due.append((name, index, tracker.predicted_total(name, index)))
        return due

    def _apply(self, due: _Due) -> None:
        """Reset what is due, unless the model changed under a layer: then find units again."""
        for name, index, predicted in due:
            why = self._binding.unwritable(name)
            if why:
                self._binding.retire(why)
                return
            self._reset(name, index, predicted, chosen=True)

    def _reset(self, name: str, index: Tensor, predicted: float, chosen: bool = False) -> None:
        """Reset units ``index`` of layer ``name`` (``chosen``: by the selector, among the
        eligible units) and record it."""
        tracker = self._binding.require_tracker()
        for hook in list(self._reset_pre_hooks.values()):
            hook(name, index.clone())
        named = self._binding.touched_modules(name)  # `unwritable` checked them just now
        policy = self.config.state_policy
        state = optimizer_state(self.optimizer)  # ZeroRedundancyOptimizer: this rank's
        with torch.no_grad():  # one switch for every write below
            apply_reset_(
                named, self._plan(name, snapshot=False), index, self._generator, state, policy
            )
            tracker.restart(name, index, eligible=chosen)
        tracker.layers[name].resets += int(index.numel())
        self._reset_log.append(ResetRecord(tracker.steps, name, int(index.numel()), predicted))
        for hook in list(self._reset_hooks.values()):
            hook(name, index.clone())

    def _amp_ready(self) -> bool:
        found_inf: Tensor = self.found_inf  # type: ignore[attr-defined]
        grad_scale = getattr(self, "grad_scale", None)
        binding = self._binding
        tracker = binding.tracker if binding.collecting else None  # else nothing to unscale
        return amp.prepare_step(self.optimizer, found_inf, grad_scale, self._grad_scaler, tracker)

    # -- manual resets -----------------------------------------------------------------------
    def reset_units(self, name: str, indices: Tensor | Sequence[int]) -> None:
        """Apply the reset operator to these units of layer ``name`` now.

        Raises:
            ValueError: unknown layer, indices that are not integers in ``[0, num_units)``,
                or a layer the reset touches is frozen or no longer in the model.
            RuntimeError: the model changed since its units were found (they are found
                again on the next training pass).

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> opt.reset_units("0", [1, 5])
            >>> opt.reset_counts["0"], float(model[2].weight[:, [1, 5]].detach().abs().sum())
            (2, 0.0)
        """
        self._binding.check_name(name)
        index = unit_indices(indices, self._binding.layers[name].num_units, name)
        if not index.numel():
            return
        why = self._binding.unwritable(name)
        if why:
            raise ValueError(f"cannot reset units of {name!r}: {why}")
        self._reset(name, index, self._binding.require_tracker().predicted_total(name, index))


def _state_initialising(optimizer: torch.optim.Optimizer) -> bool:
    """Whether this is a step that ``torch.distributed.checkpoint`` takes to create the
    optimizer's state: every learning rate 0 and every gradient zero. (A learning rate in a
    tensor off the CPU is not read, and the gradients only at learning rate 0: reading them
    waits for the device.)"""
    for group in optimizer.param_groups:
        lr = group.get("lr")
        if isinstance(lr, Tensor):
            if lr.device.type != "cpu" or lr.numel() != 1:
                return False
            lr = float(lr)
        if not isinstance(lr, (int, float)) or lr != 0:
            return False
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
    return not any(bool(g.any()) for g in grads if g is not None)
