"""The argument types of the benchmarks' command line: each parses one option's text or
raises ``argparse.ArgumentTypeError`` with what was expected.

Examples:
    >>> count(1)("3"), names(["a", "b"])("b,a,b"), fractions("0.5,0.1")
    (3, ('b', 'a'), (0.1, 0.5))
    >>> setting("width=64")
    ('width', '64')
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

__all__ = ["count", "fractions", "names", "positive_floats", "setting"]


def count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def names(known: Sequence[str], extra: Sequence[str] = ()) -> Callable[[str], tuple[str, ...]]:
    """Comma-separated names of ``known`` (``all``: every one of them) or of ``extra``."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        if names == ("all",):
            return tuple(known)
        unknown = [n for n in names if n not in known and n not in extra]
        if unknown or not names:
            listed = ", ".join([*known, *extra])
            raise argparse.ArgumentTypeError(
                f"unknown {unknown or text!r}; known: {listed} (or 'all')"
            )
        return names

    return parse


def fractions(text: str) -> tuple[float, ...]:
    values = positive_floats(text)
    if any(v > 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions in (0, 1], got {text!r}")
    return values


def positive_floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return tuple(sorted(set(values)))


def setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()
