"""Content digests: the grammar of image-spec descriptor.md, streaming hashing, verification.

A :class:`Digest` is a ``str`` so that it drops into JSON, SQL and URLs unchanged, while
parsing guarantees the grammar held. Checks are plain string scans, not regular
expressions over the whole value, because digests are validated on every request path.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO, Final

if TYPE_CHECKING:
    from ._openssl_sha import HashState

__all__ = [
    "REGISTERED_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "Digest",
    "DigestError",
    "Digester",
    "HashStateError",
    "ResumableDigester",
    "UnsupportedAlgorithm",
    "VerificationError",
    "digest_of",
    "is_valid_digest",
    "verify_bytes",
    "verify_stream",
]

#: Registered algorithms and the exact length of their lowercase-hex encoded part.
REGISTERED_ALGORITHMS: Final[dict[str, int]] = {"sha256": 64, "sha512": 128, "blake3": 64}
#: Algorithms this installation can compute (blake3 is recognised but has no stdlib hasher).
SUPPORTED_ALGORITHMS: Final[frozenset[str]] = frozenset({"sha256", "sha512"})

_ALGORITHM_COMPONENT_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_ALGORITHM_SEPARATORS: Final = frozenset("+._-")
_ENCODED_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789=_-")
_LOWER_HEX: Final = frozenset("0123456789abcdef")


class DigestError(ValueError):
    """A string is not a digest, or breaks the rules of its registered algorithm."""


class UnsupportedAlgorithm(DigestError):
    """A well-formed digest whose algorithm this installation cannot compute."""


class VerificationError(ValueError):
    """Content does not match the size or digest it was expected to have."""


class HashStateError(ValueError):
    """An exported hash state is malformed, or this system cannot carry hash states."""


def _algorithm_error(algorithm: str) -> str | None:
    if not algorithm:
        return "the algorithm is empty"
    previous_was_separator = True  # a component may not start or end with a separator
    for char in algorithm:
        if char in _ALGORITHM_SEPARATORS:
            if previous_was_separator:
                return f"algorithm {algorithm!r}: separators must sit between [a-z0-9]+ components"
            previous_was_separator = True
        elif char in _ALGORITHM_COMPONENT_CHARS:
            previous_was_separator = False
        else:
            return f"algorithm {algorithm!r}: character {char!r} is not in [a-z0-9+._-]"
    if previous_was_separator:
        return f"algorithm {algorithm!r}: it must not end with a separator"
    return None


def _encoded_error(algorithm: str, encoded: str) -> str | None:
    if not encoded:
        return "the encoded part is empty"
    bad = next((c for c in encoded if c not in _ENCODED_CHARS), None)
    if bad is not None:
        return f"encoded part: character {bad!r} is not in [a-zA-Z0-9=_-]"
    length = REGISTERED_ALGORITHMS.get(algorithm)
    if length is not None:
        if len(encoded) != length:
            return f"{algorithm} needs {length} lowercase hex characters, got {len(encoded)}"
        if not _LOWER_HEX.issuperset(encoded):
            return f"{algorithm} needs lowercase hex [a-f0-9]; upper case is not allowed"
    return None


def digest_error(value: str) -> str | None:
    """Why ``value`` is not a valid digest, or None when it is."""
    algorithm, sep, encoded = value.partition(":")
    if not sep:
        return "a digest is '<algorithm>:<encoded>' and this has no ':'"
    return _algorithm_error(algorithm) or _encoded_error(algorithm, encoded)


def is_valid_digest(value: object) -> bool:
    return isinstance(value, str) and digest_error(value) is None


class Digest(str):
    """A validated digest string such as ``sha256:e3b0…``."""

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if isinstance(value, Digest):
            return value
        if not isinstance(value, str):
            raise DigestError(f"a digest must be a string, not {type(value).__name__}")
        problem = digest_error(value)
        if problem is not None:
            raise DigestError(f"invalid digest {value!r}: {problem}")
        return super().__new__(cls, value)

    @property
    def algorithm(self) -> str:
        return self.partition(":")[0]

    @property
    def encoded(self) -> str:
        return self.partition(":")[2]

    @property
    def is_supported(self) -> bool:
        return self.algorithm in SUPPORTED_ALGORITHMS

    def digester(self) -> Digester:
        """A fresh digester of this digest's algorithm."""
        return Digester(self.algorithm)

    @classmethod
    def from_parts(cls, algorithm: str, encoded: str) -> Digest:
        return cls(f"{algorithm}:{encoded}")


