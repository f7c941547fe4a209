"""Issue 5's acceptance: a real multi-layer Debian image (debootstrap + umoci, built once per
machine by bench/unpack.py) with its config set by ``umoci config`` goes through
``ocikit create`` on each snapshotter; the real ``runc run`` prints exactly what its
entrypoint, cmd, env, working directory and user say, and the rootfs equals ``umoci unpack``
of the same image (tree, types, modes, owners, contents, link targets, xattrs)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bundle_helpers import runc_run
from conftest import require_tool
from create_helpers import BACKENDS, Backend, Cli, active, backend_param, committed, snapshots_of, use_backend
from debian_image import debian_layout
from layer_helpers import snapshot
from snapshot_helpers import _no_mounts_left  # noqa: F401  (autouse: unmounts what a failed test left)
from zfs_pool import zfs_dataset, zfs_pool  # noqa: F401  (fixtures)

TAG = "create-test"
#: Entrypoint ["/bin/sh", "-c"]: Cmd[0] is the script, the rest its $0, $1...
SCRIPT = (
    'echo "ARG0=$0"; for arg in "$@"; do echo "ARG=$arg"; done; echo "CWD=$(pwd -P)"; '
    "tr '\\0' '\\n' < /proc/$$/environ | sed 's/^/ENV=/'; echo \"IDS=$(id -u):$(id -g)\"; "
    'echo "RELEASE=$(cat /etc/debian_version)"'
)
CONFIG_OPTIONS = [
    "--config.entrypoint=/bin/sh",
    "--config.entrypoint=-c",
    f"--config.cmd={SCRIPT}",
    "--config.cmd=zero",
    "--config.cmd=one  two",
    "--config.cmd=--last",
    "--clear=config.env",
    "--config.env=PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    "--config.env=GREETING=hello world",
    "--config.env=EMPTY=",
    "--config.workingdir=/usr/share/doc",
    "--config.user=nobody",
]


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(source, destination)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A private copy of the cached layout (blobs hard-linked: umoci never rewrites one) with
    the image config set by ``umoci config`` under TAG; the layout and that config."""
    if os.geteuid() != 0:
        pytest.skip("runc run, mounting snapshots and umoci unpack need root")
    umoci = require_tool("umoci", "it sets the image config and is the reference unpacker")
    cached = debian_layout()
    layout = tmp_path_factory.mktemp("debian") / "layout"
    shutil.copytree(cached, layout, copy_function=_link_or_copy)
    subprocess.run(
        [umoci, "config", "--image", f"{layout}:bench", "--tag", TAG, *CONFIG_OPTIONS],
        check=True,
        capture_output=True,
    )
    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = [
        m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == TAG
    ]

    def blob(digest: str) -> Any:
        return json.loads((layout / "blobs" / digest.replace(":", "/")).read_bytes())

    config = blob(blob(descriptor["digest"])["config"]["digest"])
    return layout, config


@pytest.fixture(scope="module")
def umoci_rootfs(
    image: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[object, ...]]:
    layout, _ = image
    bundle = tmp_path_factory.mktemp("umoci") / "bundle"
    subprocess.run(
        [require_tool("umoci"), "unpack", "--image", f"{layout}:{TAG}", str(bundle)],
        check=True,
        capture_output=True,
    )
    tree = _comparable(snapshot(bundle / "rootfs", with_times=False))
    shutil.rmtree(bundle)
    return tree


def _comparable(tree: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    """Without overlayfs's private xattrs (the kernel's bookkeeping, not the image's)."""
    result = {}
    for path, (kind, mode, uid, gid, content, xattrs, _mtime) in tree.items():
        kept = tuple(x for x in xattrs if not str(x[0]).startswith("trusted.overlay."))  # type: ignore[index]
        result[path] = (kind, mode, uid, gid, content, kept)
    return result


@pytest.fixture(params=[*(backend_param(b) for b in BACKENDS), pytest.param("zfs", id="zfs")])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "zfs":  # on a dataset of its own in the session's zfs-fuse pool
        dataset = request.getfixturevalue("zfs_dataset")
        zfs = Backend("zfs", lambda: None, ("--zfs-dataset", dataset), {"zfs_dataset": dataset})
        return use_backend(zfs)
    return use_backend(request.param)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    cli = Cli(tmp_path / "store", tmp_path / "snapshots")
    yield cli
    for bundle in tmp_path.glob("bundle*"):
        cli("rm", str(bundle), check=False)


def test_runc_runs_what_the_debian_image_config_says(
    image: tuple[Path, dict[str, Any]],
    umoci_rootfs: dict[str, tuple[object, ...]],
    cli: Cli,
    backend: Backend,
    tmp_path: Path,
) -> None:
    layout, config = image
    container = config["config"]
    assert container["Entrypoint"] == ["/bin/sh", "-c"]
    bundle = tmp_path / "bundle"
    cli("create", *backend.options(), f"oci:{layout}:{TAG}", str(bundle))

    seen = runc_run(bundle, tmp_path / "runc")
    script, *args = container["Cmd"]
    assert script == SCRIPT
    assert seen["ARG0"] == [args[0]]
    assert seen["ARG"] == args[1:] == ["one  two", "--last"]
    assert seen["CWD"] == [container["WorkingDir"]] == ["/usr/share/doc"]
    # runc adds HOME from the image's passwd (nobody's is /nonexistent) when the config has none.
    assert seen["ENV"] == [*container["Env"], "HOME=/nonexistent"]
    assert container["Env"] == ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello world", "EMPTY="]
    assert seen["IDS"] == ["65534:65534"]  # nobody:nogroup, from the image's own /etc/passwd
    assert seen["RELEASE"][0].startswith("12.")

    assert len(umoci_rootfs) > 5000  # the whole system, not an empty directory
    assert _comparable(snapshot(bundle / "rootfs", with_times=False)) == umoci_rootfs
    infos = snapshots_of(backend, cli.snapshots)
    assert len(committed(infos)) == len(config["rootfs"]["diff_ids"]) >= 3
    assert len(active(infos)) == 1
    if backend.name == "zfs":
        _assert_second_container_is_a_clone(cli, backend, layout, tmp_path, len(config["rootfs"]["diff_ids"]))
    cli("rm", str(bundle))
    assert not bundle.exists()


def _assert_second_container_is_a_clone(
    cli: Cli, backend: Backend, layout: Path, tmp_path: Path, layers: int
) -> None:
    """Issue 6's acceptance on a real pool: one ZFS snapshot per layer, and a second container
    of the cached image is a clone of the top layer's snapshot that runc runs."""
    dataset = backend.open_options["zfs_dataset"]
    second = tmp_path / "bundle-second"
    output = cli("create", *backend.options(), f"oci:{layout}:{TAG}", str(second)).stderr
    assert output.count(": cached") == layers
    listing = subprocess.run(
        ["zfs", "list", "-H", "-o", "name,origin", "-t", "filesystem,snapshot", "-r", dataset],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    rows = [line.split("\t") for line in listing]
    assert len([name for name, _ in rows if "@" in name]) == layers
    # Each layer is a clone of the one below; the top layer's snapshot is the origin of both
    # containers, so exactly one snapshot has two clones.
    origins = Counter(origin for name, origin in rows if "@" not in name and origin != "-")
    assert sorted(origins.values()) == [1] * (layers - 1) + [2]
    seen = runc_run(second, tmp_path / "runc-second")
    assert seen["RELEASE"][0].startswith("12.")
    cli("rm", str(second))
