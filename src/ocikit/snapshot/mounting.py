"""Mounting what a snapshotter describes, and unmounting it.

Overlay mounts of images with many layers do not fit the classic ``mount(2)`` option string,
which the kernel limits to one page (4096 bytes here): 150 lower directories of 60 bytes each
already need 9000. So an overlay is mounted, in order of preference, with the new mount API
(``fsopen``/``fsconfig`` passing each lower directory as its own ``lowerdir+`` parameter,
kernel >= 6.8, no length limit), else with ``mount(2)`` and absolute paths when they fit,
else with ``mount(2)`` from a forked child that has changed into the directory the layers
share, so that the option string holds short relative paths.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from pathlib import Path

from .base import Mount, SnapshotError

__all__ = ["is_mountpoint", "mount", "mounted_sources", "unmount"]

_libc = ctypes.CDLL(None, use_errno=True)

_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MNT_DETACH = 2
_PAGE = os.sysconf("SC_PAGE_SIZE")

# The new mount API (linux/mount.h); glibc >= 2.36 wraps these, the syscall numbers are the
# same on every architecture since they were added after the table was unified.
_SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 429, 430, 431, 432
_FSOPEN_CLOEXEC = 1
_FSCONFIG_SET_FLAG, _FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 0, 1, 6
_FSMOUNT_CLOEXEC = 1
_MOVE_MOUNT_F_EMPTY_PATH = 4
_AT_FDCWD = -100


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _mount2(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    result = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data is not None else None,
    )
    _check(result, f"mounting {fstype or 'bind'} at {target}")


def _bind(mnt: Mount, target: str) -> None:
    flags = _MS_BIND | (_MS_REC if "rbind" in mnt.options else 0)
    _mount2(mnt.source, target, None, flags, None)
    if "ro" in mnt.options:
        # A bind mount ignores MS_RDONLY on creation: read-only takes a remount.
        try:
            _mount2("", target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | (flags & _MS_REC), None)
        except OSError:
            _umount(target, 0)
            raise


def _overlay_parts(mnt: Mount) -> tuple[list[str], list[tuple[str, str | None]]]:
    """The lower directories (topmost first) and the other options as key/value."""
    lowers: list[str] = []
    others: list[tuple[str, str | None]] = []
    for option in mnt.options:
        key, sep, value = option.partition("=")
        if key == "lowerdir":
            lowers.extend(value.split(":"))
        else:
            others.append((key, value if sep else None))
    return lowers, others


class _NoLowerdirPlus(Exception):
    """This kernel has no new mount API, or its overlayfs does not take ``lowerdir+``."""


def _overlay_fsconfig(mnt: Mount, target: str) -> None:
    lowers, others = _overlay_parts(mnt)
    fs = int(_libc.syscall(_SYS_FSOPEN, b"overlay", _FSOPEN_CLOEXEC))
    if fs < 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):  # EPERM: seccomp filters say no
            raise _NoLowerdirPlus
        _check(fs, "fsopen overlay")
    try:

        def config(key: str, value: str | None) -> None:
            if value is None:
                _check(_libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_FLAG, key.encode(), None, 0), key)
            else:
                _check(
                    _libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_SET_STRING, key.encode(), value.encode(), 0),
                    f"overlay option {key}={value}",
                )

        config("source", mnt.source)
        for index, lower in enumerate(lowers):
            try:
                config("lowerdir+", lower)
            except OSError as exc:
                if index == 0 and exc.errno == errno.EINVAL:
                    raise _NoLowerdirPlus from None
                raise
        for key, value in others:
            if key in ("rw", "ro"):
                continue
            config(key, value)
        _check(_libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0), "creating the overlay")
        attrs = 1 if "ro" in mnt.options else 0  # MOUNT_ATTR_RDONLY
        mfd = _check(_libc.syscall(_SYS_FSMOUNT, fs, _FSMOUNT_CLOEXEC, attrs), "fsmount overlay")
        try:
            _check(
                _libc.syscall(
                    _SYS_MOVE_MOUNT, mfd, b"", _AT_FDCWD, target.encode(), _MOVE_MOUNT_F_EMPTY_PATH
                ),
                f"attaching the overlay at {target}",
            )
        finally:
            os.close(mfd)
    finally:
        os.close(fs)


def _overlay_data(mnt: Mount, relative_to: str | None) -> str:
    def rel(path: str) -> str:
        return os.path.relpath(path, relative_to) if relative_to else path

    lowers, others = _overlay_parts(mnt)
    parts = ["lowerdir=" + ":".join(rel(p) for p in lowers)]
    for key, value in others:
        if key in ("rw", "ro"):
            continue
        if key in ("upperdir", "workdir") and value is not None:
            value = rel(value)
        parts.append(key if value is None else f"{key}={value}")
    return ",".join(parts)


def _overlay_mount2(mnt: Mount, target: str) -> None:
    flags = _MS_RDONLY if "ro" in mnt.options else 0
    data = _overlay_data(mnt, None)
    if len(data) < _PAGE:
        _mount2(mnt.source, target, "overlay", flags, data)
        return
    lowers, others = _overlay_parts(mnt)
    paths = lowers + [v for k, v in others if k in ("upperdir", "workdir") and v]
    common = os.path.commonpath(paths)
    data = _overlay_data(mnt, common)
    if len(data) >= _PAGE:
        raise SnapshotError(
            f"{len(lowers)} layers do not fit overlayfs mount options even as relative paths; "
            "this kernel lacks lowerdir+ (Linux >= 6.8)"
        )
    target = os.path.abspath(target)
    # chdir changes the whole process, so it happens in a child that only mounts and exits.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.chdir(common)
            if _libc.mount(
                mnt.source.encode(), target.encode(), b"overlay", ctypes.c_ulong(flags), data.encode()
            ):
                code = ctypes.get_errno() or errno.EIO
        except BaseException:
            code = errno.EIO
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise OSError(code, f"mounting overlay at {target}: {os.strerror(code)}")


_new_api_works: bool | None = None


def mount(mounts: Sequence[Mount], target: str | os.PathLike[str], *, new_api: bool = True) -> None:
    """Mount each of ``mounts`` at ``target``, in order; on failure nothing stays mounted.

    ``new_api=False`` forces the ``mount(2)`` path for overlays (tests use it to exercise
    the relative-path fallback that kernels older than 6.8 rely on).
    """
    global _new_api_works
    where = os.fspath(target)
    done = 0
    try:
        for mnt in mounts:
            if mnt.type == "bind":
                _bind(mnt, where)
            elif mnt.type == "overlay":
                if new_api and _new_api_works is not False:
                    try:
                        _overlay_fsconfig(mnt, where)
                        _new_api_works = True
                    except _NoLowerdirPlus:
                        _new_api_works = False
                        _overlay_mount2(mnt, where)
                else:
                    _overlay_mount2(mnt, where)
            else:
                flags = _MS_RDONLY if "ro" in mnt.options else 0
                data = ",".join(o for o in mnt.options if o not in ("ro", "rw"))
                _mount2(mnt.source, where, mnt.type, flags, data or None)
            done += 1
    except OSError as exc:
        for _ in range(done):
            _umount(where, _MNT_DETACH)
        raise SnapshotError(f"cannot mount at {where}: {exc.strerror or exc}") from None


def _umount(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), flags), f"unmounting {target}")


def unmount(target: str | os.PathLike[str], *, detach: bool = False) -> None:
    """Unmount everything stacked at ``target``; a target with nothing mounted is fine."""
    where = os.path.abspath(os.fspath(target))
    while is_mountpoint(where):
        try:
            _umount(where, _MNT_DETACH if detach else 0)
        except OSError as exc:
            raise SnapshotError(f"cannot unmount {where}: {exc.strerror or exc}") from None


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mountinfo() -> list[tuple[str, str, str, str]]:
    """(device, mount point, root within its filesystem, super options) of every visible mount."""
    rows = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            rows.append((fields[2], _unescape(fields[4]), _unescape(fields[3]), _unescape(fields[sep + 3])))
    return rows


def is_mountpoint(path: str | os.PathLike[str]) -> bool:
    where = os.path.abspath(os.fspath(path))
    return any(point == where for _, point, _, _ in _mountinfo())


def _within(candidate: str, base: Path) -> bool:
    path = Path(candidate)
    return path == base or base in path.parents


def mounted_sources(directory: str | os.PathLike[str]) -> list[str]:
    """Mounts that involve ``directory``: mounted inside it, binds of it or of something
    beneath it, and overlays with a layer there. Used to refuse deleting a snapshot
    that a container is still running on.
    """
    base = Path(os.path.abspath(os.fspath(directory)))
    st = os.stat(base)
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    rows = _mountinfo()
    # Where ``directory`` is inside its own filesystem: bind mounts name their source that way.
    in_fs = None
    for dev, point, root, _ in sorted(rows, key=lambda row: len(row[1]), reverse=True):
        if dev == device and _within(str(base), Path(point)):
            in_fs = Path(root) / base.relative_to(point)
            break
    found = []
    for dev, point, root, options in rows:
        layers = [
            value
            for key, _, value in (option.partition("=") for option in options.split(","))
            if key in ("lowerdir", "lowerdir+", "upperdir", "workdir", "datadir+")
        ]
        layer_dirs = [part for value in layers for part in value.split(":")]
        if (
            _within(point, base)
            or any(_within(layer, base) for layer in layer_dirs)
            or (dev == device and in_fs is not None and _within(root, in_fs))
        ):
            found.append(point)
    return found
