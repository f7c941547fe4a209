"""A streaming tar reader: ustar, GNU (long names and links, base-256 numbers) and PAX.

Written here rather than taken from :mod:`tarfile` for three reasons: names stay ``bytes``
end to end (a layer may hold names that are not UTF-8 and they must land as they are), every
size is checked against a limit *before* it is read (long names, PAX headers), and content is
never buffered: the caller copies it straight from the decompressed chunks into the file.

Formats that layers never need and that would complicate safety are refused with
:class:`BadTar`: sparse files, multi-volume archives, old GNU long-name (``N``) entries.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from dataclasses import dataclass
from typing import Final

from ..spec.numbers import decimal
from .errors import BadTar, LimitExceeded
from .stream import BlobStream

__all__ = ["BLK", "BLOCK", "CHR", "DIR", "FIFO", "LNK", "REG", "SYM", "TarEntry", "TarReader"]

BLOCK: Final = 512
REG: Final = 0
LNK: Final = 1
SYM: Final = 2
CHR: Final = 3
BLK: Final = 4
DIR: Final = 5
FIFO: Final = 6

_TYPES: Final = {
    b"0": REG,
    b"\x00": REG,
    b"7": REG,  # contiguous file: a regular file everywhere but on one 1980s system
    b"1": LNK,
    b"2": SYM,
    b"3": CHR,
    b"4": BLK,
    b"5": DIR,
    b"D": DIR,  # GNU dump directory: its content (a listing) is skipped
    b"6": FIFO,
}
_REFUSED: Final = {
    b"S": "GNU sparse files are not supported (the image-spec says layers should not use them)",
    b"M": "multi-volume archives are not supported",
    b"N": "old GNU long-name entries are not supported",
}
_POSIX_MAGIC: Final = b"ustar\x00"
_ZERO_BLOCK: Final = bytes(BLOCK)
#: Real writers put at most a PAX header, a GNU long name and a GNU long link before an entry.
_MAX_EXTENSION_HEADERS: Final = 8


@dataclass(slots=True)
class TarEntry:
    """One member, with extension headers already folded in. Times are in nanoseconds."""

    name: bytes
    kind: int
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: dict[bytes, bytes] | None


def _number(field: bytes, what: str) -> int:
    """An octal ASCII number, or GNU base-256 when the high bit of the first byte is set."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:  # negative two's complement
            value -= 1 << (8 * len(field) - 1)
        return value
    digits = field.split(b"\x00", 1)[0].strip(b" ")
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        raise BadTar(f"a tar header has an invalid {what} field {field!r}") from None


def _check_id(value: int, what: str, name: bytes) -> int:
    """Owners and device numbers are unsigned 32-bit on Linux (and 2**32-1 means "no change"
    to chown): anything else, such as a negative base-256 value, is a corrupt or hostile header."""
    if not 0 <= value < 0xFFFFFFFF:
        raise BadTar(f"the entry {name!r} has an impossible {what} {value}")
    return value


def _cstring(field: bytes) -> bytes:
    return field.split(b"\x00", 1)[0]


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    if stored == unsigned:
        return True
    # Some old writers summed signed chars.
    signed = unsigned - 256 * sum(1 for byte in block if byte & 0x80)
    signed += 256 * sum(1 for byte in block[148:156] if byte & 0x80)
    return stored == signed


def _pax_time(value: bytes) -> int:
    """A PAX decimal time such as ``1700000000.123456789`` in integer nanoseconds."""
    text = value.decode("ascii", "replace")
    negative = text.startswith("-")
    whole, _, fraction = text.lstrip("-").partition(".")
    seconds, part = decimal(whole), decimal((fraction + "000000000")[:9])
    if seconds is None or part is None or (fraction and not fraction.isdigit()):
        raise BadTar(f"a PAX header has an invalid time {value!r}")
    nanoseconds = seconds * 1_000_000_000 + part
    return -nanoseconds if negative else nanoseconds


