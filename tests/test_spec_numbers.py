"""spec.numbers.decimal: the one reader of numbers that peers and images write."""

from __future__ import annotations

import pytest

from ocikit.spec.numbers import MAX_DIGITS, decimal, hexadecimal


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


@pytest.mark.parametrize(("text", "value"), [(b"0", 0), (b"1f", 31), (b"FFFF", 65535)])
def test_hex_digits_are_read(text: bytes, value: int) -> None:
    assert hexadecimal(text) == value


@pytest.mark.parametrize("text", [b"", b"-1", b"+1", b"0x10", b"1_0", b" 1", b"g", b"F" * 16])
def test_anything_else_is_no_hex_number(text: bytes) -> None:
    assert hexadecimal(text) is None
