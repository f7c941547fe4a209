"""Smoke test of bench/create.py: it builds its small image, times the first and the second
``ocikit create`` on each snapshotter, ``umoci unpack`` and ``tar``, on disk and on tmpfs, and
reports every figure.

Only with ``OCIKIT_BENCH=1``: a benchmark is slow and its figures depend on the machine, so
this test checks that the script works, never how fast anything is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench_helpers import only_with_bench, run_quick
from conftest import require_tool
from snapshot_helpers import unmount_all_under

pytestmark = only_with_bench


def test_quick_run_reports_every_figure_as_json(tmp_path: Path) -> None:
    require_tool("umoci", "bench/create.py builds its image with it and compares ocikit with it")
    if os.geteuid() != 0:
        pytest.skip("bench/create.py mounts overlays and runs umoci unpack: it needs root")
    work = tmp_path / "work"
    work.mkdir()
    try:
        report = run_quick(
            "create.py",
            "--cache",
            str(tmp_path / "cache"),
            "--tmpdir",
            str(work),
            "--snapshotters",
            "dir,overlay",
            timeout=600,
        )
    finally:
        unmount_all_under(work)
    assert report["mode"] == "quick"
    assert set(report["summary"]) == {"disk", "tmpfs"}
    for setting, summary in report["summary"].items():
        assert set(summary) == {"umoci", "tar", "dir", "overlay"}
        assert summary["umoci"]["first_s"] > 0
        assert summary["tar"]["first_s"] > 0
        for name in ("dir", "overlay"):
            row = summary[name]
            for kind in ("first", "second"):
                assert row[f"{kind}_s"] > 0
                assert row[f"{kind}_max_rss_mb"] > 0
            assert row["first/umoci"] > 0
            assert isinstance(row["first/tar_met"], bool)
            assert isinstance(row["max_rss_met"], bool)
        assert ("first/umoci_met" in summary["overlay"]) == (setting == "disk")
        assert isinstance(summary["overlay"]["second_met"], bool)
        assert "second_met" not in summary["dir"]  # the 0.3 s target is for overlay and zfs only
    assert list(work.iterdir()) == [], "stores, snapshots and bundles must be removed"
