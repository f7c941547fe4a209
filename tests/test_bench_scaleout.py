"""Smoke test of bench/scaleout.py: both deployments start on S3 behind HAProxy, answer every
measurement through it, and every figure is reported; the temporary data is removed."""

from __future__ import annotations

from pathlib import Path

from bench_helpers import only_with_bench, run_quick
from conftest import require_tool

pytestmark = only_with_bench


def test_quick_run_reports_every_figure_as_json(tmp_path: Path) -> None:
    for tool in ("haproxy", "wrk", "skopeo", "umoci"):
        require_tool(tool, "bench/scaleout.py drives it")
    report = run_quick("scaleout.py", "--tmpdir", str(tmp_path), "--replicas", "2", timeout=600)
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
    assert len(report["results"]["upload_rss"]["ocikit"]["per_replica_mb"]) == 2
    assert list(tmp_path.iterdir()) == [], "the temporary data must be removed"
