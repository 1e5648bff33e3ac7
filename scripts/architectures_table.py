"""Which units GXDReset can reset in the architectures people train: a table for the docs.

Builds each model from a small transformers config (random weights, nothing downloaded), finds
its units with one example batch, and counts its Linear/Conv layers, the eligible ones, the
references their consumers realise, and the skipped ones by reason. Writes JSON and a markdown
table; with ``--before FILE`` (the JSON of an earlier version, run the same way) the table
shows both.

    python scripts/architectures_table.py --json docs/assets/architectures.json \\
        --table docs/assets/architectures_table.txt --before docs/assets/architectures_before.json
"""

from __future__ import annotations

import argparse
import collections
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gxd_optim import GXDReset

Batch = Callable[[], tuple[torch.Tensor, ...]]


def models() -> Iterator[tuple[str, str, nn.Module, Batch]]:
    """(name, config in words, model, example batch) for each architecture."""
    import transformers as t

    image = lambda size: lambda: (torch.randn(2, 3, size, size),)  # noqa: E731
    tokens = lambda: (torch.randint(0, 100, (2, 16)),)  # noqa: E731
    yield (
        "ResNet-18",
        "basic blocks [2, 2, 2, 2], widths 64-512",
        t.ResNetModel(t.ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2])),
        image(64),
    )
    yield "MobileNetV2", "width 1.0", t.MobileNetV2Model(t.MobileNetV2Config()), image(64)
    yield (
        "EfficientNet-B0",
        "width 1.0, depth 1.0",
        t.EfficientNetModel(
            t.EfficientNetConfig(width_coefficient=1.0, depth_coefficient=1.0, hidden_dim=1280)
        ),
        image(64),
    )
    yield (
        "ConvNeXt",
        "tiny: depths [3, 3, 9, 3]",
        t.ConvNextModel(t.ConvNextConfig()),
        image(64),
    )
    small = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4}
    yield (
        "ViT",
        "2 layers, width 128",
        t.ViTModel(t.ViTConfig(**small, intermediate_size=512, image_size=32, patch_size=8)),
        image(32),
    )
    yield (
        "BERT",
        "2 layers, width 128",
        t.BertModel(t.BertConfig(**small, intermediate_size=512, vocab_size=100)),
        tokens,
    )
    yield (
        "GPT-2",
        "2 layers, width 128",
        t.GPT2LMHeadModel(
            t.GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=100, n_positions=32)
        ),
        tokens,
    )
    yield (
        "Llama",
        "2 layers, width 128, SwiGLU 344",
        t.LlamaForCausalLM(
            t.LlamaConfig(**small, intermediate_size=344, num_key_value_heads=4, vocab_size=100)
        ),
        tokens,
    )


_SHORT = (
    ("residual", "residual"),
    ("LayerNorm", "LayerNorm"),
    ("view splits", "attention heads"),
    ("gated by", "gate partner"),
    ("squeeze-excitation", "squeeze-excitation"),
    ("another shape", "squeeze-excitation"),
    ("product of two", "product"),
    ("model's output", "output"),
    ("tied weights", "tied"),
    ("concatenation", "concatenation"),
    ("`Split`", "fused q/k/v"),
    ("zero-padded", "padding"),
)


def _reason(text: str) -> str:
    """A skip reason in a word or two: what the table counts."""
    return next((short for key, short in _SHORT if key in text), text[:40])


def survey(model: nn.Module, batch: Batch) -> dict[str, Any]:
    """Layers, eligible layers, references and skip reasons of one model."""
    model.train()
    opt = GXDReset(torch.optim.SGD(model.parameters(), lr=0.0), model)
    try:
        opt.discover(*batch())
        layers, skipped = dict(opt.layers), dict(opt.skipped)
    except ValueError as error:  # nothing eligible: the reasons are in the message
        layers = {}
        lines = str(error).splitlines()[1:-1]
        skipped = dict(line.strip().split(": ", 1) for line in lines)
    finally:
        opt.close()
    references = collections.Counter(e.reference for i in layers.values() for e in i.edges)
    gated = sum(1 for info in layers.values() if getattr(info, "partners", ()))
    return {
        "layers": len(layers) + len(skipped),
        "eligible": len(layers),
        "units": sum(info.num_units for info in layers.values()),
        "references": dict(references),
        "gated": gated,
        "skipped": dict(collections.Counter(_reason(r) for r in skipped.values())),
    }


def table(after: dict[str, Any], before: dict[str, Any] | None) -> str:
    """The markdown table: per model, eligible layers (before → after) and why others are not."""
    rows = [
        "| model | Linear/Conv layers | eligible | mean / zero pairs | skipped |",
        "|---|---:|---:|---|---|",
    ]
    for name, row in after.items():
        eligible = str(row["eligible"])
        if before is not None and name in before:
            eligible = f"{before[name]['eligible']} → {row['eligible']}"
        refs = f"{row['references'].get('mean', 0)} / {row['references'].get('zero', 0)}"
        by_count = sorted(row["skipped"].items(), key=lambda item: -item[1])
        reasons = ", ".join(f"{n} {reason}" for reason, n in by_count)
        rows.append(f"| {name} | {row['layers']} | {eligible} | {refs} | {reasons} |")
    configs = "; ".join(f"{name}: {row['config']}" for name, row in after.items())
    return "\n".join(rows) + f"\n\nConfigurations: {configs}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the survey here")
    parser.add_argument("--table", type=Path, help="write the markdown table here")
    parser.add_argument("--before", type=Path, help="an earlier version's JSON, to compare")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    results: dict[str, Any] = {}
    for name, config, model, batch in models():
        results[name] = {"config": config, **survey(model, batch)}
        print(f"{name}: {results[name]['eligible']} of {results[name]['layers']} layers eligible")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    before = json.loads(args.before.read_text()) if args.before else None
    text = table(results, before)
    if args.table:
        args.table.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
