"""Image surgery end to end with the real tools: images made by ``ocikit commit``, ``squash`` and
``config`` are read by skopeo, unpacked by umoci into exactly the expected tree, and run by runc
through ``ocikit create``, on the dir, overlay and zfs snapshotters."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundle_helpers import runc_output
from conftest import ServerProcess, require_tool
from layer_helpers import snapshot, write_layout
from snapshot_helpers import _no_mounts_left  # noqa: F401  (autouse: unmounts what a failed test left)
from surgery_helpers import (
    BASE,
    layer_names,
    make_base_store,
    non_empty,
    ocikit,
    skopeo_inspect,
    umoci_unpack,
)
from test_layers_umoci import CRAFTED
from zfs_pool import zfs_dataset, zfs_pool  # noqa: F401  (fixtures of the zfs backend)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting snapshots, umoci unpack and runc need root"
)

SNAPSHOTTERS = ["dir", "overlay", "zfs"]


@pytest.fixture(params=SNAPSHOTTERS)
def snapshotter(request: pytest.FixtureRequest) -> str:
    """A backend name; for zfs, a parent dataset of a session pool in ``OCIKIT_ZFS_DATASET``."""
    if request.param == "zfs":
        request.getfixturevalue("zfs_dataset")
    return str(request.param)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base_store(tmp_path_factory.mktemp("surgery-base"))


@pytest.fixture
def bundles(tmp_path: Path) -> Iterator[list[Path]]:
    """Bundles a test makes; removed (unmounted) afterwards whatever happens."""
    made: list[Path] = []
    yield made
    for bundle in made:
        if bundle.exists():
            ocikit("rm", str(bundle), check=False)


def create(store: Path, image: str, bundle: Path, snapshotter: str, snapshots: Path, *args: str) -> None:
    ocikit(
        "create",
        "--store",
        str(store),
        "--snapshotter",
        snapshotter,
        "--snapshots",
        str(snapshots),
        image,
        str(bundle),
        *args,
    )


def change_everything(root: Path) -> None:
    """Every kind of change a container makes: add, modify, delete, replace a directory, chmod,
    chown, symlink, hardlink, xattr, a file becoming a directory and the reverse, special files."""
    (root / "new.txt").write_text("added by the test\n")
    with contextlib.suppress(OSError):  # zfs-fuse has no extended attributes
        os.setxattr(root / "new.txt", "user.origin", b"test")
    with open(root / "etc/passwd", "a") as passwd:
        passwd.write("carol:x:1002:1002::/home/carol:/bin/sh\n")
    os.unlink(root / "data/seed")
    shutil.rmtree(root / "opt/app")
    (root / "opt/app").mkdir()
    (root / "opt/app/fresh").write_text("fresh\n")
    os.chmod(root / "bin/show", 0o700)
    os.chown(root / "etc/group", 1234, 5678)
    os.symlink("/etc/passwd", root / "passwd-link")
    os.link(root / "etc/motd", root / "motd-hardlink")
    shutil.rmtree(root / "srv/www")
    os.rmdir(root / "work/dir")
    (root / "work/dir").write_text("a directory became this file\n")
    os.unlink(root / "etc/motd2")
    (root / "etc/motd2").mkdir(mode=0o750)
    (root / "etc/motd2/inside").write_text("a file became this directory\n")
    os.mkfifo(root / "fifo", 0o600)
    os.mknod(root / "dev/zero-like", 0o666 | 0o020000, os.makedev(1, 5))
    (root / "home/alice/big").write_bytes(os.urandom(3 << 20))


def test_commit_round_trip(store: Path, tmp_path: Path, snapshotter: str, bundles: list[Path]) -> None:
    snapshots = tmp_path / "snapshots"
    bundle = tmp_path / "bundle"
    bundles.append(bundle)
    create(store, BASE, bundle, snapshotter, snapshots)
    rootfs = bundle / "rootfs"
    change_everything(rootfs)

    listed = ocikit("diff", str(bundle)).stdout.splitlines()
    for line in (
        "A /new.txt",
        "C /etc/passwd",
        "D /data/seed",
        "D /srv/www",
        "C /bin/show",
        "A /passwd-link",
    ):
        assert line in listed, listed

    out = tmp_path / "out"
    result = ocikit(
        "commit",
        str(bundle),
        f"oci:{out}:committed",
        "--store",
        str(store),
        "-m",
        "my change",
        "-a",
        "tester",
    )
    digest = result.stdout.strip()
    # zfs-fuse keeps coarser times than ext4, where umoci unpacks the layers below.
    times = snapshotter != "zfs"
    expected = snapshot(rootfs, with_times=times)

    unpacked = umoci_unpack(out, "committed", tmp_path / "umoci")
    assert snapshot(unpacked, with_times=times) == expected, "everything, times to the nanosecond too"
    names = layer_names(out, "committed")
    assert "opt/app/.wh..wh..opq" in names, "a directory replaced wholesale is opaque"
    assert {"data/.wh.seed", "srv/.wh.www"} <= set(names)
    assert "bin/busybox" not in names, "unchanged entries are not written"
    assert "bin/show" in names

    inspected = skopeo_inspect(f"oci:{out}:committed")
    assert inspected["Digest"] == digest
    assert len(inspected["Layers"]) == 3
    config = skopeo_inspect(f"oci:{out}:committed", config=True)
    last = config["history"][-1]
    assert (last["created_by"], last["comment"], last["author"]) == ("ocikit commit", "my change", "tester")
    assert len(config["rootfs"]["diff_ids"]) == len(non_empty(config)) == 3
    assert config["config"]["Cmd"] == ["/bin/show"]

    # The new image runs: created by ocikit from the layout, run by runc.
    second = tmp_path / "second"
    bundles.append(second)
    create(
        store,
        f"oci:{out}:committed",
        second,
        snapshotter,
        snapshots,
        "/bin/cat",
        "/new.txt",
        "/opt/app/fresh",
    )
    assert runc_output(second, tmp_path / "runc") == "added by the test\nfresh\n"


def test_commit_into_the_store_and_again(
    store: Path, tmp_path: Path, snapshotter: str, bundles: list[Path]
) -> None:
    """A committed image is committed again (a layer on a committed layer); the store names it."""
    snapshots = tmp_path / "snapshots"
    first = tmp_path / "first"
    bundles.append(first)
    create(store, BASE, first, snapshotter, snapshots)
    (first / "rootfs/one").write_text("1\n")
    ocikit("commit", str(first), f"localhost/surgery/c1-{snapshotter}:1", "--store", str(store))
    second = tmp_path / "second"
    bundles.append(second)
    create(store, f"localhost/surgery/c1-{snapshotter}:1", second, snapshotter, snapshots)
    os.unlink(second / "rootfs/one")
    (second / "rootfs/two").write_text("2\n")
    ocikit("commit", str(second), f"localhost/surgery/c2-{snapshotter}:1", "--store", str(store))
    names = ocikit("images", "--store", str(store)).stdout
    assert f"localhost/surgery/c2-{snapshotter}" in names
    third = tmp_path / "third"
    bundles.append(third)
    create(store, f"localhost/surgery/c2-{snapshotter}:1", third, snapshotter, snapshots, "/bin/ls", "/")
    listing = runc_output(third, tmp_path / "runc").split()
    assert "two" in listing
    assert "one" not in listing


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The three crafted layers of the umoci comparison (every entry type and whiteout form)
    as a layout, and a store holding them as ``localhost/surgery/crafted:1``."""
    work = tmp_path_factory.mktemp("crafted")
    layout = work / "layout"
    write_layout(layout, [layer.tar() for layer in CRAFTED])
    store = work / "store"
    ocikit("copy", f"oci:{layout}:latest", "localhost/surgery/crafted:1", "--store", str(store), "-q")
    return layout, store


