"""A real multi-layer image around Debian's static busybox, as an OCI layout on disk, for the
end-to-end tests of ``ocikit create`` (LXC) and ``ocikit export``.

Layer 1 holds busybox, its applets and a passwd with root only; layer 2 replaces the passwd,
adds the group file and the ``show`` script, deletes a file of layer 1 (a whiteout) and
replaces a directory of layer 1 (an opaque directory). The tars are written with ``tarfile``
and explicit owners, so the test does not depend on who runs it.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from bundle_helpers import APPLETS, GROUP, PASSWD, static_busybox
from conftest import OCIKIT
from layer_helpers import write_layout
from snapshot_helpers import open_backend

#: Prints what the process itself was started with (not PID 1: lxc-execute puts its init there).
SHOW = r"""#!/bin/sh
echo "ARGV0=$0"
for arg in "$@"; do echo "ARG=$arg"; done
echo "CWD=$(pwd -P)"
tr '\0' '\n' < /proc/$$/environ | sed -n 's/^/ENV=/p'
sed -n 's/^\(Uid\|Gid\|Groups\):[[:space:]]*/\1=/p' /proc/$$/status
echo "HOSTNAME=$(hostname)"
if [ -d /data ]; then echo "SEED=$(cat /data/seed)"; fi
if (echo written > /data/new) 2>/dev/null; then echo WROTE=yes; else echo WROTE=no; fi
"""


class _Tar:
    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.TarFile(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, 1_700_000_000
        return info

    def dir(self, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid))

    def file(
        self,
        name: str,
        data: bytes,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        xattrs: dict[str, str] | None = None,
    ) -> None:
        info = self._info(name, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(data)
        if xattrs:
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777, 0, 0)
        info.linkname = target
        self.tar.addfile(info)

    def hardlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.LNKTYPE, 0o644, 0, 0)
        info.linkname = target
        self.tar.addfile(info)

    def chardev(self, name: str, major: int, minor: int) -> None:
        info = self._info(name, tarfile.CHRTYPE, 0o666, 0, 0)
        info.devmajor, info.devminor = major, minor
        self.tar.addfile(info)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def busybox_layers() -> list[bytes]:
    base = _Tar()
    for name in ("bin", "etc", "proc", "sys", "dev", "work", "work/dir", "home", "old"):
        base.dir(name)
    base.dir("tmp", 0o1777)
    base.dir("data", 0o755, 1000, 1000)
    base.dir("home/alice", 0o750, 1000, 1000)
    base.file("bin/busybox", static_busybox().read_bytes(), 0o755)
    for applet in APPLETS:
        base.symlink(f"bin/{applet}", "busybox")
    base.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    base.file("etc/obsolete", b"deleted by the second layer\n")
    base.file("old/gone", b"hidden by the opaque directory\n")
    base.chardev("dev/null", 1, 3)

    top = _Tar()
    top.dir("etc")
    top.file("etc/passwd", PASSWD.encode())
    top.file("etc/group", GROUP.encode())
    top.file("etc/.wh.obsolete", b"")
    top.dir("old")
    top.file("old/.wh..wh..opq", b"")
    top.file("old/kept", b"from layer 2\n", xattrs={"user.origin": "layer2"})
    top.hardlink("old/kept-link", "old/kept")
    top.file("etc/os-release", b'ID=busybox\nNAME="BusyBox"\n')
    top.dir("bin")
    top.file("bin/show", SHOW.encode(), 0o755)
    top.file("data/seed", b"from the image", 0o644, 1000, 1000)
    return [base.bytes(), top.bytes()]


def write_busybox_layout(layout: Path, container: dict[str, object], *, tag: str = "latest") -> str:
    """The image at ``oci:LAYOUT:TAG`` with ``container`` as its config's ``config``; returns
    the location."""
    write_layout(layout, busybox_layers(), tag=tag, container=container)
    return f"oci:{layout}:{tag}"


def ocikit(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the ``ocikit`` command; with ``ok``, fail the test on a non-zero exit."""
    result = subprocess.run(
        [*OCIKIT, *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def root_backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The snapshotter named by a parametrised fixture, skipping unless root (the layers carry
    owners and device nodes, containers need mounts) and where the backend cannot work."""
    name: str = request.param
    if os.geteuid() != 0:
        pytest.skip("mounting snapshots and applying owners and devices need root")
    if name == "zfs":
        # A parent dataset of the test's own in OCIKIT_ZFS_DATASET, which the ocikit
        # processes inherit (the module imports the zfs_pool and zfs_dataset fixtures).
        request.getfixturevalue("zfs_dataset")
    else:
        open_backend(name, tmp_path / "probe").close()
    return name
