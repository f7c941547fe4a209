"""Smoke test of bench/registry.py: it runs, both registries answer, and it reports every figure.

Only with ``OCIKIT_BENCH=1``: a benchmark is slow and its figures depend on the machine, so
this test checks that the script works, never how fast anything is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_tool

BENCH = Path(__file__).resolve().parent.parent / "bench" / "registry.py"

pytestmark = pytest.mark.skipif(
    os.environ.get("OCIKIT_BENCH") != "1",
    reason="benchmarks run only with OCIKIT_BENCH=1 (they take time and are never timed tests)",
)


def test_quick_run_reports_every_figure_as_json(tmp_path: Path) -> None:
    require_tool("wrk", "bench/registry.py drives it for the manifest GET load")
    require_tool("docker-registry", "bench/registry.py compares ocikit with it")
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--tmpdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    assert report["mode"] == "quick"
    assert report["ocikit_workers"] == 2
    summary = report["summary"]
    assert set(summary) == {"manifest_get", "blob_get", "blob_put", "upload_rss"}
    for row in summary.values():
        assert row["ocikit"] > 0
        assert row["distribution"] > 0
        assert row["ratio"] > 0
    assert list(tmp_path.iterdir()) == [], "the temporary registry roots must be removed"
