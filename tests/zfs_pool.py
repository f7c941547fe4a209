"""A real ZFS pool for tests: zfs-fuse (Debian) over a sparse file, started and stopped here.

zfs-fuse listens on one fixed socket per machine, so the fixture reuses a daemon that is
already running and only stops the one it started itself. The pool has no cache file, so
nothing of it outlives the test session.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import REQUIRE_ALL, require_tool


@dataclass(frozen=True)
class ZfsPool:
    name: str
    mountpoint: Path

    def dataset(self, *parts: str) -> str:
        return "/".join([self.name, *parts])


def _zpool_answers() -> bool:
    return subprocess.run(["zpool", "list", "-H"], capture_output=True, timeout=30).returncode == 0


def _start_daemon(workdir: Path) -> subprocess.Popen[bytes]:
    log = open(workdir / "zfs-fuse.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    daemon = subprocess.Popen(
        ["zfs-fuse", "--no-daemon", "--no-kstat-mount", "-p", str(workdir / "zfs-fuse.pid")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while not _zpool_answers():
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            raise RuntimeError(f"zfs-fuse did not start: {(workdir / 'zfs-fuse.log').read_text()[-2000:]}")
        time.sleep(0.2)
    return daemon


def _skip_or_fail(reason: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(reason)
    pytest.skip(reason)


def _until_not_busy(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``command`` again while zfs-fuse still calls a dataset or pool that was just
    unmounted busy (for a moment only)."""
    for _ in range(40):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0 or "busy" not in result.stderr:
            break
        time.sleep(0.25)
    return result


@pytest.fixture(scope="session")
def zfs_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZfsPool]:
    """A fresh pool on a 4 GiB sparse file, destroyed after the session."""
    require_tool("zfs-fuse", "the zfs snapshotter is tested on a real pool")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        _skip_or_fail("a zfs-fuse pool needs root and /dev/fuse")
    workdir = tmp_path_factory.mktemp("zfs")
    daemon = None if _zpool_answers() else _start_daemon(workdir)
    vdev = workdir / "vdev"
    with open(vdev, "wb") as sparse:
        sparse.truncate(4 << 30)
    pool = ZfsPool(f"ocikit{uuid.uuid4().hex[:8]}", workdir / "mnt")
    subprocess.run(
        ["zpool", "create", "-o", "cachefile=none", "-m", str(pool.mountpoint), pool.name, str(vdev)],
        check=True,
        capture_output=True,
    )
    try:
        yield pool
    finally:
        result = _until_not_busy(["zpool", "destroy", "-f", pool.name])
        if result.returncode:
            print(f"zfs_pool: could not destroy {pool.name}: {result.stderr.strip()}")
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()


def zfs_names(dataset: str) -> list[str]:
    """Every filesystem and snapshot at and below ``dataset``, as the real ``zfs list`` says."""
    result = subprocess.run(
        ["zfs", "list", "-H", "-o", "name", "-t", "filesystem,snapshot", "-r", dataset],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.split()


def zfs_property(name: str, prop: str) -> str:
    return subprocess.run(
        ["zfs", "get", "-H", "-p", "-o", "value", prop, name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def zfs_destroy(name: str, *flags: str) -> None:
    result = _until_not_busy(["zfs", "destroy", *flags, name])
    assert result.returncode == 0, result.stderr


@pytest.fixture
def zfs_dataset(zfs_pool: ZfsPool, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A parent dataset name of its own for one test, in ``OCIKIT_ZFS_DATASET`` (which child
    processes inherit); the snapshotter creates it, and it is destroyed after the test."""
    name = zfs_pool.dataset(f"t{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("OCIKIT_ZFS_DATASET", name)
    yield name
    if zfs_names(name):
        zfs_destroy(name, "-R", "-f")


def assert_consistent(snap: Any) -> None:
    """What ``zfs`` itself shows agrees with what the snapshotter says: one complete dataset
    per snapshot, one complete ``@committed`` per committed snapshot, nothing half-made."""
    dataset = snap.dataset
    names = [name for name in zfs_names(dataset) if name != dataset]
    infos = list(snap.walk())
    filesystems = [name for name in names if "@" not in name]
    assert len(filesystems) == len(infos), names
    for name in names:
        assert zfs_property(name, "ocikit:complete") == "yes", f"{name} is half-made"
        assert zfs_property(name, "ocikit:removing") == "-", f"{name} is half-removed"
    committed = [name for name in names if name.endswith("@committed")]
    assert len(committed) == sum(info.kind.value == "committed" for info in infos)
