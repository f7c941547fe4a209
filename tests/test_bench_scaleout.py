"""Smoke test of bench/scaleout.py: both deployments start on S3 behind HAProxy, answer every
measurement through it, and every figure is reported; the temporary data is removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench_helpers import only_with_bench, run_quick
from conftest import REQUIRE_ALL, require_tool
from s3_helpers import DISTRIBUTION_V3

pytestmark = only_with_bench


def test_quick_run_reports_every_figure_as_json(tmp_path: Path) -> None:
    for tool in ("haproxy", "wrk", "skopeo", "umoci"):
        require_tool(tool, "bench/scaleout.py drives it")
    if not os.access(DISTRIBUTION_V3, os.X_OK):
        message = f"CNCF distribution v3 is not at {DISTRIBUTION_V3} (set OCIKIT_DISTRIBUTION_V3)"
        if REQUIRE_ALL:
            pytest.fail(message)
        pytest.skip(message)
    arguments = ("--tmpdir", str(tmp_path), "--replicas", "2", "--distribution", DISTRIBUTION_V3)
    report = run_quick("scaleout.py", *arguments, timeout=600)
    assert report["mode"] == "quick"
    assert report["plan"]["replicas"] == 2
    assert (
        set(report["summary"])
        == set(report["results"])
        == {
            "manifest_get",
            "blob_get_redirect",
            "blob_get_streamed",
            "blob_put",
            "debian_skopeo",
            "debian_chunked",
            "manifest_get_1_replica",
            "debian_chunked_1_replica",
            "upload_rss",
        }
    )
    for row in report["summary"].values():
        assert row["ocikit"] > 0
        assert row["distribution"] > 0
    for key in ("blob_get_redirect", "blob_get_streamed"):
        low, high = report["summary"][key]["ratio_95"]
        assert 0 < low <= high
    assert len(report["results"]["upload_rss"]["ocikit"]["per_replica_mb"]) == 2
    assert list(tmp_path.iterdir()) == [], "the temporary data must be removed"
