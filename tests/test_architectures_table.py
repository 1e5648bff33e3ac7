"""The script behind the docs' table of supported architectures: what it counts and prints."""

from __future__ import annotations

import torch
from repo_scripts import load_script
from torch import nn


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 3), nn.Linear(3, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return h + self.c(torch.relu(self.b(h)))


def test_the_survey_counts_layers_references_and_reasons() -> None:
    script = load_script("architectures_table")
    row = script.survey(Residual(), lambda: (torch.randn(2, 3),))
    assert (row["layers"], row["eligible"], row["units"]) == (3, 1, 6)
    assert row["references"] == {"mean": 1}
    assert row["skipped"] == {"residual": 2}


def test_the_table_compares_with_an_earlier_version() -> None:
    script = load_script("architectures_table")
    row = {"config": "tiny", "layers": 3, "eligible": 1, "references": {"mean": 1}, "skipped": {}}
    text = script.table({"Net": row}, {"Net": {**row, "eligible": 0}})
    assert "| Net | 3 | 0 → 1 | 1 / 0 |  |" in text and "Net: tiny" in text
