"""The changes between two trees, as a layer changeset (image-spec layer.md), and their writing.

Two ways to find them, one result (a list of :class:`Change`):

* :func:`upper_changes` reads an **overlayfs upper directory**, which holds exactly what
  changed: a character device 0/0 is a deletion (``.wh.NAME``), a directory with
  ``trusted.overlay.opaque=y`` hides all of its lower content (``.wh..wh..opq``), everything
  else is an added or changed entry. No lower layer is read.
* :func:`tree_changes` compares a **complete upper tree with the complete lower tree** (the
  ``dir`` and ``zfs`` snapshotters): both are walked together, names sorted, never following
  a symlink (every directory is opened with ``O_NOFOLLOW`` relative to its parent).

Named decisions:

* **Metadata decides, content is not read** to find changes: an entry is changed when its
  type, mode, owner, mtime (nanoseconds), size, symlink target, device number or extended
  attributes differ, as ``mtree`` and ``umoci repack`` decide. Writing a file updates its
  mtime, so only a program that writes and then puts the old mtime back (``touch -r``) with
  the same size goes unseen; reading every unchanged file of both trees would cost as much as
  copying the image, on every commit.
* **A directory replaced wholesale becomes opaque**: when none of a lower directory's
  entries survive unchanged in the upper one, some were deleted, and it holds new entries,
  one ``.wh..wh..opq`` marker replaces the whiteouts (every upper entry is written anyway).
  A directory that only became empty keeps its whiteouts, which say more.
* **Hardlink groups are kept**: when one name of a multiply-linked file is written, every
  name of it in the upper tree is, the first (sorted) as the file and the others as link
  entries to it, so the layer never links to a path it does not hold.
* **Not written**: sockets (tar cannot hold them), whatever is mounted inside the tree (another
  device), overlayfs' own attributes (``trusted.overlay.*``, ``user.overlay.*``) and
  ``security.selinux`` (the host's label, not the image's). overlayfs redirects and metacopy
  files are refused: their upper entry does not hold the change (the snapshotters mount with
  both off).
* **A file that changes while it is written is refused** (its inode or size is checked
  against the walk), since the layer would not be what the tree was at any moment.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from .errors import LayerError
from .paths import OPAQUE, WHITEOUT_PREFIX
from .tar import BLK, CHR, DIR, FIFO, LNK, REG, SYM, TarEntry
from .write import LayerWriter, whiteout_entry

__all__ = ["Change", "DiffReport", "tree_changes", "upper_changes", "write_changes"]

Action = Literal["A", "C", "D"]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_DIR: Final = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_SKIPPED_XATTRS: Final = (b"trusted.overlay.", b"user.overlay.", b"security.selinux")
_OPAQUE_XATTRS: Final = (b"trusted.overlay.opaque", b"user.overlay.opaque")
_REFUSED_XATTRS: Final = {
    b"trusted.overlay.redirect": "a renamed directory (overlay redirect_dir)",
    b"trusted.overlay.metacopy": "a metadata-only copy-up (overlay metacopy)",
}
_KINDS: Final = {
    stat.S_IFREG: REG,
    stat.S_IFDIR: DIR,
    stat.S_IFLNK: SYM,
    stat.S_IFCHR: CHR,
    stat.S_IFBLK: BLK,
    stat.S_IFIFO: FIFO,
}


@dataclass(slots=True)
class Change:
    """One entry of the changeset. ``path`` is relative (``b""`` is the root); ``info`` is the
    upper entry's ``lstat`` (None for a deletion); ``opaque`` hides the lower directory's content."""

    path: bytes
    action: Action
    info: os.stat_result | None = None
    link: bytes = b""
    xattrs: dict[bytes, bytes] | None = None
    opaque: bool = False

    def sort_key(self) -> tuple[bytes, ...]:
        """Parents before children, siblings by name: ``a``, ``a/b``, ``a.b``."""
        return tuple(self.path.split(b"/")) if self.path else ()


@dataclass
class DiffReport:
    changes: list[Change]
    warnings: list[str] = field(default_factory=list)


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _xattrs(dirfd: int, name: bytes) -> dict[bytes, bytes]:
    """Every extended attribute of ``name`` itself (``/proc/self/fd/N/name`` resolves our own
    descriptor, and the last component is not followed)."""
    path = b"/proc/self/fd/%d/%s" % (dirfd, name) if name else b"/proc/self/fd/%d" % dirfd
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    result = {}
    for key in names:
        raw = os.fsencode(key)
        try:
            result[raw] = os.getxattr(path, key, follow_symlinks=False)
        except OSError as error:
            if error.errno != errno.ENODATA:  # removed between the list and the read
                raise
    return result


def _kept(xattrs: dict[bytes, bytes]) -> dict[bytes, bytes] | None:
    kept = {key: value for key, value in xattrs.items() if not key.startswith(_SKIPPED_XATTRS)}
    return kept or None


def _same(upper: os.stat_result, lower: os.stat_result) -> bool:
    if (
        upper.st_mode != lower.st_mode
        or upper.st_uid != lower.st_uid
        or upper.st_gid != lower.st_gid
        or upper.st_mtime_ns != lower.st_mtime_ns
    ):
        return False
    if stat.S_ISREG(upper.st_mode):
        return upper.st_size == lower.st_size
    if stat.S_ISCHR(upper.st_mode) or stat.S_ISBLK(upper.st_mode):
        return upper.st_rdev == lower.st_rdev
    return True


@dataclass
class _Frame:
    path: bytes
    upper: int
    lower: int | None
    names: list[bytes]
    change: Change | None  # the directory's own change, if it has one
    children: int = 0
    survivors: int = 0
    deleted: list[bytes] = field(default_factory=list)


class _Walker:
    """The walk shared by both ways: a stack of open directory pairs, one level per frame, so
    the depth costs descriptors, not Python recursion."""

    def __init__(self, overlay: bool) -> None:
        self.overlay = overlay
        self.changes: list[Change] = []
        self.warnings: list[str] = []
        self.groups: dict[tuple[int, int], list[Change]] = {}  # multiply-linked files of the upper tree
        self.device = 0

    def run(self, upper: str | os.PathLike[str], lower: str | os.PathLike[str] | None) -> DiffReport:
        stack: list[_Frame] = []
        upper_fd = _open_root(upper, "upper")
        try:
            lower_fd = _open_root(lower, "lower") if lower is not None else None
        except BaseException:
            os.close(upper_fd)
            raise
        try:
            root_info = os.fstat(upper_fd)
            self.device = root_info.st_dev
            root_change = None
            if lower_fd is not None and not self.overlay:
                root_change = self._compare_root(upper_fd, lower_fd, root_info)
            stack.append(self._frame(b"", upper_fd, lower_fd, root_change))
            while stack:
                frame = stack[-1]
                if not frame.names:
                    stack.pop()
                    self._close_frame(frame)
                    continue
                child = self._visit(frame, frame.names.pop())
                if child is not None:
                    stack.append(child)
        except OSError as error:
            raise LayerError(f"cannot compare the trees: {error}") from None
        finally:
            for frame in stack:
                _close(frame.upper, frame.lower)
        self._complete_groups()
        return DiffReport(self.changes, self.warnings)

    def _frame(self, path: bytes, upper: int, lower: int | None, change: Change | None) -> _Frame:
        """A frame owning ``upper`` and ``lower`` (closed here when it cannot be made)."""
        try:
            names = sorted((os.fsencode(n) for n in os.listdir(upper)), reverse=True)
            frame = _Frame(path, upper, lower, names, change, children=len(names))
            if lower is not None and not self.overlay:
                present = set(names)
                frame.deleted = sorted(n for n in map(os.fsencode, os.listdir(lower)) if n not in present)
        except BaseException:
            _close(upper, lower)
            raise
        return frame

    def _compare_root(self, upper: int, lower: int, info: os.stat_result) -> Change | None:
        lower_info = os.fstat(lower)
        xattrs = _xattrs(upper, b"")
        if _same(info, lower_info) and xattrs == _xattrs(lower, b""):
            return None
        change = Change(b"", "C", info, xattrs=_kept(xattrs))
        self.changes.append(change)
        return change

    def _visit(self, frame: _Frame, name: bytes) -> _Frame | None:
        """Classify one upper entry; a new frame when it is a directory to walk into."""
        path = _join(frame.path, name)
        info = os.stat(name, dir_fd=frame.upper, follow_symlinks=False)
        if stat.S_ISSOCK(info.st_mode):
            self.warnings.append(f"{path!r}: a socket, which a layer cannot hold: skipped")
            return None
        if info.st_dev != self.device:
            self.warnings.append(f"{path!r}: another filesystem is mounted there: skipped")
            return None
        if self.overlay and stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            self.changes.append(Change(path, "D"))
            return None
        lower = None
        if frame.lower is not None:
            try:
                lower = os.stat(name, dir_fd=frame.lower, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                lower = None
        xattrs = _xattrs(frame.upper, name)
        link = os.fsencode(os.readlink(name, dir_fd=frame.upper)) if stat.S_ISLNK(info.st_mode) else b""
        replaced = lower is None or stat.S_IFMT(lower.st_mode) != stat.S_IFMT(info.st_mode)
        change: Change | None = None
        if self.overlay:
            self._refuse_redirects(path, xattrs)
            change = Change(path, "A" if lower is None else "C", info, link, _kept(xattrs))
            change.opaque = stat.S_ISDIR(info.st_mode) and any(xattrs.get(k) == b"y" for k in _OPAQUE_XATTRS)
        elif replaced:
            change = Change(path, "A" if lower is None else "C", info, link, _kept(xattrs))
        else:
            assert lower is not None
            assert frame.lower is not None
            lower_link = (
                os.fsencode(os.readlink(name, dir_fd=frame.lower)) if stat.S_ISLNK(lower.st_mode) else b""
            )
            same = _same(info, lower) and link == lower_link and xattrs == _xattrs(frame.lower, name)
            if not same:
                change = Change(path, "C", info, link, _kept(xattrs))
            if same or stat.S_ISDIR(info.st_mode):
                frame.survivors += 1  # a directory in both keeps lower content below it
        if change is not None:
            self.changes.append(change)
        if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
            self.groups.setdefault((info.st_dev, info.st_ino), []).append(
                change or Change(path, "C", info, link, _kept(xattrs))
            )
        if not stat.S_ISDIR(info.st_mode):
            return None
        lower_fd = None  # no lower directory: everything below is added
        if frame.lower is not None and lower is not None and stat.S_ISDIR(lower.st_mode):
            with contextlib.suppress(OSError):
                lower_fd = os.open(name, _DIR_FLAGS, dir_fd=frame.lower)
        try:
            upper_fd = os.open(name, _DIR_FLAGS, dir_fd=frame.upper)
        except BaseException:
            _close(lower_fd)
            raise
        return self._frame(path, upper_fd, lower_fd, change)

    @staticmethod
    def _refuse_redirects(path: bytes, xattrs: dict[bytes, bytes]) -> None:
        for key, what in _REFUSED_XATTRS.items():
            if key in xattrs:
                raise LayerError(
                    f"{path!r} is {what}: its upper entry does not hold the change; "
                    "mount overlay snapshots with redirect_dir=off,metacopy=off"
                )

    def _close_frame(self, frame: _Frame) -> None:
        """At the end of a directory: its deletions, as whiteouts or as one opaque marker."""
        try:
            if frame.deleted and frame.survivors == 0 and frame.children > 0:
                if frame.change is None:
                    xattrs = _kept(_xattrs(frame.upper, b""))
                    frame.change = Change(frame.path, "C", os.fstat(frame.upper), xattrs=xattrs)
                    self.changes.append(frame.change)
                frame.change.opaque = True
                # Still reported (``ocikit diff``), never written: the marker hides them.
                self.changes.extend(Change(_join(frame.path, n), "D", opaque=True) for n in frame.deleted)
            else:
                self.changes.extend(Change(_join(frame.path, name), "D") for name in frame.deleted)
        finally:
            _close(frame.upper, frame.lower)

    def _complete_groups(self) -> None:
        written = {id(change) for change in self.changes}
        for members in self.groups.values():
            if any(id(member) in written for member in members):
                self.changes.extend(member for member in members if id(member) not in written)


def _open_root(path: str | os.PathLike[str], what: str) -> int:
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as error:
        raise LayerError(f"cannot open the {what} tree {os.fspath(path)!r}: {error.strerror}") from None


def _close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def tree_changes(upper: str | os.PathLike[str], lower: str | os.PathLike[str] | None) -> DiffReport:
    """What makes ``lower`` (None: an empty tree) into ``upper``, both complete trees."""
    return _Walker(overlay=False).run(upper, lower)


def upper_changes(upper: str | os.PathLike[str], lower: str | os.PathLike[str] | None = None) -> DiffReport:
    """The changes an overlayfs upper directory holds. ``lower`` (the merged lower view) is
    only looked at to tell added (``A``) from changed (``C``) entries."""
    return _Walker(overlay=True).run(upper, lower)


class _Directories:
    """Opens the parent directories of the sorted changes, one component at a time without
    following symlinks, keeping the last one open (siblings follow each other)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.parts: tuple[bytes, ...] | None = None
        self.fd = -1

    def open(self, parts: tuple[bytes, ...]) -> int:
        if parts == self.parts:
            return self.fd
        self.close()
        fd = os.dup(self.root)
        try:
            for part in parts:
                child = os.open(part, _PATH_DIR, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self.parts, self.fd = parts, fd
        return fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.parts, self.fd = None, -1


def _entry(change: Change, name: bytes) -> TarEntry:
    info = change.info
    assert info is not None
    kind = _KINDS[stat.S_IFMT(info.st_mode)]
    device = kind in (CHR, BLK)
    return TarEntry(
        name=name,
        kind=kind,
        mode=stat.S_IMODE(info.st_mode),
        uid=info.st_uid,
        gid=info.st_gid,
        size=info.st_size if kind == REG else 0,
        mtime_ns=info.st_mtime_ns,
        atime_ns=info.st_mtime_ns,
        linkname=change.link,
        devmajor=os.major(info.st_rdev) if device else 0,
        devminor=os.minor(info.st_rdev) if device else 0,
        xattrs=change.xattrs,
    )


def write_changes(
    upper: str | os.PathLike[str],
    changes: list[Change],
    writer: LayerWriter,
    on_change: Callable[[Change], None] | None = None,
) -> int:
    """Write ``changes`` (found in ``upper``) into ``writer`` in a fixed order; the number of
    tar entries written."""
    root = _open_root(upper, "upper")
    directories = _Directories(root)
    linked: dict[tuple[int, int], bytes] = {}
    written = 0
    try:
        for change in sorted(changes, key=Change.sort_key):
            if on_change is not None:
                on_change(change)
            parent, _, name = change.path.rpartition(b"/")
            if change.action == "D":
                if not change.opaque:
                    writer.add(whiteout_entry(_join(parent, WHITEOUT_PREFIX + name)))
                    written += 1
                continue
            written += _write_one(change, writer, directories, linked)
    except OSError as error:
        raise LayerError(f"cannot read {error.filename or 'the upper tree'}: {error.strerror}") from None
    finally:
        directories.close()
        os.close(root)
    return written


def _write_one(
    change: Change, writer: LayerWriter, directories: _Directories, linked: dict[tuple[int, int], bytes]
) -> int:
    info = change.info
    assert info is not None
    entry = _entry(change, change.path or b".")
    if entry.kind == REG and info.st_nlink > 1:
        first = linked.setdefault((info.st_dev, info.st_ino), change.path)
        if first != change.path:
            entry.kind, entry.linkname, entry.size, entry.xattrs = LNK, first, 0, None
    if entry.kind != REG or entry.size == 0:
        writer.add(entry)
    else:
        parts = tuple(change.path.split(b"/"))
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=directories.open(parts[:-1]))
        try:
            now = os.fstat(fd)
            if (now.st_ino, now.st_dev) != (info.st_ino, info.st_dev) or now.st_size != info.st_size:
                raise LayerError(
                    f"{change.path!r} changed while the layer was written; retry with the container stopped"
                )
            writer.add(entry, fd)
        finally:
            os.close(fd)
    if change.opaque:
        writer.add(whiteout_entry(_join(change.path, OPAQUE)))
        return 2
    return 1
