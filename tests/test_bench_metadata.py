"""Smoke test of bench/metadata.py: it runs on SQLite and PostgreSQL and reports both paths.

Only with ``OCIKIT_BENCH=1``: the figures depend on the machine, so this checks that the
script works, never how fast anything is.
"""

from __future__ import annotations

from typing import Any

from bench_helpers import only_with_bench, run_quick

pytestmark = only_with_bench


def test_quick_run_reports_every_store(postgres: Any) -> None:
    report = run_quick("metadata.py", "--postgres", postgres.database(), timeout=120)
    assert set(report["results"]) == {"sqlite", "postgresql"}
    for figures in report["results"].values():
        assert figures["read_cpu_us"] > 0
        assert figures["link_ms"] > 0
