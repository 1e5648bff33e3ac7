"""``--set KEY=VALUE``: every value is converted by the type its setting declares."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gxd_optim.bench.cli import main
from gxd_optim.bench.problems import PROBLEMS
from gxd_optim.bench.settings import apply_overrides, check_positive, parse_value


@dataclass(frozen=True)
class Demo:
    width: int = 8
    lr: float = 0.1
    bias: bool = True
    name: str = "mlp"
    hidden: tuple[int, ...] = (4, 4)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[("False", False), ("false", False), ("no", False), ("0", False), ("off", False)],
        *[("True", True), ("YES", True), ("1", True), ("on", True)],
    ],
)
def test_a_bool_setting_reads_yes_and_no_words(text: str, value: bool) -> None:
    assert apply_overrides(Demo(), {"bias": text}).bias is value


def test_values_take_the_declared_type_not_the_current_values() -> None:
    changed = apply_overrides(Demo(), {"width": "32", "lr": "1", "name": "cnn", "hidden": "3"})
    assert changed == Demo(width=32, lr=1.0, bias=True, name="cnn", hidden=(3,))
    assert type(changed.lr) is float and type(changed.width) is int
    assert apply_overrides(Demo(), {"hidden": "128-64-32"}).hidden == (128, 64, 32)
    assert apply_overrides(Demo(), {}) == Demo()


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("width", "1.5", "int"),
        ("width", "wide", "int"),
        ("lr", "fast", "float"),
        ("bias", "maybe", "bool"),
        ("hidden", "128x128", "integers joined by '-'"),
    ],
)
def test_a_bad_value_names_the_key_the_value_and_the_type(
    key: str, text: str, expected: str
) -> None:
    with pytest.raises(ValueError) as caught:
        apply_overrides(Demo(), {key: text})
    assert str(caught.value).startswith(f"setting {key}: cannot read {text!r} as {expected}")


def test_unknown_settings_and_unparsable_types_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown setting 'depth'; known: width, lr, bias"):
        apply_overrides(Demo(), {"depth": "3"})

    @dataclass(frozen=True)
    class Odd:
        rates: list[float]

    with pytest.raises(TypeError, match="no text parser"):
        apply_overrides(Odd([0.1]), {"rates": "0.2"})
    assert parse_value("hidden", "7", tuple[int, ...]) == (7,)


def test_numbers_must_be_positive_unless_exempt() -> None:
    check_positive(Demo())
    with pytest.raises(ValueError, match="setting hidden must be positive, got \\(4, 0\\)"):
        check_positive(Demo(hidden=(4, 0)))
    check_positive(Demo(lr=-1.0), unchecked=("lr",))
    check_positive(Demo(bias=False))  # a bool is not a number here
    # the CNN's noise may be 0, its other numbers may not
    assert PROBLEMS["cnn"].settings(overrides={"noise": "0"}).noise == 0.0
    with pytest.raises(ValueError, match="setting epochs must be positive, got 0"):
        PROBLEMS["cnn"].settings(overrides={"epochs": "0"})


def test_the_command_line_reports_a_bad_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["run", "bitflip", "--quick", "--set", "lr=abc"])
    assert caught.value.code == 2
    assert "--set: setting lr: cannot read 'abc' as float" in capsys.readouterr().err
