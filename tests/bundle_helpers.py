"""A tiny real root filesystem (Debian's static busybox) and image configs for bundle tests."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import msgspec
import pytest

from conftest import require_tool
from ocikit.snapshot import Snapshotter
from ocikit.spec.models import ImageConfig

#: Prints, from inside the container, what runc gave PID 1: argv, cwd, env, ids.
SHOW = r"""#!/bin/sh
echo "ARGV0=$0"
for arg in "$@"; do echo "ARG=$arg"; done
echo "CWD=$(pwd -P)"
tr '\0' '\n' < /proc/1/environ | sed -n 's/^/ENV=/p'
sed -n 's/^\(Uid\|Gid\|Groups\):[[:space:]]*/\1=/p' /proc/1/status
echo "HOSTNAME=$(hostname)"
if [ -d /data ]; then echo "SEED=$(cat /data/seed)"; fi
if (echo written > /data/new) 2>/dev/null; then echo WROTE=yes; else echo WROTE=no; fi
"""

PASSWD = """root:x:0:0:root:/root:/bin/sh
# a comment, and a malformed line follow
broken-line
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:100::/home/bob:/bin/sh
"""

GROUP = """root:x:0:
users:x:100:
alice:x:1000:
staff:x:50:alice
audio:x:29:bob,alice
"""

APPLETS = ("sh", "echo", "tr", "sed", "pwd", "hostname", "cat", "ls", "id", "env", "true")


def static_busybox() -> Path:
    path = Path(require_tool("busybox", "the end-to-end bundle tests run it inside containers"))
    data = path.read_bytes()
    if b"ld-linux" in data[:4096] or b"/lib64/ld" in data[:4096]:
        pytest.skip(f"{path} is dynamically linked; the tests need Debian's busybox-static")
    return path


def build_rootfs(root: Path) -> None:
    """The image's filesystem: busybox and its applets, passwd/group, the show script."""
    busybox = static_busybox()
    (root / "bin").mkdir(mode=0o755)
    (root / "bin" / "busybox").write_bytes(busybox.read_bytes())
    os.chmod(root / "bin" / "busybox", 0o755)
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    (root / "bin" / "show").write_text(SHOW)
    os.chmod(root / "bin" / "show", 0o755)
    for name in ("etc", "proc", "sys", "dev", "tmp", "work", "work/dir", "data", "home", "home/alice"):
        (root / name).mkdir(mode=0o755)
    os.chmod(root / "tmp", 0o1777)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    (root / "data" / "seed").write_text("from the image")
    os.chown(root / "data", 1000, 1000)
    os.chown(root / "home" / "alice", 1000, 1000)


def image_config(**container: object) -> ImageConfig:
    """An image config whose ``config`` has the given fields, spelled as in the JSON."""
    document = {
        "architecture": "amd64",
        "os": "linux",
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    return msgspec.convert(document, ImageConfig)


def committed_rootfs(snap: Snapshotter, mnt: Path, name: str = "chain") -> str:
    """Commit the busybox tree as two layers (the second replaces /etc/passwd); the top's key."""
    from snapshot_helpers import mounted

    with mounted(snap.prepare("l1"), mnt) as root:
        build_rootfs(root)
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    snap.commit(f"{name}-1", "l1")
    with mounted(snap.prepare("l2", f"{name}-1"), mnt) as root:
        (root / "etc" / "passwd").write_text(PASSWD)
        (root / "etc" / "obsolete").write_text("x")
        (root / "etc" / "obsolete").unlink()
    snap.commit(name, "l2")
    return name


def runc_run(bundle: Path, state: Path) -> dict[str, list[str]]:
    """Run the bundle with the real runc; its output lines KEY=VALUE, grouped by KEY."""
    seen: dict[str, list[str]] = {}
    for line in runc_output(bundle, state).splitlines():
        key, _, value = line.partition("=")
        seen.setdefault(key, []).append(value)
    return seen


def runc_output(bundle: Path, state: Path) -> str:
    """Run the bundle with the real runc (deleted afterwards, whatever happens); its output."""
    runc = require_tool("runc", "it runs the bundles")
    name = f"ocikit-test-{uuid.uuid4().hex[:12]}"
    try:
        result = subprocess.run(
            [runc, "--root", str(state), "run", "--bundle", str(bundle), name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        subprocess.run(
            [runc, "--root", str(state), "delete", "--force", name], capture_output=True, check=False
        )
    assert result.returncode == 0, result.stderr
    return result.stdout
