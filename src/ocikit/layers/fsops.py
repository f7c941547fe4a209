"""Removal of existing paths, relative to a directory descriptor and never through a symlink.

``shutil.rmtree`` is not used: it recurses (a hostile lower layer can be deeper than Python's
recursion limit) and it has no notion of a root. Here every level is opened with
``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's descriptor, so a symlink met on the way
is unlinked as a symlink, never entered.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Final

__all__ = ["directory_names", "lstat_mode", "remove", "remove_tree"]

_OPEN_DIR: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def lstat_mode(dirfd: int, name: bytes) -> int | None:
    """The ``st_mode`` of ``name`` itself (a symlink is not followed), None when absent."""
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None


def remove(dirfd: int, name: bytes, *, force: bool = False) -> int | None:
    """Remove ``name`` whatever it is (a directory with all it holds); its old mode or None.

    ``force`` (rootless): directories inside the tree that their owner made read-only are
    opened up on the way, since they are being removed anyway.
    """
    mode = lstat_mode(dirfd, name)
    if mode is None:
        return None
    if stat.S_ISDIR(mode):
        remove_tree(dirfd, name, force=force)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dirfd)
    return mode


def directory_names(fd: int) -> list[bytes]:
    """Entry names of an open directory as bytes (``os.listdir`` of a descriptor gives str)."""
    return [os.fsencode(name) for name in os.listdir(fd)]


def remove_tree(dirfd: int, name: bytes, *, force: bool = False) -> None:
    """``rm -rf`` of the directory ``name`` without recursion and without following links.

    One descriptor stays open per level being emptied, so the depth is bounded by the file
    descriptor limit; the name length limit of the layers keeps real depth far below it.
    """
    stack: list[tuple[int, bytes, list[bytes]]] = []  # (descriptor, its name, names left)

    def enter(parent: int, child: bytes) -> None:
        try:
            fd = os.open(child, _OPEN_DIR, dir_fd=parent)
        except PermissionError:
            if not force:
                raise
            os.chmod(child, 0o700, dir_fd=parent, follow_symlinks=False)  # a directory, not a link
            fd = os.open(child, _OPEN_DIR, dir_fd=parent)
        if force:
            with contextlib.suppress(PermissionError):  # not ours: the unlinks will say so
                os.fchmod(fd, 0o700)
        names = directory_names(fd)
        stack.append((fd, child, names))

    enter(dirfd, name)
    try:
        while stack:
            fd, current, names = stack[-1]
            if not names:
                stack.pop()
                os.close(fd)
                parent = stack[-1][0] if stack else dirfd
                os.rmdir(current, dir_fd=parent)
                continue
            child = names.pop()
            try:
                os.unlink(child, dir_fd=fd)
            except IsADirectoryError:
                enter(fd, child)
            except OSError as error:
                if error.errno != errno.EISDIR:
                    raise
                enter(fd, child)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
