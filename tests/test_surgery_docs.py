"""The session of docs/surgery.md runs and prints what the page says."""

from __future__ import annotations

import doctest
import os
from pathlib import Path

import pytest

from conftest import require_tool

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.skipif(os.geteuid() != 0, reason="ocikit create mounts the bundle's rootfs")
def test_examples_run() -> None:
    require_tool("skopeo", "the page reads the squashed image with it")
    result = doctest.testfile(
        str(DOCS / "surgery.md"),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        raise_on_error=False,
        verbose=False,
    )
    assert result.attempted >= 30, "the page lost its examples"
    assert result.failed == 0
