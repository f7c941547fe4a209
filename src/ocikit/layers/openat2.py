"""openat2(2) through ctypes: Python 3.11 has no ``os.openat2``.

``RESOLVE_IN_ROOT`` makes the kernel resolve a path as if the directory descriptor were the
root of the file system: ``..`` stops there and absolute symlinks start there, atomically,
with no window for a concurrent rename. ``RESOLVE_NO_MAGICLINKS`` refuses ``/proc/*/fd``
style links, which would jump anywhere. Linux 5.6 added the call; the syscall number is 437
on every architecture that uses the unified syscall table (all 64-bit ones Debian ships, and
i386/armhf).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from typing import Final

__all__ = ["RESOLVE_IN_ROOT", "RESOLVE_NO_MAGICLINKS", "available", "openat2"]

RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_IN_ROOT: Final = 0x10

_UNIFIED_TABLE: Final = frozenset(
    {
        "x86_64",
        "amd64",
        "aarch64",
        "arm64",
        "i386",
        "i686",
        "armv6l",
        "armv7l",
        "riscv64",
        "ppc64",
        "ppc64le",
        "s390x",
        "loongarch64",
    }
)
_NR_OPENAT2: Final = 437 if platform.machine().lower() in _UNIFIED_TABLE else None
#: The kernel reports EAGAIN when a rename raced with an IN_ROOT lookup; a retry is correct.
_EAGAIN_RETRIES: Final = 16


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_syscall = None
if _NR_OPENAT2 is not None:
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _syscall = _libc.syscall
        _syscall.restype = ctypes.c_long
        _syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        _syscall = None

_available: bool | None = None


def openat2(dirfd: int, path: bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """A new descriptor, or :class:`OSError` with the kernel's errno (ENOSYS without openat2)."""
    if _syscall is None:
        raise OSError(errno.ENOSYS, "openat2 is not available on this platform")
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    for _ in range(_EAGAIN_RETRIES):
        fd = _syscall(_NR_OPENAT2, dirfd, path, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        code = ctypes.get_errno()
        if code != errno.EAGAIN:
            raise OSError(code, os.strerror(code), path)
    raise OSError(errno.EAGAIN, "openat2 kept racing with renames", path)


def available() -> bool:
    """Whether this kernel (and any seccomp filter in front of it) lets openat2 through."""
    global _available
    if _available is None:
        try:
            os.close(openat2(-100, b"/", os.O_PATH | os.O_DIRECTORY, RESOLVE_NO_MAGICLINKS))  # AT_FDCWD
            _available = True
        except OSError:
            _available = False
    return _available
