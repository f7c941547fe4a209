"""Blobs as files on local disk: ``blobs/<alg>/<encoded>``, uploads staged in ``uploads/``.

Durability rule: a blob file appears under ``blobs/`` only by ``rename`` of a staged file that
was fully written, truncated to the size the metadata recorded, fsynced, and then the
directory fsynced. A crash at any moment therefore leaves either no blob or a complete one.

An upload is staged in one file per session, each chunk written at the offset the metadata
store recorded; bytes past that offset are leftovers of a chunk that never counted and are
overwritten by the next chunk or cut off at commit. The store keeps no state of its own (the
``stage`` value is always empty) and takes no lock: the session's lease in the metadata store
keeps writers of one upload apart, whichever process or machine they run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from ...spec.digest import Digest, digest_error
from ...store.files import pwrite_all, write_batched
from .base import BlobInfo

__all__ = ["FilesystemBlobStore", "is_disk_full"]

_READ_CHUNK: Final = 1 << 20
_NO_STAGE: Final = b""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemBlobStore:
    """The embedded default blob store."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.uploads = self.root / "uploads"

    async def open(self) -> None:
        for directory in (self.blobs, self.uploads):
            directory.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        """Nothing is held open between calls."""

    # ------------------------------------------------------------------ content

    def _blob_path(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.encoded

    async def stat(self, digest: Digest) -> BlobInfo | None:
        try:
            found = os.stat(self._blob_path(digest))
        except FileNotFoundError:
            return None
        return BlobInfo(found.st_size, found.st_mtime)

    def local_path(self, digest: Digest) -> str | None:
        path = self._blob_path(digest)
        return str(path) if path.is_file() else None

    async def url(self, digest: Digest, *, expires: float) -> str | None:
        return None  # clients read local blobs through the registry

    async def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        fd = os.open(self._blob_path(digest), os.O_RDONLY)
        try:
            async for chunk in _pread_chunks(fd, offset, length):
                yield chunk
        finally:
            os.close(fd)

    async def delete(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._blob_path(digest))

    async def digests(self) -> AsyncIterator[tuple[Digest, BlobInfo]]:
        for algorithm_dir in sorted(self.blobs.iterdir()):
            for path in sorted(algorithm_dir.iterdir()):
                text = f"{algorithm_dir.name}:{path.name}"
                if digest_error(text) is not None:
                    continue
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    found = path.stat()
                    yield Digest(text), BlobInfo(found.st_size, found.st_mtime)

    # ------------------------------------------------------------------ staging

    def _stage_path(self, upload_id: str) -> Path:
        if not upload_id.isalnum():  # ids are uuid hex; refuse anything that could be a path
            raise FileNotFoundError(upload_id)
        return self.uploads / upload_id

    async def stage_create(self, upload_id: str) -> bytes:
        os.close(os.open(self._stage_path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return _NO_STAGE

    async def stage_append(
        self,
        upload_id: str,
        stage: bytes,
        offset: int,
        chunks: AsyncIterator[bytes],
        destination: Digest | None = None,
    ) -> tuple[int, bytes]:
        # ``destination`` is not needed: publishing a staged file is a rename, not a copy.
        fd = os.open(self._stage_path(upload_id), os.O_WRONLY)
        try:

            def write(batch: list[bytes], start: int) -> None:
                pwrite_all(fd, batch, offset + start)

            written = await write_batched(chunks, write)
        finally:
            os.close(fd)  # write_batched returns only once no write is running
        return written, _NO_STAGE

    async def stage_read(self, upload_id: str, stage: bytes, size: int) -> AsyncIterator[bytes]:
        fd = os.open(self._stage_path(upload_id), os.O_RDONLY)
        try:
            async for chunk in _pread_chunks(fd, 0, size):
                yield chunk
        finally:
            os.close(fd)

    async def stage_commit(self, upload_id: str, stage: bytes, size: int, digest: Digest) -> None:
        staged, target = self._stage_path(upload_id), self._blob_path(digest)
        await asyncio.to_thread(self._publish, staged, size, target)

    @staticmethod
    def _publish(staged: Path, size: int, target: Path) -> None:
        if target.exists():  # the same content is already stored: nothing to publish
            staged.unlink()
            return
        fd = os.open(staged, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)  # leftovers of a chunk that never counted
            os.fsync(fd)
        finally:
            os.close(fd)
        target.parent.mkdir(exist_ok=True)
        os.rename(staged, target)  # atomic: readers see no blob or the whole blob
        _fsync_dir(target.parent)

    async def stage_abort(self, upload_id: str, stage: bytes | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._stage_path(upload_id))

    async def staged(self) -> AsyncIterator[tuple[str, float]]:
        for path in self.uploads.iterdir():
            with contextlib.suppress(FileNotFoundError):
                yield path.name, path.stat().st_mtime


async def _pread_chunks(fd: int, offset: int, length: int | None) -> AsyncIterator[bytes]:
    remaining = length if length is not None else os.fstat(fd).st_size - offset
    while remaining > 0:
        chunk = await asyncio.to_thread(os.pread, fd, min(_READ_CHUNK, remaining), offset)
        if not chunk:
            break
        offset += len(chunk)
        remaining -= len(chunk)
        yield chunk


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
