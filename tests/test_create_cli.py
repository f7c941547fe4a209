"""End to end through the real CLI: ``ocikit create`` of a multi-layer busybox image (from an
OCI layout, an oci-archive and the local store) on each snapshotter, run by the real runc;
layer snapshots shared by ChainID; ``ocikit rm``; platforms; bad and hostile layers leaving
nothing behind; rootless creation with the ``dir`` snapshotter."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundle_helpers import GROUP, PASSWD, SHOW, runc_run, static_busybox
from create_helpers import (
    BACKENDS,
    Backend,
    Cli,
    Image,
    active,
    backend_param,
    chain_ids,
    committed,
    one_line_error,
    snapshots_of,
    tree_digest,
    use_backend,
    write_archive,
    write_image,
)
from layer_helpers import Layer, gzip_bytes, sha256
from snapshot_helpers import _no_mounts_left  # noqa: F401  (autouse: unmounts what a failed test left)
from unprivileged import NOBODY, Unprivileged, unprivileged_fixture  # noqa: F401  (a fixture)
from zfs_pool import zfs_dataset, zfs_pool  # noqa: F401  (fixtures)

APPLETS = ("sh", "echo", "tr", "sed", "pwd", "hostname", "cat", "ls", "id", "env", "true")
CONFIG = {
    "Entrypoint": ["/bin/show", "first arg"],
    "Cmd": ["two  words", "--flag=x", ""],
    "Env": ["PATH=/bin", "GREETING=hello world", "EMPTY=", "TWO==equals"],
    "WorkingDir": "/work/dir",
    "User": "alice",
}


def busybox_layers() -> list[bytes]:
    """Three layers: a base system; additions; then a whiteout, an opaque directory and a
    replaced file (what the rootfs must show, and must not, is checked by the tests)."""
    busybox = static_busybox().read_bytes()
    base = Layer()
    for name in ("bin", "etc", "tmp", "proc", "sys", "dev", "home", "work", "opt", "opt/old"):
        base.dir(name, mode=0o1777 if name == "tmp" else 0o755)
    base.dir("home/alice", uid=1000, gid=1000)
    base.file("bin/busybox", busybox, mode=0o755)
    for applet in APPLETS:
        base.symlink(f"bin/{applet}", "busybox")
    base.file("bin/show", SHOW.encode(), mode=0o755)
    base.file("etc/passwd", PASSWD.encode()).file("etc/group", GROUP.encode())
    base.file("etc/removed", b"gone later\n").file("opt/old/a", b"a").file("opt/old/b", b"b")
    base.file("etc/motd", b"one\n")
    second = Layer().dir("work/dir", uid=1000, gid=1000).file("etc/motd", b"two\n").file("opt/old/c", b"c")
    third = (
        Layer()
        .whiteout("etc", "removed")
        .opaque("opt/old")
        .file("opt/old/new", b"new\n")
        .file("etc/motd", b"three\n", mode=0o600)
    )
    return [base.tar(), second.tar(), third.tar()]


@pytest.fixture(scope="module")
def layers() -> list[bytes]:
    return busybox_layers()


@pytest.fixture(params=[*(backend_param(b) for b in BACKENDS), pytest.param("zfs", id="zfs")])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "zfs":  # on a dataset of its own in the session's zfs-fuse pool
        dataset = request.getfixturevalue("zfs_dataset")
        zfs = Backend("zfs", lambda: None, ("--zfs-dataset", dataset), {"zfs_dataset": dataset})
        return use_backend(zfs)
    return use_backend(request.param)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "store", tmp_path / "snapshots")


@pytest.fixture
def layout(tmp_path: Path, layers: list[bytes]) -> Path:
    path = tmp_path / "layout"
    write_image(path, "v1", Image(layers, CONFIG))
    return path


@pytest.fixture
def bundles(cli: Cli, backend: Backend, tmp_path: Path) -> Iterator[list[Path]]:
    """Bundles a test made: removed with ``ocikit rm`` when the test is over."""
    made: list[Path] = []
    yield made
    for bundle in made:
        if bundle.exists():
            cli("rm", str(bundle), check=False)
    shutil.rmtree(tmp_path / "runc", ignore_errors=True)


def create(
    cli: Cli, backend: Backend, image: str, bundle: Path, *rest: str, options: tuple[str, ...] = ()
) -> str:
    result = cli("create", *backend.options(), *options, image, str(bundle), *rest)
    assert result.stdout.strip() == str(bundle)
    return result.stderr


def assert_runs_as_configured(bundle: Path, runc_state: Path) -> None:
    seen = runc_run(bundle, runc_state)
    assert seen["ARGV0"] == ["/bin/show"]
    assert seen["ARG"] == ["first arg", "two  words", "--flag=x", ""]
    assert seen["CWD"] == ["/work/dir"]
    # runc adds HOME from the image's passwd when the config has none; nothing else.
    assert seen["ENV"] == ["PATH=/bin", "GREETING=hello world", "EMPTY=", "TWO==equals", "HOME=/home/alice"]
    assert seen["Uid"] == ["1000\t1000\t1000\t1000"]
    assert seen["Gid"] == ["1000\t1000\t1000\t1000"]
    assert sorted(seen["Groups"][0].split()) == ["29", "50"]


def assert_layers_applied(rootfs: Path) -> None:
    assert not (rootfs / "etc" / "removed").exists()
    assert sorted(os.listdir(rootfs / "opt" / "old")) == ["new"]
    assert (rootfs / "etc" / "motd").read_text() == "three\n"
    assert stat.S_IMODE((rootfs / "etc" / "motd").stat().st_mode) == 0o600
    info = (rootfs / "work" / "dir").stat()
    assert (info.st_uid, info.st_gid) == (1000, 1000)


# --- creating and running ------------------------------------------------------------------


@pytest.mark.parametrize("source", ["oci", "oci-archive", "store"])
def test_create_runs_what_the_image_says(
    source: str,
    cli: Cli,
    backend: Backend,
    layout: Path,
    layers: list[bytes],
    tmp_path: Path,
    bundles: list[Path],
) -> None:
    if source == "oci":
        image = f"oci:{layout}:v1"
    elif source == "oci-archive":
        write_archive(layout, tmp_path / "image.tar")
        image = f"oci-archive:{tmp_path / 'image.tar'}:v1"
    else:
        cli("copy", f"oci:{layout}:v1", "example.org/busy:v1")
        image = "example.org/busy:v1"
    bundle = tmp_path / "bundle"
    bundles.append(bundle)
    create(cli, backend, image, bundle)
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["terminal"] is False
    assert_layers_applied(bundle / "rootfs")
    assert_runs_as_configured(bundle, tmp_path / "runc")

    infos = snapshots_of(backend, cli.snapshots)
    diff_ids = [sha256(tar) for tar in layers]
    expected = {
        chain: {"ocikit.layer.diffid": diff}
        for chain, diff in zip(chain_ids(diff_ids), diff_ids, strict=True)
    }
    assert committed(infos) == expected
    (container,) = active(infos)
    assert container.parent == chain_ids(diff_ids)[-1]
    assert container.labels == {"ocikit.bundle": str(bundle)}


def test_overrides(cli: Cli, backend: Backend, layout: Path, tmp_path: Path, bundles: list[Path]) -> None:
    bundle = tmp_path / "bundle"
    bundles.append(bundle)
    options = (
        "--entrypoint",
        "/bin/show",
        "-e",
        "GREETING=changed",
        "-e",
        "NEW=1",
        "-w",
        "/tmp",
        "-u",
        "bob",
    )
    create(cli, backend, f"oci:{layout}:v1", bundle, "x", "-y", "--z", options=options)
    seen = runc_run(bundle, tmp_path / "runc")
    assert seen["ARGV0"] == ["/bin/show"]
    assert seen["ARG"] == ["x", "-y", "--z"]  # --entrypoint drops Cmd; args after BUNDLE replace it
    assert seen["CWD"] == ["/tmp"]
    assert seen["ENV"] == [
        "PATH=/bin",
        "GREETING=changed",
        "EMPTY=",
        "TWO==equals",
        "NEW=1",
        "HOME=/home/bob",
    ]
    assert seen["Uid"] == ["1001\t1001\t1001\t1001"]
    assert seen["Gid"] == ["100\t100\t100\t100"]
    assert seen["Groups"][0].split() == ["29"]


def test_args_alone_replace_cmd_and_tty_sets_terminal(
    cli: Cli, backend: Backend, layout: Path, tmp_path: Path, bundles: list[Path]
) -> None:
    bundle = tmp_path / "bundle"
    bundles.append(bundle)
    create(cli, backend, f"oci:{layout}:v1", bundle, "only", options=("--tty",))
    process = json.loads((bundle / "config.json").read_text())["process"]
    assert process["terminal"] is True
    assert process["args"] == ["/bin/show", "first arg", "only"]
    assert "TERM=xterm" in process["env"]


# --- snapshots: cached, shared, removed ----------------------------------------------------


def test_second_create_reuses_and_rm_keeps_the_layers(
    cli: Cli, backend: Backend, layout: Path, tmp_path: Path, bundles: list[Path]
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    bundles += [first, second]
    log = create(cli, backend, f"oci:{layout}:v1", first)
    assert log.count(": applied ") == 3
    layers_before = committed(snapshots_of(backend, cli.snapshots))
    log = create(cli, backend, f"oci:{layout}:v1", second)
    assert log.count(": cached") == 3
    assert ": applied " not in log
    infos = snapshots_of(backend, cli.snapshots)
    assert committed(infos) == layers_before
    assert sorted(info.labels["ocikit.bundle"] for info in active(infos)) == [str(first), str(second)]
    (second / "rootfs" / "etc" / "motd").write_text("changed in the second container\n")
    assert (first / "rootfs" / "etc" / "motd").read_text() == "three\n"

    cli("rm", str(second))
    assert not second.exists()
    infos = snapshots_of(backend, cli.snapshots)
    assert committed(infos) == layers_before
    assert [info.labels["ocikit.bundle"] for info in active(infos)] == [str(first)]
    assert_runs_as_configured(first, tmp_path / "runc")
    cli("rm", str(first))
    assert not first.exists()
    infos = snapshots_of(backend, cli.snapshots)
    assert active(infos) == []
    assert committed(infos) == layers_before


def test_images_sharing_base_layers_share_snapshots(
    cli: Cli, backend: Backend, layout: Path, layers: list[bytes], tmp_path: Path, bundles: list[Path]
) -> None:
    extra = Layer().file("etc/motd", b"other image\n").tar()
    write_image(layout, "other", Image([layers[0], layers[1], extra], {**CONFIG, "Cmd": ["other"]}))
    one, other = tmp_path / "one", tmp_path / "other"
    bundles += [one, other]
    create(cli, backend, f"oci:{layout}:v1", one)
    log = create(cli, backend, f"oci:{layout}:other", other)
    assert log.count(": cached") == 2
    assert log.count(": applied ") == 1
    assert (other / "rootfs" / "etc" / "motd").read_text() == "other image\n"
    assert (other / "rootfs" / "etc" / "removed").exists()  # the whiteout was the first image's
    ours = chain_ids([sha256(tar) for tar in layers])
    theirs = chain_ids([sha256(tar) for tar in (layers[0], layers[1], extra)])
    assert ours[:2] == theirs[:2]
    assert set(committed(snapshots_of(backend, cli.snapshots))) == {*ours, theirs[2]}


# --- platforms -----------------------------------------------------------------------------


def test_platform_is_chosen_from_an_index(
    cli: Cli, backend: Backend, layers: list[bytes], tmp_path: Path, bundles: list[Path]
) -> None:
    layout = tmp_path / "multi"
    write_image(
        layout,
        "multi",
        Image(layers, {**CONFIG, "Env": ["PLATFORM=amd64"]}, architecture="amd64"),
        Image(layers[:1], {**CONFIG, "Env": ["PLATFORM=arm64"]}, architecture="arm64"),
    )
    host, arm = tmp_path / "host", tmp_path / "arm"
    bundles += [host, arm]
    create(cli, backend, f"oci:{layout}:multi", host)
    assert "PLATFORM=amd64" in json.loads((host / "config.json").read_text())["process"]["env"]
    create(cli, backend, f"oci:{layout}:multi", arm, options=("--platform", "linux/arm64"))
    assert "PLATFORM=arm64" in json.loads((arm / "config.json").read_text())["process"]["env"]
    assert (arm / "rootfs" / "etc" / "removed").exists()  # only the base layer

    missing = tmp_path / "missing"
    before = snapshots_of(backend, cli.snapshots)
    result = cli(
        "create",
        *backend.options(),
        "--platform",
        "linux/s390x",
        f"oci:{layout}:multi",
        str(missing),
        check=False,
    )
    assert "linux/s390x" in one_line_error(result)
    assert not missing.exists()
    assert snapshots_of(backend, cli.snapshots) == before


# --- bad and hostile layers ----------------------------------------------------------------


def _hostile(outside: Path) -> dict[str, bytes]:
    """Layers that must be refused; each first plants a way out and then tries to use it."""
    link = Layer().symlink("escape", str(outside)).symlink("up", "../../../../../../..")
    return {
        "dotdot-name": Layer(list(link.members)).file(f"../../../../../..{outside}/pwned", b"x").tar(),
        "hardlink-out": Layer(list(link.members))
        .hardlink("stolen", f"../../../../../..{outside}/sentinel")
        .tar(),
        "bad-whiteout": Layer(list(link.members)).file("escape/.wh..", b"").tar(),
        "trailing-data": Layer(list(link.members)).file("ok", b"ok").tar(trailing=b"garbage" * 100),
    }


#: What the one-line error of each bad case says.
EXPECTED_MESSAGE = {
    "bad-digest-layout": "digest mismatch",  # refused while copying into the store
    "bad-digest-store": "the blob is corrupt",  # the store's blob changed: refused while applying
    "bad-diffid": "(diffID) is sha256:",
    "dotdot-name": "which could leave the root",
    "hardlink-out": "which could leave the root",
    "bad-whiteout": "names no sibling",
    "trailing-data": "follows the tar end-of-archive",
}


@pytest.mark.parametrize(
    "case", ["bad-digest-layout", "bad-digest-store", "bad-diffid", *_hostile(Path("/x"))]
)
def test_bad_layers_leave_nothing_behind(
    case: str, cli: Cli, backend: Backend, layers: list[bytes], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("keep me\n")
    before = tree_digest(outside)
    top = {"bad-digest-layout": layers[1], "bad-digest-store": layers[1], "bad-diffid": layers[1]}.get(case)
    image = Image([layers[0], top if top is not None else _hostile(outside)[case]], CONFIG)
    if case == "bad-digest-layout":
        image.corrupt_blobs[1] = bytes(len(gzip_bytes(layers[1])))  # right size, wrong bytes
    if case == "bad-diffid":
        image.diff_ids = [image.real_diff_ids[0], "sha256:" + "0" * 64]
    layout = tmp_path / "layout"
    write_image(layout, "bad", image)
    reference = f"oci:{layout}:bad"
    if case == "bad-digest-store":
        cli("copy", reference, "bad:latest")
        store_blob = cli.store / "blobs" / "sha256" / sha256(gzip_bytes(layers[1])).split(":")[1]
        store_blob.write_bytes(gzip_bytes(Layer().file("impostor", b"x" * 1000).tar()))
        reference = "bad:latest"

    bundle = tmp_path / "bundle"
    result = cli("create", *backend.options(), reference, str(bundle), check=False)
    message = one_line_error(result)
    assert EXPECTED_MESSAGE[case] in message
    assert len(message) < 500
    assert not bundle.exists()
    assert tree_digest(outside) == before
    assert sorted(os.listdir(tmp_path)) == sorted(
        name for name in ("layout", "outside", "store", "snapshots") if (tmp_path / name).exists()
    )
    if (cli.snapshots / backend.name).exists():
        infos = snapshots_of(backend, cli.snapshots)
        assert active(infos) == []
        bad_chain = chain_ids(image.real_diff_ids)[1]
        assert bad_chain not in committed(infos)
        assert set(committed(infos)) <= {image.real_diff_ids[0]}  # the good base layer may stay


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"Env": ["PATH=/bin"]}, "neither Entrypoint nor Cmd"),
        ({**CONFIG, "WorkingDir": "relative"}, "must be an absolute path"),
        ({**CONFIG, "Volumes": {"/": {}}}, "would cover the whole root filesystem"),
    ],
)
def test_an_image_that_cannot_become_a_bundle_is_refused_before_any_layer_is_unpacked(
    config: dict[str, object], message: str, cli: Cli, layers: list[bytes], tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    write_image(layout, "v1", Image(layers, config))
    bundle = tmp_path / "bundle"
    result = cli("create", "--snapshotter", "dir", f"oci:{layout}:v1", str(bundle), check=False)
    assert message in one_line_error(result)
    assert "layer " not in result.stderr  # no "layer …: applied N entries" line
    assert not bundle.exists()
    assert (
        not (cli.snapshots / "dir").exists() or committed(snapshots_of(Backend("dir"), cli.snapshots)) == {}
    )


def test_a_layout_blob_planted_as_a_symlink_is_never_read(
    cli: Cli, backend: Backend, layers: list[bytes], tmp_path: Path
) -> None:
    """From a layout, layers are applied while the image is copied into the store: both read
    the layout's blobs through its checks, so a symlink in a blob's place (here to a file with
    the right bytes, outside the layout) fails the create and leaves no snapshot of it."""
    layout = tmp_path / "layout"
    image = Image(layers, CONFIG)
    write_image(layout, "v1", image)
    planted = layout / "blobs" / "sha256" / sha256(gzip_bytes(layers[1])).split(":")[1]
    outside = tmp_path / "outside-blob"
    planted.rename(outside)
    planted.symlink_to(outside)
    bundle = tmp_path / "bundle"
    result = cli("create", *backend.options(), f"oci:{layout}:v1", str(bundle), check=False)
    assert result.returncode == 1
    assert sha256(gzip_bytes(layers[1])) in one_line_error(result)
    assert not bundle.exists()
    if (cli.snapshots / backend.name).exists():
        infos = snapshots_of(backend, cli.snapshots)
        assert active(infos) == []
        assert set(committed(infos)) <= {image.real_diff_ids[0]}


def test_create_from_a_layout_stores_the_image_it_unpacked(
    cli: Cli, backend: Backend, layout: Path, tmp_path: Path, bundles: list[Path]
) -> None:
    """The image a create from a layout unpacked (while copying it) is the one in the store:
    a create of the store's copy finds every layer cached."""
    first, second = tmp_path / "first", tmp_path / "second"
    bundles += [first, second]
    assert create(cli, backend, f"oci:{layout}:v1", first).count(": applied ") == 3
    (stored,) = json.loads((cli.store / "index.json").read_text())["manifests"]
    log = create(cli, backend, stored["digest"], second)
    assert log.count(": cached") == 3
    assert_layers_applied(second / "rootfs")


