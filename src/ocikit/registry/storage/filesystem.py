"""Blobs as files on local disk: ``blobs/<alg>/<encoded>``, uploads staged in ``uploads/``.

Durability rule: a blob file appears under ``blobs/`` only by ``rename`` of a staged file that
was fully written, verified and fsynced, followed by an fsync of the directory. A crash at
any moment therefore leaves either no blob or a complete one; stray staging files are purged
when their upload session expires.

Hashing follows the bytes as they arrive when the upload stays in one process, so a
monolithic or streamed push is hashed once; when chunks of one upload land in different
worker processes, the commit re-reads the staged file instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Final

from ...spec.digest import Digest, Digester, VerificationError, digest_error
from ...store.files import pwritev_all, write_batched
from .base import UploadOffsetError

__all__ = ["FilesystemBlobStore"]

_READ_CHUNK: Final = 1 << 20
_HASH_CACHE_LIMIT: Final = 256


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
        self._lock_path = self.root / "gc.lock"
        # upload id -> digester that has seen exactly the bytes on disk (same-process only)
        self._hashes: dict[str, Digester] = {}

    async def open(self) -> None:
        for directory in (self.blobs, self.uploads):
            directory.mkdir(parents=True, exist_ok=True)
        self._lock_path.touch(exist_ok=True)

    async def close(self) -> None:
        self._hashes.clear()

    # ------------------------------------------------------------------ blobs

    def _blob_path(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.encoded

    async def size(self, digest: Digest) -> int | None:
        try:
            return os.stat(self._blob_path(digest)).st_size
        except FileNotFoundError:
            return None

    async def modified(self, digest: Digest) -> float | None:
        try:
            return os.stat(self._blob_path(digest)).st_mtime
        except FileNotFoundError:
            return None

    def local_path(self, digest: Digest) -> str | None:
        path = self._blob_path(digest)
        return str(path) if path.is_file() else None

    async def read(self, digest: Digest, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        fd = os.open(self._blob_path(digest), os.O_RDONLY)
        try:
            remaining = length if length is not None else os.fstat(fd).st_size - offset
            while remaining > 0:
                chunk = await asyncio.to_thread(os.pread, fd, min(_READ_CHUNK, remaining), offset)
                if not chunk:
                    break
                offset += len(chunk)
                remaining -= len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def delete(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._blob_path(digest))

    async def digests(self) -> AsyncIterator[Digest]:
        for algorithm_dir in sorted(self.blobs.iterdir()):
            for path in sorted(algorithm_dir.iterdir()):
                text = f"{algorithm_dir.name}:{path.name}"
                if digest_error(text) is None:
                    yield Digest(text)

    # ---------------------------------------------------------------- uploads

    def _upload_path(self, upload_id: str) -> Path:
        if not upload_id.isalnum():  # ids are uuid hex; refuse anything that could be a path
            raise FileNotFoundError(upload_id)
        return self.uploads / upload_id

    async def upload_create(self, upload_id: str) -> None:
        fd = os.open(self._upload_path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)

    async def upload_size(self, upload_id: str) -> int | None:
        try:
            return os.stat(self._upload_path(upload_id)).st_size
        except FileNotFoundError:
            return None

    async def upload_modified(self, upload_id: str) -> float | None:
        try:
            return os.stat(self._upload_path(upload_id)).st_mtime
        except FileNotFoundError:
            return None

    async def upload_append(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes]) -> int:
        fd = os.open(self._upload_path(upload_id), os.O_WRONLY)
        try:
            # Serialise writers of one upload across worker processes.
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size != offset:
                raise UploadOffsetError(size)
            digester = self._digester_at(upload_id, size)

            def write(batch: list[bytes], start: int) -> None:
                pwritev_all(fd, batch, size + start)
                if digester is not None:
                    for chunk in batch:
                        digester.update(chunk)

            return size + await write_batched(chunks, write)
        except BaseException:
            self._hashes.pop(upload_id, None)  # the bytes on disk may be ahead of the digester
            raise
        finally:
            os.close(fd)  # write_batched returns only once no write is running

    def _digester_at(self, upload_id: str, size: int) -> Digester | None:
        digester = self._hashes.get(upload_id)
        if digester is not None and digester.size == size:
            return digester
        self._hashes.pop(upload_id, None)
        if size == 0 and len(self._hashes) < _HASH_CACHE_LIMIT:
            digester = Digester("sha256")
            self._hashes[upload_id] = digester
            return digester
        return None

    async def upload_truncate(self, upload_id: str, size: int) -> None:
        self._hashes.pop(upload_id, None)
        os.truncate(self._upload_path(upload_id), size)

    async def upload_commit(self, upload_id: str, digest: Digest) -> int:
        path = self._upload_path(upload_id)
        cached = self._hashes.pop(upload_id, None)
        try:
            size = await asyncio.to_thread(self._verify_and_sync, path, digest, cached)
        except VerificationError:
            await self.upload_abort(upload_id)
            raise
        target = self._blob_path(digest)
        target.parent.mkdir(exist_ok=True)
        await asyncio.to_thread(self._publish, path, target)
        return size

    @staticmethod
    def _verify_and_sync(path: Path, digest: Digest, cached: Digester | None) -> int:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if cached is not None and cached.size == size and cached.algorithm == digest.algorithm:
                actual = cached.digest()
            else:
                digester = digest.digester()
                while chunk := handle.read(_READ_CHUNK):
                    digester.update(chunk)
                actual = digester.digest()
            if actual != digest:
                raise VerificationError(f"the uploaded content has digest {actual}, not {digest}")
            os.fsync(handle.fileno())
        return size

    @staticmethod
    def _publish(staged: Path, target: Path) -> None:
        os.rename(staged, target)  # atomic: readers see no blob or the whole blob
        _fsync_dir(target.parent)

    async def upload_abort(self, upload_id: str) -> None:
        self._hashes.pop(upload_id, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._upload_path(upload_id))

    async def upload_ids(self) -> AsyncIterator[str]:
        for path in self.uploads.iterdir():
            yield path.name

    # ---------------------------------------------------------------- locking

    @asynccontextmanager
    async def _flock(self, mode: int) -> AsyncIterator[None]:
        fd = os.open(self._lock_path, os.O_RDONLY)
        try:
            await asyncio.to_thread(fcntl.flock, fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def publishing(self) -> AbstractAsyncContextManager[None]:
        return self._flock(fcntl.LOCK_SH)

    def sweeping(self) -> AbstractAsyncContextManager[None]:
        return self._flock(fcntl.LOCK_EX)


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
