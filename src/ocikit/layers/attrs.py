"""Ownership, mode, extended attributes and times of what the engine created.

The order is fixed and it matters: owner first, because ``chown`` clears the setuid and
setgid bits and drops ``security.capability``; then the mode; then extended attributes
(file capabilities survive only when written after the ``chown``); times last, since every
change before them would move ``ctime`` and writing content moves ``mtime``.

Nothing here goes through a symlink: regular files and directories are changed through the
descriptor the engine holds, other nodes by name relative to their directory with
``AT_SYMLINK_NOFOLLOW`` (a symlink's own mode cannot be changed on Linux and is left alone).

**Image-supplied overlayfs metadata is refused** (``trusted.overlay.*`` and, for rootless
overlay mounts, ``user.overlay.*``): dropped with a warning. When the result becomes a lower
directory of an overlay mount the kernel would obey it: ``opaque`` hides lower layers,
``redirect`` and ``metacopy`` make a file show data of another path. Escaping it instead (the
``trusted.overlay.overlay.`` form of Linux 6.7+) would keep data that no image legitimately
needs, and mean something different on older kernels; refusing is the same everywhere.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Final

from .tar import SYM, TarEntry

__all__ = ["XattrPolicy", "refused_xattr"]

_OVERLAY_PREFIXES: Final = (b"trusted.overlay.", b"user.overlay.")
#: Errors meaning "this file system or this user cannot store that attribute": skipped with a
#: warning, like tar does. Anything else is a real failure.
_UNSTORABLE: Final = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})
_UNPRIVILEGED: Final = frozenset({errno.EPERM, errno.EACCES})


def refused_xattr(name: bytes) -> str | None:
    """Why an image-supplied xattr is not written, or None when it is."""
    if name.startswith(_OVERLAY_PREFIXES):
        return "overlayfs metadata from an image could redirect or hide files when layers are stacked"
    return None


class XattrPolicy:
    """Writes an entry's xattrs, turning the refusals above into warnings."""

    def __init__(self, rootless: bool, warn: Callable[[str], None]) -> None:
        self._rootless = rootless
        self._warn = warn

    def apply(self, entry: TarEntry, setter: Callable[[bytes, bytes], None]) -> None:
        assert entry.xattrs is not None
        for name, value in entry.xattrs.items():
            reason = refused_xattr(name)
            if reason is not None:
                self._warn(f"{entry.name!r}: extended attribute {name!r} dropped: {reason}")
                continue
            try:
                setter(name, value)
            except OSError as error:
                skippable = error.errno in _UNSTORABLE or (
                    error.errno in _UNPRIVILEGED and (self._rootless or not name.startswith(b"user."))
                )
                if not skippable:
                    raise
                self._warn(f"{entry.name!r}: extended attribute {name!r} not set: {error.strerror}")


def set_file_attrs(fd: int, entry: TarEntry, *, rootless: bool, xattrs: XattrPolicy) -> None:
    """Attributes of a regular file or directory through its own descriptor."""
    if not rootless:
        os.fchown(fd, entry.uid, entry.gid)
    os.fchmod(fd, entry.mode)
    if entry.xattrs:
        xattrs.apply(entry, lambda name, value: os.setxattr(fd, name, value))
    os.utime(fd, ns=(entry.atime_ns, entry.mtime_ns))


def set_node_attrs(dirfd: int, name: bytes, entry: TarEntry, *, rootless: bool, xattrs: XattrPolicy) -> None:
    """Attributes of a symlink, device or FIFO by name in ``dirfd``, never following a link."""
    if not rootless:
        os.chown(name, entry.uid, entry.gid, dir_fd=dirfd, follow_symlinks=False)
    if entry.kind != SYM:
        os.chmod(name, entry.mode, dir_fd=dirfd, follow_symlinks=False)
    if entry.xattrs:
        # lsetxattr on "<our own directory descriptor>/<name>": the magic link is our descriptor,
        # and the last component is not followed.
        path = b"/proc/self/fd/%d/%s" % (dirfd, name)
        xattrs.apply(entry, lambda key, value: os.setxattr(path, key, value, follow_symlinks=False))
    os.utime(name, ns=(entry.atime_ns, entry.mtime_ns), dir_fd=dirfd, follow_symlinks=False)
