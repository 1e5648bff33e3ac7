"""The wrapper's own entry in ``GXDReset.state_dict()``: packing, checking and restoring.

The entry holds the discovered layer structure, so a checkpoint restores into a fresh model
and wrapper without a forward pass, and the statistics, budgets, counts and the generator
state, so training resumes bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .discovery import Edge, LayerInfo, _edge_for, _num_units
from .tracking import Tracker

__all__ = [
    "FORMAT_VERSION",
    "KEY",
    "check",
    "layers_from_dict",
    "layers_to_dict",
    "load_stats",
    "pack_stats",
]

KEY = "gxd_reset"
"""Key of the wrapper's entry in the optimizer state dict."""

FORMAT_VERSION = 1


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


def check(
    saved: Mapping[str, LayerInfo],
    current: Mapping[str, LayerInfo] | None,
    modules: Mapping[str, nn.Module],
    named: Mapping[str, nn.Module],
    stats: Mapping[str, Any],
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
        if _num_units(module) != info.num_units:
            raise ValueError(
                f"checkpoint is from another architecture: {name!r} has "
                f"{_num_units(module)} units here, {info.num_units} in the checkpoint"
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
            rebuilt = _edge_for(consumer, edge.consumer, info.num_units, reference)
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
        layer_stats = stats.get(name)
        if layer_stats is None:
            raise ValueError(f"checkpoint has no statistics for layer {name!r}")
        shapes = [tuple(layer_stats[k].shape) for k in ("utility_ema", "weight_ema", "age")]
        per_edge = [*layer_stats["mean_ema"], *layer_stats["edge_weight_ema"]]
        shapes += [tuple(m.shape) for m in per_edge]
        if any(s != (info.num_units,) for s in shapes) or len(per_edge) != 2 * len(info.edges):
            raise ValueError(
                f"checkpoint statistics of {name!r} do not match its {info.num_units} units"
            )


def pack_stats(tracker: Tracker) -> dict[str, Any]:
    """Copies of every statistic that influences future training."""
    return {
        name: {
            "utility_ema": layer.utility_ema.detach().clone(),
            "weight_ema": layer.weight_ema.detach().clone(),
            "age": layer.age.detach().clone(),
            "mean_ema": [e.mean_ema.detach().clone() for e in layer.edges],
            "edge_weight_ema": [e.weight_ema.detach().clone() for e in layer.edges],
            "budget": layer.budget,
            "resets": layer.resets,
        }
        for name, layer in tracker.layers.items()
    }


def load_stats(tracker: Tracker, stats: Mapping[str, Any]) -> None:
    """Restore statistics packed by :func:`pack_stats` (already checked)."""
    with torch.no_grad():
        for name, layer in tracker.layers.items():
            saved = stats[name]
            for key in ("utility_ema", "weight_ema", "age"):
                _copy(getattr(layer, key), saved[key])
            layer.recount_at = 0  # ages were replaced
            layer.budget = float(saved["budget"])
            layer.resets = int(saved["resets"])
            for edge, mean, norm in zip(
                layer.edges, saved["mean_ema"], saved["edge_weight_ema"], strict=True
            ):
                _copy(edge.mean_ema, mean)
                _copy(edge.weight_ema, norm)
            tracker.refresh_references(layer)
        tracker.discard()


def _copy(dst: Tensor, src: Tensor) -> None:
    dst.copy_(src.to(device=dst.device, dtype=dst.dtype))
