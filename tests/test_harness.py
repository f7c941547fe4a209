"""The test harness itself: every test in a sandbox of its own, and ``OCIKIT_REQUIRE_ALL=1``
turning every skip into a failure (the benchmarks, which are opt-in, aside)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import XDG_FOLDERS
from ocikit.store.files import data_dir

TESTS = Path(__file__).resolve().parent

PROBES = """
import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


def test_skip_call():
    pytest.skip("a tool is missing")


@pytest.mark.skipif(True, reason="needs root")
def test_skipif_marker():
    pass


def test_importorskip():
    pytest.importorskip("ocikit_no_such_module")


@pytest.mark.bench
def test_benchmark():
    pass


@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False


def test_passes():
    pass
"""


def _run_probes(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probes.py").write_text(PROBES)
    environ = {k: v for k, v in os.environ.items() if k not in ("OCIKIT_REQUIRE_ALL", "OCIKIT_BENCH")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:randomly", "-p", "no:cacheprovider",
         "-q", "-rA", "--rootdir", str(tmp_path), str(tmp_path / "test_probes.py")],
        env={**environ, "PYTHONPATH": str(TESTS), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


def test_without_require_all_skips_are_skips(tmp_path: Path) -> None:
    result = _run_probes(tmp_path)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 4 skipped, 1 xfailed" in result.stdout


def test_under_require_all_every_skip_fails_but_the_benchmark_opt_in(tmp_path: Path) -> None:
    result = _run_probes(tmp_path, OCIKIT_REQUIRE_ALL="1")
    assert result.returncode == 1, result.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in result.stdout
    for probe in ("test_skip_call", "test_skipif_marker", "test_importorskip"):
        assert f"test_probes.py::{probe}" in result.stdout
    assert "OCIKIT_REQUIRE_ALL=1: nothing may skip, and this would have: needs root" in result.stdout
    assert "SKIPPED [1] test_probes.py:20: benchmarks run only with OCIKIT_BENCH=1" in result.stdout


def test_with_bench_a_benchmark_skip_fails_too(tmp_path: Path) -> None:
    result = _run_probes(tmp_path, OCIKIT_REQUIRE_ALL="1", OCIKIT_BENCH="1")
    assert result.returncode == 1, result.stdout
    assert "2 passed" in result.stdout  # the benchmark probe runs
    assert "skipped" not in result.stdout.splitlines()[-1]
    assert "Unknown pytest.mark" not in result.stdout


def test_a_module_skipped_at_collection_fails_under_require_all(tmp_path: Path) -> None:
    (tmp_path / "test_probes.py").write_text('import pytest\npytest.importorskip("ocikit_absent")\n')
    environ = {**os.environ, "PYTHONPATH": str(TESTS), "OCIKIT_REQUIRE_ALL": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q",
         "--rootdir", str(tmp_path), str(tmp_path / "test_probes.py")],
        env=environ, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert "nothing may skip" in result.stdout


@pytest.mark.parametrize("attempt", [1, 2])
def test_every_test_has_data_folders_of_its_own(
    attempt: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.getbasetemp()
    for name in XDG_FOLDERS:
        folder = Path(os.environ[name])
        assert folder.is_relative_to(base), (name, folder)
        assert list(folder.iterdir()) == [], f"{name} was used by another test"
        (folder / "used").touch()
    assert data_dir("store").is_relative_to(base)
    assert not data_dir("snapshots").is_relative_to(Path.home())
