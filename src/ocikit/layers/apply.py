"""Applying one layer changeset (image-spec layer.md) onto a directory, entry by entry.

The target holds the merged view of all lower layers (a plain directory, or an overlay mount
whose kernel turns removals into whiteouts). Named decisions, beside those of
:mod:`.paths`, :mod:`.rootfs` and :mod:`.attrs`:

* **Never write through an existing inode.** Every non-directory is created with
  ``O_CREAT | O_EXCL`` (or ``mknod``, ``symlink``, ``link``, which fail on an existing
  name); when the name exists it is removed first, a directory with all it holds. A hardlink
  in a lower layer therefore never receives this layer's content.
* **Directory over directory keeps the directory** and replaces its attributes: owner, mode,
  times, and the extended attributes (those the entry does not name are removed, except
  ``security.selinux``, the host's label, and overlayfs' own).
* **Whiteouts hide lower layers only.** Every path this layer creates is remembered; a
  whiteout or an opaque marker removes what is at or under its path except those, so the
  result is the same wherever the marker sits in the stream ("opaque first").
* **Directory modes and times are set last**, deepest first: creating children changes a
  directory's mtime, and a read-only directory mode must not stop the rest of the layer.
* **Hardlinks point inside the root only**: the target is resolved in the root like any
  path, with no symlink followed at its last component (a hardlink to a symlink links the
  symlink). A hardlink to a directory or to nothing fails.
* **The root stays a directory**: an entry ``.`` of another type is refused; ``./`` as a
  directory sets the root's attributes.
* **Non-zero bytes after the end-of-archive marker are refused** (after both digests were
  checked): GNU tar pads with zeros, Go's archive/tar writes none, and anything else would be
  a second archive that ``tar --ignore-zeros`` reads and this engine would not, so the same
  diffID would mean two different file systems. A missing end marker is accepted with a
  warning, since the diffID covers the stream either way.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import BinaryIO, Final, TypeVar

from ..spec.digest import Digest, DigestError
from ..spec.mediatype import layer_compression
from .attrs import XattrPolicy, set_file_attrs, set_node_attrs
from .errors import (
    BadTar,
    DiffIDMismatch,
    DigestMismatch,
    LayerError,
    LimitExceeded,
    UnsafePath,
    UnsupportedMediaType,
)
from .fsops import directory_names, lstat_mode, remove
from .options import ApplyOptions, ApplyReport
from .paths import Name, classify, split_name
from .rootfs import Root
from .stream import BlobStream, open_blob
from .tar import BLK, CHR, DIR, FIFO, LNK, REG, SYM, TarEntry, TarReader

__all__ = ["apply_layer"]

T = TypeVar("T")

_CREATE_FILE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NODE_TYPES: Final = {CHR: stat.S_IFCHR, BLK: stat.S_IFBLK, FIFO: stat.S_IFIFO}
_KIND_NAMES: Final = {
    REG: "file",
    LNK: "hardlink",
    SYM: "symlink",
    CHR: "character device",
    BLK: "block device",
    DIR: "directory",
    FIFO: "FIFO",
}
_KEPT_XATTRS: Final = (b"security.selinux", b"trusted.overlay.", b"user.overlay.")
_GONE: Final = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})
_MAX_STORED_WARNINGS: Final = 1000


def apply_layer(
    target: str | os.PathLike[str],
    blob: str | os.PathLike[str] | BinaryIO,
    media_type: str,
    digest: str | None,
    diff_id: str | None,
    options: ApplyOptions = ApplyOptions(),  # noqa: B008 - frozen, so sharing it is safe
) -> ApplyReport:
    """Apply the layer ``blob`` onto the directory ``target`` and verify it while it streams.

    ``digest`` is the descriptor's digest of the blob, ``diff_id`` the image config's digest
    of the uncompressed tar; either may be None to skip that check (both are still computed
    and reported). Any failure raises :class:`LayerError`; the target is then partly applied
    and must be discarded by the caller. Nothing outside ``target`` is ever touched.
    """
    compression = layer_compression(media_type)
    if compression is None:
        raise UnsupportedMediaType(f"{media_type!r} is not a layer media type this engine reads")
    for value, what in ((digest, "digest"), (diff_id, "diffID")):
        if value is not None:
            try:
                Digest(value)
            except DigestError as error:
                raise LayerError(f"the expected {what} is not usable: {error}") from None
    rootless = options.rootless if options.rootless is not None else os.geteuid() != 0
    source, owned = open_blob(blob)
    try:
        root = Root(target, options.resolver)
        try:
            stream = BlobStream(
                source,
                compression,
                digest,
                diff_id,
                max_uncompressed_size=options.max_uncompressed_size,
                chunk_size=options.chunk_size,
            )
            try:
                applier = _Applier(root, stream, options, rootless)
                applier.run()
                trailing_zero = stream.drain()
                computed_digest, computed_diff_id, compressed, uncompressed = stream.finish()
            finally:
                stream.close()
        finally:
            root.close()
    finally:
        if owned:
            source.close()
    if digest is not None and computed_digest != digest:
        raise DigestMismatch(
            f"the layer blob's digest is {computed_digest}, not {digest} as expected: "
            "the blob is corrupt or not the one its descriptor names"
        )
    if diff_id is not None and computed_diff_id != diff_id:
        raise DiffIDMismatch(
            f"the layer's uncompressed digest (diffID) is {computed_diff_id}, not {diff_id} "
            "as the image config says"
        )
    if not trailing_zero:
        raise BadTar("non-zero data follows the tar end-of-archive marker; such a layer is refused")
    return applier.report(computed_digest, computed_diff_id, compressed, uncompressed)


def _listxattr(fd: int) -> list[str]:
    """The extended attributes of ``fd``; none on a filesystem without xattr support (zfs-fuse),
    where an image that *sets* one still fails, when it is applied."""
    try:
        return os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise


class _Applier:
    def __init__(self, root: Root, stream: BlobStream, options: ApplyOptions, rootless: bool) -> None:
        self.root = root
        self.options = options
        self.rootless = rootless
        self.reader = TarReader(
            stream, max_name_length=options.max_name_length, max_pax_header=options.max_pax_header
        )
        self.unpacked: set[bytes] = set()  # paths this layer created
        self.ancestors: set[bytes] = set()  # directories holding something this layer created
        self.directories: dict[bytes, TarEntry] = {}  # mode and times, set at the end
        self.kept_times: dict[bytes, tuple[int, int]] = {}  # lower directories this layer changed
        self.restore_modes: dict[bytes, int] = {}  # rootless: read-only directories opened up
        self.entries = 0
        self.whiteouts = 0
        self.warnings: list[str] = []
        self.dropped_warnings = 0
        self.xattrs = XattrPolicy(rootless, self.warn)

    def warn(self, message: str) -> None:
        if len(self.warnings) < _MAX_STORED_WARNINGS:
            self.warnings.append(message)
        else:
            self.dropped_warnings += 1
        if self.options.on_warning is not None:
            self.options.on_warning(message)

    def report(self, digest: Digest, diff_id: Digest, compressed: int, uncompressed: int) -> ApplyReport:
        warnings = list(self.warnings)
        if self.dropped_warnings:
            warnings.append(f"... and {self.dropped_warnings} more warnings")
        return ApplyReport(
            digest=digest,
            diff_id=diff_id,
            compressed_size=compressed,
            uncompressed_size=uncompressed,
            entries=self.entries,
            whiteouts=self.whiteouts,
            warnings=warnings,
            resolver=self.root.resolver,
            rootless=self.rootless,
        )

    def run(self) -> None:
        limit = self.options.max_entries
        while (entry := self.reader.next()) is not None:
            self.entries += 1
            if self.entries > limit:
                raise LimitExceeded(f"the layer has more than {limit} entries, the configured limit")
            try:
                self._apply(entry, split_name(entry.name))
            except OSError as error:
                raise LayerError(_describe(entry, error)) from None
            finally:
                self.root.release()
        if self.reader.missing_end_marker:
            self.warn("the tar stream ends without an end-of-archive marker")
        try:
            self._finish_directories()
        except OSError as error:
            raise LayerError(f"cannot set the attributes of a directory: {error}") from None

    # --- dispatch ---------------------------------------------------------------------------

    def _apply(self, entry: TarEntry, parts: Name) -> None:
        kind, hidden = classify(parts, entry.name)
        if kind == "aufs":
            self.warn(f"{entry.name!r}: aufs metadata skipped")
            return
        if kind == "opaque":
            self.whiteouts += 1
            self._opaque(parts[:-1])
            return
        if kind == "whiteout":
            self.whiteouts += 1
            self._whiteout(parts[:-1], hidden)
            return
        if not parts:
            self._root_entry(entry)
            return
        path = b"/".join(parts)
        self._mark(path)
        dirfd = self.root.directory(parts[:-1], create=True)
        self._keep_times(path[: max(path.rfind(b"/"), 0)], dirfd)
        name = parts[-1]
        if entry.kind == REG:
            self._file(dirfd, name, path, entry)
        elif entry.kind == DIR:
            self._directory(dirfd, name, path, entry)
        elif entry.kind == SYM:
            self._symlink(dirfd, name, path, entry)
        elif entry.kind == LNK:
            self._hardlink(dirfd, name, path, parts, entry)
        else:
            self._node(dirfd, name, path, entry)

    def _keep_times(self, path: bytes, fd: int) -> None:
        """Remember a directory's times before this layer changes what it holds, so that a
        directory the layer does not name keeps its times (as umoci does): the result then
        depends only on the layers, not on when they were applied."""
        if path not in self.kept_times:
            info = os.fstat(fd)
            self.kept_times[path] = (info.st_atime_ns, info.st_mtime_ns)

    def _mark(self, path: bytes) -> None:
        self.unpacked.add(path)
        parent = path
        while (cut := parent.rfind(b"/")) > 0:
            parent = parent[:cut]
            if parent in self.ancestors:
                break
            self.ancestors.add(parent)

    # --- replacing what exists --------------------------------------------------------------

    def _writable(self, dirfd: int, path: bytes, operation: Callable[[], T]) -> T:
        """Run ``operation`` in ``dirfd``; rootless, when a read-only directory of a lower
        layer refuses it, give the owner write access for the rest of the layer and retry.

        Root needs none of this (it bypasses permissions); the directory's mode is put back
        when the layer is done (``_finish_directories``)."""
        try:
            return operation()
        except PermissionError:
            if not self.rootless:
                raise
            info = os.fstat(dirfd)
            mode = stat.S_IMODE(info.st_mode)
            if info.st_uid != os.geteuid() or mode & 0o700 == 0o700:
                raise
            os.chmod(f"/proc/self/fd/{dirfd}", mode | 0o700)  # our own descriptor, not a path
            self.restore_modes.setdefault(path, mode)
            return operation()

    def _remove(self, dirfd: int, name: bytes, path: bytes) -> None:
        parent = path[: max(path.rfind(b"/"), 0)]
        mode = self._writable(dirfd, parent, lambda: remove(dirfd, name, force=self.rootless))
        if mode is not None and (stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            self.root.forget()  # cached resolutions may have gone through it
            if stat.S_ISDIR(mode):
                self._drop_directories_under(path)

    def _drop_directories_under(self, path: bytes) -> None:
        prefix = path + b"/"
        for key in [key for key in self.directories if key == path or key.startswith(prefix)]:
            del self.directories[key]

    def _create(self, dirfd: int, name: bytes, path: bytes, make: Callable[[], T]) -> T:
        """``make()`` creates ``name`` and fails if it exists: then remove what is there, retry."""
        parent = path[: max(path.rfind(b"/"), 0)]
        try:
            return self._writable(dirfd, parent, make)
        except FileExistsError:
            self._remove(dirfd, name, path)
            return make()

    # --- entry types ------------------------------------------------------------------------

    def _file(self, dirfd: int, name: bytes, path: bytes, entry: TarEntry) -> None:
        fd = self._create(dirfd, name, path, lambda: os.open(name, _CREATE_FILE, 0o600, dir_fd=dirfd))
        try:
            if entry.size:
                self.reader.write_content(fd, entry.size)
            set_file_attrs(fd, entry, rootless=self.rootless, xattrs=self.xattrs)
        finally:
            os.close(fd)

    def _directory(self, dirfd: int, name: bytes, path: bytes, entry: TarEntry) -> None:
        existed = False
        parent = path[: max(path.rfind(b"/"), 0)]
        try:
            self._writable(dirfd, parent, lambda: os.mkdir(name, 0o755, dir_fd=dirfd))
        except FileExistsError:
            mode = lstat_mode(dirfd, name)
            if mode is not None and stat.S_ISDIR(mode):
                existed = True
            else:
                self._remove(dirfd, name, path)
                os.mkdir(name, 0o755, dir_fd=dirfd)
        fd = os.open(name, _OPEN_DIR, dir_fd=dirfd)
        try:
            self._directory_owner_and_xattrs(fd, entry, existed)
        finally:
            os.close(fd)
        self.directories[path] = entry

    def _directory_owner_and_xattrs(self, fd: int, entry: TarEntry, existed: bool) -> None:
        if not self.rootless:
            os.fchown(fd, entry.uid, entry.gid)
        if existed:
            wanted = entry.xattrs or {}
            for name in _listxattr(fd):
                raw = os.fsencode(name)
                if raw not in wanted and not raw.startswith(_KEPT_XATTRS):
                    os.removexattr(fd, name)
        if entry.xattrs:
            self.xattrs.apply(entry, lambda key, value: os.setxattr(fd, key, value))

    def _root_entry(self, entry: TarEntry) -> None:
        if entry.kind != DIR:
            raise UnsafePath(
                f"the entry {entry.name!r} would make the root a {_KIND_NAMES[entry.kind]}; "
                "the root must stay a directory"
            )
        fd = self.root.open_directory(())
        try:
            self._directory_owner_and_xattrs(fd, entry, existed=True)
        finally:
            os.close(fd)
        self.directories[b""] = entry

    def _symlink(self, dirfd: int, name: bytes, path: bytes, entry: TarEntry) -> None:
        if not entry.linkname:
            raise BadTar(f"the symlink {entry.name!r} has an empty target")
        if b"\x00" in entry.linkname:
            raise BadTar(f"the symlink {entry.name!r} has a NUL byte in its target")
        # The target is stored as it is: it is only ever resolved inside the root.
        self._create(dirfd, name, path, lambda: os.symlink(entry.linkname, name, dir_fd=dirfd))
        set_node_attrs(dirfd, name, entry, rootless=self.rootless, xattrs=self.xattrs)

    def _hardlink(self, dirfd: int, name: bytes, path: bytes, parts: Name, entry: TarEntry) -> None:
        target = split_name(entry.linkname, "hardlink target")
        if not target:
            raise UnsafePath(f"the hardlink {entry.name!r} points at the root directory")
        if target == parts:
            return  # a link to itself: the path already is what it names
        try:
            source_dir = self.root.directory(target[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            raise LayerError(
                f"the hardlink {entry.name!r} points at {entry.linkname!r}, which does not exist"
            ) from None
        source = target[-1]
        try:
            self._create(
                dirfd,
                name,
                path,
                lambda: os.link(source, name, src_dir_fd=source_dir, dst_dir_fd=dirfd, follow_symlinks=False),
            )
        except FileNotFoundError:
            raise LayerError(
                f"the hardlink {entry.name!r} points at {entry.linkname!r}, which does not exist"
            ) from None
        except PermissionError:
            raise LayerError(
                f"the hardlink {entry.name!r} points at {entry.linkname!r}, which cannot be linked "
                "(a directory, or a file the caller may not link)"
            ) from None

    def _node(self, dirfd: int, name: bytes, path: bytes, entry: TarEntry) -> None:
        if self.rootless and entry.kind != FIFO:
            self._remove(dirfd, name, path)
            self.warn(f"{entry.name!r}: {_KIND_NAMES[entry.kind]} skipped (rootless: cannot create devices)")
            return
        mode = _NODE_TYPES[entry.kind] | 0o600
        device = os.makedev(entry.devmajor, entry.devminor)
        self._create(dirfd, name, path, lambda: os.mknod(name, mode, device, dir_fd=dirfd))
        set_node_attrs(dirfd, name, entry, rootless=self.rootless, xattrs=self.xattrs)

    # --- whiteouts --------------------------------------------------------------------------

    def _existing_directory(self, parts: Name) -> int | None:
        try:
            return self.root.directory(parts, create=False)
        except OSError as error:
            if error.errno in _GONE:
                return None
            raise

    def _whiteout(self, directory: Name, hidden: bytes) -> None:
        dirfd = self._existing_directory(directory)
        if dirfd is None:
            return  # nothing below to hide
        path = b"/".join((*directory, hidden))
        if path not in self.unpacked and path not in self.ancestors:
            self._keep_times(b"/".join(directory), dirfd)
            self._remove(dirfd, hidden, path)
            return
        mode = lstat_mode(dirfd, hidden)
        if mode is not None and stat.S_ISDIR(mode):
            self._prune_children(dirfd, hidden, path)

    def _opaque(self, directory: Name) -> None:
        if not directory:
            self._prune_children(self.root.fd, b".", b"")
            return
        parent = self._existing_directory(directory[:-1])
        if parent is not None:
            self._prune_children(parent, directory[-1], b"/".join(directory))

    def _prune_children(self, parent: int, name: bytes, path: bytes) -> None:
        """Remove everything under ``path`` that this layer did not create, without recursion."""
        try:
            first = os.open(name, _OPEN_DIR, dir_fd=parent)
        except OSError as error:
            if error.errno in _GONE:
                return
            raise
        stack: list[tuple[int, bytes, list[bytes]]] = []
        try:
            stack.append((first, path, directory_names(first)))
            while stack:
                fd, base, names = stack[-1]
                if not names:
                    os.close(fd)
                    stack.pop()
                    continue
                child = names.pop()
                child_path = base + b"/" + child if base else child
                if child_path not in self.unpacked and child_path not in self.ancestors:
                    self._keep_times(base, fd)
                    self._remove(fd, child, child_path)
                    continue
                mode = lstat_mode(fd, child)
                if mode is not None and stat.S_ISDIR(mode):
                    sub = os.open(child, _OPEN_DIR, dir_fd=fd)
                    stack.append((sub, child_path, []))
                    stack[-1][2].extend(directory_names(sub))
        finally:
            for fd, _, _ in stack:
                os.close(fd)

    # --- the end ----------------------------------------------------------------------------

    def _finish_directories(self) -> None:
        """Modes and times of this layer's directories, and the kept times of lower ones,
        deepest first."""
        paths = self.directories.keys() | self.kept_times.keys() | self.restore_modes.keys()
        for path in sorted(paths, key=lambda p: p.count(b"/") + (1 if p else 0), reverse=True):
            entry = self.directories.get(path)
            try:
                fd = self.root.open_directory(tuple(path.split(b"/")) if path else ())
            except OSError as error:
                if error.errno in _GONE:
                    continue  # replaced by a later entry of this layer
                raise
            try:
                if entry is not None:
                    os.fchmod(fd, entry.mode)
                    os.utime(fd, ns=(entry.atime_ns, entry.mtime_ns))
                    continue
                if path in self.restore_modes:
                    os.fchmod(fd, self.restore_modes[path])
                if path in self.kept_times:
                    os.utime(fd, ns=self.kept_times[path])
            finally:
                os.close(fd)
                self.root.release()


def _describe(entry: TarEntry, error: OSError) -> str:
    kind = _KIND_NAMES.get(entry.kind, "entry")
    where = f"{kind} {entry.name.decode('utf-8', 'backslashreplace')!r}"
    if entry.kind == LNK:
        where += f" (to {entry.linkname.decode('utf-8', 'backslashreplace')!r})"
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        reason = "no space left on the target's file system"
    return f"cannot apply the {where}: {reason}"
