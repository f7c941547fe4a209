"""File primitives of the local stores: opening under a directory without following
symlinks, atomic replacement, an exclusive lock, kernel-side copies and blob spans.

Everything here works with directory file descriptors: a path inside a layout is resolved
one component at a time with ``O_NOFOLLOW``, so a symlink planted in a layout (an archive
nobody vetted, a shared folder) can never redirect a read or a write outside of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import mmap
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Final

import msgspec

from ..spec.digest import Digest, Digester
from .paths import data_dir

__all__ = [
    "BlobFile",
    "copy_range",
    "data_dir",
    "digest_span",
    "exclusive_lock",
    "fsync_dir",
    "open_dir",
    "open_regular",
    "pwrite_all",
    "replace_file",
    "run_to_completion",
    "write_batched",
]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK: Final = 1 << 20
#: Bytes handed to a worker thread at once by :func:`write_batched`.
_WRITE_BATCH: Final = 4 << 20
#: Chunks handed to a worker thread at once at most, however small they are.
_IOV_BATCH: Final = 512
#: The largest single write to a file: see :func:`pwrite_all`.
_WRITE_PIECE: Final = 64 << 10


class BlobFile(msgspec.Struct):
    """A blob as a span of an open file: a whole file in a layout, or a member of an archive.

    ``owned`` spans close their descriptor on :meth:`close`; spans of a shared archive
    descriptor do not.
    """

    fd: int
    offset: int
    size: int
    owned: bool = True

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BlobFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def chunks(self, start: int = 0, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """The span's bytes from ``start`` on; ``pread`` so a shared descriptor stays usable
        by concurrent readers."""
        position = start
        while position < self.size:
            chunk = os.pread(self.fd, min(chunk_size, self.size - position), self.offset + position)
            if not chunk:
                return  # the file shrank under us: the caller's size check reports it
            position += len(chunk)
            yield chunk


def open_dir(name: str, dir_fd: int | None = None, *, create: bool = False) -> int:
    """A directory fd, refusing a symlink in the last component; ``create`` makes it first."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=dir_fd)
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def open_regular(name: str, dir_fd: int) -> int:
    """An fd of a regular file directly under ``dir_fd``, never through a symlink.

    ``O_NONBLOCK`` keeps a FIFO planted in a layout from blocking the open forever; it is
    harmless for the regular files that are accepted.
    """
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{name} is not a regular file")
    return fd


def fsync_dir(dir_fd: int) -> None:
    """Make a rename in a directory durable."""
    os.fsync(dir_fd)


def replace_file(dir_fd: int, name: str, data: bytes, temp_dir_fd: int, temp_name: str) -> None:
    """Write ``data`` to ``temp_name``, fsync it and rename it over ``name``: a reader sees the
    old content or the new one, never a mix, and a crash leaves one of the two."""
    fd = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=temp_dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp_name, dir_fd=temp_dir_fd)
        raise
    os.close(fd)
    os.rename(temp_name, name, src_dir_fd=temp_dir_fd, dst_dir_fd=dir_fd)
    fsync_dir(dir_fd)


