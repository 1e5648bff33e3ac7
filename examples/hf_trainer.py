"""GXDReset in the Hugging Face ``Trainer``: a small BERT built from a config (a few seconds).

Needs ``pip install transformers accelerate``. The model is built from a config (nothing is
downloaded) and trained on generated token sequences. A ``Trainer`` subclass wraps the optimizer the
trainer builds; the trainer's checkpoints hold the wrapper's state (it is part of the optimizer's
``state_dict``), so ``resume_from_checkpoint`` resumes it bit for bit. Run it with ``python
examples/hf_trainer.py``.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from gxd_optim import GXDReset


# --8<-- [start:trainer]
class GXDTrainer(Trainer):
    """A Trainer whose optimizer resets units with GXD."""

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        inner = super().create_optimizer(*args, **kwargs)
        if not isinstance(self.optimizer, GXDReset):
            self.optimizer = GXDReset(inner, self.model, replacement_rate=0.01, maturity=5)
        return self.optimizer


# --8<-- [end:trainer]


CONFIG = BertConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
    num_labels=2,
)


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token sequences labelled by their first token."""

    def __init__(self, n: int = 256, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, CONFIG.vocab_size, (n, 16), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": (self.ids[i, 0] % 2).long()}


def train(out: str, steps: int, resume: str | None = None) -> tuple[torch.nn.Module, GXDReset]:
    """Train a fresh model for ``steps`` steps, saving every 10 (from ``resume`` if given)."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(CONFIG)
    args = TrainingArguments(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=16,
        save_steps=10,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = GXDTrainer(model=model, args=args, train_dataset=Tokens())
    trainer.train(resume_from_checkpoint=resume)
    opt = trainer.optimizer
    while not isinstance(opt, GXDReset):  # accelerate wraps the optimizer it is given
        opt = opt.optimizer
    return model, opt


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model, opt = train(tmp, 30)
        print(f"{opt.steps} steps; units reset per layer:")
        for layer, count in opt.reset_counts.items():
            print(f"  {layer:<40} {count}")
        resumed, again = train(tmp, 30, resume=f"{tmp}/checkpoint-10")
        same = all(
            torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters(), strict=True)
        )
        print(f"resumed from step 10: {again.steps} steps, weights bit-identical: {same}")


if __name__ == "__main__":
    main()
