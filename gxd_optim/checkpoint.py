"""The wrapper's own entry in ``GXDReset.state_dict()``: packing, checking and restoring.

The entry holds the discovered layer structure, so a checkpoint restores into a fresh model
and wrapper without a forward pass, and the statistics, budgets, counts, the statistics of
backward passes no step has committed yet and the generator state, so training resumes bit
for bit, mid-accumulation too.

Loading is check-then-apply: `parse` reads and checks the whole entry (types, shapes, finite
values, the generator state, the model's architecture) and raises before anything changes;
only a parsed `Entry` is applied.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .binding import ModelBinding, written_params
from .config import Config
from .delegating import DelegatingOptimizer
from .discovery import Edge, LayerInfo, edge_for, num_units, producer_modules, unwrap_model
from .selection import BudgetSelector
from .watch import check_claims

__all__ = [
    "FORMAT_VERSION",
    "KEY",
    "Checkpointing",
    "Entry",
    "build",
    "check",
    "layers_from_dict",
    "layers_to_dict",
    "parse",
    "read",
    "restore",
]

KEY = "gxd_reset"
"""Key of the wrapper's entry in the optimizer state dict."""

FORMAT_VERSION = 2
"""Version 2 adds the pending statistics; entries of version 1 (without them) still load."""

_KEYS = ("format_version", "config", "layers", "skipped", "stats", "steps", "generator")


def layers_to_dict(layers: Mapping[str, LayerInfo]) -> dict[str, Any]:
    """Plain-data form of the discovered layers."""
    return {
        name: {
            "num_units": info.num_units,
            "edges": [[e.consumer, e.columns_per_unit, e.reference, e.note] for e in info.edges],
            "norms": list(info.norms),
            "path": list(info.path),
        }
        for name, info in layers.items()
    }


def layers_from_dict(data: Mapping[str, Any]) -> dict[str, LayerInfo]:
    """Inverse of :func:`layers_to_dict`."""
    return {
        name: LayerInfo(
            name,
            int(d["num_units"]),
            tuple(Edge(str(c), int(k), str(r), str(n)) for c, k, r, n in d["edges"]),
            tuple(d["norms"]),
            tuple(d["path"]),
        )
        for name, d in data.items()
    }


@dataclass(frozen=True)
class Entry:
    """A checked entry, ready to apply.

    Attributes:
        config: the settings it was saved with (compared, never applied).
        layers: the discovered layers, or ``None`` if it was saved before discovery.
        skipped: the layers that were not eligible, and why.
        stats: per-layer statistics (`pack_stats`), ``None`` with ``layers``.
        steps: committed steps.
        generator: the state of the wrapper's generator.
    """

    config: Mapping[str, Any]
    layers: dict[str, LayerInfo] | None
    skipped: dict[str, str]
    stats: Mapping[str, Any] | None
    steps: int
    generator: Tensor


def parse(entry: object) -> Entry:
    """Read and check the form of a ``"gxd_reset"`` entry (not yet against a model).

    Raises:
        ValueError: naming what is missing or malformed.
    """
    if not isinstance(entry, Mapping):
        raise ValueError(f"the GXDReset checkpoint entry is a {type(entry).__name__}, not a dict")
    version = entry.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise ValueError(f"unsupported GXDReset checkpoint format {version!r}")
    missing = [key for key in _KEYS if key not in entry]
    if missing:
        raise ValueError(f"the GXDReset checkpoint entry lacks {missing}")
    config = entry["config"]
    if not isinstance(config, Mapping):
        raise ValueError("the GXDReset checkpoint's config is not a dict")
    skipped = entry["skipped"]
    if not isinstance(skipped, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in skipped.items()
    ):
        raise ValueError("the GXDReset checkpoint's skipped layers are not a {name: reason} dict")
    steps = _count("steps", entry["steps"])
    generator = entry["generator"]
    if not isinstance(generator, Tensor) or generator.dtype != torch.uint8:
        raise ValueError("the GXDReset checkpoint's generator state is not a uint8 tensor")
    try:
        torch.Generator().set_state(generator)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"the GXDReset checkpoint's generator state is corrupt: {error}") from None
    layers: dict[str, LayerInfo] | None = None
    stats = entry["stats"]
    if entry["layers"] is not None:
        try:
            layers = layers_from_dict(entry["layers"])
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"the GXDReset checkpoint's layers are malformed ({error!r})"
            ) from None
        if not isinstance(stats, Mapping):
            raise ValueError("the GXDReset checkpoint has layers but no statistics")
        for name, info in layers.items():
            if name not in stats:
                raise ValueError(f"checkpoint has no statistics for layer {name!r}")
            _check_layer_stats(name, info, stats[name], version == FORMAT_VERSION)
    elif stats is not None:
        raise ValueError("the GXDReset checkpoint has statistics but no layers")
    return Entry(config, layers, dict(skipped), stats, steps, generator)


