"""Smoke test of bench/registry.py: it runs, both registries answer, and it reports every figure.

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
DISTRIBUTION = Path(__file__).resolve().parents[2] / "shared" / "tools" / "distribution-v3" / "registry"


def test_quick_run_reports_every_figure_as_json(tmp_path: Path) -> None:
    require_tool("wrk", "bench/registry.py drives it for the manifest GET load")
    distribution = os.environ.get("OCIKIT_BENCH_DISTRIBUTION", str(DISTRIBUTION))
    if not os.access(distribution, os.X_OK):
        pytest.skip(f"no distribution v3 binary at {distribution} (set OCIKIT_BENCH_DISTRIBUTION)")
    report = run_quick("registry.py", "--tmpdir", str(tmp_path), "--distribution", distribution, timeout=300)
    assert report["mode"] == "quick"
    assert report["ocikit_workers"] == len(os.sched_getaffinity(0))
    summary = report["summary"]
    assert set(summary) == {"manifest_get", "blob_get", "blob_put", "upload_rss"}
    for row in summary.values():
        assert row["ocikit"] > 0
        assert row["distribution"] > 0
        assert row["ratio"] > 0
    assert list(tmp_path.iterdir()) == [], "the temporary registry roots must be removed"
