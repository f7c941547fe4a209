"""A configuration file re-read when it changes on disk, without a restart.

Checking costs one ``stat`` at most once per second per file, so a request never pays for
more than a dictionary lookup; a change is recognised by inode, size and modification time,
which also catches an editor's write-to-temporary-then-rename.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Generic, TypeVar

__all__ = ["WatchedFile"]

T = TypeVar("T")
log = logging.getLogger("ocikit.registry.auth")

_CHECK_EVERY: Final = 1.0


class WatchedFile(Generic[T]):
    """The parsed content of ``path``; a file that turns invalid keeps the last good content
    (logged), so a typo in a live policy never opens or closes the whole registry."""

    def __init__(self, path: str | os.PathLike[str], parse: Callable[[bytes], T]) -> None:
        self.path = Path(path)
        self._parse = parse
        self._identity = self._stat()
        self._value = parse(self.path.read_bytes())  # the first read must succeed
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_ino, info.st_size, info.st_mtime_ns

    @property
    def value(self) -> T:
        now = time.monotonic()
        if now - self._checked >= _CHECK_EVERY:
            self._checked = now
            self._reload()
        return self._value

    def _reload(self) -> None:
        identity = self._stat()
        if identity is None or identity == self._identity:
            return
        try:
            value = self._parse(self.path.read_bytes())
        except (OSError, ValueError) as exc:
            log.error("keeping the previous %s: %s", self.path, exc)
            return
        self._identity, self._value = identity, value
        log.info("reloaded %s", self.path)
