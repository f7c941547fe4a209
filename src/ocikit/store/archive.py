"""``oci-archive:``: an image layout in a tar file, as skopeo reads and writes it.

Reading does not unpack: the tar headers are scanned once for the offset and size of every
member, and blobs are then read (or copied in the kernel) straight out of the archive at
those offsets (a compressed archive, which skopeo also accepts, is first decompressed into
an anonymous temporary file). Only exact member names are ever looked up (``index.json``, ``oci-layout``,
``blobs/<alg>/<encoded>``), so a member named ``../x`` or a symlink member can never be
followed anywhere; non-regular and sparse members are ignored.

Writing stages a layout in a private directory beside the target file and, at ``commit()``,
streams it into a tar (blob bodies copied in the kernel), fsyncs it and renames it over the
target: the archive appears complete or not at all. Like skopeo, a destination archive is
written anew, replacing any file of that name.
"""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import gzip
import io
import lzma
import os
import secrets
import shutil
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

import zstandard

from ..spec import Descriptor, VerificationError
from ..spec.digest import SUPPORTED_ALGORITHMS
from . import refs
from .files import BlobFile, copy_range, digest_span, fsync_dir
from .layout import LayoutDestination, OCILayout
from .source import IndexedSource
from .transport import TransportError

__all__ = ["ArchiveDestination", "ArchiveSource", "write_archive"]

_BLOCK: Final = 512
_RECORD: Final = 20 * _BLOCK
_COMPRESSED_MAGIC: Final = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
}


#: The most a compressed archive may decompress to (the same bound as one layer's content).
MAX_DECOMPRESSED_SIZE: Final = 64 << 30
_CHUNK: Final = 1 << 20
#: How often (in bytes written) the temporary filesystem's free space is looked at.
_SPACE_CHECK_EVERY: Final = 256 << 20
_FREE_SPACE_RESERVE: Final = 512 << 20


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _decompressor(kind: str, handle: BinaryIO) -> BinaryIO:
    if kind == "gzip":
        return cast(BinaryIO, gzip.GzipFile(fileobj=handle, mode="rb"))
    if kind == "zstd":
        return cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True))
    if kind == "xz":
        return cast(BinaryIO, lzma.LZMAFile(handle))
    return cast(BinaryIO, bz2.BZ2File(handle))


def _decompressed_copy(fd: int, kind: str, where: Path, max_size: int) -> int:
    """An fd of an anonymous temporary file holding the decompressed archive: a compressed tar
    cannot be read at offsets, the plain one can. Nothing is left on disk, whatever happens.

    A hostile archive can decompress to far more than it weighs (a "bomb"): the copy stops
    past ``max_size`` bytes, or before it would leave the temporary filesystem nearly full."""
    with tempfile.TemporaryFile() as spool:
        try:
            with os.fdopen(os.dup(fd), "rb") as handle, _decompressor(kind, handle) as plain:
                _bounded_copy(plain, spool, max_size, where)
        except (OSError, EOFError, zstandard.ZstdError, lzma.LZMAError) as exc:
            raise TransportError(f"{where}: cannot decompress the {kind} archive: {exc}") from None
        spool.flush()
        return os.dup(spool.fileno())


def _bounded_copy(plain: BinaryIO, spool: BinaryIO, max_size: int, where: Path) -> None:
    copied = 0
    while chunk := plain.read(_CHUNK):
        copied += len(chunk)
        if copied > max_size:
            raise TransportError(f"{where}: the archive decompresses to more than {max_size} bytes")
        if copied % _SPACE_CHECK_EVERY < len(chunk):
            free = os.statvfs(spool.fileno())
            if free.f_bavail * free.f_frsize < _FREE_SPACE_RESERVE:
                raise TransportError(
                    f"{where}: decompressing the archive would fill the temporary directory "
                    f"({tempfile.gettempdir()}; set TMPDIR to a larger one)"
                )
        spool.write(chunk)


#: Members an archive may have: tarfile keeps every header it read until the archive closes.
MAX_MEMBERS: Final = 100_000
#: The largest read of the scan: tarfile reads a PAX or GNU long-name header whole.
_MAX_HEADER_READ: Final = 1 << 20


