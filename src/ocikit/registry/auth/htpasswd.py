"""Users and their bcrypt password hashes, in the file Apache's ``htpasswd -B`` writes.

bcrypt is slow on purpose (tens of milliseconds), so a client that sends Basic credentials
with every request must not cost that every time: a successful check is remembered under an
HMAC of the credentials with a per-process secret, never the password itself, and only for
the file version it was checked against.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import os
import secrets
from typing import Final

import bcrypt

from ...spec.numbers import decimal
from .files import WatchedFile

__all__ = ["HtpasswdFile", "parse_htpasswd"]

_BCRYPT_PREFIXES: Final = ("$2y$", "$2b$", "$2a$")
_MAX_CACHED: Final = 10_000
#: bcrypt only reads 72 bytes; a longer password is refused rather than silently cut.
_MAX_PASSWORD_BYTES: Final = 72


def parse_htpasswd(data: bytes) -> dict[str, bytes]:
    """``user:hash`` lines; only bcrypt hashes are accepted (MD5 and SHA1 are too weak)."""
    users: dict[str, bytes] = {}
    for number, raw in enumerate(data.decode("utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise ValueError(f"line {number}: expected user:hash")
        if not hashed.startswith(_BCRYPT_PREFIXES):
            raise ValueError(f"line {number}: {user}'s hash is not bcrypt (use htpasswd -B)")
        users[user] = hashed.encode("ascii")
    return users


class HtpasswdFile:
    """Checks user names and passwords; edits to the file apply within a second."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file = WatchedFile(path, parse_htpasswd)
        self._secret = secrets.token_bytes(32)
        self._verified: dict[bytes, bytes] = {}  # HMAC of the credentials -> the hash they matched

    def _usual_cost(self) -> int:
        hashes = self._file.value.values()
        return _cost(next(iter(hashes))) if hashes else 5

    def fingerprint(self, user: str) -> str | None:
        """A digest of the user's current password hash (None: no such user), which changes
        with the password: what a refresh token is bound to. It tells nothing of the hash."""
        hashed = self._file.value.get(user)
        return None if hashed is None else hashlib.sha256(b"ocikit refresh\0" + hashed).hexdigest()[:32]

    async def check(self, user: str, password: str) -> bool:
        hashed = self._file.value.get(user)
        secret = password.encode("utf-8")
        if len(secret) > _MAX_PASSWORD_BYTES:
            return False
        key = hmac.new(self._secret, user.encode() + b"\0" + secret, hashlib.sha256).digest()
        if hashed is not None and self._verified.get(key) == hashed:
            return True  # the same credentials matched this very hash before
        # An unknown user costs a bcrypt of the same cost, so timing tells no user names.
        target = hashed if hashed is not None else _dummy_hash(self._usual_cost())
        matched = await asyncio.to_thread(bcrypt.checkpw, secret, target)
        if not matched or hashed is None:
            return False
        if len(self._verified) >= _MAX_CACHED:
            self._verified.clear()
        self._verified[key] = hashed
        return True


def _cost(hashed: bytes) -> int:
    """The work factor of a ``$2y$NN$…`` hash."""
    cost = decimal(hashed[4:6])
    return cost if cost is not None and 4 <= cost <= 31 else 5


@functools.cache
def _dummy_hash(cost: int) -> bytes:
    return bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=cost))
