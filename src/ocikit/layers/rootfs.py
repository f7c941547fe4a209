"""The target directory as a root that nothing escapes.

Every operation of the engine is an ``*at`` call on a directory descriptor obtained here.
Paths inside the layer are resolved the way the container will see them: a symlink in a
parent component is followed, but *inside* the target (an absolute target starts at the
target, ``..`` stops at it), exactly as if the target were ``/``. The last component of a
path is never followed by the engine: it is created, replaced or changed as itself.

Two resolvers give the same answers:

* ``openat2``: the kernel does the walk with ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS``,
  atomically;
* ``walk``: one ``openat(O_PATH | O_NOFOLLOW)`` per component, reading each symlink and
  restarting at the target's descriptor for absolute ones and popping a stack of
  descriptors (never going above the root) for ``..``. Used when the kernel lacks openat2
  (Linux < 5.6, or a seccomp filter refusing it), and forceable for tests.

Resolved directories are cached by their path in the layer, because a tar stream visits one
directory's files together. The cache is dropped whenever a directory or a symlink is
removed, since either can change what a cached path resolves to; descriptors dropped while an
operation may still hold them are closed only at the end of that entry.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

from . import openat2 as _openat2
from .errors import LayerError
from .options import Resolver

__all__ = ["Root"]

_O_PATH_DIR: Final = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_RESOLVE: Final = _openat2.RESOLVE_IN_ROOT | _openat2.RESOLVE_NO_MAGICLINKS
_MAX_SYMLINKS: Final = 40  # the kernel's own limit (MAXSYMLINKS)
_CACHE_SIZE: Final = 512
FORCE_WALK_ENV: Final = "OCIKIT_LAYERS_RESOLVER"


def _choose_resolver(resolver: Resolver) -> str:
    if resolver == "auto":
        forced = os.environ.get(FORCE_WALK_ENV, "")
        if forced in ("walk", "openat2"):
            resolver = forced  # type: ignore[assignment]
    if resolver == "walk":
        return "walk"
    if _openat2.available():
        return "openat2"
    if resolver == "openat2":
        raise LayerError("the openat2 resolver was asked for but this kernel does not offer openat2")
    return "walk"


class Root:
    """An open target directory. Not thread-safe: one layer application at a time."""

    def __init__(self, path: str | os.PathLike[str], resolver: Resolver = "auto") -> None:
        self.resolver = _choose_resolver(resolver)
        try:
            self.fd = os.open(path, _O_PATH_DIR)
        except OSError as error:
            raise LayerError(
                f"cannot open the target directory {os.fspath(path)!r}: {error.strerror}"
            ) from None
        self._cache: dict[bytes, int] = {}
        self._retired: list[int] = []

    # --- resolution -------------------------------------------------------------------------

    def directory(self, parts: tuple[bytes, ...], *, create: bool) -> int:
        """An O_PATH descriptor of the directory ``parts`` (resolved in root), owned by the cache.

        With ``create`` missing components are made (mode 0755, as tar does); otherwise a
        missing or non-directory component raises :class:`FileNotFoundError` /
        :class:`NotADirectoryError`.
        """
        if not parts:
            return self.fd
        key = b"/".join(parts)
        fd = self._cache.get(key)
        if fd is not None:
            return fd
        if self.resolver == "openat2":
            try:
                fd = _openat2.openat2(self.fd, key, _O_PATH_DIR, _RESOLVE)
            except FileNotFoundError:
                if not create:
                    raise
                fd = self._walk(parts, create=True)
        else:
            fd = self._walk(parts, create=create)
        if len(self._cache) >= _CACHE_SIZE:
            self.forget()
        self._cache[key] = fd
        return fd

    def _walk(self, parts: tuple[bytes, ...], *, create: bool) -> int:
        """Resolve like RESOLVE_IN_ROOT, one component at a time, never through a symlink."""
        stack = [os.dup(self.fd)]
        pending = list(reversed(parts))
        links = 0
        try:
            while pending:
                name = pending.pop()
                if name in (b"", b"."):
                    continue
                if name == b"..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                try:
                    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(name, 0o755, dir_fd=stack[-1])
                    fd = os.open(name, _O_PATH_DIR | os.O_NOFOLLOW, dir_fd=stack[-1])
                mode = os.fstat(fd).st_mode
                if stat.S_ISLNK(mode):
                    target = os.readlink(b"", dir_fd=fd)
                    os.close(fd)
                    links += 1
                    if links > _MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), b"/".join(parts))
                    if target.startswith(b"/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                    pending.extend(reversed(target.split(b"/")))
                    continue
                if not stat.S_ISDIR(mode):
                    os.close(fd)
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), b"/".join(parts))
                stack.append(fd)
            return stack.pop()
        finally:
            for fd in stack:
                os.close(fd)

    def open_directory(self, parts: tuple[bytes, ...]) -> int:
        """A readable descriptor of the directory ``parts`` itself, refusing a symlink there."""
        if not parts:
            return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        parent = self.directory(parts[:-1], create=False)
        return os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)

    # --- cache ------------------------------------------------------------------------------

    def forget(self) -> None:
        """Drop every cached resolution (a directory or symlink is about to change)."""
        self._retired.extend(self._cache.values())
        self._cache.clear()

    def release(self) -> None:
        """Close descriptors dropped during the entry that just finished."""
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def close(self) -> None:
        self.forget()
        self.release()
        os.close(self.fd)
