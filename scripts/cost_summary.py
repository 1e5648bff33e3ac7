"""The summary tables of the controlled cost comparison, from the reports of ``bench cost``.

usage: python scripts/cost_summary.py docs/assets/bench/cost [--budget 0.1]

Prints one Markdown table: a row per report (problem and activation), GXD's realised cost at
the budget (mean and 95% interval over states and seeds), then for every other criterion its
difference from GXD's on the same states, marked where the interval excludes 0.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gxd_optim.bench.models import ACTIVATIONS
from gxd_optim.bench.problems import PROBLEMS
from gxd_optim.bench.tables import markdown_table, number

MARK = {"lower": " (lower)", "higher": " (higher)", "no difference": ""}


def _cell(entry: dict[str, Any]) -> str:
    versus = entry["minus_gxd"]
    low, high = versus["ci95"]
    interval = f"[{number(low, 2)}, {number(high, 2)}]"
    return f"{number(versus['mean'], 2)} {interval}{MARK[versus['verdict']]}"


def _order(report: dict[str, Any]) -> tuple[int, int]:
    """Problems in the order `list` shows them, activations in the order of `ACTIVATIONS`."""
    activation = report["problem"]["settings"].get("activation", "relu")
    return list(PROBLEMS).index(report["problem"]["name"]), list(ACTIVATIONS).index(activation)


def summary(reports: list[dict[str, Any]], budget: str) -> str:
    """The table at ``budget`` (a key of each report's summary, e.g. ``"0.1"``)."""
    others = [c for c in reports[0]["criteria"] if c != "gxd"]
    header = ["problem", "activation", "GXD's realised cost", *[f"{c} − GXD" for c in others]]
    rows = []
    for report in sorted(reports, key=_order):
        entries = report["summary"][budget]
        mean, (low, high) = entries["gxd"]["realised"]["mean"], entries["gxd"]["realised"]["ci95"]
        settings = report["problem"]["settings"]
        rows.append(
            [
                report["problem"]["name"],
                settings.get("activation", "relu"),
                f"{number(mean, 3)} [{number(low, 3)}, {number(high, 3)}]",
                *[_cell(entries[c]) for c in others],
            ]
        )
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="holds one folder per report (cost.json)")
    parser.add_argument("--budget", default="0.1", help="the budget's key, e.g. 0.1 (default)")
    args = parser.parse_args()
    reports = [json.loads(p.read_text()) for p in sorted(args.directory.glob("*/cost.json"))]
    print(summary(reports, args.budget))


if __name__ == "__main__":
    main()