def _count(what: str, value: object) -> int:
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"the GXDReset checkpoint's {what} must be a count >= 0, got {value!r}")
    return int(value)


def _check_layer_stats(name: str, info: LayerInfo, stats: object, pending: bool) -> None:
    """Shapes, dtypes and finite values of one layer's saved statistics."""
    where = f"checkpoint statistics of {name!r}"
    if not isinstance(stats, Mapping):
        raise ValueError(f"{where} are not a dict")
    edges = len(info.edges)
    per_layer = ["utility_ema", "weight_ema", "age"] + (["pending_abs"] if pending else [])
    per_edge = ["mean_ema", "edge_weight_ema"] + (["pending_h"] if pending else [])
    tensors: list[tuple[str, object]] = [(key, stats.get(key)) for key in per_layer]
    for key in per_edge:
        values = stats.get(key)
        if not isinstance(values, Sequence) or len(values) != edges:
            raise ValueError(f"{where}: {key} must hold one tensor per consumer ({edges})")
        tensors += [(f"{key}[{i}]", value) for i, value in enumerate(values)]
    for key, value in tensors:
        if not isinstance(value, Tensor) or tuple(value.shape) != (info.num_units,):
            raise ValueError(f"{where} do not match its {info.num_units} units ({key})")
        if key == "age":
            if value.is_floating_point() or bool((value < 0).any()):
                raise ValueError(f"{where}: age must hold integers >= 0")
        elif not value.is_floating_point() or not bool(value.isfinite().all()):
            raise ValueError(f"{where}: {key} is not finite")
    for key in ("weight_ema", "edge_weight_ema"):
        values = [stats[key]] if key == "weight_ema" else list(stats[key])
        if any(bool(((v < 0) | (v > 1)).any()) for v in values):
            raise ValueError(f"{where}: {key} must lie in [0, 1]")
    budget = stats.get("budget")
    if isinstance(budget, Tensor) and budget.numel() == 1:
        budget = float(budget)
    if (
        isinstance(budget, bool)
        or not isinstance(budget, numbers.Real)
        or not math.isfinite(budget)
        or budget < 0
    ):
        raise ValueError(f"{where}: budget must be a finite number >= 0, got {budget!r}")
    _count(f"resets of {name!r}", stats.get("resets"))
    if pending:
        _count(f"pending samples of {name!r}", stats.get("pending_samples"))
        counts = stats.get("pending_count")
        if not isinstance(counts, Sequence) or len(counts) != edges:
            raise ValueError(f"{where}: pending_count must hold one count per consumer")
        for count in counts:
            _count(f"pending counts of {name!r}", count)


