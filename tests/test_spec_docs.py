"""The examples of docs/spec-model.md run, and print what the page says they print."""

from __future__ import annotations

import doctest
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_spec_model_examples_run() -> None:
    page = DOCS / "spec-model.md"
    result = doctest.testfile(
        str(page),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        raise_on_error=False,
        verbose=False,
    )
    assert result.attempted > 40, "the page lost its examples"
    assert result.failed == 0
