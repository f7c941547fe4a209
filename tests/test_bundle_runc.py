"""End to end: a bundle made from an image config on each snapshotter, run by the real runc,
prints exactly the argv, environment, working directory and ids the config says."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundle_helpers import committed_rootfs, image_config
from bundle_helpers import runc_run as run
from ocikit.bundle import BundleError, Overrides, create_bundle, read_state, remove_bundle
from ocikit.snapshot import NotFoundError, Snapshotter, is_mountpoint
from runtime_schema import schema_errors
from snapshot_helpers import (
    BACKENDS,
    _no_mounts_left,  # noqa: F401  (autouse: unmounts what a failed test left)
    open_backend,
)
from zfs_pool import zfs_dataset, zfs_pool  # noqa: F401  (fixtures of the zfs backend)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runc run and mounting snapshots need root")


@pytest.fixture(params=BACKENDS)
def snap(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Snapshotter]:
    snapshotter = open_backend(request.param, tmp_path / "snapshots", request)
    yield snapshotter
    snapshotter.close()


def test_runc_runs_what_the_image_config_says(snap: Snapshotter, tmp_path: Path) -> None:
    chain = committed_rootfs(snap, tmp_path / "mnt")
    image = image_config(
        Entrypoint=["/bin/show", "first arg"],
        Cmd=["two  words", "--flag=x", ""],
        Env=["PATH=/bin", "GREETING=hello world", "EMPTY=", "TWO==equals"],
        WorkingDir="/work/dir",
        User="alice",
        Volumes={"/data": {}},
        StopSignal="SIGTERM",
    )
    bundle = tmp_path / "bundle"
    config = create_bundle(bundle, image, snap, chain, Overrides(hostname="box"))
    assert schema_errors(json.loads((bundle / "config.json").read_bytes())) == []
    assert config.process is not None
    assert is_mountpoint(bundle / "rootfs")

    seen = run(bundle, tmp_path / "runc")
    assert seen["ARGV0"] == ["/bin/show"]
    assert seen["ARG"] == ["first arg", "two  words", "--flag=x", ""]
    assert seen["CWD"] == ["/work/dir"]
    # runc adds HOME (from the image's passwd) when the config has none: nothing else.
    assert seen["ENV"] == ["PATH=/bin", "GREETING=hello world", "EMPTY=", "TWO==equals", "HOME=/home/alice"]
    assert seen["Uid"] == ["1000\t1000\t1000\t1000"]
    assert seen["Gid"] == ["1000\t1000\t1000\t1000"]
    assert sorted(seen["Groups"][0].split()) == ["29", "50"]
    assert seen["HOSTNAME"] == ["box"]
    assert seen["SEED"] == ["from the image"]
    assert seen["WROTE"] == ["yes"]  # the volume kept the owner of the image's /data
    # The volume's writes went to the bundle, not into the rootfs snapshot.
    assert (bundle / "volumes" / "0-data" / "new").read_text() == "written\n"
    assert not (bundle / "rootfs" / "data" / "new").exists()

    key = read_state(bundle).key
    remove_bundle(bundle, snap)
    assert not bundle.exists()
    with pytest.raises(NotFoundError):
        snap.stat(key)
    assert snap.stat(chain).kind.value == "committed"  # the image's layers stay cached


def test_overrides_and_numeric_ids(snap: Snapshotter, tmp_path: Path) -> None:
    chain = committed_rootfs(snap, tmp_path / "mnt")
    image = image_config(Entrypoint=["/bin/false"], Cmd=["ignored"], Env=["A=1", "B=2"], User="alice")
    bundle = tmp_path / "bundle"
    overrides = Overrides(
        entrypoint=["/bin/show"],
        args=["x", "y"],
        env=["B=override", "C=3"],
        workdir="/tmp",
        user="4242:50",
        volumes="none",
    )
    create_bundle(bundle, image, snap, chain, overrides)
    seen = run(bundle, tmp_path / "runc")
    assert seen["ARG"] == ["x", "y"]
    assert seen["CWD"] == ["/tmp"]
    assert seen["ENV"] == [
        "A=1",
        "B=override",
        "C=3",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/",
    ]
    assert seen["Uid"] == ["4242\t4242\t4242\t4242"]
    assert seen["Gid"] == ["50\t50\t50\t50"]
    assert seen["Groups"] == [""]
    assert seen["WROTE"] == ["no"]  # /data of the image belongs to alice
    remove_bundle(bundle, snap)


def test_a_failed_create_leaves_nothing_behind(snap: Snapshotter, tmp_path: Path) -> None:
    chain = committed_rootfs(snap, tmp_path / "mnt")
    before = [info.key for info in snap.walk()]
    bundle = tmp_path / "bundle"
    with pytest.raises(BundleError, match="nobody-here"):
        create_bundle(bundle, image_config(Cmd=["/bin/true"], User="nobody-here"), snap, chain)
    assert not bundle.exists()
    assert [info.key for info in snap.walk()] == before
    with pytest.raises(BundleError, match="no-such-chain"):
        create_bundle(bundle, image_config(Cmd=["/bin/true"]), snap, "no-such-chain")
    assert not bundle.exists()
    bundle.mkdir()
    (bundle / "precious").write_text("p")
    with pytest.raises(BundleError, match="not an empty directory"):
        create_bundle(bundle, image_config(Cmd=["/bin/true"]), snap, chain)
    assert (bundle / "precious").read_text() == "p"
    with pytest.raises(BundleError, match="not a bundle made by ocikit"):
        remove_bundle(bundle, snap)
    assert (bundle / "precious").read_text() == "p"


def test_tmpfs_volumes_start_empty_with_the_image_owner(snap: Snapshotter, tmp_path: Path) -> None:
    chain = committed_rootfs(snap, tmp_path / "mnt")
    image = image_config(Entrypoint=["/bin/show"], User="alice", Volumes={"/data/": {}})
    bundle = tmp_path / "bundle"
    config = create_bundle(bundle, image, snap, chain, Overrides(volumes="tmpfs"))
    assert [(m.destination, m.type) for m in config.mounts or []][-1] == ("/data", "tmpfs")
    seen = run(bundle, tmp_path / "runc")
    assert seen["SEED"] == [""]  # not seeded
    assert seen["WROTE"] == ["yes"]  # owned by alice, like the image's /data
    assert not (bundle / "volumes").exists()
    assert not (bundle / "rootfs" / "data" / "new").exists()
    remove_bundle(bundle, snap)
