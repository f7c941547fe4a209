"""File-tree primitives of the snapshotters, all relative to open directory descriptors.

Snapshot trees hold whatever image layers put there, symlinks pointing anywhere included, so
nothing here follows a symlink or crosses into another mounted filesystem: a tree is copied,
measured or deleted as the inodes it holds, never as what its links point at.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .base import SnapshotError, Usage

__all__ = ["copy_tree", "disk_usage", "fsync_dir", "open_dir", "remove_tree", "syncfs"]

log = logging.getLogger(__name__)

_FICLONE = 0x40049409
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 30
_IS_ROOT = os.geteuid() == 0


def open_dir(path: str | os.PathLike[str], dir_fd: int | None = None) -> int:
    return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = open_dir(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: str | os.PathLike[str]) -> None:
    """Flush the whole filesystem holding ``path``: one call instead of an fsync per copied file."""
    fd = open_dir(path)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ copy


@dataclass
class _CopyState:
    root_fd: int
    clone: bool = True
    copy_range: bool = True
    links: dict[tuple[int, int], str] = field(default_factory=dict)


def _extents(src: int, size: int, sparse: bool) -> Iterator[tuple[int, int]]:
    """(offset, length) of the data in ``src``: all of it, or only what is not a hole."""
    if not sparse:
        yield 0, size
        return
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        end = os.lseek(src, start, os.SEEK_HOLE)
        yield start, end - start
        offset = end


def _copy_range(src: int, dst: int, start: int, length: int, state: _CopyState) -> None:
    done = 0
    if state.copy_range:
        try:
            while done < length:
                n = os.copy_file_range(src, dst, min(_CHUNK, length - done), start + done, start + done)
                if n == 0:
                    break
                done += n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            state.copy_range = False
    while done < length:
        chunk = os.pread(src, min(1 << 20, length - done), start + done)
        if not chunk:
            break
        os.pwrite(dst, chunk, start + done)
        done += len(chunk)


def _copy_data(src: int, dst: int, st: os.stat_result, state: _CopyState) -> None:
    """Reflink when the filesystem shares extents (btrfs, xfs), else copy in the kernel,
    leaving holes of sparse files as holes."""
    size = st.st_size
    if state.clone and size:
        try:
            fcntl.ioctl(dst, _FICLONE, src)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
                raise
            state.clone = False
    for start, length in _extents(src, size, st.st_blocks * 512 < size):
        _copy_range(src, dst, start, length, state)
    os.ftruncate(dst, size)


def _copy_xattrs(src: int | str, dst: int | str, *, follow: bool = True) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=follow), follow_symlinks=follow)
        except OSError as exc:
            # An unprivileged copy cannot write trusted.* or security.* names: the tree it
            # makes is as faithful as the caller's privileges allow.
            if _IS_ROOT or exc.errno not in (errno.EPERM, errno.ENOTSUP):
                raise


def _chown(target: int | str, st: os.stat_result, *, dir_fd: int | None = None) -> None:
    try:
        if isinstance(target, int):
            os.fchown(target, st.st_uid, st.st_gid)
        else:
            os.chown(target, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)
    except PermissionError:
        if _IS_ROOT:
            raise


def _copy_file(name: str, st: os.stat_result, src_dir: int, dst_dir: int, state: _CopyState) -> None:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        dst = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst_dir
        )
        try:
            _copy_data(src, dst, st, state)
            _chown(dst, st)
            os.chmod(dst, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid bits
            _copy_xattrs(src, dst)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_other(name: str, st: os.stat_result, src_dir: int, dst_dir: int) -> None:
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=src_dir), name, dir_fd=dst_dir)
    else:
        if not _IS_ROOT and (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            log.warning("not copying device %s: creating devices needs root", name)
            return
        os.mknod(name, st.st_mode, st.st_rdev, dir_fd=dst_dir)
    _chown(name, st, dir_fd=dst_dir)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dst_dir)
    with contextlib.suppress(OSError):
        # /proc/self/fd/N is the directory itself (a magic link, not a path walk), and the
        # final component is not followed.
        _copy_xattrs(f"/proc/self/fd/{src_dir}/{name}", f"/proc/self/fd/{dst_dir}/{name}", follow=False)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_dir, follow_symlinks=False)


def _finish_dir(src_fd: int, dst_fd: int, st: os.stat_result) -> None:
    _chown(dst_fd, st)
    os.chmod(dst_fd, stat.S_IMODE(st.st_mode))
    _copy_xattrs(src_fd, dst_fd)
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_tree(src: str | os.PathLike[str] | int, dst: str | os.PathLike[str] | int) -> None:
    """Copy the tree at ``src`` into the existing empty directory ``dst``, as faithfully as
    ``cp -a``: owners, modes (setuid too), xattrs, mtimes, devices, FIFOs, and hardlinks
    between files of the tree (but never a hardlink from ``dst`` into ``src``: the copy is
    writable and the source is a committed snapshot). Either side may be an open directory
    descriptor instead of a path (it is not closed).
    """
    src_root = os.dup(src) if isinstance(src, int) else open_dir(src)
    dst_root = os.dup(dst) if isinstance(dst, int) else open_dir(dst)
    state = _CopyState(root_fd=dst_root)
    dev = os.fstat(src_root).st_dev
    # Each frame: source dir fd, destination dir fd, its relative path, its stat, entries left.
    stack: list[tuple[int, int, str, os.stat_result, Iterator[os.DirEntry[str]]]] = []
    try:
        stack.append((src_root, dst_root, "", os.fstat(src_root), iter(list(os.scandir(src_root)))))
        while stack:
            src_fd, dst_fd, rel, dir_st, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                _finish_dir(src_fd, dst_fd, dir_st)
                if stack:
                    os.close(src_fd)
                    os.close(dst_fd)
                continue
            name = entry.name
            st = entry.stat(follow_symlinks=False)
            path = f"{rel}/{name}" if rel else name
            if st.st_dev != dev:
                raise SnapshotError(f"refusing to copy {path}: it is another mounted filesystem")
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(name, 0o700, dir_fd=dst_fd)
                child_src = open_dir(name, src_fd)
                child_dst = open_dir(name, dst_fd)
                stack.append((child_src, child_dst, path, st, iter(list(os.scandir(child_src)))))
                continue
            if st.st_nlink > 1:
                first = state.links.get((st.st_dev, st.st_ino))
                if first is not None:
                    os.link(first, name, src_dir_fd=dst_root, dst_dir_fd=dst_fd, follow_symlinks=False)
                    continue
                state.links[(st.st_dev, st.st_ino)] = path
            if stat.S_ISREG(st.st_mode):
                _copy_file(name, st, src_fd, dst_fd, state)
            else:
                _copy_other(name, st, src_fd, dst_fd)
    finally:
        for src_fd, dst_fd, *_ in stack[1:]:
            os.close(src_fd)
            os.close(dst_fd)
        os.close(src_root)
        os.close(dst_root)


# ------------------------------------------------------------------------------ usage


def disk_usage(path: str | os.PathLike[str]) -> Usage:
    """Blocks and inodes of the tree, each inode counted once however many links it has."""
    seen: set[int] = set()
    size = 0
    root = open_dir(path)
    st = os.fstat(root)
    size, inodes = st.st_blocks * 512, 1
    dev = st.st_dev
    stack = [root]
    try:
        while stack:
            fd = stack.pop()
            try:
                for entry in os.scandir(fd):
                    st = entry.stat(follow_symlinks=False)
                    if st.st_dev != dev:
                        continue
                    if st.st_nlink > 1:
                        if st.st_ino in seen:
                            continue
                        seen.add(st.st_ino)
                    size += st.st_blocks * 512
                    inodes += 1
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(open_dir(entry.name, fd))
            finally:
                os.close(fd)
    finally:
        for fd in stack:
            os.close(fd)
    return Usage(size=size, inodes=inodes)


# ------------------------------------------------------------------------------ removal


def _remove_children(fd: int, dev: int, where: str) -> None:
    for entry in list(os.scandir(fd)):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            if st.st_dev != dev:
                # Deleting through a mount would delete what is mounted there (a bind of the
                # host's files, a volume): refuse and let the caller unmount first.
                raise SnapshotError(f"refusing to remove {where}/{entry.name}: a filesystem is mounted there")
            child = open_dir(entry.name, fd)
            try:
                if not _IS_ROOT:
                    os.chmod(child, 0o700)
                _remove_children(child, dev, f"{where}/{entry.name}")
            finally:
                os.close(child)
            os.rmdir(entry.name, dir_fd=fd)
        else:
            os.unlink(entry.name, dir_fd=fd)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """``rm -rf`` that stays on one filesystem and never follows a symlink; a missing path is fine."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink()
        return
    fd = open_dir(path)
    try:
        parent_dev = os.stat(path.parent).st_dev
        if st.st_dev != parent_dev:
            raise SnapshotError(f"refusing to remove {path}: a filesystem is mounted there")
        if not _IS_ROOT:
            os.chmod(fd, 0o700)
        _remove_children(fd, st.st_dev, str(path))
    finally:
        os.close(fd)
    os.rmdir(path)
