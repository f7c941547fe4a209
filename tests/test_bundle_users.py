"""Config.User resolution from the image's own files, and reading them without ever
leaving the rootfs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocikit.bundle import BundleError, resolve_user
from ocikit.bundle.rootfs import RootfsError, open_in_root, read_in_root
from ocikit.bundle.users import parse_group, parse_passwd
from ocikit.spec.runtime import User

PASSWD = """root:x:0:0:root:/root:/bin/sh
+nis-entry
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:100::/home/bob:/bin/sh
weird:x:notanumber:1::/:/bin/sh
short:x:5
2000:x:3000:3000:a user named like a number:/:/bin/sh
"""
GROUP = """root:x:0:
users:x:100:bob
staff:x:50:alice
audio:x:29:bob,alice
audio-dup:x:29:alice
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Iterator[int]:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, User(uid=0, gid=0)),
        ("", User(uid=0, gid=0)),
        ("alice", User(uid=1000, gid=1000, additional_gids=[50, 29])),
        ("bob", User(uid=1001, gid=100, additional_gids=[100, 29])),
        ("root", User(uid=0, gid=0)),
        ("alice:audio", User(uid=1000, gid=29)),
        ("alice:7", User(uid=1000, gid=7)),
        ("1000", User(uid=1000, gid=1000)),  # numeric: group from passwd, no supplementary groups
        ("4242", User(uid=4242, gid=0)),  # numeric, not in passwd: fine
        ("4242:4343", User(uid=4242, gid=4343)),
        ("4242:staff", User(uid=4242, gid=50)),
        ("2000", User(uid=2000, gid=0)),  # numeric wins over a user *named* 2000
        ("4294967294:0", User(uid=4294967294, gid=0)),
    ],
)
def test_user_resolution(rootfs: int, spec: str | None, expected: User) -> None:
    assert resolve_user(spec, rootfs) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mallory", "user 'mallory' does not exist"),
        ("alice:nogroup", "group 'nogroup' does not exist"),
        ("weird", "user 'weird' does not exist"),
        (":0", "invalid user"),
        ("alice:", "invalid user"),
        ("a:b:c", "invalid user"),
        ("4294967295", "out of range"),
        ("1:99999999999", "out of range"),
        ("9" * 5000, "out of range"),
        ("1:" + "9" * 5000, "out of range"),
    ],
)
def test_bad_users_are_clear_errors(rootfs: int, spec: str, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        resolve_user(spec, rootfs)


def test_names_need_the_files_numbers_do_not(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert resolve_user("12:34", fd) == User(uid=12, gid=34)
        assert resolve_user("12", fd) == User(uid=12, gid=0)
        with pytest.raises(BundleError, match="no /etc/passwd"):
            resolve_user("alice", fd)
        with pytest.raises(BundleError, match="no /etc/group"):
            resolve_user("12:staff", fd)
    finally:
        os.close(fd)


def test_parsers_skip_what_they_cannot_read() -> None:
    assert [e.name for e in parse_passwd(PASSWD.encode())] == ["root", "alice", "bob", "2000"]
    assert [(g.name, g.members) for g in parse_group(GROUP.encode())][3] == ("audio", ("bob", "alice"))
    assert parse_passwd(b"\xff\xfe:x:1:1::/:\n")[0].uid == 1  # not UTF-8: still parsed


# ------------------------------------------------------------------ never out of the rootfs


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A rootfs whose paths point out of it in every way, next to a host file they aim at."""
    host_secret = tmp_path / "secret"
    host_secret.write_text("root:x:0:0:HOST:/:/bin/sh\nmallory:x:0:0::/:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "inside").mkdir()
    (root / "inside" / "passwd").write_text("mallory:x:7:7::/:/bin/sh\n")
    os.symlink(str(host_secret), root / "etc" / "passwd")  # absolute: means /<rootfs>/.../secret
    os.symlink("../../../../../../secret", root / "etc" / "group")
    os.symlink("/inside", root / "link-to-inside")
    os.symlink("loop-b", root / "loop-a")
    os.symlink("loop-a", root / "loop-b")
    os.mkfifo(root / "fifo")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield root, fd
    os.close(fd)


@pytest.mark.parametrize("kernel", [True, False], ids=["openat2", "walk"])
def test_symlinks_resolve_inside_the_rootfs(hostile: tuple[Path, int], kernel: bool) -> None:
    _, fd = hostile
    assert read_in_root(fd, "/etc/passwd", kernel=kernel) is None  # /…/secret does not exist inside
    assert read_in_root(fd, "/etc/group", kernel=kernel) is None  # .. stops at the rootfs
    assert read_in_root(fd, "/link-to-inside/passwd", kernel=kernel) == b"mallory:x:7:7::/:/bin/sh\n"
    assert read_in_root(fd, "../../inside/../inside/passwd", kernel=kernel) == b"mallory:x:7:7::/:/bin/sh\n"
    with pytest.raises(OSError, match=r"symbolic links|Too many levels"):
        read_in_root(fd, "/loop-a", kernel=kernel)
    with pytest.raises(RootfsError, match="not a regular file"):
        read_in_root(fd, "/fifo", kernel=kernel)  # and it did not block
    dir_fd = open_in_root(fd, "/link-to-inside", os.O_RDONLY | os.O_DIRECTORY, kernel=kernel)
    try:
        assert os.listdir(dir_fd) == ["passwd"]
    finally:
        os.close(dir_fd)


def test_an_escaping_passwd_is_not_the_host_one(hostile: tuple[Path, int]) -> None:
    _, fd = hostile
    with pytest.raises(BundleError, match="no /etc/passwd"):
        resolve_user("mallory", fd)


def test_huge_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    with open(tmp_path / "etc" / "passwd", "wb") as fh:
        fh.truncate(64 << 20)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BundleError, match="larger than"):
            resolve_user("alice", fd)
    finally:
        os.close(fd)
