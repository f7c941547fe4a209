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

import bz2
import contextlib
import gzip
import lzma
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

import zstandard

from ..spec import Descriptor
from . import refs
from .files import BlobFile, copy_range, fsync_dir
from .layout import LayoutDestination, OCILayout
from .source import MAX_DOCUMENT, IndexedSource
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


def _decompressed_copy(fd: int, kind: str, where: Path) -> int:
    """An fd of an anonymous temporary file holding the decompressed archive: a compressed tar
    cannot be read at offsets, the plain one can. Nothing is left on disk, whatever happens."""
    with tempfile.TemporaryFile() as spool:
        try:
            with os.fdopen(os.dup(fd), "rb") as handle, _decompressor(kind, handle) as plain:
                shutil.copyfileobj(plain, spool, 1 << 20)
        except (OSError, EOFError, zstandard.ZstdError, lzma.LZMAError) as exc:
            raise TransportError(f"{where}: cannot decompress the {kind} archive: {exc}") from None
        spool.flush()
        return os.dup(spool.fileno())


class ArchiveSource(IndexedSource):
    """The images of an ``oci-archive`` file. A plain tar (what skopeo writes) is read in
    place; a compressed one is first decompressed into an anonymous temporary file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise TransportError(f"{self.path}: cannot open the archive: {exc.strerror}") from None
        try:
            head = os.pread(self._fd, 8, 0)
            kind = next((k for magic, k in _COMPRESSED_MAGIC.items() if head.startswith(magic)), None)
            if kind is not None:
                plain = _decompressed_copy(self._fd, kind, self.path)
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
                with tarfile.open(fileobj=handle, mode="r:") as tar:
                    for member in tar:
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
        if size > MAX_DOCUMENT:
            raise TransportError(f"{self.path}: index.json is larger than {MAX_DOCUMENT} bytes")
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


class ArchiveDestination:
    """Writes an ``oci-archive`` file: a staged layout, turned into a tar at :meth:`commit`."""

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

    async def has_blob(self, descriptor: Descriptor) -> bool:
        return await self._inner.has_blob(descriptor)

    async def put_blob(self, descriptor: Descriptor, chunks: AsyncIterator[bytes]) -> None:
        await self._inner.put_blob(descriptor, chunks)

    async def put_blob_from_file(self, descriptor: Descriptor, blob: BlobFile) -> None:
        await self._inner.put_blob_from_file(descriptor, blob)

    async def put_manifest(self, descriptor: Descriptor, raw: bytes, tags: list[str]) -> None:
        await self._inner.put_manifest(descriptor, raw, tags)

    async def add_root(self, descriptor: Descriptor) -> None:
        await self._inner.add_root(descriptor)

    async def commit(self) -> None:
        write_archive(self.layout, self.path)

    async def close(self) -> None:
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


def _add_file(fd: int, name: str, blob: BlobFile) -> None:
    _write_all(fd, _header(name, blob.size))
    if copy_range(blob, fd) != blob.size:
        raise TransportError(f"{name} changed while it was being archived")
    _pad(fd, blob.size)


def write_archive(layout: OCILayout, target: Path) -> None:
    """Tar every blob of ``layout`` with its ``oci-layout`` and ``index.json`` into ``target``,
    atomically (temp file, fsync, rename, fsync of the directory)."""
    parent_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    temp = f".{target.name}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=parent_fd)
    try:
        for name in ("oci-layout", "index.json"):
            path = layout.path / name
            with BlobFile(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), 0, path.stat().st_size) as header:
                _add_file(fd, name, header)
        _write_all(fd, _header("blobs/", 0, directory=True))
        for algorithm in sorted(p.name for p in (layout.path / "blobs").iterdir()):
            _write_all(fd, _header(f"blobs/{algorithm}/", 0, directory=True))
            for encoded in sorted(p.name for p in (layout.path / "blobs" / algorithm).iterdir()):
                blob = layout.locate(f"{algorithm}:{encoded}")
                if blob is not None:
                    with blob:
                        _add_file(fd, f"blobs/{algorithm}/{encoded}", blob)
        end = os.lseek(fd, 0, os.SEEK_CUR) + 2 * _BLOCK
        _write_all(fd, b"\0" * (2 * _BLOCK + (-end) % _RECORD))
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
