"""Crashes and concurrent processes: the metadata and the directories always agree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ocikit.snapshot import AlreadyExistsError, Kind, Snapshotter
from snapshot_helpers import (
    BACKENDS,
    FILE_BACKENDS,
    _no_mounts_left,  # noqa: F401  (autouse: unmounts what a failed test left)
    open_backend,
)
from zfs_pool import assert_consistent, zfs_dataset, zfs_pool  # noqa: F401  (fixtures of the zfs backend)

SRC = Path(__file__).resolve().parent.parent / "src"


def python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def consistent(snap: Snapshotter) -> None:
    """Every row has its directory, every directory has its row, nothing is left in flight."""
    if snap.name == "zfs":
        assert_consistent(snap)
        return
    infos = list(snap.walk())
    ids = sorted(os.listdir(snap.root / "snapshots"), key=int)
    assert len(ids) == len(infos)
    for info in infos:
        assert snap.path_of(info.key).is_dir()  # type: ignore[attr-defined]
    assert os.listdir(snap.root / "tmp") == []
    assert os.listdir(snap.root / "trash") == []


def big_base(snap: Snapshotter, files: int = 4000) -> None:
    snap.prepare("a")
    root = snap.path_of("a")  # type: ignore[attr-defined]
    for d in range(files // 100):
        sub = root / f"d{d}"
        sub.mkdir()
        for f in range(100):
            (sub / f"f{f}").write_bytes(b"x" * 3000)
    snap.commit("base", "a")


PREPARE = """
import sys
from ocikit.snapshot import open_snapshotter
snap = open_snapshotter(sys.argv[1], sys.argv[2])
snap.prepare(sys.argv[3], "base")
print("done", flush=True)
"""


def kill_when(process: subprocess.Popen[str], ready: callable, timeout: float = 60) -> None:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the operation never got under way"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_kill_during_dir_prepare_leaves_a_recoverable_store(tmp_path: Path) -> None:
    snap = open_backend("dir", tmp_path / "state")
    big_base(snap)
    proc = python(PREPARE, "dir", str(snap.root), "victim")

    def copying() -> bool:
        return any(
            (entry / "fs").exists() and os.listdir(entry / "fs") for entry in (snap.root / "tmp").iterdir()
        )

    kill_when(proc, copying)
    assert os.listdir(snap.root / "tmp")  # half a copy was left behind...
    snap.close()
    snap = open_backend("dir", snap.root)  # ...and opening cleans it up
    consistent(snap)
    assert [i.key for i in snap.walk()] == ["base"]
    snap.prepare("victim", "base")  # the key is free again
    assert len(list((snap.path_of("victim")).rglob("f*"))) == 4000  # type: ignore[attr-defined]
    snap.close()


def test_kill_during_remove_leaves_a_recoverable_store(tmp_path: Path) -> None:
    snap = open_backend("dir", tmp_path / "state")
    big_base(snap, files=8000)
    proc = python(
        "import sys\nfrom ocikit.snapshot import open_snapshotter\n"
        "open_snapshotter('dir', sys.argv[1]).remove('base')",
        str(snap.root),
    )
    kill_when(proc, lambda: bool(os.listdir(snap.root / "trash")))
    snap.close()
    snap = open_backend("dir", snap.root)
    consistent(snap)
    assert list(snap.walk()) == []
    snap.close()


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_orphans_of_a_crash_are_cleaned_on_open(tmp_path: Path, backend: str) -> None:
    """What a crash between a directory rename and the metadata commit leaves: directories
    no row names (in snapshots/, tmp/ and trash/)."""
    snap = open_backend(backend, tmp_path / "state")
    snap.prepare("a")
    snap.commit("kept", "a")
    for orphan in (snap.root / "snapshots" / "999", snap.root / "tmp" / "x", snap.root / "trash" / "7"):
        (orphan / "fs" / "deep").mkdir(parents=True)
        (orphan / "fs" / "deep" / "file").write_text("left over")
    snap.close()
    snap = open_backend(backend, snap.root)
    consistent(snap)
    assert [i.key for i in snap.walk()] == ["kept"]
    snap.close()


HOLD = """
import sys, time
from ocikit.snapshot import open_snapshotter
snap = open_snapshotter(sys.argv[1], sys.argv[2])
print("open", flush=True)
time.sleep(float(sys.argv[3]))
"""


def test_opening_does_not_disturb_a_prepare_in_flight(tmp_path: Path) -> None:
    """Clean-up on open only runs when no other process holds the store."""
    snap = open_backend("dir", tmp_path / "state")
    big_base(snap, files=6000)
    proc = python(PREPARE, "dir", str(snap.root), "slow")
    deadline = time.monotonic() + 60
    while not any((snap.root / "tmp").iterdir()):
        assert proc.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.002)
    other = open_backend("dir", snap.root)  # would delete tmp/* if it cleaned up now
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "done"
    assert other.stat("slow").kind is Kind.ACTIVE
    consistent(other)
    other.close()
    snap.close()


RACE = """
import sys
from ocikit.snapshot import open_snapshotter, AlreadyExistsError
snap = open_snapshotter(sys.argv[1], sys.argv[2])
me = sys.argv[3]
snap.prepare("work-" + me, "base")
try:
    snap.commit("shared-chain", "work-" + me)
    print("committed", flush=True)
except AlreadyExistsError:
    snap.remove("work-" + me)
    print("lost", flush=True)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_processes_commit_one_winner(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    snap = open_backend(backend, tmp_path / "state", request)
    snap.prepare("a")
    snap.commit("base", "a")
    procs = [python(RACE, backend, str(snap.root), str(i)) for i in range(6)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(out.strip())
    assert sorted(results) == ["committed"] + ["lost"] * 5
    assert sorted(i.key for i in snap.walk()) == ["base", "shared-chain"]
    consistent(snap)
    with pytest.raises(AlreadyExistsError):
        snap.prepare("shared-chain")
    snap.close()


PREPARE_OR_FAIL = """
import sys
from ocikit.snapshot import open_snapshotter, SnapshotError
snap = open_snapshotter(sys.argv[1], sys.argv[2])
try:
    snap.prepare(sys.argv[3], "base")
    print("done", flush=True)
except SnapshotError as exc:
    print("failed", type(exc).__name__, exc, flush=True)
"""

REMOVE_PARENT = """
import sys
from ocikit.snapshot import open_snapshotter, SnapshotError
snap = open_snapshotter(sys.argv[1], sys.argv[2])
try:
    snap.remove("base")
    print("removed", flush=True)
except SnapshotError as exc:
    print("refused", type(exc).__name__, exc, flush=True)
"""


def test_removing_a_parent_while_a_child_is_prepared(tmp_path: Path) -> None:
    """Either the child exists on its parent, or the parent is gone and the child failed."""
    snap = open_backend("dir", tmp_path / "state")
    big_base(snap, files=3000)
    child = python(PREPARE_OR_FAIL, "dir", str(snap.root), "child")
    while not any((snap.root / "tmp").iterdir()) and child.poll() is None:
        time.sleep(0.002)
    remover = python(REMOVE_PARENT, "dir", str(snap.root))
    removed = remover.communicate(timeout=120)[0].split()
    out, err = child.communicate(timeout=120)
    keys = {i.key for i in snap.walk()}
    if removed == ["removed"]:
        assert out.split()[:2] == ["failed", "NotFoundError"], err
        assert keys == set()
    else:
        assert removed[:2] in (["refused", "HasChildrenError"], ["refused", "SnapshotError"])
        assert out.strip() == "done", err
        assert keys == {"base", "child"}
    consistent(snap)
    snap.close()
