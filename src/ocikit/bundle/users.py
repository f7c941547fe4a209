"""``Config.User`` to ``process.user``, from the image's own ``/etc/passwd`` and ``/etc/group``.

The files are parsed here, read through :func:`ocikit.bundle.rootfs.read_in_root`, never
through the host's name service: the host's users mean nothing inside the container, and
NSS modules would run code on the image's behalf. The rules are conversion.md's:

* a numeric user or group is copied verbatim; a numeric user with no passwd entry is fine,
  and gets the group of its passwd entry when it has one, else 0;
* a name must exist in the image's files, or conversion fails;
* supplementary groups (``additionalGids``) come from ``/etc/group`` only when the user is
  given by name and no group is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, TypeVar

from ..spec.numbers import decimal
from ..spec.runtime import User
from .errors import BundleError
from .rootfs import RootfsError, read_in_root

__all__ = ["GroupEntry", "PasswdEntry", "parse_group", "parse_passwd", "resolve_user"]

_MAX_ID: Final = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True, slots=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _numeric(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    value = decimal(text)
    if value is None or value > _MAX_ID:
        raise BundleError(f"id {text[:24]} is out of range (at most {_MAX_ID})")
    return value


def _records(raw: bytes, fields: int) -> Iterator[list[str]]:
    """The well-formed lines; comments, NIS ``+``/``-`` entries and garbage are skipped."""
    for line in raw.decode("utf-8", "surrogateescape").splitlines():
        if not line or line.startswith(("#", "+", "-")):
            continue
        parts = line.split(":")
        if len(parts) >= fields and parts[0]:
            yield parts


def parse_passwd(raw: bytes) -> list[PasswdEntry]:
    entries = []
    for parts in _records(raw, 7):
        try:
            uid, gid = _numeric(parts[2]), _numeric(parts[3])
        except BundleError:
            continue
        if uid is not None and gid is not None:
            entries.append(PasswdEntry(parts[0], uid, gid, parts[5]))
    return entries


def parse_group(raw: bytes) -> list[GroupEntry]:
    entries = []
    for parts in _records(raw, 4):
        try:
            gid = _numeric(parts[2])
        except BundleError:
            continue
        if gid is not None:
            members = tuple(m for m in parts[3].split(",") if m)
            entries.append(GroupEntry(parts[0], gid, members))
    return entries


class _Files:
    """The rootfs's passwd and group files, read when first needed."""

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._passwd: list[PasswdEntry] | None = None
        self._group: list[GroupEntry] | None = None

    def _read(self, path: str) -> bytes | None:
        try:
            return read_in_root(self._root_fd, path)
        except (RootfsError, OSError) as exc:
            raise BundleError(f"cannot read {path} of the image: {exc.strerror or exc}") from None

    def passwd(self) -> list[PasswdEntry] | None:
        if self._passwd is None:
            raw = self._read("/etc/passwd")
            self._passwd = parse_passwd(raw) if raw is not None else None
        return self._passwd

    def group(self) -> list[GroupEntry] | None:
        if self._group is None:
            raw = self._read("/etc/group")
            self._group = parse_group(raw) if raw is not None else None
        return self._group


_Entry = TypeVar("_Entry", PasswdEntry, GroupEntry)


def _by_name(entries: list[_Entry] | None, name: str, what: str, path: str) -> _Entry:
    if entries is None:
        raise BundleError(f"{what} {name!r} cannot be resolved: the image has no {path}")
    found = next((entry for entry in entries if entry.name == name), None)
    if found is None:
        raise BundleError(f"{what} {name!r} does not exist in the image's {path}")
    return found


def _split(spec: str) -> tuple[str, str | None]:
    user, sep, group = spec.partition(":")
    if not user or (sep and not group) or ":" in group:
        raise BundleError(f"invalid user {spec!r}: expected user, uid, user:group or uid:gid")
    return user, group if sep else None


def resolve_user(spec: str | None, root_fd: int) -> User:
    """``process.user`` for ``Config.User`` = ``spec`` in the rootfs open at ``root_fd``.

    An absent or empty ``Config.User`` leaves the choice to the converter: root (0:0).
    """
    if not spec:
        return User(uid=0, gid=0)
    files = _Files(root_fd)
    user, group = _split(spec)
    additional: list[int] | None = None

    uid = _numeric(user)
    if uid is not None:
        entry = next((e for e in files.passwd() or [] if e.uid == uid), None)
        gid = entry.gid if entry else 0
    else:
        entry = _by_name(files.passwd(), user, "user", "/etc/passwd")
        uid, gid = entry.uid, entry.gid
        if group is None:
            additional = []
            for g in files.group() or []:
                if user in g.members and g.gid not in additional:
                    additional.append(g.gid)

    if group is not None:
        numeric_gid = _numeric(group)
        gid = (
            numeric_gid
            if numeric_gid is not None
            else _by_name(files.group(), group, "group", "/etc/group").gid
        )
    return User(uid=uid, gid=gid, additional_gids=additional or None)
