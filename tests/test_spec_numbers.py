"""spec.numbers.decimal: the one reader of numbers that peers and images write."""

from __future__ import annotations

import pytest

from ocikit.spec.numbers import MAX_DIGITS, decimal


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("007", 7), (b"42", 42), ("9" * MAX_DIGITS, 10**MAX_DIGITS - 1)]
)
def test_ascii_digits_are_read(text: str | bytes, value: int) -> None:
    assert decimal(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1",
        "1 ",
        "+1",
        "-1",
        "1_000",
        "1e3",
        "0x10",
        "\u00b2",
        "\u0661\u0662",
        "\uff11",
        b"\xb2",
        "9" * 5000,
    ],
)
def test_anything_else_is_none(text: str | bytes) -> None:
    assert decimal(text) is None


def test_the_digit_limit_is_the_callers() -> None:
    assert decimal("9" * (MAX_DIGITS + 1)) is None
    assert decimal("1234", 3) is None
    assert decimal("200", 3) == 200
