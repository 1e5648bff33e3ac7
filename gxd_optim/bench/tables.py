"""Markdown tables, the form in which every benchmark command prints its results.

Examples:
    >>> rows = [["none", number(0.51234)], ["gxd", number(None)]]
    >>> print(markdown_table(["criterion", "final"], rows))
    | criterion | final |
    |---|---|
    | none | 0.512 |
    | gxd | — |
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["MISSING", "markdown_table", "number"]

MISSING = "—"
"""The cell of a figure that is absent or not a number."""


def number(value: float | None, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits; `MISSING` for ``None``, NaN and infinities."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    return f"{value:.{digits}g}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table: the header, a separator, one line per row.

    Raises:
        ValueError: a row has not as many cells as the header.
    """
    lines = [_line(header), "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells under {len(header)} columns: {row}")
        lines.append(_line(row))
    return "\n".join(lines)


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
