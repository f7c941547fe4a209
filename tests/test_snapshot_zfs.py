"""The zfs snapshotter on a real pool (zfs-fuse over a file): clones, state rebuilt from ZFS
alone, crashes, deferred destroy of layers something else still clones, busy datasets."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocikit.snapshot import (
    Kind,
    NotFoundError,
    SnapshotError,
    ZfsSnapshotter,
    open_snapshotter,
)
from snapshot_helpers import (
    _no_mounts_left,  # noqa: F401  (autouse: unmounts what a failed test left)
    mounted,
    open_backend,
)
from zfs_pool import (
    ZfsPool,
    assert_consistent,
    zfs_dataset,  # noqa: F401  (fixture)
    zfs_destroy,
    zfs_names,
    zfs_pool,  # noqa: F401  (fixture)
    zfs_property,
)

# The fixtures above are requested by name (the usual pytest pattern):
# ruff: noqa: F811

SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture
def snap(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ZfsSnapshotter]:
    snapshotter = open_backend("zfs", tmp_path / "state", request)
    assert isinstance(snapshotter, ZfsSnapshotter)
    yield snapshotter
    snapshotter.close()


def commit_files(snap: ZfsSnapshotter, name: str, parent: str | None, files: dict[str, bytes]) -> None:
    key = f"extract-{name}"
    snap.prepare(key, parent)
    root = snap.path_of(key)
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    snap.commit(name, key)


def test_state_is_rebuilt_from_zfs_alone(snap: ZfsSnapshotter, tmp_path: Path, zfs_dataset: str) -> None:
    commit_files(snap, "sha256:l1", None, {"etc/os-release": b"debian"})
    commit_files(snap, "sha256:l2", "sha256:l1", {"usr/bin/tool": b"#!"})
    snap.prepare("container\twith odd\nkey \u00e9", "sha256:l2", labels={"bundle": "/b", "x": "\t-"})
    snap.view("inspect", "sha256:l1")
    (snap.path_of("container\twith odd\nkey \u00e9") / "written").write_text("by the container")
    before = list(snap.walk())
    mounts = snap.mounts("inspect")
    snap.close()
    shutil.rmtree(snap.root)  # every bit of local state

    rebuilt = open_snapshotter("zfs", tmp_path / "elsewhere", zfs_dataset=zfs_dataset)
    try:
        assert list(rebuilt.walk()) == before
        assert [(i.key, i.kind, i.parent) for i in before] == [
            ("sha256:l1", Kind.COMMITTED, None),
            ("sha256:l2", Kind.COMMITTED, "sha256:l1"),
            ("container\twith odd\nkey \u00e9", Kind.ACTIVE, "sha256:l2"),
            ("inspect", Kind.VIEW, "sha256:l1"),
        ]
        assert rebuilt.mounts("inspect") == mounts
        root = rebuilt.path_of("container\twith odd\nkey \u00e9")  # type: ignore[attr-defined]
        assert (root / "written").read_text() == "by the container"
        assert (root / "etc" / "os-release").read_bytes() == b"debian"
        assert_consistent(rebuilt)
        # What is recorded, readable with zfs itself.
        layer = next(n for n in zfs_names(zfs_dataset) if n.endswith("@committed"))
        assert zfs_property(layer, "ocikit:key").startswith('"sha256:')
    finally:
        rebuilt.close()


def test_a_dataset_is_managed_from_one_state_directory(
    snap: ZfsSnapshotter, tmp_path: Path, zfs_dataset: str
) -> None:
    with pytest.raises(SnapshotError, match="is managed from"):
        open_snapshotter("zfs", tmp_path / "second", zfs_dataset=zfs_dataset)
    with pytest.raises(SnapshotError, match="manages zfs dataset"):
        open_snapshotter("zfs", snap.root, zfs_dataset=zfs_dataset + "x")
    reopened = open_snapshotter("zfs", snap.root)  # the root remembers its dataset
    assert reopened.dataset == zfs_dataset  # type: ignore[attr-defined]
    reopened.close()


def test_settings_errors_are_clear(
    tmp_path: Path, zfs_pool: ZfsPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OCIKIT_ZFS_DATASET", raising=False)
    with pytest.raises(SnapshotError, match="needs a parent dataset"):
        open_snapshotter("zfs", tmp_path / "a")
    for bad in ["justapool", "pool//x", "pool/x@snap", "pool/with space"]:
        with pytest.raises(SnapshotError, match="invalid zfs dataset"):
            open_snapshotter("zfs", tmp_path / bad.replace("/", "_"), zfs_dataset=bad)
    with pytest.raises(SnapshotError, match="takes no option zfs_dataset"):
        open_snapshotter("dir", tmp_path / "d", zfs_dataset=zfs_pool.dataset("x"))
    unmountable = zfs_pool.dataset(f"nomount{os.getpid()}")
    subprocess.run(["zfs", "create", "-o", "mountpoint=none", unmountable], check=True)
    try:
        with pytest.raises(SnapshotError, match="mountpoint=none"):
            open_snapshotter("zfs", tmp_path / "n", zfs_dataset=unmountable)
        good = zfs_pool.dataset(f"good{os.getpid()}")
        open_snapshotter("zfs", tmp_path / "n", zfs_dataset=good).close()  # the failure bound nothing
        zfs_destroy(good, "-r")
    finally:
        zfs_destroy(unmountable, "-r")


def test_a_key_too_long_for_a_property_is_refused(snap: ZfsSnapshotter) -> None:
    with pytest.raises(SnapshotError, match="too long for a ZFS user property"):
        snap.prepare("k" * 4090)
    with pytest.raises(SnapshotError, match="too long"):
        snap.prepare("k", labels={"big": "\u00e9" * 1000})
    assert list(snap.walk()) == []
    assert zfs_names(snap.dataset) == [snap.dataset]


def test_containers_are_clones_sharing_their_layer_blocks(snap: ZfsSnapshotter) -> None:
    commit_files(snap, "image", None, {"big": os.urandom(16 << 20)})
    snap.prepare("c1", "image")
    snap.prepare("c2", "image")
    layer = next(n for n in zfs_names(snap.dataset) if n.endswith("@committed"))
    for key in ("c1", "c2"):
        dataset = str(snap.path_of(key)).rsplit("/", 1)[1]
        assert zfs_property(f"{snap.dataset}/{dataset}", "origin") == layer
        assert int(zfs_property(f"{snap.dataset}/{dataset}", "referenced")) >= 16 << 20
        assert snap.usage(key).size < 1 << 20  # only its own blocks
        assert (snap.path_of(key) / "big").stat().st_size == 16 << 20
    assert snap.usage("image").size >= 16 << 20
    # A container's writes never reach its layer or its sibling.
    (snap.path_of("c1") / "big").write_bytes(b"changed")
    assert (snap.path_of("c2") / "big").stat().st_size == 16 << 20
    assert (snap.path_of("image") / "big").stat().st_size == 16 << 20
    with pytest.raises(OSError, match="Read-only"):
        (snap.path_of("image") / "new").write_text("committed layers are read-only")


def test_a_view_is_a_read_only_clone(snap: ZfsSnapshotter, tmp_path: Path) -> None:
    commit_files(snap, "image", None, {"f": b"1"})
    with mounted(snap.view("v", "image"), tmp_path / "v") as root:
        assert (root / "f").read_bytes() == b"1"
        with pytest.raises(OSError, match="Read-only"):
            (root / "g").write_text("x")
    with pytest.raises(OSError, match="Read-only"):
        (snap.path_of("v") / "g").write_text("x")  # the dataset itself is readonly=on


def test_mounts_mounts_the_dataset_again_after_a_reboot(snap: ZfsSnapshotter, tmp_path: Path) -> None:
    commit_files(snap, "image", None, {"f": b"1"})
    mounts = snap.prepare("c", "image")
    dataset = f"{snap.dataset}/{mounts[0].source.rsplit('/', 1)[1]}"
    subprocess.run(["zfs", "unmount", dataset], check=True)
    assert zfs_property(dataset, "mounted") == "no"
    with mounted(snap.mounts("c"), tmp_path / "rootfs") as root:
        assert (root / "f").read_bytes() == b"1"


def test_removing_a_layer_that_a_foreign_clone_uses_is_deferred(
    snap: ZfsSnapshotter, zfs_pool: ZfsPool
) -> None:
    commit_files(snap, "image", None, {"f": b"1"})
    layer = next(n for n in zfs_names(snap.dataset) if n.endswith("@committed"))
    foreign = zfs_pool.dataset(f"backup{os.getpid()}")
    subprocess.run(["zfs", "clone", layer, foreign], check=True)
    try:
        snap.remove("image")  # ocikit has no child of it: allowed
        assert list(snap.walk()) == []
        assert zfs_property(layer, "defer_destroy") == "on"  # kept for the clone only
        with pytest.raises(NotFoundError):
            snap.stat("image")
        commit_files(snap, "image", None, {"f": b"2"})  # the name can be taken again
        assert zfs_names(foreign) == [foreign]
    finally:
        zfs_destroy(foreign)
    assert layer not in zfs_names(snap.dataset)  # went with its last clone
    snap.cleanup()  # ...and the dataset it belonged to, at the next clean-up
    assert len([n for n in zfs_names(snap.dataset) if "@" not in n]) == 2  # parent + new image
    assert_consistent(snap)


def test_a_busy_dataset_is_not_removed(snap: ZfsSnapshotter) -> None:
    snap.prepare("c")
    inside = snap.path_of("c")
    (inside / "dir").mkdir()
    squatter = subprocess.Popen(["sleep", "60"], cwd=inside / "dir")
    try:
        with pytest.raises(SnapshotError, match="is busy"):
            snap.remove("c")
        assert snap.stat("c").kind is Kind.ACTIVE  # nothing changed
        assert (inside / "dir").is_dir()
    finally:
        squatter.kill()
        squatter.wait()
    snap.remove("c")
    assert zfs_names(snap.dataset) == [snap.dataset]


def test_fifty_layers(snap: ZfsSnapshotter, tmp_path: Path) -> None:
    parent = None
    for i in range(50):
        snap.prepare(f"w{i}", parent)
        root = snap.path_of(f"w{i}")
        (root / f"f{i}").write_text(str(i))
        if i:
            (root / f"f{i - 1}").unlink()
        snap.commit(f"layer{i}", f"w{i}")
        parent = f"layer{i}"
    with mounted(snap.view("top", "layer49"), tmp_path / "top") as root:
        assert os.listdir(root) == ["f49"]
    infos = list(snap.walk())
    seen: set[str] = set()
    for info in infos:
        assert info.parent is None or info.parent in seen  # parents first
        seen.add(info.key)
    assert len(infos) == 51
    assert_consistent(snap)
    snap.remove("top")
    for i in reversed(range(50)):
        snap.remove(f"layer{i}")
    assert zfs_names(snap.dataset) == [snap.dataset]


def test_cleanup_removes_what_crashed_operations_left(snap: ZfsSnapshotter, zfs_dataset: str) -> None:
    """The states a crash can leave, made by hand with zfs, each at its worst moment."""
    commit_files(snap, "image", None, {"f": b"1"})
    snap.prepare("half-committed", "image")
    layer = next(n for n in zfs_names(zfs_dataset) if n.endswith("@committed"))
    image_dataset = layer.split("@")[0]
    half_prepared = f"{zfs_dataset}/deadbeef00000001"
    # prepare: cloned with its properties, but killed before ocikit:complete.
    subprocess.run(["zfs", "clone", "-o", 'ocikit:key="half-prepared"', layer, half_prepared], check=True)
    # commit: the snapshot is taken, but ocikit:complete never set on it.
    active = str(snap.path_of("half-committed")).rsplit("/", 1)[1]
    subprocess.run(
        ["zfs", "snapshot", "-o", 'ocikit:key="never"', f"{zfs_dataset}/{active}@committed"], check=True
    )
    # commit: switched, but killed before the layer's filesystem was made read-only.
    subprocess.run(["zfs", "set", "readonly=off", image_dataset], check=True)
    subprocess.run(["zfs", "inherit", "ocikit:sealed", image_dataset], check=True)
    # remove: marked, but killed before the destroy.
    snap.prepare("half-removed")
    removed = str(snap.path_of("half-removed")).rsplit("/", 1)[1]
    subprocess.run(["zfs", "set", "ocikit:removing=yes", f"{zfs_dataset}/{removed}"], check=True)

    # Readers already see the right state before any clean-up...
    assert [(i.key, i.kind) for i in snap.walk()] == [
        ("image", Kind.COMMITTED),
        ("half-committed", Kind.ACTIVE),
    ]
    snap.close()
    reopened = open_backend("zfs", snap.root)  # ...and opening cleans up.
    assert isinstance(reopened, ZfsSnapshotter)
    try:
        assert_consistent(reopened)
        assert half_prepared not in zfs_names(zfs_dataset)
        assert zfs_property(image_dataset, "ocikit:sealed") == "yes"
        with pytest.raises(OSError, match="Read-only"):
            (reopened.path_of("image") / "new").write_text("x")
        reopened.commit("done", "half-committed")  # the key was never consumed
        assert reopened.stat("done").parent == "image"
    finally:
        reopened.close()


CRASHY = """
import sys
from ocikit.snapshot import open_snapshotter
snap = open_snapshotter("zfs", sys.argv[1])
parent = None
for i in range(1000):
    snap.prepare(f"work{i}", parent)
    (snap.path_of(f"work{i}") / f"f{i}").write_text(str(i))
    snap.commit(f"layer{i}", f"work{i}")
    parent = f"layer{i}"
    print(i, flush=True)