class Digester:
    """Incremental hashing that yields a :class:`Digest`; the hash C code releases the GIL."""

    __slots__ = ("_hash", "algorithm", "size")

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in SUPPORTED_ALGORITHMS:
            problem = _algorithm_error(algorithm)
            if problem is not None:
                raise DigestError(problem)
            raise UnsupportedAlgorithm(f"digest algorithm {algorithm!r} is not supported here")
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def digest(self) -> Digest:
        return Digest(f"{self.algorithm}:{self._hash.hexdigest()}")

    def copy(self) -> Digester:
        clone = Digester.__new__(Digester)
        clone.algorithm = self.algorithm
        clone._hash = self._hash.copy()
        clone.size = self.size
        return clone


class ResumableDigester:
    """Incremental hashing whose state can be exported as bytes and restored elsewhere — in
    another process, on another replica — to go on hashing where it stopped.

    A chunked upload whose chunks land on different replicas is hashed as it arrives, and the
    closing request needs no re-read of the whole blob. Only SHA-256 and SHA-512 (OpenSSL's
    low-level contexts, :mod:`._openssl_sha`); check :meth:`supported` first. That module is
    imported here, at first use: it binds libcrypto through ctypes, which the many processes
    that never carry a hash state (every client command) need not import.
    """

    __slots__ = ("_state", "algorithm")

    def __init__(self, algorithm: str = "sha256") -> None:
        if not self.supported(algorithm):
            raise UnsupportedAlgorithm(f"no resumable {algorithm} on this system")
        from . import _openssl_sha

        self.algorithm = algorithm
        self._state: HashState = _openssl_sha.new_state(algorithm)

    @staticmethod
    def supported(algorithm: str) -> bool:
        from . import _openssl_sha

        return algorithm in SUPPORTED_ALGORITHMS and _openssl_sha.available()

    @classmethod
    def restore(cls, state: bytes) -> ResumableDigester:
        """The digester that :meth:`export` saved; :class:`HashStateError` if it is not one."""
        from . import _openssl_sha

        if not _openssl_sha.available():
            raise HashStateError("no resumable hashing on this system")
        digester = cls.__new__(cls)
        try:
            digester._state = _openssl_sha.restore_state(state)
        except _openssl_sha.StateError as exc:
            raise HashStateError(str(exc)) from None
        digester.algorithm = state.partition(b":")[0].decode()
        return digester

    @property
    def size(self) -> int:
        return self._state.size

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._state.update(chunk if isinstance(chunk, bytes) else bytes(chunk))

    def digest(self) -> Digest:
        """The digest of everything so far; the digester stays usable."""
        return Digest(f"{self.algorithm}:{self._state.hexdigest()}")

    def export(self) -> bytes:
        return self._state.export()


def digest_of(data: bytes | bytearray | memoryview | Iterable[bytes], algorithm: str = "sha256") -> Digest:
    """The digest of a byte string or of an iterable of chunks."""
    digester = Digester(algorithm)
    if isinstance(data, bytes | bytearray | memoryview):
        digester.update(data)
    else:
        for chunk in data:
            digester.update(chunk)
    return digester.digest()


def _expect_equal(actual: Digest, expected: Digest) -> None:
    if not hmac.compare_digest(actual, expected):
        raise VerificationError(f"digest mismatch: expected {expected}, got {actual}")


def verify_bytes(data: bytes, expected: str, size: int | None = None) -> None:
    """Check ``data`` against a size (first, as the spec advises) and a digest."""
    want = Digest(expected)
    if size is not None and len(data) != size:
        raise VerificationError(f"size mismatch: expected {size} bytes, got {len(data)}")
    _expect_equal(digest_of(data, want.algorithm), want)


def verify_stream(stream: BinaryIO, expected: str, size: int | None = None, chunk_size: int = 1 << 20) -> int:
    """Check a stream in constant memory; stops early once it is longer than ``size``.

    Returns the number of bytes read.
    """
    want = Digest(expected)
    digester = want.digester()
    while chunk := stream.read(chunk_size):
        digester.update(chunk)
        if size is not None and digester.size > size:
            raise VerificationError(f"size mismatch: expected {size} bytes, got more")
    if size is not None and digester.size != size:
        raise VerificationError(f"size mismatch: expected {size} bytes, got {digester.size}")
    _expect_equal(digester.digest(), want)
    return digester.size
