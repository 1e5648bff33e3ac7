"""What a wrapper can tell about its units, and the hooks around its resets.

`Inspection` holds the read-only queries of `gxd_optim.GXDReset` (utilities, predicted
costs, summaries, counts, the reset log) and the registration of reset hooks.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType

from torch import Tensor
from torch.utils.hooks import RemovableHandle

from .binding import ModelBinding
from .config import Config
from .diagnostics import RECENT_RESETS, LayerSummary, format_table, summarise_layer
from .discovery import LayerInfo
from .operator import ConsumerFold, ResetPlan
from .records import ResetHook, ResetLog
from .tracking import Tracker

__all__ = ["Inspection"]

_LOG = logging.getLogger("gxd_optim")


class Inspection:
    """The queries and reset hooks of `gxd_optim.GXDReset` (a mixin: it reads the wrapper's
    binding, settings, log and hook registries)."""

    config: Config
    _binding: ModelBinding
    _reset_log: ResetLog
    _reset_hooks: OrderedDict[int, ResetHook]
    _reset_pre_hooks: OrderedDict[int, ResetHook]

    @property
    def layers(self) -> Mapping[str, LayerInfo]:
        """Eligible producers by qualified name: ``info.num_units``, ``info.consumers``, ...

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.discover(torch.randn(2, 4))
            >>> opt.layers["0"].num_units, opt.layers["0"].consumers
            (8, ('2',))
        """
        self._binding.require_tracker()
        return MappingProxyType(self._binding.layers)

    @property
    def skipped(self) -> Mapping[str, str]:
        """Linear/Conv layers that are not eligible, and why (see `layers` for an example)."""
        self._binding.require_tracker()
        return MappingProxyType(self._binding.skipped)

    @property
    def tracker(self) -> Tracker | None:
        """The `gxd_optim.tracking.Tracker` behind the wrapper, for tests and diagnostics
        that need every statistic (``None`` until the units are found)."""
        return self._binding.tracker

    def utilities(self) -> dict[str, Tensor]:
        """Current bias-corrected utilities per layer (units never scored read 0).

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> opt.step()
            >>> opt.utilities()["0"].shape
            torch.Size([8])
        """
        tracker = self._binding.require_tracker()
        return {name: tracker.utilities(name) for name in tracker.layers}

    def predicted_cost(self, name: str) -> Tensor:
        """Signed first-order change of the latest batch's loss if each unit alone were reset.

        ``c_i = Σ_consumers Σ_{x,pos} ∂L/∂h_i · (r_i − h_i)`` with the current reference;
        costs add over a set of units. The sums are read from the consumers' gradients
        (see `gxd_optim.utilities.predicted_cost`), so the "latest batch" is whatever the
        gradients hold: call it after ``backward()`` and before the optimizer step (after the
        step the parameters have moved) and before ``zero_grad()``; with ``track_every > 1``,
        on a step that collects statistics (`collecting`).

        Raises:
            ValueError: ``name`` is not an eligible layer.
            RuntimeError: a consumer has no gradient yet, or this step collects no statistics.

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> cost = opt.predicted_cost("0")  # after backward(), before step()
            >>> cost.shape
            torch.Size([8])
        """
        self._binding.check_name(name)
        return self._binding.require_tracker().predicted_cost(name)

    def layer_summaries(self) -> list[LayerSummary]:
        """The numbers behind `summary`, one `LayerSummary` per eligible layer.

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).sum().backward(); opt.step()
            >>> first = opt.layer_summaries()[0]
            >>> (first.name, first.units, first.eligible, first.resets)
            ('0', 8, 0, 0)
        """
        tracker = self._binding.require_tracker()
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

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).sum().backward(); opt.step()
            >>> row = opt.summary().splitlines()[2]
            >>> " ".join(row.split()[:4])
            '0 8 0 0'
        """
        table = format_table(self.layer_summaries(), self._binding.skipped)
        _LOG.info("GXDReset summary\n%s", table)
        return table

    @property
    def reset_counts(self) -> dict[str, int]:
        """Units reset so far, per layer.

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.discover(torch.randn(2, 4))
            >>> opt.reset_counts
            {'0': 0}
        """
        tracker = self._binding.require_tracker()
        return {name: layer.resets for name, layer in tracker.layers.items()}

    @property
    def collecting(self) -> bool:
        """Whether the coming step collects statistics: always with ``track_every=1``, else
        on one step in ``track_every`` (`predicted_cost` works after its backward pass).

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model, track_every=2)
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> opt.collecting, opt.step(), opt.collecting
            (True, None, False)
        """
        return self._binding.collecting

    @property
    def steps(self) -> int:
        """Committed steps: optimizer steps that followed at least one backward pass (with
        ``track_every=k``, the steps whose statistics were collected, each counted ``k`` times).

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.step()  # no backward pass: nothing to commit
            >>> opt.steps
            0
        """
        return self._binding.steps

    @property
    def reset_log(self) -> ResetLog:
        """The latest resets, oldest first, one record per layer and step.

        At most `gxd_optim.reset.LOG_LENGTH` are kept.

        A read-only sequence of `gxd_optim.records.ResetRecord`; its ``total`` counts every
        reset ever logged. ``predicted`` is ``Σ c_i`` over the reset units from the gradients
        of that step, before the inner update (NaN where none were fresh); ``realised`` is
        filled in by `gxd_optim.diagnostics.measure_realised_cost`. The log is a diagnostic:
        it is not saved in `state_dict`.

        Examples:
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

        Examples:
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

        Examples:
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

    def reset_plan(self, name: str) -> ResetPlan:
        """What a reset of layer ``name`` writes now, with the references it would fold.

        `gxd_optim.operator.apply_reset_` carries a plan out; `gxd_optim.copies` applies the
        wrapper's plans to a copy of the model.

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> opt.discover(torch.randn(2, 4))
            >>> plan = opt.reset_plan("0")
            >>> plan.modules, plan.consumers[0].reference.shape
            (('0', '2'), torch.Size([8]))
        """
        self._binding.check_name(name)
        return self._plan(name)

    def _plan(self, name: str, snapshot: bool = True) -> ResetPlan:
        """The plan of a reset of ``name``; its references are copies with ``snapshot``, else
        the live ones (for a reset applied at once, before its statistics restart)."""
        stats = self._binding.require_tracker().layers[name]
        folds = tuple(
            ConsumerFold(
                e.edge.consumer,
                e.edge.columns_per_unit,
                (e.reference.clone() if snapshot else e.reference) if e.mean else None,
                e.edge.norm,
            )
            for e in stats.edges
        )
        return ResetPlan(name, folds, stats.info.norms, stats.info.partners)


def _register(hooks: OrderedDict[int, ResetHook], hook: ResetHook) -> RemovableHandle:
    handle = RemovableHandle(hooks)
    hooks[handle.id] = hook
    return handle
