"""``ocikit gc`` collects snapshots on every backend: committed layers that no stored image
and no bundle uses go, the rest stays; a deleted bundle directory releases its snapshot
unless something is mounted from it; ``--dry-run`` only lists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from busybox_image import ocikit, root_backend, write_busybox_layout
from layer_helpers import Layer, sha256
from layer_helpers import write_layout as write_small_layout
from ocikit.bundle import read_state
from ocikit.bundle.create import BUNDLE_LABEL
from ocikit.bundle.gc import collect_snapshots
from ocikit.snapshot import Kind, open_snapshotter, unmount
from ocikit.spec import chain_ids
from ocikit.store.chains import stored_chain_ids
from ocikit.store.images import ImageStore
from snapshot_helpers import (
    BACKENDS,
    _no_mounts_left,  # noqa: F401  (autouse: unmounts what a failed test left)
    mounted,
)
from store_helpers import build_image
from store_helpers import write_layout as write_store_layout
from zfs_pool import zfs_dataset, zfs_pool  # noqa: F401  (fixtures of the zfs backend)


class Env:
    def __init__(self, tmp_path: Path, backend: str) -> None:
        self.tmp = tmp_path
        self.backend = backend
        self.options = ["--store", str(tmp_path / "store")]
        self.snapshots = tmp_path / "snapshots"

    def run(self, *args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return ocikit(*args, ok=ok)

    def create(self, image: str, directory: Path, *extra: str) -> None:
        self.run(
            "create",
            "--snapshotter",
            self.backend,
            "--snapshots",
            self.snapshots,
            *self.options,
            *extra,
            image,
            directory,
        )

    def gc(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("gc", "--snapshots", self.snapshots, *self.options, *extra)

    def snapshots_now(self) -> dict[str, str]:
        with open_snapshotter(self.backend, self.snapshots / self.backend) as snap:
            return {info.key: info.kind.value for info in snap.walk()}


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Env:
    return Env(tmp_path, root_backend(request, tmp_path))


def small_image(layout: Path) -> list[str]:
    """A two-layer image that shares nothing with busybox; its ChainIDs."""
    layers = [Layer().dir("etc").file("etc/b", b"b1").tar(), Layer().file("etc/b2", b"b2").tar()]
    write_small_layout(layout, layers, container={"Cmd": ["/bin/true"]})
    return [str(c) for c in chain_ids([sha256(t) for t in layers])]


def test_gc_keeps_what_is_used_and_removes_the_rest(env: Env) -> None:
    tmp = env.tmp
    env.run("copy", write_busybox_layout(tmp / "a", {"Cmd": ["/bin/show"]}), "a:1", *env.options)
    b_chains = small_image(tmp / "b")
    env.run("copy", f"oci:{tmp / 'b'}:latest", "b:1", *env.options)
    env.create("a:1", tmp / "bundle-a")
    (tmp / "ctrs").mkdir()
    env.create("b:1", tmp / "ctrs" / "b", "--format", "lxc")
    env.create("b:1", tmp / "deleted")
    deleted_key = read_state(tmp / "deleted").key
    # A bundle directory deleted by hand, without ocikit rm.
    unmount(tmp / "deleted" / "rootfs")
    shutil.rmtree(tmp / "deleted")
    before = env.snapshots_now()
    assert sorted(before.values()) == ["active"] * 3 + ["committed"] * 4

    env.run("rmi", "b:1", *env.options)
    listed = env.gc("--grace", "0", "--dry-run").stdout
    assert f"would remove snapshot {env.backend} {deleted_key} (bundle {tmp / 'deleted'} is gone)" in listed
    assert "would remove: 0 " + env.backend in listed  # b's layers: the LXC container uses them
    assert env.snapshots_now() == before  # a dry run removes nothing

    env.run("rm", tmp / "ctrs" / "b")
    listed = env.gc("--grace", "0", "--dry-run").stdout
    for chain in b_chains:
        assert f"would remove snapshot {env.backend} {chain}" in listed
    # The default grace period keeps layers committed a moment ago.
    recent = env.gc().stdout
    assert f"removed: 0 {env.backend} snapshots and 1 of deleted bundles" in recent
    assert "kept 3 in use and 1 recent" in recent  # the parent of a recent layer is in use
    removed = env.gc("--grace", "0").stdout
    assert f"removed: 2 {env.backend} snapshots" in removed
    after = env.snapshots_now()
    assert sorted(after.values()) == ["active", "committed", "committed"]
    assert not set(b_chains) & set(after)

    # Image a is gone from the store, but its bundle still runs on its layers.
    env.run("rmi", "a:1", *env.options)
    assert "removed: 0 " + env.backend in env.gc("--grace", "0").stdout
    env.run("rm", tmp / "bundle-a")
    assert f"removed: 2 {env.backend} snapshots" in env.gc("--grace", "0").stdout
    assert env.snapshots_now() == {}


def test_mounted_and_viewed_snapshots_are_never_removed(env: Env) -> None:
    tmp = env.tmp
    env.run("copy", write_busybox_layout(tmp / "a", {"Cmd": ["/bin/show"]}), "a:1", *env.options)
    env.create("a:1", tmp / "bundle")
    env.run("rm", tmp / "bundle")
    env.run("rmi", "a:1", *env.options)
    with open_snapshotter(env.backend, env.snapshots / env.backend) as snap:
        top = next(info.key for info in reversed(list(snap.walk())))
        # A bundle whose directory is gone but whose rootfs is still mounted elsewhere.
        with mounted(snap.prepare("orphan", top, labels={BUNDLE_LABEL: str(tmp / "gone")}), tmp / "m"):
            report = collect_snapshots(snap, set())
            assert [key for key, _ in report.refused] == ["orphan"]
            assert "in use" in report.refused[0][1]
            assert report.removed == []
            assert len(list(snap.walk())) == 3
        snap.remove("orphan")
        snap.view("look", top)
        report = collect_snapshots(snap, set())
        assert (report.removed, report.kept) == ([], 2)
        snap.remove("look")
        report = collect_snapshots(snap, set(), dry_run=True)
        assert len(report.removed) == 2
        assert len(list(snap.walk())) == 2
        report = collect_snapshots(snap, set())
        assert len(report.removed) == 2
        assert list(snap.walk()) == []


def test_a_bundle_directory_that_exists_keeps_its_snapshot(tmp_path: Path) -> None:
    """Whatever the directory holds now, it is not ocikit's to judge: only a gone directory
    releases a snapshot. Works rootless with the dir backend."""
    with open_snapshotter("dir", tmp_path / "snaps") as snap:
        snap.prepare("l")
        snap.commit("layer", "l")
        (tmp_path / "bundle").mkdir()
        snap.prepare("b1", "layer", labels={BUNDLE_LABEL: str(tmp_path / "bundle")})
        snap.prepare("b2", "layer", labels={BUNDLE_LABEL: "relative/dir"})
        report = collect_snapshots(snap, set())
        assert (report.removed, report.released, report.kept) == ([], [], 1)
        assert {info.key: info.kind for info in snap.walk()} == {
            "layer": Kind.COMMITTED,
            "b1": Kind.ACTIVE,
            "b2": Kind.ACTIVE,
        }


def test_stored_chain_ids_cover_every_platform_and_unnamed_images(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    image = build_image("multi")
    # Named, and once more unnamed (as ocikit create keeps an image copied from a layout).
    write_store_layout(layout, {"docker.io/library/multi:latest": image}, extra=[image.top.descriptor()])
    expected: set[str] = set()
    with ImageStore(layout) as store:
        for platform in store.platforms("multi"):
            stored = store.image("multi", platform)
            expected.update(str(layer.chain_id) for layer in stored.layers)
        assert len(expected) == 5  # a shared base and two layers of each platform
        assert stored_chain_ids(store) == expected
        store.remove("multi")
        assert stored_chain_ids(store) == expected
        store.remove(image.top.digest)
        assert stored_chain_ids(store) == set()


def test_a_store_that_cannot_be_read_touches_no_snapshot(tmp_path: Path) -> None:
    """If the ChainIDs of some stored image cannot be known, no snapshot is judged unused."""
    store = tmp_path / "store"
    write_store_layout(store, {"docker.io/library/multi:latest": build_image("multi")})
    with ImageStore(store) as opened:
        config = opened.image("multi").manifest.value.config.digest
    (store / "blobs" / "sha256" / config.split(":")[1]).unlink()
    snapshots = tmp_path / "snapshots"
    with open_snapshotter("dir", snapshots / "dir") as snap:
        snap.prepare("l")
        snap.commit("sha256:unused", "l")
    result = ocikit("gc", "--grace", "0", "--store", store, "--snapshots", snapshots, ok=False)
    assert result.returncode == 1
    assert result.stderr.startswith("ocikit gc: ")
    assert "Traceback" not in result.stderr
    with open_snapshotter("dir", snapshots / "dir") as snap:
        assert [info.key for info in snap.walk()] == ["sha256:unused"]


def test_a_snapshotter_that_cannot_be_reached_does_not_stop_the_others(tmp_path: Path) -> None:
    """State left by a zfs snapshotter whose pool is gone: reported, the dir snapshotter is
    still collected, and the command ends with a summary and a non-zero status."""
    snapshots = tmp_path / "snapshots"
    with open_snapshotter("dir", snapshots / "dir") as snap:
        snap.prepare("l")
        snap.commit("sha256:unused", "l")
    zfs_state = snapshots / "zfs"
    zfs_state.mkdir()
    (zfs_state / "lock").touch()
    (zfs_state / "zfs-dataset").write_text("ocikit-destroyed-pool/ocikit\n")
    result = ocikit("gc", "--grace", "0", "--store", tmp_path / "store", "--snapshots", snapshots, ok=False)
    assert result.returncode == 1
    assert "removed snapshot dir sha256:unused" in result.stdout
    errors = result.stderr.splitlines()
    assert errors[0].startswith(f"ocikit gc: zfs snapshots at {zfs_state}: ")
    assert errors[-1] == "ocikit gc: 1 of 2 snapshotters could not be collected: zfs (reasons above)"
    with open_snapshotter("dir", snapshots / "dir") as snap:
        assert list(snap.walk()) == []