def test_an_escaping_symlink_is_followed_inside_the_rootfs_only(
    cli: Cli, backend: Backend, layers: list[bytes], tmp_path: Path, bundles: list[Path]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("keep me\n")
    before = tree_digest(outside)
    hostile = Layer().symlink("escape", str(outside)).file("escape/sentinel", b"overwritten").tar()
    layout = tmp_path / "layout"
    write_image(layout, "sym", Image([layers[0], hostile], CONFIG))
    bundle = tmp_path / "bundle"
    bundles.append(bundle)
    create(cli, backend, f"oci:{layout}:sym", bundle)
    assert tree_digest(outside) == before
    inside = bundle / "rootfs" / str(outside).lstrip("/") / "sentinel"
    assert inside.read_bytes() == b"overwritten"


# --- rootless --------------------------------------------------------------------------------


def test_rootless_create_with_the_dir_snapshotter(layout: Path, unprivileged: Unprivileged) -> None:
    # pytest's temporary directories are private to root: a world-traversable one instead.
    home = Path(tempfile.mkdtemp(prefix="ocikit-rootless-create-"))
    try:
        os.chmod(home, 0o755)
        shutil.copytree(layout, home / "layout")
        work = home / "work"
        work.mkdir()
        os.chown(work, NOBODY, NOBODY)
        cli = Cli(work / "store", work / "snapshots", unprivileged.python, unprivileged.pythonpath)
        prefix = unprivileged.prefix
        bundle = work / "bundle"
        result = cli(
            "create", "--snapshotter", "dir", f"oci:{home / 'layout'}:v1", str(bundle), prefix=prefix
        )
        assert result.stdout.strip() == str(bundle)
        root = Path(json.loads((bundle / "config.json").read_text())["root"]["path"])
        assert root.is_absolute()
        assert not root.is_symlink()
        assert (bundle / "rootfs").resolve() == root
        assert not (root / "etc" / "removed").exists()
        assert sorted(os.listdir(root / "opt" / "old")) == ["new"]
        owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [root, *root.rglob("*")]}
        assert owners == {(65534, 65534)}  # the image's 0 and 1000 mapped to the caller
        cli("rm", str(bundle), prefix=prefix)
        assert not bundle.exists()
        assert not root.exists()
        infos = snapshots_of(Backend("dir"), cli.snapshots)
        assert active(infos) == []
        assert len(committed(infos)) == 3
    finally:
        shutil.rmtree(home)
