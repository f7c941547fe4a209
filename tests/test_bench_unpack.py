"""Smoke test of bench/unpack.py: it builds its image, runs the three unpackers in both
settings, and reports every figure.

Only with ``OCIKIT_BENCH=1``: a benchmark is slow and its figures depend on the machine, so
this test checks that the script works, never how fast anything is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench_helpers import only_with_bench, run_quick
from conftest import require_tool

pytestmark = only_with_bench


def test_quick_run_reports_every_figure_as_json(tmp_path: Path) -> None:
    require_tool("umoci", "bench/unpack.py builds its image with it and compares ocikit with it")
    require_tool("tar", "bench/unpack.py compares ocikit with GNU tar")
    if os.geteuid() != 0:
        pytest.skip("bench/unpack.py runs umoci unpack and mounts a tmpfs: it needs root")
    work = tmp_path / "work"
    work.mkdir()
    report = run_quick("unpack.py", "--cache", str(tmp_path / "cache"), "--tmpdir", str(work), timeout=600)
    assert report["mode"] == "quick"
    assert report["image"]["layers"] == 3
    summary = report["summary"]
    assert set(summary) == {"tmpfs", "disk"}
    for row in summary.values():
        for tool in ("ocikit", "umoci", "tar"):
            assert row[f"{tool}_s"] > 0
        assert row["ocikit/tar"] > 0
        assert row["ocikit/umoci"] > 0
    assert list(work.iterdir()) == [], "the unpack directories must be removed"
