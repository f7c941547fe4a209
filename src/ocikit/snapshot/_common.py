"""What every snapshotter backend shares: metadata, locking, directory lifecycle, recovery.

State lives under the backend's root::

    metadata.db       SQLite (WAL): one row per snapshot - key, kind, parent, labels, times
    lock              flock: shared by every operation, exclusive for crash clean-up
    snapshots/<id>/   the data of snapshot <id> (backend-specific inside)
    tmp/              snapshots being prepared
    trash/            snapshots being deleted

Why SQLite and not one JSON file per snapshot: a commit renames a key, and a removal must
check "no children" and delete in one step; a transaction makes each of these atomic across
processes, where JSON files would need a hand-made lock-and-journal protocol.

Directories are named by a row id that SQLite never reuses (AUTOINCREMENT), never by the
key, so keys are opaque strings and a crashed operation can only leave a directory that no
row names. The ordering makes that the *only* residue of a crash:

* prepare fills ``tmp/…``, then in one transaction inserts the row and renames the
  directory to ``snapshots/<id>``: before the commit the directory is an orphan;
* remove deletes the row first, then moves the directory to ``trash/`` and deletes it.

``cleanup`` (run on open when no other process is using the store, and on demand) deletes
``tmp/*``, ``trash/*`` and every ``snapshots/<id>`` without a row. Every other operation
holds the lock shared, so clean-up never races a prepare in flight.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from .base import (
    AlreadyExistsError,
    HasChildrenError,
    Info,
    InvalidStateError,
    Kind,
    Mount,
    NotFoundError,
    SnapshotError,
    Usage,
)
from .mounting import mounted_sources
from .trees import disk_usage, fsync_dir, remove_tree

__all__ = ["Front", "Record", "SnapshotterBase", "check_committable", "check_mountable", "check_parent"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('active', 'committed', 'view')),
    parent INTEGER REFERENCES snapshots(id),
    labels TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""

_MAX_KEY = 4096


@dataclass(frozen=True, slots=True)
class Record:
    """A row of the metadata plus where its data lives."""

    id: int
    key: str
    kind: Kind
    parent: int | None
    labels: dict[str, str]
    created: str
    updated: str
    path: Path


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_key(key: object, what: str = "key") -> str:
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY or "\0" in key:
        raise SnapshotError(
            f"invalid snapshot {what} {key!r}: a non-empty string without NUL, at most {_MAX_KEY}"
        )
    return key


def _check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    result = dict(labels or {})
    for name, value in result.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise SnapshotError(f"snapshot labels must map strings to strings, got {name!r}: {value!r}")
    return result


def check_parent(key: str, kind: Kind) -> None:
    """The rules of which kind may do what, worded the same on every backend."""
    if kind is not Kind.COMMITTED:
        raise InvalidStateError(f"parent {key!r} is {kind.value}; only committed snapshots can be parents")


def check_committable(key: str, kind: Kind) -> None:
    if kind is not Kind.ACTIVE:
        raise InvalidStateError(f"snapshot {key!r} is {kind.value}; only active snapshots can be committed")


def check_mountable(key: str, kind: Kind) -> None:
    if kind is Kind.COMMITTED:
        raise InvalidStateError(f"snapshot {key!r} is committed; mount it through a view or an active child")


class Front(abc.ABC):
    """What every backend's class shares whatever keeps its state: ``prepare`` and ``view``
    are one creation with two kinds, and a snapshotter closes as a context manager."""

    @abc.abstractmethod
    def _create(
        self, kind: Kind, key: str, parent: str | None, labels: Mapping[str, str] | None
    ) -> list[Mount]:
        """Make a snapshot of ``kind`` (active or view) over the committed ``parent``."""

    def prepare(
        self, key: str, parent: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(
        self, key: str, parent: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the snapshotter holds open (database, lock)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SnapshotterBase(Front):
    """The shared machinery; a backend says how to fill a new snapshot and how to mount it."""

    name = ""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self._check_root(self.root)
        for sub in ("", "snapshots", "tmp", "trash"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self._db = sqlite3.connect(self.root / "metadata.db", timeout=120, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 120000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            with self._locked(fcntl.LOCK_SH), self._transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
        except BaseException:
            os.close(self._lock_fd)
            raise
        if self._try_exclusive():
            try:
                self._cleanup_locked()
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -------------------------------------------------------------- hooks for backends

    def _check_root(self, root: Path) -> None:
        """Refuse a root the backend cannot work in (called before anything is created)."""

    @abc.abstractmethod
    def _populate(self, kind: Kind, target: Path, chain: list[Record]) -> None:
        """Fill the new snapshot directory ``target``; ``chain`` is the parent first, then its parents."""

    @abc.abstractmethod
    def _mounts(self, record: Record, chain: list[Record]) -> list[Mount]:
        """The mounts that show the snapshot ``record`` over its ``chain``."""

    def _data_dir(self, record: Record) -> Path:
        """The directory whose size is the snapshot's own usage."""
        return record.path / "fs"

    def _before_commit(self, record: Record) -> None:
        """Make the active snapshot's data durable before it is recorded as committed."""

    # -------------------------------------------------------------- locking & transactions

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[None]:
        fcntl.flock(self._lock_fd, how)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _try_exclusive(self) -> bool:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: writers queue up front instead of failing on lock upgrade."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -------------------------------------------------------------- reading metadata

    def _record(self, row: tuple[int, str, str, int | None, str, str, str]) -> Record:
        id_, key, kind, parent, labels, created, updated = row
        return Record(
            id_,
            key,
            Kind(kind),
            parent,
            json.loads(labels),
            created,
            updated,
            self.root / "snapshots" / str(id_),
        )

    _COLUMNS = "id, key, kind, parent, labels, created, updated"

    def _get(self, key: str) -> Record:
        row = self._db.execute(f"SELECT {self._COLUMNS} FROM snapshots WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise NotFoundError(f"no snapshot {key!r}")
        return self._record(row)

    def _get_id(self, id_: int) -> Record:
        row = self._db.execute(f"SELECT {self._COLUMNS} FROM snapshots WHERE id = ?", (id_,)).fetchone()
        if row is None:
            raise SnapshotError(f"snapshot metadata is inconsistent: parent #{id_} is missing")
        return self._record(row)

    def _chain(self, record: Record | None) -> list[Record]:
        chain = []
        while record is not None:
            chain.append(record)
            record = self._get_id(record.parent) if record.parent is not None else None
        return chain

    def _info(self, record: Record) -> Info:
        parent = self._get_id(record.parent).key if record.parent is not None else None
        return Info(record.key, record.kind, parent, dict(record.labels), record.created, record.updated)

    # -------------------------------------------------------------- the Snapshotter API

    def _parent_for(self, key: str, parent: str | None) -> Record | None:
        with contextlib.suppress(NotFoundError):
            self._get(key)
            raise AlreadyExistsError(f"snapshot {key!r} already exists")
        if parent is None:
            return None
        record = self._get(_check_key(parent, "parent"))
        check_parent(parent, record.kind)
        return record

    def _create(
        self, kind: Kind, key: str, parent: str | None, labels: Mapping[str, str] | None
    ) -> list[Mount]:
        _check_key(key)
        label_map = _check_labels(labels)
        with self._locked(fcntl.LOCK_SH), contextlib.ExitStack() as stack:
            chain = self._chain(self._parent_for(key, parent))
            if chain:
                stack.enter_context(self._pinned(chain[0]))
            tmp = self.root / "tmp" / uuid.uuid4().hex
            tmp.mkdir(mode=0o700)
            try:
                self._populate(kind, tmp, chain)
                now = _now()
                with self._transaction() as db:
                    # Checked again: another process may have raced us while we populated.
                    parent_record = self._parent_for(key, parent)
                    cursor = db.execute(
                        "INSERT INTO snapshots (key, kind, parent, labels, created, updated)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            key,
                            kind.value,
                            parent_record.id if parent_record else None,
                            json.dumps(label_map),
                            now,
                            now,
                        ),
                    )
                    assert cursor.lastrowid is not None
                    final = self.root / "snapshots" / str(cursor.lastrowid)
                    os.rename(tmp, final)
                    try:
                        fsync_dir(self.root / "snapshots")
                    except BaseException:
                        os.rename(final, tmp)
                        raise
            except BaseException:
                remove_tree(tmp)
                raise
            record = self._get(key)
            return self._mounts(record, chain)

    @contextlib.contextmanager
    def _pinned(self, record: Record) -> Iterator[None]:
        """Keep ``record`` from being removed while a child is made from it: a shared flock
        on its directory, which :meth:`remove` must get exclusively."""
        try:
            fd = os.open(record.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"snapshot {record.key!r} was removed meanwhile") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if self._db.execute("SELECT 1 FROM snapshots WHERE id = ?", (record.id,)).fetchone() is None:
                raise NotFoundError(f"snapshot {record.key!r} was removed meanwhile")
            yield
        finally:
            os.close(fd)

    def commit(self, name: str, key: str, *, labels: Mapping[str, str] | None = None) -> Info:
        _check_key(name, "name")
        label_map = _check_labels(labels)
        with self._locked(fcntl.LOCK_SH):
            record = self._get(_check_key(key))
            check_committable(key, record.kind)
            self._before_commit(record)
            with self._transaction() as db:
                if name != key and db.execute("SELECT 1 FROM snapshots WHERE key = ?", (name,)).fetchone():
                    raise AlreadyExistsError(f"snapshot {name!r} already exists")
                changed = db.execute(
                    "UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, updated = ? "
                    "WHERE id = ? AND kind = 'active'",
                    (name, json.dumps({**record.labels, **label_map}), _now(), record.id),
                ).rowcount
                if changed != 1:
                    raise NotFoundError(f"snapshot {key!r} was removed or committed meanwhile")
            return self._info(self._get(name))

    def remove(self, key: str) -> None:
        with self._locked(fcntl.LOCK_SH):
            record = self._get(_check_key(key))
            users = mounted_sources(record.path) if record.path.exists() else []
            if users:
                raise SnapshotError(
                    f"snapshot {key!r} is in use: mounted at {', '.join(users)}; unmount it first"
                )
            stack = contextlib.ExitStack()
            with stack:
                self._claim_for_removal(stack, record)
                self._remove_claimed(record)

    def _claim_for_removal(self, stack: contextlib.ExitStack, record: Record) -> None:
        try:
            fd = os.open(record.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        stack.callback(os.close, fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SnapshotError(
                f"snapshot {record.key!r} is in use: a snapshot is being prepared from it"
            ) from None

    def _remove_claimed(self, record: Record) -> None:
        with self._transaction() as db:
            children = [
                row[0]
                for row in db.execute("SELECT key FROM snapshots WHERE parent = ? LIMIT 3", (record.id,))
            ]
            if children:
                names = ", ".join(map(repr, children))
                raise HasChildrenError(f"snapshot {record.key!r} has children ({names}); remove them first")
            db.execute("DELETE FROM snapshots WHERE id = ?", (record.id,))
        trash = self.root / "trash" / str(record.id)
        with contextlib.suppress(FileNotFoundError):
            os.rename(record.path, trash)
        remove_tree(trash)

    def stat(self, key: str) -> Info:
        return self._info(self._get(_check_key(key)))

    def walk(self) -> Iterator[Info]:
        rows = self._db.execute(f"SELECT {self._COLUMNS} FROM snapshots ORDER BY id").fetchall()
        keys = {row[0]: row[1] for row in rows}
        for row in rows:
            record = self._record(row)
            parent = keys.get(record.parent) if record.parent is not None else None
            yield Info(record.key, record.kind, parent, dict(record.labels), record.created, record.updated)

    def usage(self, key: str) -> Usage:
        record = self._get(_check_key(key))
        return disk_usage(self._data_dir(record))

    def mounts(self, key: str) -> list[Mount]:
        record = self._get(_check_key(key))
        check_mountable(key, record.kind)
        return self._mounts(
            record, self._chain(self._get_id(record.parent) if record.parent is not None else None)
        )

    def path_of(self, key: str) -> Path:
        """The directory holding the snapshot's data (for tools that read committed layers)."""
        return self._data_dir(self._get(_check_key(key)))

    def cleanup(self) -> None:
        with self._locked(fcntl.LOCK_EX):
            self._cleanup_locked()

    def _cleanup_locked(self) -> None:
        known = {str(row[0]) for row in self._db.execute("SELECT id FROM snapshots")}
        snapshots = self.root / "snapshots"
        for entry in os.scandir(snapshots):
            if entry.name not in known:
                os.rename(entry.path, self.root / "trash" / f"orphan-{entry.name}-{uuid.uuid4().hex}")
        for sub in ("tmp", "trash"):
            for entry in os.scandir(self.root / sub):
                remove_tree(entry.path)

    def close(self) -> None:
        if self._lock_fd >= 0:
            self._db.close()
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.root}>"
