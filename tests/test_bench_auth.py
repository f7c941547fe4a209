"""Smoke test of bench/auth.py: it runs all four servers and reports every figure (only with
``OCIKIT_BENCH=1``; it checks that the script works, never how fast anything is)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench_helpers import only_with_bench, run_quick
from conftest import require_tool

pytestmark = only_with_bench

DISTRIBUTION = os.environ.get("OCIKIT_DISTRIBUTION_V3", "/work/shared/tools/distribution-v3/registry")


def test_quick_run_reports_every_figure_as_json(tmp_path: Path) -> None:
    require_tool("wrk", "bench/auth.py drives it")
    require_tool("htpasswd", "bench/auth.py writes the users file with it")
    if not os.access(DISTRIBUTION, os.X_OK):
        pytest.skip(f"distribution v3 is not at {DISTRIBUTION} (set OCIKIT_DISTRIBUTION_V3)")
    report = run_quick("auth.py", "--tmpdir", str(tmp_path), timeout=240)
    assert set(report["manifest_get"]) == {"ocikit", "ocikit-auth", "distribution", "distribution-auth"}
    assert all(rate > 0 for rate in report["manifest_get"].values())
    assert report["token_issuance_per_s"] > 0
    assert report["authorization_check_us"] > 0
    assert list(tmp_path.iterdir()) == [], "the temporary roots must be removed"
