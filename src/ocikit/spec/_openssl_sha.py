"""SHA-256 and SHA-512 whose running state can leave the process: OpenSSL's public low-level
``SHA256_CTX``/``SHA512_CTX`` API, called through ctypes on the libcrypto that hashlib uses.

hashlib cannot export a hash's state, and the one library that tried (``rehash``) refuses
OpenSSL 3. The ``SHA*_Init/Update/Final`` functions and their context structs are part of
OpenSSL's documented API (deprecated for new code since 3.0, still exported and stable), so
the hashing itself stays OpenSSL's own code, with its CPU-specific implementations. Only the
struct layout is declared here; a self-test against hashlib at load time refuses a libcrypto
whose layout or results differ, and then no state is carried (callers fall back to hashing).

The exported state is the struct's fields, packed little-endian, so that a replica on another
architecture restores it too; a restored state is checked before OpenSSL ever sees it (the
buffered-byte count indexes the block buffer).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import struct
from pathlib import Path
from typing import Any, Final

__all__ = ["StateError", "available", "new_state", "restore_state"]


class StateError(ValueError):
    """An exported hash state is malformed or of an algorithm this module does not know."""


class _SHA256Context(ctypes.Structure):
    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("nl", ctypes.c_uint32),
        ("nh", ctypes.c_uint32),
        ("data", ctypes.c_ubyte * 64),  # SHA_LONG data[16], filled bytewise by OpenSSL
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


class _SHA512Context(ctypes.Structure):
    _fields_ = [
        ("h", ctypes.c_uint64 * 8),
        ("nl", ctypes.c_uint64),
        ("nh", ctypes.c_uint64),
        ("data", ctypes.c_ubyte * 128),  # union { SHA_LONG64 d[16]; unsigned char p[128]; }
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


class _Algorithm:
    def __init__(self, name: str, context: type[ctypes.Structure], word: str, digest_size: int) -> None:
        self.name = name
        self.context = context
        self.block = 64 if word == "I" else 128
        self.digest_size = digest_size
        self.packing = struct.Struct(f"<8{word}2{word}{self.block}sII")
        self.prefix = name.encode() + b":"
        self.init: Any = None
        self.update: Any = None
        self.final: Any = None


_ALGORITHMS: Final = {
    "sha256": _Algorithm("sha256", _SHA256Context, "I", 32),
    "sha512": _Algorithm("sha512", _SHA512Context, "Q", 64),
}


def _hashlib_libcrypto() -> str | None:
    """The libcrypto that hashlib's ``_hashlib`` extension has loaded into this process."""
    import _hashlib  # noqa: F401  (loads libcrypto if it is not loaded yet)

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return ctypes.util.find_library("crypto")
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1]
        if "/libcrypto" in path and Path(path).exists():
            return path
    return ctypes.util.find_library("crypto")


def _bind() -> bool:
    path = _hashlib_libcrypto()
    if path is None:
        return False
    try:
        library = ctypes.CDLL(path)  # CDLL releases the GIL during each call
        for algorithm in _ALGORITHMS.values():
            prefix = algorithm.name.upper()
            pointer = ctypes.POINTER(algorithm.context)
            algorithm.init = library[f"{prefix}_Init"]
            algorithm.init.argtypes, algorithm.init.restype = [pointer], ctypes.c_int
            algorithm.update = library[f"{prefix}_Update"]
            algorithm.update.argtypes = [pointer, ctypes.c_char_p, ctypes.c_size_t]
            algorithm.update.restype = ctypes.c_int
            algorithm.final = library[f"{prefix}_Final"]
            algorithm.final.argtypes, algorithm.final.restype = [ctypes.c_char_p, pointer], ctypes.c_int
    except (OSError, AttributeError):
        return False
    return _self_test()


class HashState:
    """A running SHA-2 hash: update, export, digest (which leaves the state usable)."""

    __slots__ = ("_algorithm", "_context")

    def __init__(self, algorithm: _Algorithm, context: ctypes.Structure) -> None:
        self._algorithm = algorithm
        self._context = context

    @property
    def size(self) -> int:
        """Bytes hashed so far."""
        context = self._context
        width = 32 if self._algorithm.name == "sha256" else 64
        bits: int = (context.nh << width) | context.nl
        return bits >> 3

    def update(self, data: bytes) -> None:
        assert self._algorithm.update is not None
        self._algorithm.update(ctypes.byref(self._context), data, len(data))

    def hexdigest(self) -> str:
        algorithm = self._algorithm
        assert algorithm.final is not None
        copy = algorithm.context.from_buffer_copy(self._context)  # Final consumes its context
        out = ctypes.create_string_buffer(algorithm.digest_size)
        algorithm.final(out, ctypes.byref(copy))
        return out.raw.hex()

    def export(self) -> bytes:
        c = self._context
        fields = (*c.h, c.nl, c.nh, bytes(c.data), c.num, c.md_len)
        return self._algorithm.prefix + self._algorithm.packing.pack(*fields)


def available() -> bool:
    """Whether states can be carried on this system (libcrypto found and self-tested)."""
    return _AVAILABLE


def new_state(algorithm: str) -> HashState:
    spec = _ALGORITHMS[algorithm]
    assert spec.init is not None, "libcrypto is not available"
    context = spec.context()
    spec.init(ctypes.byref(context))
    return HashState(spec, context)


def restore_state(state: bytes) -> HashState:
    """A hash state from :meth:`HashState.export`, checked field by field."""
    name, sep, packed = state.partition(b":")
    spec = _ALGORITHMS.get(name.decode("ascii", "replace")) if sep else None
    if spec is None or len(packed) != spec.packing.size:
        raise StateError("not an exported SHA-256 or SHA-512 state")
    *h, nl, nh, data, num, md_len = spec.packing.unpack(packed)
    width = 32 if spec.name == "sha256" else 64
    bits = (nh << width) | nl
    if md_len != spec.digest_size or num >= spec.block or bits % 8 or (bits >> 3) % spec.block != num:
        raise StateError("inconsistent hash state")
    context = spec.context()
    context.h[:] = h
    context.nl, context.nh, context.num, context.md_len = nl, nh, num, md_len
    ctypes.memmove(context.data, data, spec.block)
    return HashState(spec, context)


def _self_test() -> bool:
    sample = bytes(range(256)) * 9  # spans several blocks and leaves a partial one
    for name in _ALGORITHMS:
        state = new_state(name)
        state.update(sample[:100])
        state = restore_state(state.export())
        state.update(sample[100:])
        if state.hexdigest() != hashlib.new(name, sample).hexdigest() or state.size != len(sample):
            return False
    return True


_AVAILABLE: Final = _bind()
