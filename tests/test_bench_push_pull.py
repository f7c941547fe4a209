"""Smoke test of bench/push_pull.py: ocikit copy and skopeo copy push to and pull from a fresh
distribution each, and every figure is reported."""

from __future__ import annotations

from pathlib import Path

from bench_helpers import only_with_bench, run_quick
from conftest import require_tool

pytestmark = only_with_bench


def test_quick_run_reports_push_and_pull(tmp_path: Path) -> None:
    for tool in ("skopeo", "docker-registry", "umoci"):
        require_tool(tool, "bench/push_pull.py builds its image with umoci and compares with skopeo")
    cache = str(tmp_path / "cache")
    report = run_quick("push_pull.py", "--cache", cache, "--tmpdir", str(tmp_path), timeout=600)
    assert report["mode"] == "quick"
    assert set(report["summary"]) == {"push", "push again", "pull"}
    for row in report["summary"].values():
        assert row["ocikit_s"] > 0
        assert row["skopeo_s"] > 0
        assert row["ocikit/skopeo"] > 0