def _pax_int(value: bytes, key: bytes) -> int:
    number = decimal(value)
    if number is None:
        raise BadTar(f"a PAX header has an invalid {key.decode()} {value!r}")
    return number


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """PAX records ``"<length> <key>=<value>\\n"``; values are kept as bytes (xattrs are binary)."""
    records: dict[bytes, bytes] = {}
    position = 0
    while position < len(data):
        if not data[position:].strip(b"\x00"):
            break  # some writers pad the header's content with NULs
        space = data.find(b" ", position, position + 24)
        length = decimal(data[position:space]) if space > position else None
        if length is None:
            raise BadTar("a PAX extended header has a record without a valid length")
        end = position + length
        if end > len(data) or end <= space + 1 or data[end - 1 : end] != b"\n":
            raise BadTar("a PAX extended header has a record whose length does not fit")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals or not key:
            raise BadTar("a PAX extended header has a record without 'key=value'")
        records[key] = value
        position = end
    return records


class TarReader:
    """Yields :class:`TarEntry` values from a :class:`BlobStream`.

    After :meth:`next` returns an entry the caller may copy its content with
    :meth:`write_content`; whatever it leaves unread is skipped by the following :meth:`next`.
    """

    def __init__(self, stream: BlobStream, *, max_name_length: int, max_pax_header: int) -> None:
        self._stream = stream
        self._max_name = max_name_length
        self._max_pax = max_pax_header
        self._global: dict[bytes, bytes] = {}
        self._unread = 0  # content bytes of the current entry not yet consumed
        self._padding = 0
        #: True when the archive ended without its end-of-archive zero block.
        self.missing_end_marker = False

    def write_content(self, fd: int, size: int) -> None:
        self._stream.write_to(fd, size)
        self._unread -= size

    def _skip_rest(self) -> None:
        """Skip what the caller left of the entry's content, then its padding.

        A stream that ends exactly where the padding would start is accepted (as a missing
        end marker): umoci 0.4 writes such layers, and Go's archive/tar reads them.
        """
        self._stream.skip(self._unread)
        if self._padding:
            got = len(self._stream.read(self._padding))
            if got and got != self._padding:
                raise BadTar(f"the tar stream is truncated inside padding (at byte {self._stream.position})")
        self._unread = self._padding = 0

    def _read_block(self) -> bytes | None:
        block = self._stream.read(BLOCK)
        if not block:
            return None
        if len(block) != BLOCK:
            raise BadTar(f"the tar stream is truncated inside a header (at byte {self._stream.position})")
        return block

    def _read_extension(self, size: int, limit: int, what: str) -> bytes:
        if size > limit:
            raise LimitExceeded(f"a tar {what} of {size} bytes is longer than the limit of {limit} bytes")
        data = self._stream.read(size)
        if len(data) != size:
            raise BadTar(f"the tar stream is truncated inside a {what}")
        self._stream.skip(-size % BLOCK)
        return data

    def next(self) -> TarEntry | None:
        """The next entry, or None at the end of the archive."""
        self._skip_rest()
        local: dict[bytes, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        for _ in range(_MAX_EXTENSION_HEADERS + 1):
            block = self._read_block()
            if block is None:
                self.missing_end_marker = True
                if local or long_name is not None or long_link is not None:
                    raise BadTar("the tar stream ends after an extension header, without its entry")
                return None
            if block == _ZERO_BLOCK:
                return None
            if not _checksum_ok(block):
                raise BadTar(
                    f"a tar header has a wrong checksum (at byte {self._stream.position - BLOCK}): "
                    "this is not a tar stream, or it is corrupt"
                )
            flag = block[156:157]
            size = _number(block[124:136], "size")
            if size < 0:
                raise BadTar("a tar header has a negative size")
            if flag == b"x":
                local.update(parse_pax(self._read_extension(size, self._max_pax, "PAX extended header")))
            elif flag == b"g":
                self._global.update(parse_pax(self._read_extension(size, self._max_pax, "PAX global header")))
            elif flag == b"L":
                long_name = _cstring(self._read_extension(size, self._max_name + 1, "GNU long name"))
            elif flag == b"K":
                long_link = _cstring(self._read_extension(size, self._max_name + 1, "GNU long link name"))
            elif flag == b"V":
                self._stream.skip(size + (-size % BLOCK))  # a volume label names nothing on disk
            else:
                return self._entry(block, flag, size, local, long_name, long_link)
        raise BadTar(f"more than {_MAX_EXTENSION_HEADERS} extension headers in a row")

    def _entry(
        self,
        block: bytes,
        flag: bytes,
        size: int,
        local: dict[bytes, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
    ) -> TarEntry:
        kind = _TYPES.get(flag)
        if kind is None:
            reason = _REFUSED.get(flag, f"unknown tar entry type {flag!r}")
            raise BadTar(f"{reason} (entry {_cstring(block[0:100])!r})")
        pax = {**self._global, **local} if self._global else local
        name = _cstring(block[0:100])
        if block[257:263] == _POSIX_MAGIC:
            prefix = _cstring(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        if long_name is not None:
            name = long_name
        linkname = long_link if long_link is not None else _cstring(block[157:257])
        mtime_ns = _number(block[136:148], "mtime") * 1_000_000_000
        uid = _number(block[108:116], "uid")
        gid = _number(block[116:124], "gid")
        xattrs: dict[bytes, bytes] | None = None
        atime_ns = mtime_ns
        if pax:
            for key, value in pax.items():
                if key == b"path":
                    name = value or name
                elif key == b"linkpath":
                    linkname = value or linkname
                elif key == b"size" and value:
                    size = _pax_int(value, key)
                elif key == b"uid" and value:
                    uid = _pax_int(value, key)
                elif key == b"gid" and value:
                    gid = _pax_int(value, key)
                elif key == b"mtime" and value:
                    mtime_ns = _pax_time(value)
                elif key == b"atime" and value:
                    atime_ns = _pax_time(value)
                elif key.startswith(b"SCHILY.xattr."):
                    xattrs = xattrs or {}
                    xattrs[key[13:]] = value
                elif key.startswith(b"LIBARCHIVE.xattr."):
                    xattrs = xattrs or {}
                    xattrs[_libarchive_xattr_name(key[17:])] = _libarchive_xattr_value(value)
                elif key.startswith(b"GNU.sparse."):
                    raise BadTar(f"GNU sparse files are not supported (entry {name!r})")
            if b"atime" not in pax:
                atime_ns = mtime_ns
        if len(name) > self._max_name:
            raise LimitExceeded(
                f"an entry name of {len(name)} bytes is longer than the limit of {self._max_name} bytes"
            )
        if len(linkname) > self._max_name:
            raise LimitExceeded(
                f"a link target of {len(linkname)} bytes is longer than the limit of {self._max_name} bytes"
            )
        if kind == REG and flag == b"\x00" and name.endswith(b"/"):
            kind = DIR  # pre-POSIX archives marked directories only by the trailing slash
        for what, number in (("uid", uid), ("gid", gid)):
            _check_id(number, what, name)
        content = size if kind == REG else 0
        # Links, directories and devices have no content, whatever the size field says;
        # only regular files (and GNU dump directories, skipped) carry data blocks.
        carried = size if kind == REG or flag == b"D" else 0
        self._unread = carried
        self._padding = -carried % BLOCK
        return TarEntry(
            name=name,
            kind=kind,
            mode=_number(block[100:108], "mode") & 0o7777,
            uid=uid,
            gid=gid,
            size=content,
            mtime_ns=mtime_ns,
            atime_ns=atime_ns,
            linkname=linkname,
            devmajor=_check_id(_number(block[329:337], "devmajor"), "devmajor", name)
            if kind in (CHR, BLK)
            else 0,
            devminor=_check_id(_number(block[337:345], "devminor"), "devminor", name)
            if kind in (CHR, BLK)
            else 0,
            xattrs=xattrs,
        )


def _libarchive_xattr_name(encoded: bytes) -> bytes:
    return urllib.parse.unquote_to_bytes(encoded)


def _libarchive_xattr_value(encoded: bytes) -> bytes:
    try:
        return base64.b64decode(encoded + b"=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadTar("a LIBARCHIVE.xattr value is not base64") from None
