"""The dir snapshotter: faithful, independent copies, and rootless operation."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from ocikit.snapshot import DirSnapshotter, SnapshotError
from ocikit.snapshot.trees import copy_tree, remove_tree
from snapshot_helpers import tree_of
from unprivileged import NOBODY, Unprivileged, unprivileged_fixture  # noqa: F401  (a fixture)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="owners, devices and trusted xattrs need root")


def populate(root: Path) -> None:
    """A tree with every kind of entry a layer can hold."""
    (root / "bin").mkdir()
    tool = root / "bin" / "tool"
    tool.write_bytes(b"\x7fELF" + bytes(range(256)) * 300)
    os.chmod(tool, 0o4755)
    (root / "empty").write_bytes(b"")
    (root / "sparse").write_bytes(b"")
    with open(root / "sparse", "r+b") as fh:
        fh.seek(50 << 20)
        fh.write(b"end")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("../../../../outside", root / "bin" / "rel-link")
    os.symlink("dangling", root / "dangling-link")
    os.link(tool, root / "hardlink-to-tool")
    (root / "private").mkdir(mode=0o700)
    (root / "private" / "secret").write_text("s")
    os.chmod(root / "private" / "secret", 0o400)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    os.setxattr(tool, "user.origin", b"layer-3")
    os.mkfifo(root / "fifo", 0o640)
    os.utime(root / "empty", ns=(1_000_000_123, 1_500_000_000_456_789_000))
    if ROOT:
        os.chown(tool, 0, 0)
        os.chmod(tool, 0o4755)
        os.chown(root / "private", 1234, 5678)
        os.chown(root / "abs-link", 42, 43, follow_symlinks=False)
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(root / "wh", stat.S_IFCHR, os.makedev(0, 0))
        os.setxattr(root / "private", "trusted.overlay.opaque", b"y")
        os.setxattr(tool, "security.capability", bytes.fromhex("0100000200040000000000000000000000000000"))
    os.utime(root / "bin", ns=(0, 1_234_567_890_000_000_000))


def test_copy_tree_is_faithful(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    populate(src)
    copy_tree(src, dst)
    assert tree_of(dst, owners=ROOT) == tree_of(src, owners=ROOT)
    # Hardlinks inside the tree stay links; nothing links back into the source.
    assert (dst / "bin" / "tool").stat().st_ino == (dst / "hardlink-to-tool").stat().st_ino
    assert (dst / "bin" / "tool").stat().st_ino != (src / "bin" / "tool").stat().st_ino
    assert (dst / "sparse").stat().st_blocks * 512 < 1 << 20  # holes stay holes
    # Symlinks were copied as links, never followed.
    assert os.readlink(dst / "abs-link") == "/etc/passwd"
    assert not (tmp_path / "outside").exists()


def test_active_copy_is_independent_of_its_parent(tmp_path: Path) -> None:
    with DirSnapshotter(tmp_path / "state") as snap:
        snap.prepare("a")
        populate(snap.path_of("a"))
        snap.commit("base", "a")
        snap.prepare("child", "base")
        child, base = snap.path_of("child"), snap.path_of("base")
        before = tree_of(base, owners=ROOT)
        (child / "bin" / "tool").write_text("overwritten")
        (child / "hardlink-to-tool").unlink()
        os.chmod(child / "sticky", 0o755)
        assert tree_of(base, owners=ROOT) == before


def test_remove_tree_never_follows_links_or_crosses_mounts(tmp_path: Path) -> None:
    victim, tree = tmp_path / "victim", tmp_path / "tree"
    victim.mkdir()
    (victim / "keep").write_text("k")
    tree.mkdir()
    os.symlink(victim, tree / "link-to-dir")
    os.symlink(victim / "keep", tree / "link-to-file")
    (tree / "locked").mkdir()
    (tree / "locked" / "f").write_text("x")
    os.chmod(tree / "locked", 0)
    remove_tree(tree)
    assert not tree.exists()
    assert (victim / "keep").read_text() == "k"
    remove_tree(tree)  # already gone: fine


@needs_root
def test_remove_tree_refuses_a_mounted_filesystem(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tree / "mnt")], check=True)
    try:
        (tree / "mnt" / "data").write_text("d")
        with pytest.raises(SnapshotError, match="mounted"):
            remove_tree(tree)
        assert (tree / "mnt" / "data").read_text() == "d"
    finally:
        subprocess.run(["umount", str(tree / "mnt")], check=True)


ROOTLESS_SCRIPT = """
import os, sys
from ocikit.snapshot import DirSnapshotter
snap = DirSnapshotter(sys.argv[1])
snap.prepare("a")
root = snap.path_of("a")
(root / "dir").mkdir()
(root / "dir" / "file").write_text("rootless")
os.chmod(root / "dir", 0o500)  # read-only directory: copy and removal must cope
snap.commit("base", "a")
snap.prepare("b", "base")
assert (snap.path_of("b") / "dir" / "file").read_text() == "rootless"
snap.remove("b")
print(sorted(i.key for i in snap.walk()), os.getuid())
"""


def test_dir_snapshotter_works_rootless(unprivileged: Unprivileged) -> None:
    # pytest's own temporary directories are private to root: use a world-traversable one.
    state = Path(tempfile.mkdtemp(prefix="ocikit-rootless-"))
    os.chown(state, NOBODY, NOBODY)
    try:
        result = subprocess.run(
            [*unprivileged.prefix, unprivileged.python, "-c", ROOTLESS_SCRIPT, str(state)],
            env=unprivileged.env(),
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        shutil.rmtree(state)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['base']", "65534"]
