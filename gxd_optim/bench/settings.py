"""Typed ``--set KEY=VALUE`` overrides of a problem's settings dataclass.

Each text value is converted by the type the field declares, not by the type of its current
value: ``"False"`` becomes ``False`` for a ``bool`` field, ``"128-128"`` becomes ``(128, 128)``
for a ``tuple[int, ...]`` field.

Examples:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     width: int = 8
    ...     lr: float = 0.1
    ...     bias: bool = True
    ...     hidden: tuple[int, ...] = (4,)
    >>> apply_overrides(Demo(), {"bias": "False", "hidden": "128-64", "lr": "1e-3"})
    Demo(width=8, lr=0.001, bias=False, hidden=(128, 64))
    >>> apply_overrides(Demo(), {"width": "wide"})
    Traceback (most recent call last):
    ...
    ValueError: setting width: cannot read 'wide' as int
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

__all__ = ["apply_overrides", "check_positive", "parse_value", "setting_types"]

Settings = TypeVar("Settings")

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise ValueError(text)


def _parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("-"))


_PARSERS: Mapping[Any, tuple[Callable[[str], Any], str]] = {
    bool: (_parse_bool, "bool"),
    int: (int, "int"),
    float: (float, "float"),
    str: (str, "str"),
    tuple[int, ...]: (_parse_ints, "integers joined by '-' (e.g. 128-128)"),
}
"""Declared field type -> (parser of its text, the type in words for error messages)."""


def setting_types(settings_type: type[Any]) -> dict[str, Any]:
    """The declared type of every field of a settings dataclass.

    Raises:
        TypeError: a field's type has no text parser.
    """
    hints = typing.get_type_hints(settings_type)
    types = {f.name: hints[f.name] for f in dataclasses.fields(settings_type)}
    unsupported = {name: kind for name, kind in types.items() if kind not in _PARSERS}
    if unsupported:
        raise TypeError(f"settings {settings_type.__name__}: no text parser for {unsupported}")
    return types


def parse_value(key: str, text: str, kind: Any) -> Any:
    """``text`` converted to the declared type ``kind`` of the setting ``key``.

    Raises:
        ValueError: the text does not convert; the message names the key, the text and the
            expected type.

    Examples:
        >>> parse_value("bias", "no", bool), parse_value("hidden", "32-16", tuple[int, ...])
        (False, (32, 16))
    """
    parse, expected = _PARSERS[kind]
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"setting {key}: cannot read {text!r} as {expected}") from None


def apply_overrides(settings: Settings, overrides: Mapping[str, str]) -> Settings:
    """``settings`` (a dataclass) with fields replaced from text values.

    Raises:
        ValueError: an unknown field, a value that does not convert to the field's declared
            type, or a combination the settings class rejects.
    """
    types = setting_types(type(settings))
    changes: dict[str, Any] = {}
    for key, text in overrides.items():
        if key not in types:
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(types)}")
        changes[key] = parse_value(key, text, types[key])
    return dataclasses.replace(settings, **changes)  # type: ignore[type-var]


def check_positive(settings: Any, unchecked: Collection[str] = ()) -> None:
    """Refuse a settings dataclass with a number (or a number in a tuple) that is not positive.

    Args:
        settings: the settings.
        unchecked: fields that may hold any number.

    Raises:
        ValueError: naming the first field out of range.
    """
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        values = value if isinstance(value, tuple) else (value,)
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if f.name not in unchecked and any(v <= 0 for v in numbers):
            raise ValueError(f"setting {f.name} must be positive, got {value}")
