"""The session of docs/surgery.md runs and prints what the page says."""

from __future__ import annotations

import os

import pytest

from conftest import require_tool, run_page_examples


@pytest.mark.skipif(os.geteuid() != 0, reason="ocikit create mounts the bundle's rootfs")
def test_examples_run() -> None:
    require_tool("skopeo", "the page reads the squashed image with it")
    result = run_page_examples("surgery.md")
    assert result.attempted >= 30, "the page lost its examples"
    assert result.failed == 0