@contextlib.contextmanager
def exclusive_lock(dir_fd: int, name: str) -> Iterator[None]:
    """``flock`` on a lock file that is never replaced (locking the file being replaced would
    let a second writer lock the new inode while the first still holds the old one)."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def copy_range(source: BlobFile, target_fd: int) -> int:
    """Append the span to ``target_fd`` in the kernel (``copy_file_range``, which may reflink,
    else ``sendfile``), falling back to ``pread``/``write``. Returns the bytes copied."""
    copied = 0
    while copied < source.size:
        want = source.size - copied
        try:
            n = os.copy_file_range(source.fd, target_fd, want, source.offset + copied)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            return copied + _copy_fallback(source, target_fd, copied)
        if n == 0:
            break  # the source is shorter than announced: the caller's check reports it
        copied += n
    return copied


def _copy_fallback(source: BlobFile, target_fd: int, start: int) -> int:
    copied = 0
    try:
        while (position := start + copied) < source.size:
            n = os.sendfile(target_fd, source.fd, source.offset + position, source.size - position)
            if n == 0:
                break
            copied += n
        return copied
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
    for chunk in source.chunks(start + copied):
        view = memoryview(chunk)
        while view:
            view = view[os.write(target_fd, view) :]
        copied += len(chunk)
    return copied


#: Bytes of a file mapped at a time while hashing: the mapped pages count as the process's
#: resident memory, so mapping a whole layer blob would make hashing it cost its size.
_MAP_WINDOW: Final = 4 << 20


def digest_span(fd: int, offset: int, size: int, algorithm: str) -> Digest:
    """Hash a span of a file through ``mmap``, window by window: the hash reads the page
    cache directly, without copying the bytes into Python objects, and releases the GIL."""
    digester = Digester(algorithm)
    position, end = offset, offset + size
    while position < end:
        start = position - position % mmap.ALLOCATIONGRANULARITY
        length = min(end, start + _MAP_WINDOW) - start
        with mmap.mmap(fd, length, prot=mmap.PROT_READ, offset=start) as mapped:
            view = memoryview(mapped)
            try:
                digester.update(view[position - start :])
            finally:
                view.release()
        position = start + length
    return digester.digest()


def pwrite_all(fd: int, chunks: Sequence[bytes], position: int) -> int:
    """Write ``chunks`` at ``position``, in calls of at most :data:`_WRITE_PIECE` bytes; the
    number of bytes written.

    Why small calls rather than one ``pwritev`` per batch: for a write of more than 64 KiB
    Linux (6.x, ext4 and others with large folios) backs the page cache with large folios,
    whose allocation on a long-running machine with fragmented memory costs direct
    compaction. Measured on the benchmark machine: 64 KiB writes 4-5 GB/s (0.2 s CPU/GB),
    128 KiB to 4 MiB writes 0.3-0.4 GB/s (2.2-3 s CPU/GB), see docs/benchmarks.md.
    """
    total = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            done = os.pwrite(fd, view[:_WRITE_PIECE], position + total)
            total += done
            view = view[done:]
    return total


async def write_batched(chunks: AsyncIterator[bytes], write: Callable[[list[bytes], int], None]) -> int:
    """Hand ``chunks`` to ``write(batch, offset)`` in batches of about 4 MiB, each in a worker
    thread while the next batch is received (at most two batches in memory, no bytes copied);
    ``offset`` is where the batch starts in the stream. Returns the bytes written.

    Batches are written in order, one at a time. Whatever happens, no write is still running
    when this returns or raises, so the caller may close its file at once: a write is only
    ever awaited through a shield, since a cancelled wait would mark it done while its thread
    still writes (into whatever file then reuses the descriptor).
    """
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    written = 0
    try:
        batch: list[bytes] = []
        batched = 0
        async for chunk in chunks:
            batch.append(chunk)
            batched += len(chunk)
            if batched >= _WRITE_BATCH or len(batch) >= _IOV_BATCH:
                if pending is not None:
                    await asyncio.shield(pending)
                pending = loop.run_in_executor(None, write, batch, written)
                written += batched
                batch, batched = [], 0
        if batch:
            if pending is not None:
                await asyncio.shield(pending)
            pending = loop.run_in_executor(None, write, batch, written)
            written += batched
        if pending is not None:
            await asyncio.shield(pending)
        return written
    finally:
        if pending is not None:
            await _settled(pending)


async def run_to_completion(function: Callable[[], None]) -> None:
    """``function`` in a worker thread, awaited so that a cancellation waits for it to end
    (and is re-raised then): a caller that cleans up when cancelled never races the thread."""
    future = asyncio.get_running_loop().run_in_executor(None, function)
    await _settled(future)
    future.result()


async def _settled(future: asyncio.Future[None]) -> None:
    """Wait until ``future`` is done, even through a cancellation (re-raised afterwards)."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
        except BaseException:
            break
    if cancelled:
        raise asyncio.CancelledError
