"""The wrapper's own entry in ``GXDReset.state_dict()``: built, checked and restored.

The entry holds the discovered layer structure, so a checkpoint restores into a fresh model
and wrapper without a forward pass, and the statistics, budgets, counts, the statistics of
backward passes no step has committed yet and the generator state, so training resumes bit
for bit, mid-accumulation too.

Loading is check-then-apply: `parse` reads and checks the whole entry (types, shapes, finite
values, the generator state, the model's architecture) and raises before anything changes;
only a parsed `Entry` is applied.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..binding import ModelBinding, written_params
from ..config import Config
from ..delegating import DelegatingOptimizer
from ..discovery import producer_modules, unwrap_model
from ..selection import BudgetSelector
from ..watch import check_claims
from .format import FORMAT_VERSION, KEY, Entry, check, layers_to_dict, parse

__all__ = ["Checkpointing", "build", "read", "restore"]


def build(
    config: Config, binding: ModelBinding, selector: BudgetSelector, generator: torch.Generator
) -> dict[str, Any]:
    """The entry of a wrapper: its settings, layers, statistics, budgets, steps, phase and
    generator."""
    tracker = binding.tracker
    stats = None
    if tracker is not None:
        stats = tracker.stats_dict()
        for name, layer_stats in stats.items():
            layer_stats["budget"] = selector.budgets.get(name, 0.0)
    return {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "layers": None if tracker is None else layers_to_dict(binding.layers),
        "skipped": dict(binding.skipped) if tracker is not None else {},
        "stats": stats,
        "steps": binding.steps,
        "phase": binding.phase,
        "generator": generator.get_state(),
    }


def read(entry: object, binding: ModelBinding) -> Entry:
    """Parse an entry and check it against the bound model and settings, changing nothing.

    Raises:
        ValueError: the entry is malformed, does not fit the model, or names layers another
            open wrapper resets.
    """
    parsed = parse(entry)
    saved = parsed.layers
    if saved is not None:
        root = unwrap_model(binding.model)
        named = dict(root.named_modules())
        current = binding.layers if binding.tracker is not None else None
        modules = producer_modules(root)
        check(saved, current, modules, named, binding.config.reference, binding.exclude)
        if binding.tracker is None:
            check_claims(binding.owner, written_params(named, saved))
    return parsed


def restore(
    entry: Entry, binding: ModelBinding, selector: BudgetSelector, generator: torch.Generator
) -> None:
    """Apply an entry that `read` checked: layers, statistics, budgets, steps, phase and
    generator.

    Settings saved with other values than the wrapper's are reported, not applied.
    """
    mine = binding.config.to_dict()
    changed = {
        k: f"{v} -> {mine[k]}" for k, v in entry.config.items() if k in mine and v != mine[k]
    }
    if changed:
        warnings.warn(
            f"checkpoint was saved with other GXDReset settings; keeping this wrapper's: {changed}",
            stacklevel=4,
        )
    if binding.closed:
        pass  # a closed wrapper tracks nothing and hooks nothing: no statistics to restore
    elif entry.layers is None:  # saved before discovery: back to that state
        binding.forget()
    else:
        if binding.tracker is None:
            binding.install(entry.layers, entry.skipped, fresh=True)
        tracker = binding.require_tracker()
        assert entry.stats is not None
        tracker.load_stats_dict(entry.stats)
        selector.budgets = {name: float(s["budget"]) for name, s in entry.stats.items()}
        tracker.steps = entry.steps
    binding.set_phase(entry.phase)
    generator.set_state(entry.generator)


class Checkpointing(DelegatingOptimizer):
    """The checkpoint methods of `gxd_optim.GXDReset` (a mixin over its binding, selector and
    generator): its entry is built by `build`, checked by `read`, applied by `restore`."""

    KEY = KEY
    config: Config
    _binding: ModelBinding
    _selector: BudgetSelector
    _generator: torch.Generator
    _entry_restored: bool = False  # load_reset_state_dict ran: a plain load needs no warning

    def reset_state_dict(self) -> dict[str, Any]:
        """The wrapper's own state: what `state_dict` stores under ``"gxd_reset"``.

        Tools that save only an optimizer's ``state`` and ``param_groups`` (such as
        ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``) drop that entry;
        save this next to their output and restore it with `load_reset_state_dict`.
        ``load_state_dict`` checks everything before anything changes: a malformed entry or a
        checkpoint from another architecture raises ``ValueError`` and leaves the wrapper and
        the inner optimizer as they were; an entry saved before the units were found puts the
        wrapper back in that state.

        Examples:
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> model(torch.randn(16, 4)).pow(2).mean().backward()
            >>> opt.step()
            >>> saved = opt.state_dict()  # the inner state, and this under "gxd_reset"
            >>> opt.close()  # one wrapper per model: close it before building the next
            >>> twin = GXDReset(torch.optim.SGD(model.parameters(), lr=0.1), model)
            >>> twin.load_state_dict(saved)
            >>> twin.steps
            1
        """
        return build(self.config, self._binding, self._selector, self._generator)

    def load_reset_state_dict(self, entry: Mapping[str, Any]) -> None:
        """Restore the wrapper's own state saved by `reset_state_dict`, leaving the inner
        optimizer's alone; a plain ``load_state_dict`` that follows then warns of nothing.

        Raises:
            ValueError: the entry is malformed or does not fit this model (nothing is changed).
        """
        self._apply_own_state(self._check_own_state(entry))
        self._entry_restored = True

    _own_state_dict = reset_state_dict

    def _check_own_state(self, entry: object) -> Entry:
        """Read an entry and check it against this model and settings, changing nothing."""
        return read(entry, self._binding)

    def _apply_own_state(self, checked: Entry) -> None:
        """Restore a checked entry: layers, statistics, budgets, step count and generator."""
        restore(checked, self._binding, self._selector, self._generator)

    def _load_plain_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a plain optimizer's state dict, warning that the wrapper's state is not in it."""
        if not self._entry_restored:
            warnings.warn(
                "loading a plain optimizer state dict into GXDReset: the inner optimizer is "
                "restored, GXDReset's statistics and budgets are not (restore them with "
                "opt.load_reset_state_dict(...) first)",
                stacklevel=3,
            )
        self._entry_restored = False
        self.optimizer.load_state_dict(state_dict)

    def __getstate__(self) -> dict[str, Any]:  # type: ignore[override]
        state = super().__getstate__()
        state["_generator"] = self._generator.get_state()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._generator = torch.Generator()
        self._generator.set_state(state["_generator"])