"""


def test_kill_9_in_the_middle_of_prepares_and_commits(snap: ZfsSnapshotter) -> None:
    rnd = random.Random(6)
    snap.close()
    for round_ in range(3):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CRASHY.replace("work{i}", f"r{round_}-work{{i}}").replace(
                    "layer{i}", f"r{round_}-layer{{i}}"
                ),
                str(snap.root),
            ],
            env={**os.environ, "PYTHONPATH": str(SRC)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # killing the group kills a zfs command under way too
        )
        assert proc.stdout is not None
        for _ in range(2):
            assert proc.stdout.readline(), proc.stderr.read() if proc.stderr else ""
        time.sleep(rnd.uniform(0, 0.15))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reopened = open_backend("zfs", snap.root)
        try:
            assert_consistent(reopened)
            keys = [i.key for i in reopened.walk() if i.key.startswith(f"r{round_}-")]
            layers = [k for k in keys if "-layer" in k]
            # The chain has no gap, and at most the one prepare in flight survives.
            assert layers == [f"r{round_}-layer{i}" for i in range(len(layers))]
            assert set(keys) - set(layers) <= {f"r{round_}-work{len(layers)}"}
            for index, key in enumerate(layers):
                assert (reopened.path_of(key) / f"f{index}").read_text() == str(index)  # type: ignore[attr-defined]
        finally:
            reopened.close()


def test_the_documented_example_runs(tmp_path: Path, zfs_dataset: str) -> None:
    page = (SRC.parent / "docs" / "snapshots.md").read_text()
    after = page.split("<!-- zfs-example", 1)[1]
    code = after.split("```python\n", 1)[1].split("```", 1)[0]
    printed = after.split("prints\n\n```\n", 1)[1].split("```", 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == printed


def test_foreign_datasets_are_left_alone_and_damage_is_reported(
    snap: ZfsSnapshotter, zfs_dataset: str
) -> None:
    foreign = f"{zfs_dataset}/made-by-hand"
    subprocess.run(["zfs", "create", foreign], check=True)
    snap.prepare("c")
    snap.cleanup()
    assert foreign in zfs_names(zfs_dataset)
    assert [i.key for i in snap.walk()] == ["c"]
    dataset = f"{zfs_dataset}/{str(snap.path_of('c')).rsplit('/', 1)[1]}"
    subprocess.run(["zfs", "set", "ocikit:labels=not json", dataset], check=True)
    with pytest.raises(SnapshotError, match="ocikit:labels is missing or damaged"):
        list(snap.walk())
    subprocess.run(["zfs", "set", 'ocikit:labels={"a": 1}', dataset], check=True)
    with pytest.raises(SnapshotError, match="ocikit:labels is damaged"):
        snap.stat("c")
    subprocess.run(["zfs", "set", "ocikit:labels={}", dataset], check=True)
    subprocess.run(["zfs", "set", "ocikit:kind=committed", dataset], check=True)
    with pytest.raises(SnapshotError, match="ocikit:kind is missing or damaged"):
        snap.stat("c")
    subprocess.run(["zfs", "set", "ocikit:kind=active", dataset], check=True)
    assert snap.stat("c").kind is Kind.ACTIVE


def test_a_prepare_that_cannot_mount_leaves_no_dataset(
    snap: ZfsSnapshotter, tmp_path: Path, zfs_dataset: str
) -> None:
    commit_files(snap, "image", None, {"f": b"1"})
    blocker = tmp_path / "a-file"
    blocker.write_text("a mount point cannot be made below a file")
    # zfs says it cannot remount what exists already, but sets the property.
    subprocess.run(["zfs", "set", f"mountpoint={blocker}/below", zfs_dataset], capture_output=True)
    assert zfs_property(zfs_dataset, "mountpoint") == f"{blocker}/below"
    before = zfs_names(zfs_dataset)
    try:
        with pytest.raises(SnapshotError, match="zfs clone"):
            snap.prepare("c", "image")
        with pytest.raises(SnapshotError, match="zfs create"):
            snap.prepare("d")
        assert zfs_names(zfs_dataset) == before
        assert [i.key for i in snap.walk()] == ["image"]
    finally:
        subprocess.run(["zfs", "inherit", "mountpoint", zfs_dataset], check=True)
