"""Where blobs were last seen: a small persistent record of registry repositories known to hold
each blob, so that a push can ask the registry to mount a blob it already has elsewhere instead
of receiving every byte again (what skopeo's blob-info cache does).

The record is a hint, never a truth: a repository may have lost the blob since, or the user may
no longer read it. A push that acts on a stale entry pays one request and uploads as usual; the
registry decides whether a mount is allowed. Entries come from what this user's clients did:
blobs pulled from a repository, pushed or mounted into one, or found there.

Storage is one SQLite file, ``${XDG_CACHE_HOME:-~/.cache}/ocikit/blob-locations.sqlite``, in WAL
mode so that concurrent processes read while one writes; writes are gathered and committed in one
short transaction when an endpoint closes. It keeps the :data:`DEFAULT_LIMIT` most recently seen
entries. Any failure of the file (unwritable directory, locked past the timeout, not a database)
makes the record silently empty: it only ever saves requests, it never fails a copy.

Nothing is synced to disk (``synchronous=OFF``): a record is worth less than the ``fsync`` that
would keep its last entries through a power loss, which on a busy disk costs more than a whole
push by mounts. A process that crashes loses nothing (SQLite's own journal still applies); a
system crash can at worst lose recent entries or leave the file malformed, and a malformed record
is replaced by an empty one on its next use.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

__all__ = ["DEFAULT_LIMIT", "BlobLocations", "default_path", "shared_locations"]

#: Entries kept (about 100 bytes each): the most recently seen survive.
DEFAULT_LIMIT: Final = 20_000
#: Candidate repositories tried for one blob, most recently seen first.
MAX_CANDIDATES: Final = 3
_BUSY_TIMEOUT_S: Final = 2.0
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS locations (
    registry TEXT NOT NULL,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    seen REAL NOT NULL,
    PRIMARY KEY (registry, digest, repository)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS locations_seen ON locations (seen);
"""
_log = logging.getLogger("ocikit.client")
_T = TypeVar("_T")
_shared: dict[Path, BlobLocations] = {}
_shared_lock = threading.Lock()


def default_path() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/ocikit/blob-locations.sqlite``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ocikit" / "blob-locations.sqlite"


class BlobLocations:
    """The record at ``path``. Reads go to the file at once; :meth:`note` and :meth:`forget`
    are kept in memory until :meth:`flush`. Safe to share between threads and tasks; the
    connection, opened at first use, stays open for the life of the process."""

    def __init__(self, path: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.path = path
        self.limit = limit
        self._pending: dict[tuple[str, str, str], bool] = {}  # key -> seen (True) or gone (False)
        self._lock = threading.Lock()
        self._broken = False
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()  # one statement at a time on the one connection

    def candidates(self, registry: str, digest: str, *, exclude: str = "") -> list[str]:
        """Repositories of ``registry`` recorded as holding ``digest``, newest first."""
        with self._lock:
            pending = [
                (repository, seen)
                for (reg, repository, dig), seen in self._pending.items()
                if reg == registry and dig == digest and repository != exclude
            ]
        gone = {repository for repository, seen in pending if not seen}
        found = [repository for repository, seen in reversed(pending) if seen]
        query = (
            "SELECT repository FROM locations WHERE registry = ? AND digest = ? AND repository != ? "
            "ORDER BY seen DESC LIMIT ?"
        )
        rows = self._run(
            lambda db: db.execute(query, (registry, digest, exclude, MAX_CANDIDATES + len(gone))).fetchall()
        )
        found += [row[0] for row in rows or [] if row[0] not in gone and row[0] not in found]
        return found[:MAX_CANDIDATES]

    def note(self, registry: str, repository: str, digest: str) -> None:
        """``repository`` of ``registry`` holds ``digest`` (it was pulled, pushed or found there)."""
        with self._lock:
            self._pending.pop((registry, repository, digest), None)  # keep insertion order = recency
            self._pending[(registry, repository, digest)] = True

    def forget(self, registry: str, repository: str, digest: str) -> None:
        """``repository`` turned out not to hold ``digest`` (or not to let us read it)."""
        with self._lock:
            self._pending.pop((registry, repository, digest), None)
            self._pending[(registry, repository, digest)] = False

    def flush(self) -> None:
        """Write what was noted in one transaction, and trim the record to its limit."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        now = time.time()
        seen = [(*key, now + index * 1e-6) for index, (key, present) in enumerate(pending.items()) if present]
        gone = [key for key, present in pending.items() if not present]
        self._run(lambda db: _write(db, seen, gone, self.limit))

    def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T | None:
        """``work`` on the open connection; None once the file has shown it cannot be used."""
        with self._db_lock:
            if self._broken:
                return None
            try:
                try:
                    return work(self._open())
                except sqlite3.DatabaseError as exc:
                    if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_CORRUPT:
                        raise
                    self._start_afresh()
                    return work(self._open())
            except (sqlite3.Error, OSError) as exc:
                self._broken = True
                self._close()
                _log.warning("not using the blob location record %s: %s", self.path, exc)
                return None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            _prepare(self._db)
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _start_afresh(self) -> None:
        """A malformed record (what a system crash without syncs can leave) is only a cache:
        it is removed with its journal files, and a new one takes its place. A file that is not
        a SQLite database at all is never removed: it may not be ours."""
        _log.warning("the blob location record %s is malformed: starting a new one", self.path)
        self._close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def _write(
    db: sqlite3.Connection,
    seen: list[tuple[str, str, str, float]],
    gone: list[tuple[str, str, str]],
    limit: int,
) -> None:
    with db:  # one transaction, committed on leaving, rolled back on an error
        db.execute("BEGIN IMMEDIATE")
        db.executemany("DELETE FROM locations WHERE registry = ? AND repository = ? AND digest = ?", gone)
        db.executemany(
            "INSERT INTO locations (registry, repository, digest, seen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO UPDATE SET seen = excluded.seen",
            seen,
        )
        db.execute(
            "DELETE FROM locations WHERE seen < "
            "(SELECT seen FROM locations ORDER BY seen DESC LIMIT 1 OFFSET ?)",
            (limit - 1,),
        )


def _prepare(db: sqlite3.Connection) -> None:
    """WAL (readers never wait for a writer), no syncs, and the schema; no-ops once done."""
    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # see the module's docstring
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'locations'").fetchone() is None:
        db.executescript(_SCHEMA)


def shared_locations(path: Path | None = None) -> BlobLocations:
    """The one :class:`BlobLocations` of this process for ``path`` (default: :func:`default_path`),
    so that every endpoint of a copy sees what the others noted before they flush."""
    path = path or default_path()
    with _shared_lock:
        found = _shared.get(path)
        if found is None:
            found = _shared[path] = BlobLocations(path)
        return found
