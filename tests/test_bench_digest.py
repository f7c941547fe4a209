"""Smoke test of bench/digest.py: it runs and reports both algorithms.

Only with ``OCIKIT_BENCH=1``: the figures depend on the machine, so this checks that the
script works, never how fast anything is.
"""

from __future__ import annotations

from bench_helpers import only_with_bench, run_quick

pytestmark = only_with_bench


def test_quick_run_reports_both_algorithms() -> None:
    report = run_quick("digest.py", timeout=120)
    assert set(report["results"]) == {"sha256", "sha512"}
    for figures in report["results"].values():
        assert figures["hashlib_mb_s"] > 0
        assert figures["resumable_mb_s"] > 0
    assert report["export_restore_us"] > 0
