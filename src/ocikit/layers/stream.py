"""A layer blob turned into verified, decompressed chunks by a reader thread.

Reading, decompressing and hashing run in their own thread while the caller writes files:
isal, zstandard and hashlib release the GIL inside their C code, so on two cores the
decompression of one chunk overlaps the extraction of the previous one. The thread hands
over large chunks (megabytes), because every hand-over costs a GIL acquisition and a busy
main thread can make each one wait for a whole switch interval.

Both digests are computed on the way: the blob's digest over the bytes as read, the diffID
over the decompressed bytes, including whatever follows the tar end-of-archive marker, since
a digest names every byte of the stream.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator
from typing import IO, BinaryIO, Final, cast

import zstandard
from isal import isal_zlib

from ..spec.digest import Digest, Digester, DigestError
from .errors import BadCompression, BadTar, LayerError, LimitExceeded
from .zstdframes import ZstdFrameWalker

__all__ = ["BlobStream", "open_blob"]

_READ_SIZE: Final = 1 << 20
_WRITE_PIECE: Final = 64 << 10
#: Chunks waiting for the writer. When the disk is the bottleneck the queue stays full, so
#: depth times the chunk size is memory held for nothing: three are enough to keep both
#: threads busy (measured by bench/create.py's peak RSS and bench/unpack.py's tmpfs time).
_QUEUE_DEPTH: Final = 3
_END: Final = b""
_GZIP_MAGIC: Final = b"\x1f\x8b"
_GZIP_ERROR: Final = cast("type[Exception]", isal_zlib.error)


class _Failure:
    """An exception raised in the reader thread, carried to the consumer."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def open_blob(blob: str | os.PathLike[str] | BinaryIO) -> tuple[BinaryIO, bool]:
    """The blob as a binary stream, and whether this code opened it (and so must close it)."""
    if isinstance(blob, str | os.PathLike):
        try:
            return open(blob, "rb", buffering=0), True
        except OSError as error:
            raise LayerError(f"cannot open the layer blob {os.fspath(blob)!r}: {error.strerror}") from None
    return blob, False


def _digester(expected: str | None, what: str) -> Digester:
    if expected is None:
        return Digester("sha256")
    try:
        return Digest(expected).digester()
    except DigestError as error:
        raise LayerError(f"the expected {what} is not usable: {error}") from None


