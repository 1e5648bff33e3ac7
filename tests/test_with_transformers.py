"""Hugging Face ``Trainer``: a BERT built from a config trains with resets, and a checkpoint
resumes the wrapper bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from requirements import needs

needs("transformers")
needs("accelerate")

import hf_trainer  # noqa: E402  (examples/, on the path from conftest)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def test_bert_trains_with_resets_and_resumes(tmp_path: Path) -> None:
    model, opt = hf_trainer.train(str(tmp_path), 20)
    assert sorted(opt.layers) == [
        "bert.encoder.layer.0.intermediate.dense",
        "bert.encoder.layer.1.intermediate.dense",
        "bert.pooler.dense",
    ]
    assert "residual" in opt.skipped["bert.encoder.layer.0.output.dense"]
    assert opt.steps == 20 and all(count > 0 for count in opt.reset_counts.values())
    resumed, again = hf_trainer.train(str(tmp_path), 20, resume=str(tmp_path / "checkpoint-10"))
    assert again.steps == 20 and again.reset_counts == opt.reset_counts
    for (name, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