@pytest.mark.parametrize("start", [0, 1, 2])
def test_squash_unpacks_identically(
    crafted: tuple[Path, Path], tmp_path: Path, snapshotter: str, start: int
) -> None:
    layout, store = crafted
    out = tmp_path / "out"
    result = ocikit(
        "squash",
        "localhost/surgery/crafted:1",
        f"oci:{out}:squashed",
        "--from",
        str(start),
        "--store",
        str(store),
        "--snapshotter",
        snapshotter,
        "--snapshots",
        str(tmp_path / "snapshots"),
    )
    original = snapshot(umoci_unpack(layout, "latest", tmp_path / "original"))
    squashed = snapshot(umoci_unpack(out, "squashed", tmp_path / "squashed"))
    if snapshotter == "zfs" and start == 0:
        # zfs-fuse stores no extended attributes: the squashed layer cannot have those of
        # layer 0 (home/user, usr/bin/ping), and the command says so.
        assert "extended attribute" in result.stderr
        for path in ("home/user", "usr/bin/ping"):
            original[path] = (*original[path][:5], (), original[path][6])
    assert squashed == original

    inspected = skopeo_inspect(f"oci:{out}:squashed")
    assert len(inspected["Layers"]) == start + 1
    config = skopeo_inspect(f"oci:{out}:squashed", config=True)
    assert len(non_empty(config)) == start + 1
    assert config["history"][-1]["created_by"] == "ocikit squash"
    assert config["history"][-1]["comment"].startswith(f"squashed layers {start} to 2")

    whiteouts = {name for name in layer_names(out, "squashed") if os.path.basename(name).startswith(".wh.")}
    if start == 0:
        assert not whiteouts, "nothing lies below: no whiteout has anything to hide"
    elif start == 1:
        # Layer 1 deleted var/cache/big and usr/bin/wall of layer 0, layer 2 removed long/:
        # those must stay hidden; tmp/was-dir-now came and changed above layer 0: no whiteout.
        assert {"var/cache/.wh.big", "usr/bin/.wh.wall", ".wh.long"} <= whiteouts
        assert not any("was-dir-now" in name for name in whiteouts)


