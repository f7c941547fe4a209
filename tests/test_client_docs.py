"""The Python examples of docs/client.md run, and print what the page says they print."""

from __future__ import annotations

import doctest
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_client_examples_run() -> None:
    result = doctest.testfile(
        str(DOCS / "client.md"),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        raise_on_error=False,
        verbose=False,
    )
    assert result.attempted > 25, "the page lost its examples"
    assert result.failed == 0