class BlobStream:
    """Decompressed bytes of one blob, consumed by one thread with ``read``/``write_to``.

    The consumer must call :meth:`close` (also on error) so the reader thread stops.
    """

    def __init__(
        self,
        source: BinaryIO,
        compression: str,
        digest: str | None,
        diff_id: str | None,
        *,
        max_uncompressed_size: int,
        chunk_size: int,
    ) -> None:
        self._source = source
        self._compression = compression
        self._blob_hash = _digester(digest, "digest")
        # A plain tar's digest and diffID hash the same bytes: hash once when they agree.
        self._same_stream = compression == "" and (
            diff_id is None or digest is None or Digest(diff_id).algorithm == Digest(digest).algorithm
        )
        self._diff_hash = self._blob_hash if self._same_stream else _digester(diff_id, "diffID")
        self._limit = max_uncompressed_size
        self._chunk = chunk_size
        self._queue: queue.Queue[bytes | _Failure] = queue.Queue(_QUEUE_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ocikit-layer-reader", daemon=True)
        self._buffer = memoryview(b"")
        self._offset = 0
        self._finished = False
        self.position = 0  # decompressed bytes consumed so far, for error messages
        self._thread.start()

    # --- reader thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            size = 0
            for chunk in self._decompressed():
                size += len(chunk)
                if size > self._limit:
                    raise LimitExceeded(
                        f"the layer's uncompressed stream is larger than the limit of {self._limit} bytes"
                    )
                if not self._same_stream:
                    self._diff_hash.update(chunk)
                if not self._put(chunk):
                    return
            self._put(_END)
        except LayerError as error:
            self._put(_Failure(error))
        except Exception as error:  # any decoder or I/O failure becomes a clear message
            self._put(_Failure(error))

    def _put(self, item: bytes | _Failure) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> bytes:
        try:
            data = self._source.read(_READ_SIZE)
        except OSError as error:
            raise LayerError(f"cannot read the layer blob: {error}") from None
        if data:
            self._blob_hash.update(data)
        return data

    def _decompressed(self) -> Iterator[bytes]:
        if self._compression == "gzip":
            return self._gunzip()
        if self._compression == "zstd":
            return self._unzstd()
        return iter(self._read, b"")

    def _gunzip(self) -> Iterator[bytes]:
        """Gzip members one after another (a concatenation is valid gzip), output bounded."""
        decoder = None
        started = False
        while data := self._read():
            while data:
                if decoder is None:
                    if not _GZIP_MAGIC.startswith(data[:2]):
                        later = self._blob_hash.size > len(data)
                        where = "data after the last gzip member" if later else "it"
                        raise BadCompression(f"the layer blob is not valid gzip: {where} is not gzip")
                    decoder = isal_zlib.decompressobj(wbits=31)
                    started = False
                try:
                    out = decoder.decompress(data, self._chunk)
                    started = True
                    while len(out) == self._chunk:
                        yield out
                        out = decoder.decompress(decoder.unconsumed_tail, self._chunk)
                except _GZIP_ERROR as error:
                    what = "data after the last gzip member" if not started else "gzip data"
                    raise BadCompression(f"the layer blob is not valid gzip ({what}): {error}") from None
                if out:
                    yield out
                if decoder.eof:
                    data = decoder.unused_data
                    decoder = None
                else:
                    data = decoder.unconsumed_tail
        if decoder is not None and started:
            raise BadCompression("the layer blob's gzip stream is truncated (it ends inside a member)")
        if decoder is None and not started and self._blob_hash.size == 0:
            raise BadCompression("the layer blob is empty, not gzip")

    def _unzstd(self) -> Iterator[bytes]:
        """zstd frames one after another; a walker over the frame structure detects truncation,
        which zstandard's stream reader would otherwise report as a clean end."""
        walker = ZstdFrameWalker()
        stream = self

        class _Source:
            def read(self, size: int = -1) -> bytes:
                data = stream._read()
                walker.feed(data)
                return data

        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], _Source()), read_size=_READ_SIZE, read_across_frames=True
        )
        try:
            while out := reader.read(self._chunk):
                yield out
        except zstandard.ZstdError as error:
            raise BadCompression(f"the layer blob is not valid zstd: {error}") from None
        problem = walker.finish()
        if problem is not None:
            raise BadCompression(f"the layer blob is not valid zstd: {problem}")

    # --- consumer side --------------------------------------------------------------------

    def _next(self) -> bool:
        """Load the next chunk; False at the end of the stream."""
        if self._finished:
            return False
        item = self._queue.get()
        if isinstance(item, _Failure):
            self._finished = True
            error = item.error
            if isinstance(error, LayerError):
                raise error
            raise BadCompression(f"the layer blob cannot be decompressed: {error}") from None
        if not item:
            self._finished = True
            return False
        self._buffer = memoryview(item)
        self._offset = 0
        return True

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes, or fewer only at the end of the stream."""
        available = len(self._buffer) - self._offset
        if available >= size:
            start = self._offset
            self._offset += size
            self.position += size
            return self._buffer[start : start + size].tobytes()
        parts = []
        while size > 0:
            if self._offset >= len(self._buffer) and not self._next():
                break
            piece = self._buffer[self._offset : self._offset + size]
            parts.append(piece.tobytes())
            self._offset += len(piece)
            self.position += len(piece)
            size -= len(piece)
        return b"".join(parts)

    def write_to(self, fd: int, size: int) -> None:
        """Copy the next ``size`` bytes into ``fd``, in writes of at most 64 KiB: larger writes
        get large page-cache folios, whose allocation costs direct compaction on a machine
        that has run for a while (see ``store.files.pwrite_all``)."""
        while size > 0:
            if self._offset >= len(self._buffer) and not self._next():
                raise BadTar(f"the tar stream is truncated inside a file's content (at byte {self.position})")
            piece = memoryview(self._buffer)[self._offset : self._offset + min(size, _WRITE_PIECE)]
            written = os.write(fd, piece)
            self._offset += written
            self.position += written
            size -= written

    def skip(self, size: int) -> None:
        while size > 0:
            if self._offset >= len(self._buffer) and not self._next():
                raise BadTar(f"the tar stream is truncated (at byte {self.position})")
            step = min(size, len(self._buffer) - self._offset)
            self._offset += step
            self.position += step
            size -= step

    def drain(self) -> bool:
        """Consume the rest of the stream (it counts for the diffID); True when it is all zero."""
        all_zero = True
        while True:
            rest = self._buffer[self._offset :]
            if all_zero and rest and _nonzero(rest):
                all_zero = False
            self.position += len(rest)
            self._offset = len(self._buffer)
            if not self._next():
                return all_zero

    def finish(self) -> tuple[Digest, Digest, int, int]:
        """Digest, diffID, compressed and uncompressed sizes, once :meth:`drain` returned."""
        self._thread.join()
        return (
            self._blob_hash.digest(),
            self._diff_hash.digest(),
            self._blob_hash.size,
            self._diff_hash.size,
        )

    def close(self) -> None:
        """Stop the reader thread (it may be blocked handing over a chunk) and wait for it."""
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join()


def _nonzero(data: memoryview) -> bool:
    """Whether a buffer has a non-zero byte, without a Python loop over its bytes."""
    raw = data.tobytes()
    return raw.count(0) != len(raw)
