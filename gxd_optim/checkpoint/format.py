"""The format of the ``"gxd_reset"`` entry: plain-data layers, and the checks every load
runs before anything changes (`parse` for the entry's form, `check` against the model)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..discovery import PADDED, Edge, LayerInfo, edge_for, num_units

__all__ = [
    "FORMAT_VERSION",
    "KEY",
    "Entry",
    "check",
    "layers_from_dict",
    "layers_to_dict",
    "parse",
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
            "edges": [
                [e.consumer, e.columns_per_unit, e.reference, e.note, e.norm] for e in info.edges
            ],
            "norms": list(info.norms),
            "path": list(info.path),
            "partners": list(info.partners),
        }
        for name, info in layers.items()
    }


def layers_from_dict(data: Mapping[str, Any]) -> dict[str, LayerInfo]:
    """Inverse of :func:`layers_to_dict`."""
    return {
        name: LayerInfo(
            name,
            int(d["num_units"]),
            tuple(Edge(*_edge_fields(edge)) for edge in d["edges"]),
            tuple(d["norms"]),
            tuple(d["path"]),
            tuple(str(p) for p in d.get("partners", ())),
        )
        for name, d in data.items()
    }


def _edge_fields(edge: Sequence[Any]) -> tuple[str, int, str, str, str]:
    """An edge's fields (entries saved before BatchNorm folds have four)."""
    consumer, k, reference, note, *norm = edge
    if len(norm) > 1:
        raise ValueError(f"an edge has {len(edge)} fields")
    return str(consumer), int(k), str(reference), str(note), str(norm[0]) if norm else ""


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
        phase: steps since the last whose statistics were collected (``track_every``; 0 in
            entries saved before it existed).
    """

    config: Mapping[str, Any]
    layers: dict[str, LayerInfo] | None
    skipped: dict[str, str]
    stats: Mapping[str, Any] | None
    steps: int
    generator: Tensor
    phase: int = 0


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
    phase = _count("phase", entry.get("phase", 0))
    return Entry(config, layers, dict(skipped), stats, steps, generator, phase)


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
        touched = [name, *info.partners, *info.consumers]
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
            padded = edge.note == PADDED
            rebuilt = edge_for(
                consumer, edge.consumer, info.num_units, reference, edge.norm, padded
            )
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
        for partner in info.partners:
            module = modules.get(partner)
            if module is None or num_units(module) != info.num_units:
                raise ValueError(
                    f"checkpoint is from another architecture: no gate partner {partner!r} of "
                    f"{info.num_units} units"
                )
        for norm in (*info.norms, *(e.norm for e in info.edges if e.norm)):
            bn = named.get(norm)
            if not isinstance(bn, _BatchNorm) or bn.num_features != info.num_units:
                raise ValueError(
                    f"checkpoint is from another architecture: no BatchNorm {norm!r} "
                    f"of {info.num_units} features"
                )
