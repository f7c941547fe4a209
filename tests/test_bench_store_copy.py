"""Smoke test of bench/store_copy.py: it runs, both tools copy, and it reports every figure.

Only with ``OCIKIT_BENCH=1``: the figures depend on the machine, so this checks that the
script works, never how fast anything is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_tool

BENCH = Path(__file__).resolve().parent.parent / "bench" / "store_copy.py"

pytestmark = pytest.mark.skipif(
    os.environ.get("OCIKIT_BENCH") != "1",
    reason="benchmarks run only with OCIKIT_BENCH=1 (they take time and are never timed tests)",
)


def test_quick_run_reports_every_scenario(tmp_path: Path) -> None:
    require_tool("skopeo", "bench/store_copy.py compares ocikit with it")
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", "--tmpdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    assert set(report["results"]) == {"oci-to-oci", "oci-to-archive", "archive-to-oci"}
    for figures in report["results"].values():
        assert figures["ocikit_s"] > 0
        assert figures["skopeo_s"] > 0
        assert figures["ratio"] > 0
