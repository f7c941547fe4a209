"""Numbers as wire formats write them: HTTP's ``1*DIGIT`` and chunk sizes, tar's PAX values,
the ids of ``/etc/passwd``.

Security decision: ``str.isdigit`` also accepts superscripts and other scripts' digits, which
``int`` then reads (``"١٢"`` is 12) or refuses (``"²"``), and ``int`` refuses strings of more
than 4,300 digits. A parser that trusted either would turn a peer's input into an exception
that nobody handles, so every number read from a peer or an image goes through
:func:`decimal`.
"""

from __future__ import annotations

import string
from typing import Final

__all__ = ["MAX_DIGITS", "decimal", "hexadecimal"]

#: Digits of the largest number read: below 2**63, more than any size, offset or id needs.
MAX_DIGITS: Final = 18


def decimal(text: str | bytes, max_digits: int = MAX_DIGITS) -> int | None:
    """The value of ``text`` when it is 1 to ``max_digits`` ASCII digits, else None."""
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


_HEX_DIGITS: Final = frozenset(string.hexdigits.encode())


def hexadecimal(text: bytes, max_digits: int = 15) -> int | None:
    """The value of ``text`` when it is 1 to ``max_digits`` ASCII hex digits, else None (``int``
    with base 16 also takes ``-1``, ``+1``, ``0x10`` and ``1_0``)."""
    if not 0 < len(text) <= max_digits or not _HEX_DIGITS.issuperset(text):
        return None
    return int(text, 16)
