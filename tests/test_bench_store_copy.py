"""Smoke test of bench/store_copy.py: it runs, both tools copy, and it reports every figure.

Only with ``OCIKIT_BENCH=1``: the figures depend on the machine, so this checks that the
script works, never how fast anything is.
"""

from __future__ import annotations

from pathlib import Path

from bench_helpers import only_with_bench, run_quick
from conftest import require_tool

pytestmark = only_with_bench


def test_quick_run_reports_every_scenario(tmp_path: Path) -> None:
    require_tool("skopeo", "bench/store_copy.py compares ocikit with it")
    report = run_quick("store_copy.py", "--tmpdir", str(tmp_path), timeout=240)
    assert set(report["results"]) == {"oci-to-oci", "oci-to-archive", "archive-to-oci"}
    for figures in report["results"].values():
        assert figures["ocikit_s"] > 0
        assert figures["skopeo_s"] > 0
        assert figures["ratio"] > 0
