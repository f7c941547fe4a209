"""``ocikit create --format lxc``: the real lxc-execute and lxc-start run the container on each
snapshotter and print exactly the argv, environment, working directory and ids the image's
config says; what LXC's config format cannot hold is refused with a clear message."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from busybox_image import ocikit, root_backend, write_busybox_layout
from conftest import require_tool
from ocikit.bundle import BundleError, Overrides, read_state, remove_bundle
from ocikit.bundle.lxc import UNPASSABLE, create_lxc, init_command, quote_command, stop_signal
from ocikit.bundle.unpack import unpack_image
from ocikit.snapshot import NotFoundError, open_snapshotter
from ocikit.store.images import ImageStore
from snapshot_helpers import (
    BACKENDS,
    _no_mounts_left,  # noqa: F401  (autouse: unmounts what a failed test left)
)
from zfs_pool import zfs_dataset, zfs_pool  # noqa: F401  (fixtures of the zfs backend)

IMAGE = {
    "Entrypoint": ["/bin/show", "first arg"],
    "Cmd": ["two  words", "it's", '"double"', "", "--flag=x"],
    "Env": ["PATH=/bin", "GREETING=hello world", "EMPTY=", "TWO==equals"],
    "WorkingDir": "/work/dir",
    "User": "alice",
    "Volumes": {"/data": {}},
    "StopSignal": "SIGQUIT",
}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return root_backend(request, tmp_path)


def create(
    tmp_path: Path, backend: str, container: dict[str, object], *extra: str, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """``ocikit create --format lxc`` of the busybox image into ``tmp_path/ctrs/web``."""
    location = write_busybox_layout(tmp_path / "layout", container)
    (tmp_path / "ctrs").mkdir(exist_ok=True)
    return ocikit(
        "create",
        "--format",
        "lxc",
        "--snapshotter",
        backend,
        "--snapshots",
        tmp_path / "snapshots",
        "--store",
        tmp_path / "store",
        *extra,
        location,
        tmp_path / "ctrs" / "web",
        ok=ok,
    )


def parse(output: str) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for line in output.replace("\r\n", "\n").splitlines():
        key, _, value = line.partition("=")
        seen.setdefault(key, []).append(value)
    return seen


def lxc_execute(directory: Path, tmp_path: Path) -> dict[str, list[str]]:
    tool = require_tool("lxc-execute", "it runs the LXC containers")
    log = tmp_path / "lxc.log"
    result = subprocess.run(
        [tool, "-n", directory.name, "-P", str(directory.parent), "-o", str(log), "-l", "INFO"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
    return parse(result.stdout)


def assert_as_configured(seen: dict[str, list[str]], args: list[str] | None = None) -> None:
    assert seen["ARGV0"] == ["/bin/show"]
    assert seen["ARG"] == (args or ["first arg", "two  words", "it's", '"double"', "", "--flag=x"])
    assert seen["CWD"] == ["/work/dir"]
    # LXC adds container=lxc; ocikit adds HOME from the image's passwd, as runc does.
    assert seen["ENV"] == [
        "PATH=/bin",
        "GREETING=hello world",
        "EMPTY=",
        "TWO==equals",
        "HOME=/home/alice",
        "container=lxc",
    ]
    assert seen["Uid"] == ["1000\t1000\t1000\t1000"]
    assert seen["Gid"] == ["1000\t1000\t1000\t1000"]
    assert sorted(seen["Groups"][0].split()) == ["29", "50"]
    assert seen["HOSTNAME"] == ["web"]
    assert seen["SEED"] == ["from the image"]
    assert seen["WROTE"] == ["yes"]


def test_lxc_execute_runs_what_the_image_config_says(backend: str, tmp_path: Path) -> None:
    create(tmp_path, backend, IMAGE)
    directory = tmp_path / "ctrs" / "web"
    config = (directory / "config").read_text()
    assert f"lxc.rootfs.path = dir:{directory}/rootfs\n" in config
    assert "lxc.signal.halt = SIGQUIT\n" in config
    assert "lxc.net.0.type = empty\n" in config
    assert read_state(directory).format == "lxc"

    assert_as_configured(lxc_execute(directory, tmp_path))
    # The volume's writes went to the container directory, not into the rootfs snapshot.
    assert (directory / "volumes" / "0-data" / "new").read_text() == "written\n"
    assert not (directory / "rootfs" / "data" / "new").exists()
    # The whiteout and the opaque directory of the second layer are applied.
    assert not (directory / "rootfs" / "etc" / "obsolete").exists()
    assert sorted(p.name for p in (directory / "rootfs" / "old").iterdir()) == ["kept", "kept-link"]

    key = read_state(directory).key
    ocikit("rm", directory)
    assert not directory.exists()
    with open_snapshotter(backend, tmp_path / "snapshots" / backend) as snap:
        with pytest.raises(NotFoundError):
            snap.stat(key)
        assert [info.kind.value for info in snap.walk()] == ["committed", "committed"]


def lxc_start(directory: Path, console: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("lxc-start", "it runs the LXC containers")
    return subprocess.run(
        [
            tool,
            "-F",
            "-n",
            directory.name,
            "-P",
            str(directory.parent),
            "-L",
            str(console),
            "-o",
            str(console.with_suffix(".lxc.log")),
            "-l",
            "ERROR",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_lxc_start_runs_it_as_init(backend: str, tmp_path: Path) -> None:
    plain = ["--flag=x", "it's", '"double"']
    create(tmp_path, backend, {**IMAGE, "Entrypoint": ["/bin/show"], "Cmd": plain})
    directory = tmp_path / "ctrs" / "web"
    console = tmp_path / "console.log"
    result = lxc_start(directory, console)
    assert result.returncode == 0, result.stderr
    assert_as_configured(parse(console.read_text()), plain)
    ocikit("rm", directory)


def test_lxc_start_refuses_arguments_it_cannot_pass(backend: str, tmp_path: Path) -> None:
    """lxc.init.cmd has no quoting: rather than run a mangled command, lxc-start fails and
    says why, and create warns; lxc-execute runs the exact command."""
    result = create(tmp_path, backend, IMAGE)
    directory = tmp_path / "ctrs" / "web"
    assert "run this container with lxc-execute" in result.stderr
    started = lxc_start(directory, tmp_path / "console.log")
    assert started.returncode != 0
    assert "lxc-start-cannot-pass-these-arguments" in (tmp_path / "console.lxc.log").read_text()
    assert_as_configured(lxc_execute(directory, tmp_path))
    ocikit("rm", directory)


def test_command_line_overrides(backend: str, tmp_path: Path) -> None:
    directory = tmp_path / "ctrs" / "web"
    create(
        tmp_path,
        backend,
        IMAGE,
        "--entrypoint",
        "/bin/show",
        "-e",
        "GREETING=changed",
        "-w",
        "/tmp",
        "-u",
        "4242:50",
        "--hostname",
        "other",
        "--volumes",
        "tmpfs",
    )
    seen = lxc_execute(directory, tmp_path)
    assert "ARG" not in seen  # --entrypoint drops Cmd, like docker run
    assert seen["CWD"] == ["/tmp"]
    assert "GREETING=changed" in seen["ENV"]
    assert "HOME=/" in seen["ENV"]
    assert seen["Uid"] == ["4242\t4242\t4242\t4242"]
    assert seen["Gid"] == ["50\t50\t50\t50"]
    assert seen["HOSTNAME"] == ["other"]
    assert seen["SEED"] == [""]  # a fresh tmpfs
    assert not (directory / "volumes").exists()
    ocikit("rm", directory)


@pytest.mark.parametrize(
    ("container", "message"),
    [
        ({"Cmd": ["/bin/show", 'it\'s "both"']}, "both quote characters"),
        ({"Cmd": ["/bin/show", "two\nlines"]}, "line break"),
        ({"Cmd": ["/bin/show"], "Env": ["HOSTVAR"]}, "copy the host's variable"),
        ({"Cmd": ["/bin/show"], "Env": ["PADDED=x "]}, "trims the whitespace"),
        ({"Cmd": ["/bin/show"], "StopSignal": "SIGNOPE"}, "not a signal LXC knows"),
    ],
)
def test_what_lxc_cannot_hold_is_refused(
    backend: str, tmp_path: Path, container: dict[str, object], message: str
) -> None:
    result = create(tmp_path, backend, container, ok=False)
    directory = tmp_path / "ctrs" / "web"
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not directory.exists()
    with open_snapshotter(backend, tmp_path / "snapshots" / backend) as snap:
        assert all(info.kind.value == "committed" for info in snap.walk())


def test_quoting_and_signals() -> None:
    assert quote_command(["/bin/x", "a b", "", "it's", '"q"', "plain"]) == (
        "/bin/x 'a b' '' it's '\"q\"' plain"
    )
    assert quote_command(["'leading"]) == '"\'leading"'
    assert quote_command(["tab\there"]) == "'tab\there'"
    assert init_command(["/bin/x", "--a=b", "it's"]) == "/bin/x --a=b it's"
    assert init_command(["/bin/x", ""]) == init_command(["/bin/x", "a b"]) == UNPASSABLE
    with pytest.raises(BundleError):
        quote_command(["'\""])
    assert stop_signal("TERM") == "SIGTERM"
    assert stop_signal("sigrtmin+3") == "SIGRTMIN+3"
    assert stop_signal("9") == "9"
    assert stop_signal(None) is None
    for bad in ("0", "99", "SIGFOO", "RTMIN-x", "9" * 5000):
        with pytest.raises(BundleError):
            stop_signal(bad)


def test_read_only_rootfs(backend: str, tmp_path: Path) -> None:
    create(tmp_path, backend, IMAGE, "--read-only")
    directory = tmp_path / "ctrs" / "web"
    assert "lxc.rootfs.options = ro\n" in (directory / "config").read_text()
    tool = require_tool("lxc-execute", "it runs the LXC containers")
    result = subprocess.run(
        [tool, "-n", "web", "-P", str(directory.parent), "--", "/bin/sh", "-c", "echo x > /x"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr + result.stdout
    assert not (directory / "rootfs" / "x").exists()
    ocikit("rm", directory)


def test_config_stands_without_the_distribution_include(backend: str, tmp_path: Path) -> None:
    """Without LXC's common.conf (an LXC built elsewhere), the config alone still runs."""
    location = write_busybox_layout(tmp_path / "layout", IMAGE)
    ocikit("copy", location, "busybox:lxc", "--store", tmp_path / "store")
    with ImageStore(tmp_path / "store") as store:
        image = store.image("busybox:lxc")
    with open_snapshotter(backend, tmp_path / "snapshots") as snap:
        chain = unpack_image(image, snap)
        directory = tmp_path / "ctrs" / "web"
        directory.parent.mkdir()
        text = create_lxc(directory, image.config.value, snap, chain, Overrides(hostname="web"), include=None)
        assert "lxc.include" not in text
        assert_as_configured(lxc_execute(directory, tmp_path))
        remove_bundle(directory, snap)