class _HeaderReads:
    """The archive as tarfile scans it, skipping members' data by seeking. Security decision:
    no read above ``_MAX_HEADER_READ``, since a header claiming gigabytes (a few kilobytes
    once compressed) would otherwise be read into memory whole."""

    def __init__(self, handle: io.BufferedReader) -> None:
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        if not 0 <= size <= _MAX_HEADER_READ:
            raise tarfile.ReadError(f"a header of {size} bytes is more than {_MAX_HEADER_READ} may have")
        return self._handle.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


class ArchiveSource(IndexedSource):
    """The images of an ``oci-archive`` file. A plain tar (what skopeo writes) is read in
    place; a compressed one is first decompressed into an anonymous temporary file."""

    def __init__(self, path: str | os.PathLike[str], *, max_size: int = MAX_DECOMPRESSED_SIZE) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise TransportError(f"{self.path}: cannot open the archive: {exc.strerror}") from None
        try:
            head = os.pread(self._fd, 8, 0)
            kind = next((k for magic, k in _COMPRESSED_MAGIC.items() if head.startswith(magic)), None)
            if kind is not None:
                plain = _decompressed_copy(self._fd, kind, self.path, max_size)
                os.close(self._fd)
                self._fd = plain
            self._members = self._scan()
            self._index = self._read_index()
        except BaseException:
            os.close(self._fd)
            raise
        super().__init__(str(self.path), lambda: self._index, self._locate)

    def _scan(self) -> dict[str, tuple[int, int]]:
        members: dict[str, tuple[int, int]] = {}
        with os.fdopen(os.dup(self._fd), "rb") as handle:
            handle.seek(0)
            try:
                with tarfile.open(fileobj=cast(BinaryIO, _HeaderReads(handle)), mode="r:") as tar:
                    for count, member in enumerate(tar, 1):
                        if count > MAX_MEMBERS:
                            raise TransportError(
                                f"{self.path}: the archive has more than {MAX_MEMBERS} members"
                            )
                        if member.isreg() and not member.issparse():
                            members[_member_name(member.name)] = (member.offset_data, member.size)
            except tarfile.TarError as exc:
                raise TransportError(f"{self.path} is not a tar archive: {exc}") from None
        if "oci-layout" not in members:
            raise TransportError(f"{self.path} holds no image layout (no oci-layout file)")
        return members

    def _read_index(self) -> dict[str, Any]:
        span = self._members.get("index.json")
        if span is None:
            raise TransportError(f"{self.path}: the archive has no index.json")
        offset, size = span
        if size > refs.MAX_INDEX:
            raise TransportError(f"{self.path}: index.json is larger than {refs.MAX_INDEX} bytes")
        return refs.decode_index(os.pread(self._fd, size, offset), str(self.path))

    def _locate(self, digest: str) -> BlobFile | None:
        span = self._members.get("blobs/" + digest.replace(":", "/", 1))
        if span is None:
            return None
        return BlobFile(self._fd, span[0], span[1], owned=False)

    async def close(self) -> None:
        await super().close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


#: Blobs from local files wait for commit() as open spans rather than staged copies; past
#: this many (open file descriptors) they are staged like any other blob.
_MAX_DEFERRED: Final = 256


