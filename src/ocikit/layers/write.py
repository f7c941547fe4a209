"""Writing a layer: a deterministic tar stream, compressed and hashed once, ingested into a store.

The same entries always give the same bytes, so the same changes give the same diffID and,
with the same compressor, the same blob digest:

* **ustar headers, PAX only where ustar cannot say it**: a name or link target longer than
  its field, a number too large for its octal field, extended attributes
  (``SCHILY.xattr.NAME``, the form GNU tar, Go and umoci read). No GNU extensions.
* **Numeric owners only**: user and group names are left empty (the image-spec ignores them,
  and looking them up would make the layer depend on the host's ``/etc/passwd``).
* **The mtime to the nanosecond**: whole seconds in the ustar field, and a PAX ``mtime``
  record when the file system had a fraction (a squashed image unpacks to the same times as
  the original). atime and ctime are never recorded: they change on every read.
* **Directories end with ``/``**, hardlinks are link entries to the first name written, and
  the caller gives entries in a fixed order (:mod:`.diff` sorts them).
* **gzip without a name or time in its header** (isal writes mtime 0), zstd single-threaded.

The tar bytes are produced by the caller's thread and handed in megabyte chunks to one
compression thread that hashes them (diffID), compresses, hashes the output (digest) and
writes it to a staging file of the store: hashing and compression release the GIL, so on two
cores reading files overlaps compressing them. The staging file is renamed into the store's
blobs only when it is complete and on disk (:meth:`OCILayout.publish_staged`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import threading
from dataclasses import dataclass
from typing import Final, Protocol

import zstandard
from isal import isal_zlib

from ..spec import Descriptor
from ..spec import mediatype as mt
from ..spec.digest import Digest, Digester
from ..store.layout import OCILayout
from .errors import LayerError
from .tar import BLK, BLOCK, CHR, DIR, FIFO, LNK, REG, SYM, TarEntry

__all__ = ["LayerWriter", "WrittenLayer", "tar_header", "whiteout_entry"]

_CHUNK: Final = 1 << 20
_QUEUE_DEPTH: Final = 4
_FLAGS: Final = {REG: b"0", LNK: b"1", SYM: b"2", CHR: b"3", BLK: b"4", DIR: b"5", FIFO: b"6"}
_PAX_NAME: Final = b"././@PaxHeader"
_USTAR_MAGIC: Final = b"ustar\x0000"
_NAME_FIELD: Final = 100
#: isal's middle level: about zlib -6's ratio at several times its speed.
_GZIP_LEVEL: Final = 2
_ZSTD_LEVEL: Final = 3


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes, /) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def _compressor(compression: str) -> _Compressor:
    if compression == "gzip":
        compressor: _Compressor = isal_zlib.compressobj(_GZIP_LEVEL, isal_zlib.DEFLATED, 31)
        return compressor
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compressobj()
    return _Identity()


@dataclass(frozen=True, slots=True)
class WrittenLayer:
    """A layer now in the store: its manifest descriptor and its config diffID."""

    descriptor: Descriptor
    diff_id: Digest
    uncompressed_size: int
    entries: int


def _octal(value: int, width: int) -> bytes | None:
    """``value`` as a NUL-terminated octal field, or None when it does not fit."""
    if value < 0 or value >= 8 ** (width - 1):
        return None
    return b"%0*o\x00" % (width - 1, value)


def _pax_record(key: bytes, value: bytes) -> bytes:
    """``"<length> key=value\\n"`` where the length counts its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + len(str(len(body)))
    if len(str(length)) != len(str(len(body))):
        length += 1
    return b"%d" % length + body


def _pax_time(nanoseconds: int) -> bytes:
    """``seconds[.fraction]`` with the fraction's trailing zeros dropped, as PAX writes it."""
    sign = b"-" if nanoseconds < 0 else b""
    whole, fraction = divmod(abs(nanoseconds), 1_000_000_000)
    text = b"%d" % whole
    if fraction:
        text += (b".%09d" % fraction).rstrip(b"0")
    return sign + text


def _ustar(name: bytes, flag: bytes, entry: TarEntry, size: int, mtime: int, link: bytes) -> bytes:
    header = bytearray(BLOCK)
    header[0 : len(name)] = name
    header[100:108] = _octal(entry.mode & 0o7777, 8) or b"0000000\x00"
    header[108:116] = _octal(entry.uid, 8) or b"0000000\x00"
    header[116:124] = _octal(entry.gid, 8) or b"0000000\x00"
    header[124:136] = _octal(size, 12) or b"00000000000\x00"
    header[136:148] = _octal(mtime, 12) or b"00000000000\x00"
    header[148:156] = b" " * 8
    header[156:157] = flag
    header[157 : 157 + len(link)] = link
    header[257:265] = _USTAR_MAGIC
    if entry.kind in (CHR, BLK):
        header[329:337] = _octal(entry.devmajor, 8) or b"0000000\x00"
        header[337:345] = _octal(entry.devminor, 8) or b"0000000\x00"
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def tar_header(entry: TarEntry) -> bytes:
    """The header block(s) of ``entry``: a PAX header first when ustar cannot hold it all.

    ``entry.name`` is the path inside the layer (a directory's without its trailing ``/``,
    which is added here); ``size`` counts only for regular files.
    """
    name = (
        entry.name + b"/"
        if entry.kind == DIR and entry.name and not entry.name.endswith(b"/")
        else entry.name
    )
    link = entry.linkname if entry.kind in (LNK, SYM) else b""
    size = entry.size if entry.kind == REG else 0
    mtime = max(entry.mtime_ns, 0) // 1_000_000_000
    records: list[bytes] = []
    if len(name) > _NAME_FIELD:
        records.append(_pax_record(b"path", name))
    if len(link) > _NAME_FIELD:
        records.append(_pax_record(b"linkpath", link))
    for owner, value in ((b"uid", entry.uid), (b"gid", entry.gid)):
        if _octal(value, 8) is None:
            records.append(_pax_record(owner, b"%d" % value))
    if _octal(size, 12) is None:
        records.append(_pax_record(b"size", b"%d" % size))
    if _octal(mtime, 12) is None or entry.mtime_ns % 1_000_000_000:
        records.append(_pax_record(b"mtime", _pax_time(entry.mtime_ns)))
    for key, data in sorted((entry.xattrs or {}).items()):
        records.append(_pax_record(b"SCHILY.xattr." + key, data))
    main = _ustar(name[:_NAME_FIELD], _FLAGS[entry.kind], entry, size, mtime, link[:_NAME_FIELD])
    if not records:
        return main
    body = b"".join(records)
    pax = TarEntry(_PAX_NAME, REG, 0o644, 0, 0, len(body), 0, 0, b"", 0, 0, None)
    return _ustar(_PAX_NAME, b"x", pax, len(body), 0, b"") + body + _padding(len(body)) + main