def check(
    saved: Mapping[str, LayerInfo],
    current: Mapping[str, LayerInfo] | None,
    modules: Mapping[str, nn.Module],
    named: Mapping[str, nn.Module],
    reference: str,
    exclude: Sequence[str],
) -> None:
    """Refuse a checkpoint whose layers do not fit this model and these settings.

    When the wrapper has not discovered the model yet, the checkpoint's layers are taken as
    they are after these checks (names, sizes, column maps, references, ``exclude=``): the
    paths between layers are trusted. Call ``opt.discover(example)`` before loading to
    have them compared with the model's own.

    Raises:
        ValueError: naming the first mismatch found.
    """
    if current is not None and dict(saved) != dict(current):
        missing = sorted(set(current) - set(saved))
        extra = sorted(set(saved) - set(current))
        differing = sorted(n for n in set(saved) & set(current) if saved[n] != current[n])
        raise ValueError(
            "checkpoint is from another architecture: "
            f"layers only in this model {missing}, only in the checkpoint {extra}, "
            f"differing {[(n, saved[n], current[n]) for n in differing]}"
        )
    for name, info in saved.items():
        module = modules.get(name)
        if module is None:
            raise ValueError(
                f"checkpoint is from another architecture: no Linear/Conv layer {name!r}"
            )
        if num_units(module) != info.num_units:
            raise ValueError(
                f"checkpoint is from another architecture: {name!r} has "
                f"{num_units(module)} units here, {info.num_units} in the checkpoint"
            )
        touched = [name, *info.consumers]
        if any(n in exclude for n in touched):
            raise ValueError(
                f"checkpoint resets layer {name!r} (consumers {list(info.consumers)}), "
                f"but this wrapper excludes {sorted(set(touched) & set(exclude))}"
            )
        for edge in info.edges:
            consumer = modules.get(edge.consumer)
            if consumer is None:
                raise ValueError(
                    f"checkpoint is from another architecture: no consumer {edge.consumer!r}"
                )
            rebuilt = edge_for(consumer, edge.consumer, info.num_units, reference)
            if isinstance(rebuilt, Edge) and rebuilt.reference != edge.reference:
                raise ValueError(
                    f"checkpoint uses a {edge.reference!r} reference for {name!r} -> "
                    f"{edge.consumer!r}, this wrapper a {rebuilt.reference!r} one "
                    f"(reference={reference!r})"
                )
            if not isinstance(rebuilt, Edge) or rebuilt.columns_per_unit != edge.columns_per_unit:
                why = rebuilt if isinstance(rebuilt, str) else "the column map differs"
                raise ValueError(
                    f"checkpoint is from another architecture: {name!r} -> {edge.consumer!r} "
                    f"does not fit ({why})"
                )
        for norm in info.norms:
            bn = named.get(norm)
            if not isinstance(bn, _BatchNorm) or bn.num_features != info.num_units:
                raise ValueError(
                    f"checkpoint is from another architecture: no BatchNorm {norm!r} "
                    f"of {info.num_units} features"
                )


def build(
    config: Config, binding: ModelBinding, selector: BudgetSelector, generator: torch.Generator
) -> dict[str, Any]:
    """The entry of a wrapper: its settings, layers, statistics, budgets, steps, generator."""
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
    """Apply an entry that `read` checked: layers, statistics, budgets, steps and generator.

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
    if entry.layers is None:  # saved before discovery: back to that state
        binding.forget()
    else:
        if binding.tracker is None:
            binding.install(entry.layers, entry.skipped, fresh=True)
        tracker = binding.require_tracker()
        assert entry.stats is not None
        tracker.load_stats_dict(entry.stats)
        selector.budgets = {name: float(s["budget"]) for name, s in entry.stats.items()}
        tracker.steps = entry.steps
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

        Example:
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
        self.apply_own_state(self.check_own_state(entry))
        self._entry_restored = True

    own_state_dict = reset_state_dict

    def check_own_state(self, entry: object) -> Entry:
        """Read an entry and check it against this model and settings, changing nothing."""
        return read(entry, self._binding)

    def apply_own_state(self, checked: Entry) -> None:
        """Restore a checked entry: layers, statistics, budgets, step count and generator."""
        restore(checked, self._binding, self._selector, self._generator)

    def load_plain_state_dict(self, state_dict: dict[str, Any]) -> None:
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
