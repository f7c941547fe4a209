"""Smoke test of bench/startup.py: every start-up floor and every repeat push (ocikit's,
skopeo's and the synchronous script's, which must find ocikit's blob location record) is timed
and reported."""

from __future__ import annotations

from pathlib import Path

from bench_helpers import only_with_bench, run_quick
from conftest import require_tool

pytestmark = only_with_bench


def test_quick_run_reports_every_case(tmp_path: Path) -> None:
    for tool in ("skopeo", "docker-registry", "umoci"):
        require_tool(tool, "bench/startup.py builds its image with umoci and compares with skopeo")
    cache = str(tmp_path / "cache")
    report = run_quick("startup.py", "--cache", cache, "--tmpdir", str(tmp_path), timeout=600)
    assert report["rounds"] == 3
    assert set(report["summary"]) == {
        "python",
        "asyncio",
        "client floor",
        "sync floor",
        "ocikit copy --help",
        "ocikit push again",
        "skopeo push again",
        "sync push floor",
    }
    for row in report["summary"].values():
        assert row["min_ms"] > 0
        assert row["median_ms"] >= row["min_ms"]
    assert report["summary"]["skopeo push again"]["/skopeo push again"] == 1.0