class ArchiveDestination:
    """Writes an ``oci-archive`` file: a staged layout, turned into a tar at :meth:`commit`.

    Blobs that come as spans of local files (a layout, another archive) are not staged: they
    are copied into the tar at commit, in the kernel, and verified there, in the archive
    being written, before it replaces the target. A local copy thus writes each byte once.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise TransportError(f"{self.path} is a directory; oci-archive needs a file name")
        parent = self.path.parent
        if not parent.is_dir():
            raise TransportError(f"{parent}: no such directory")
        self._staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".ocikit", dir=parent))
        self.layout = OCILayout.open(self._staging, create=True)
        self._inner = LayoutDestination(self.layout)
        self._deferred: dict[str, BlobFile] = {}

    async def has_blob(self, descriptor: Descriptor) -> bool:
        deferred = self._deferred.get(descriptor.digest)
        if deferred is not None:
            return deferred.size == descriptor.size
        return await self._inner.has_blob(descriptor)

    async def put_blob(self, descriptor: Descriptor, chunks: AsyncIterator[bytes]) -> None:
        await self._inner.put_blob(descriptor, chunks)

    async def put_blob_from_file(self, descriptor: Descriptor, blob: BlobFile) -> None:
        algorithm = descriptor.digest.partition(":")[0]
        if len(self._deferred) >= _MAX_DEFERRED or algorithm not in SUPPORTED_ALGORITHMS:
            await self._inner.put_blob_from_file(descriptor, blob)
            return
        if blob.size != descriptor.size:
            raise VerificationError(
                f"size mismatch for {descriptor.digest}: expected {descriptor.size} bytes, "
                f"the source has {blob.size}"
            )
        previous = self._deferred.pop(descriptor.digest, None)
        if previous is not None:
            previous.close()
        self._deferred[descriptor.digest] = BlobFile(os.dup(blob.fd), blob.offset, blob.size)

    async def put_manifest(self, descriptor: Descriptor, raw: bytes, tags: list[str]) -> None:
        await self._inner.put_manifest(descriptor, raw, tags)

    async def add_root(self, descriptor: Descriptor) -> None:
        await self._inner.add_root(descriptor)

    async def commit(self) -> None:
        await asyncio.to_thread(write_archive, self.layout, self.path, self._deferred)

    async def close(self) -> None:
        for blob in self._deferred.values():
            blob.close()
        self._deferred.clear()
        self.layout.close()
        shutil.rmtree(self._staging, ignore_errors=True)


def _header(name: str, size: int, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = int(time.time())
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pad(fd: int, size: int) -> None:
    if size % _BLOCK:
        _write_all(fd, b"\0" * (_BLOCK - size % _BLOCK))


def _add_file(fd: int, name: str, blob: BlobFile) -> int:
    """Append a member; returns the offset of its content in the archive."""
    _write_all(fd, _header(name, blob.size))
    start = os.lseek(fd, 0, os.SEEK_CUR)
    if copy_range(blob, fd) != blob.size:
        raise VerificationError(f"{name}: the source is shorter than its {blob.size} bytes")
    _pad(fd, blob.size)
    return start


def _verify_members(fd: int, members: list[tuple[str, int, int]]) -> None:
    """Check members against their digests as they are in the archive, so that what gets
    published is what was verified; in parallel, since hashing releases the GIL."""

    def check(member: tuple[str, int, int]) -> None:
        digest, start, size = member
        actual = digest_span(fd, start, size, digest.partition(":")[0])
        if actual != digest:
            raise VerificationError(f"digest mismatch: expected {digest}, got {actual}")

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for _ in pool.map(check, members):
            pass


def _blob_names(layout: OCILayout, deferred: dict[str, BlobFile]) -> list[str]:
    staged = {
        f"{algorithm.name}:{blob.name}"
        for algorithm in (layout.path / "blobs").iterdir()
        for blob in algorithm.iterdir()
    }
    return sorted(staged | set(deferred))


def write_archive(layout: OCILayout, target: Path, deferred: dict[str, BlobFile] | None = None) -> None:
    """Tar every blob of ``layout`` (and the ``deferred`` file spans, verified on the way) with
    its ``oci-layout`` and ``index.json`` into ``target``, atomically (temp file, fsync,
    rename, fsync of the directory)."""
    deferred = deferred or {}
    parent_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # A name nobody can guess, created anew: in a directory others may write, a planted
    # symlink at a predictable name would make this write through it.
    temp = f".{target.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o644, dir_fd=parent_fd)
    try:
        for name in ("oci-layout", "index.json"):
            path = layout.path / name
            with BlobFile(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), 0, path.stat().st_size) as header:
                _add_file(fd, name, header)
        _write_all(fd, _header("blobs/", 0, directory=True))
        directories: set[str] = set()
        unverified: list[tuple[str, int, int]] = []
        for digest in _blob_names(layout, deferred):
            algorithm, _, encoded = digest.partition(":")
            if algorithm not in directories:
                directories.add(algorithm)
                _write_all(fd, _header(f"blobs/{algorithm}/", 0, directory=True))
            name = f"blobs/{algorithm}/{encoded}"
            staged = layout.locate(digest)
            if staged is not None:
                with staged:
                    _add_file(fd, name, staged)
            else:
                unverified.append((digest, _add_file(fd, name, deferred[digest]), deferred[digest].size))
        end = os.lseek(fd, 0, os.SEEK_CUR) + 2 * _BLOCK
        _write_all(fd, b"\0" * (2 * _BLOCK + (-end) % _RECORD))
        _verify_members(fd, unverified)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(temp, target.name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        fsync_dir(parent_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=parent_fd)
        raise
    finally:
        os.close(parent_fd)
