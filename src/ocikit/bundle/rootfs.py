"""Opening files of a container's root filesystem as the container would see them.

An image decides what its ``/etc/passwd`` is, including a symlink to ``/etc/shadow`` of the
host or to ``../../../`` anything. Paths are therefore resolved *inside* the root: absolute
symlinks and ``..`` stop at the rootfs, exactly as after a chroot, but without one. The
kernel does this for us with ``openat2(RESOLVE_IN_ROOT)`` (Linux >= 5.6); elsewhere a
component-by-component walk does the same, opening each component with ``O_NOFOLLOW`` and
resolving symlinks itself.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from typing import Final

__all__ = ["MAX_FILE", "RootfsError", "open_in_root", "read_in_root"]

#: A passwd or group file larger than this is refused rather than read into memory.
MAX_FILE: Final = 32 << 20
_MAX_SYMLINKS: Final = 40

_SYS_OPENAT2: Final = 437  # same number on every architecture (added after the unification)
_RESOLVE_NO_MAGICLINKS: Final = 0x02
_RESOLVE_IN_ROOT: Final = 0x10

_libc = ctypes.CDLL(None, use_errno=True)


class RootfsError(OSError):
    """A path of the rootfs could not be opened safely."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_openat2_works: bool | None = None


def _openat2(root_fd: int, path: str, flags: int) -> int | None:
    """The kernel's resolution, or None when this kernel lacks openat2."""
    global _openat2_works
    if _openat2_works is False:
        return None
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    for _ in range(16):  # EAGAIN: a rename raced the lookup; the kernel asks us to retry
        fd = int(_libc.syscall(_SYS_OPENAT2, root_fd, path.encode(), ctypes.byref(how), ctypes.sizeof(how)))
        if fd >= 0:
            _openat2_works = True
            return fd
        err = ctypes.get_errno()
        if err == errno.ENOSYS and not _openat2_works:
            _openat2_works = False
            return None
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, "the rootfs kept changing during the lookup", path)


def _walk(root_fd: int, path: str, flags: int) -> int:
    """``RESOLVE_IN_ROOT`` by hand: ``..`` and absolute links never leave ``root_fd``."""
    pending = [part for part in path.split("/") if part not in ("", ".")]
    stack = [os.dup(root_fd)]  # stack[-1] is the current directory
    links = 0
    try:
        while pending:
            part = pending.pop(0)
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            st = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = os.readlink(part, dir_fd=stack[-1])
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
                continue
            if not pending:
                # O_NOFOLLOW: if the entry was swapped for a symlink since the stat, fail
                # rather than follow it.
                return os.open(part, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            stack.append(
                os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            )
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


def open_in_root(root_fd: int, path: str, flags: int = os.O_RDONLY, *, kernel: bool = True) -> int:
    """Open ``path`` as seen from inside the root directory ``root_fd``.

    ``kernel=False`` skips ``openat2`` (tests use it to check the hand-made walk agrees).
    """
    if "\0" in path:
        raise RootfsError(errno.EINVAL, "path contains NUL", path)
    fd = _openat2(root_fd, path, flags) if kernel else None
    return fd if fd is not None else _walk(root_fd, path, flags)


def read_in_root(root_fd: int, path: str, *, limit: int = MAX_FILE, kernel: bool = True) -> bytes | None:
    """The bytes of the regular file ``path`` in the rootfs; None if it does not exist.

    Anything but a regular file (a FIFO would block, a device could be anything) is refused.
    """
    try:
        fd = open_in_root(root_fd, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, kernel=kernel)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RootfsError(errno.EINVAL, "not a regular file", path)
        if st.st_size > limit:
            raise RootfsError(errno.EFBIG, f"larger than {limit} bytes", path)
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:
                raise RootfsError(errno.EFBIG, f"larger than {limit} bytes", path)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
