"""What the benchmark smoke tests share: they run only with ``OCIKIT_BENCH=1`` (a benchmark
is slow and its figures depend on the machine, so these tests check that a script works,
never how fast anything is), and they run a script's ``--quick --json`` mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

#: Skipped unless ``OCIKIT_BENCH=1`` (conftest), the one skip ``OCIKIT_REQUIRE_ALL=1`` allows.
only_with_bench = pytest.mark.bench


def run_quick(script: str, *args: str, timeout: float) -> dict[str, Any]:
    """``bench/SCRIPT --quick --json ARGS…``; its JSON report (the run must succeed)."""
    completed = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report: dict[str, Any] = msgspec.json.decode(completed.stdout)
    return report