def test_squash_runs(store: Path, tmp_path: Path, bundles: list[Path]) -> None:
    out = tmp_path / "out"
    ocikit("squash", BASE, f"oci:{out}:flat", "--store", str(store), "--snapshots", str(tmp_path / "s"))
    assert len(skopeo_inspect(f"oci:{out}:flat")["Layers"]) == 1
    bundle = tmp_path / "bundle"
    bundles.append(bundle)
    create(
        store,
        f"oci:{out}:flat",
        bundle,
        "overlay",
        tmp_path / "s",
        "/bin/cat",
        "/etc/motd",
        "/srv/www/index.htm",
    )
    assert runc_output(bundle, tmp_path / "runc") == "welcome\n<html></html>"


def test_config_edits(store: Path, tmp_path: Path, bundles: list[Path]) -> None:
    out = tmp_path / "out"
    ocikit(
        "config",
        BASE,
        f"oci:{out}:edited",
        "--store",
        str(store),
        "--entrypoint",
        '["/bin/show", "first"]',
        "--cmd",
        "echo from a shell",
        "--env",
        "GREETING=hello world",
        "--env",
        "PATH=/bin",
        "--workdir",
        "/work",
        "--user",
        "1000:100",
        "--label",
        "org.example.a=1",
        "--label",
        "org.example.b=2",
        "--stop-signal",
        "SIGINT",
        "--volume",
        "/data",
        "--expose",
        "8080",
        "--expose",
        "53/udp",
    )
    config = skopeo_inspect(f"oci:{out}:edited", config=True)
    container = config["config"]
    assert container["Entrypoint"] == ["/bin/show", "first"]
    assert container["Cmd"] == ["/bin/sh", "-c", "echo from a shell"]
    assert container["Env"] == ["GREETING=hello world", "PATH=/bin"]
    assert (container["WorkingDir"], container["User"], container["StopSignal"]) == (
        "/work",
        "1000:100",
        "SIGINT",
    )
    assert container["Labels"] == {"org.example.a": "1", "org.example.b": "2"}
    assert container["Volumes"] == {"/data": {}}
    assert container["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert config["history"][-1]["empty_layer"] is True
    assert config["history"][-1]["created_by"].startswith("ocikit config ENTRYPOINT")
    base = skopeo_inspect(f"oci:{store}:{BASE}")
    assert skopeo_inspect(f"oci:{out}:edited")["Layers"] == base["Layers"], "the layers are shared"

    ocikit(
        "config",
        f"oci:{out}:edited",
        "localhost/surgery/edited:2",
        "--store",
        str(store),
        "--cmd",
        '["second"]',
        "--env-rm",
        "GREETING",
        "--label-rm",
        "org.example.a",
        "--volume-rm",
        "/data",
        "--expose-rm",
        "8080",
    )
    config = skopeo_inspect(f"oci:{store}:localhost/surgery/edited:2", config=True)
    container = config["config"]
    assert container["Env"] == ["PATH=/bin"]
    assert container["Labels"] == {"org.example.b": "2"}
    assert "Volumes" not in container
    assert container["ExposedPorts"] == {"53/udp": {}}

    bundle = tmp_path / "bundle"
    bundles.append(bundle)
    create(store, "localhost/surgery/edited:2", bundle, "overlay", tmp_path / "s")
    seen = runc_output(bundle, tmp_path / "runc").splitlines()
    assert seen[:3] == ["ARGV0=/bin/show", "ARG=first", "ARG=second"]
    assert "CWD=/work" in seen
    assert "Uid=1000\t1000\t1000\t1000" in seen


def test_to_a_registry(store: Path, tmp_path: Path, registry: ServerProcess) -> None:
    """NEWREF may be any transport: the new image is copied there from the store."""
    target = f"docker://{registry.host}/surgery/flat:1"
    ocikit("squash", BASE, target, "--store", str(store), "--snapshots", str(tmp_path / "s"))
    assert len(skopeo_inspect(target, tls=False)["Layers"]) == 1
    skopeo = require_tool("skopeo", "the reference copier")
    copied = tmp_path / "copied"
    command = [skopeo, "copy", "--src-tls-verify=false", target, f"oci:{copied}:flat"]
    subprocess.run(command, check=True, capture_output=True)
    ocikit("copy", f"oci:{store}:{BASE}", f"oci:{copied}:base", "-q")
    original = snapshot(umoci_unpack(copied, "base", tmp_path / "original"))
    assert snapshot(umoci_unpack(copied, "flat", tmp_path / "flat")) == original
    target = f"docker://{registry.host}/surgery/edited:1"
    ocikit("config", BASE, target, "--store", str(store), "--label", "a=b")
    assert skopeo_inspect(target, tls=False, config=True)["config"]["Labels"] == {"a": "b"}
    archive = tmp_path / "edited.tar"
    ocikit("config", BASE, f"oci-archive:{archive}:edited", "--store", str(store), "--user", "1")
    assert skopeo_inspect(f"oci-archive:{archive}:edited", config=True)["config"]["User"] == "1"
