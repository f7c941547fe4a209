"""The examples of docs/create.md and docs/snapshots.md run, and print what the pages say."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize(("page", "minimum"), [("create.md", 25), ("snapshots.md", 12)])
def test_examples_run(page: str, minimum: int) -> None:
    result = doctest.testfile(
        str(DOCS / page),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        raise_on_error=False,
        verbose=False,
    )
    assert result.attempted >= minimum, "the page lost its examples"
    assert result.failed == 0