def whiteout_entry(path: bytes) -> TarEntry:
    """The empty file that marks a deletion (``.wh.NAME``) or an opaque directory; its
    attributes carry no meaning, so they are fixed."""
    return TarEntry(path, REG, 0, 0, 0, 0, 0, 0, b"", 0, 0, None)


class LayerWriter:
    """Entries in, one layer blob in the store out. Use as a context manager (an exception
    removes the staging file) and call :meth:`finish` to publish the blob.

    ``media_type`` decides the compression (tar, tar+gzip or tar+zstd, OCI or Docker).
    """

    def __init__(self, layout: OCILayout, media_type: str = mt.OCI_LAYER_GZIP) -> None:
        compression = mt.layer_compression(media_type)
        if compression is None:
            raise LayerError(f"{media_type!r} is not a layer media type")
        self.media_type = media_type
        self._layout = layout
        self._compressor = _compressor(compression)
        self._diff = Digester("sha256")
        self._blob = Digester("sha256")
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(_QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._entries = 0
        self._incoming = layout.incoming_dir()
        self._name = f"layer.{os.getpid()}.{secrets.token_hex(8)}.tmp"
        try:
            self._fd = os.open(
                self._name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=self._incoming
            )
        except BaseException:
            os.close(self._incoming)
            raise
        self._thread = threading.Thread(target=self._run, name="ocikit-layer-writer", daemon=True)
        self._thread.start()
        self._closed = False
        self._published = False

    # --- the compression thread ---------------------------------------------------------

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so the producer never blocks on a full queue
            try:
                self._diff.update(chunk)
                self._write(self._compressor.compress(chunk))
            except BaseException as error:  # reported to the producer at its next call
                self._error = error
        if self._error is None:
            try:
                self._write(self._compressor.flush())
            except BaseException as error:
                self._error = error

    def _write(self, data: bytes) -> None:
        if not data:
            return
        self._blob.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    # --- the producer side ------------------------------------------------------------------

    def _emit(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._error is not None:
            raise LayerError(f"cannot write the layer: {self._error}")
        if self._pending:
            self._queue.put(b"".join(self._pending))
            self._pending, self._pending_size = [], 0

    def add(self, entry: TarEntry, content: int | None = None) -> None:
        """Append ``entry``; a regular file's ``entry.size`` bytes are read from the open
        descriptor ``content``. A file that is shorter or longer than its size was changed while
        it was read, and the layer would not say what the file is: refused."""
        self._entries += 1
        self._emit(tar_header(entry))
        if entry.kind != REG or entry.size == 0:
            return
        if content is None:
            raise LayerError(f"{entry.name!r}: no content given for a file of {entry.size} bytes")
        left = entry.size
        while left:
            chunk = os.read(content, min(left, _CHUNK))
            if not chunk:
                raise LayerError(
                    f"{entry.name!r} became shorter while it was read; retry with the container stopped"
                )
            left -= len(chunk)
            self._emit(chunk)
        if os.read(content, 1):
            raise LayerError(
                f"{entry.name!r} became longer while it was read; retry with the container stopped"
            )
        self._emit(_padding(entry.size))

    def finish(self) -> WrittenLayer:
        """End the archive, wait for the compressor, and publish the blob into the store."""
        self._emit(bytes(2 * BLOCK))
        self._flush()
        self._stop()
        if self._error is not None:
            raise LayerError(f"cannot write the layer: {self._error}")
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        digest = self._blob.digest()
        self._layout.publish_staged(self._incoming, self._name, digest)
        self._published = True
        self._close_incoming()
        descriptor = Descriptor(media_type=self.media_type, digest=digest, size=self._blob.size)
        return WrittenLayer(descriptor, self._diff.digest(), self._diff.size, self._entries)

    def _stop(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _close_incoming(self) -> None:
        if self._incoming >= 0:
            os.close(self._incoming)
            self._incoming = -1

    def abort(self) -> None:
        """Drop everything written so far (called on any failure)."""
        self._pending = []
        self._stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not self._published and self._incoming >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self._name, dir_fd=self._incoming)
        self._close_incoming()

    def __enter__(self) -> LayerWriter:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None or self._incoming >= 0:
            self.abort()
