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
        subprocess.run(["zpool", "destroy", "-f", pool.name], capture_output=True)
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
