"""Registry metadata in SQLite (WAL mode): the embedded default.

Writes go through one dedicated thread with its own connection, so they never block the
event loop and never contend with each other inside a process; across worker processes
SQLite's own lock (with a generous busy timeout) serialises them. Reads are point queries
on indexed keys that take microseconds and, in WAL mode, never wait for a writer: they run
inline on the event loop, which measured faster than any hop to a thread.

The schema (see ``SCHEMA``) uses only portable SQL so that the PostgreSQL backend can carry
it over unchanged: ``BLOB`` becomes ``BYTEA`` and tags sort with ``COLLATE "C"`` there.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

from ...spec.digest import Digest
from .base import GCReport, ManifestRecord, Referrer, UploadRecord

__all__ = ["SCHEMA", "SQLiteMetadataStore"]

T = TypeVar("T")

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS repositories (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    pushed_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS repository_blobs (
    repository_id BIGINT NOT NULL REFERENCES repositories (id),
    digest TEXT NOT NULL REFERENCES blobs (digest),
    linked_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX IF NOT EXISTS repository_blobs_by_digest ON repository_blobs (digest);
CREATE TABLE IF NOT EXISTS manifests (
    repository_id BIGINT NOT NULL REFERENCES repositories (id),
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    artifact_type TEXT,
    config_media_type TEXT,
    subject TEXT,
    annotations TEXT,
    content BLOB NOT NULL,
    pushed_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX IF NOT EXISTS manifests_by_subject ON manifests (repository_id, subject);
CREATE TABLE IF NOT EXISTS tags (
    repository_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (repository_id, name),
    FOREIGN KEY (repository_id, digest) REFERENCES manifests (repository_id, digest)
);
CREATE INDEX IF NOT EXISTS tags_by_digest ON tags (repository_id, digest);
CREATE TABLE IF NOT EXISTS manifest_blobs (
    repository_id BIGINT NOT NULL,
    manifest_digest TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    PRIMARY KEY (repository_id, manifest_digest, blob_digest)
);
CREATE INDEX IF NOT EXISTS manifest_blobs_by_blob ON manifest_blobs (repository_id, blob_digest);
CREATE TABLE IF NOT EXISTS manifest_children (
    repository_id BIGINT NOT NULL,
    parent_digest TEXT NOT NULL,
    child_digest TEXT NOT NULL,
    PRIMARY KEY (repository_id, parent_digest, child_digest)
);
CREATE INDEX IF NOT EXISTS manifest_children_by_child ON manifest_children (repository_id, child_digest);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
"""

# Live manifests: tagged ones, recent ones (the grace period), and everything reachable from
# them through an index's children or a referrer's subject.
_LIVE_MANIFESTS: Final = """
WITH RECURSIVE
edges (repository_id, source, target) AS (
    SELECT repository_id, parent_digest, child_digest FROM manifest_children
    UNION ALL
    SELECT repository_id, subject, digest FROM manifests WHERE subject IS NOT NULL
),
live (repository_id, digest) AS (
    SELECT repository_id, digest FROM tags
    UNION
    SELECT repository_id, digest FROM manifests WHERE pushed_at >= :cutoff
    UNION
    SELECT e.repository_id, e.target FROM edges e
    JOIN live l ON e.repository_id = l.repository_id AND e.source = l.digest
)
"""


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    # Switching a new database to WAL does not honour the busy timeout: when several worker
    # processes open a fresh root at once, one may see "database is locked"; retry briefly.
    for attempt in range(100):
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            if attempt == 99:
                raise
            time.sleep(0.05)
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=60000")
    return connection


class SQLiteMetadataStore:
    """The embedded default metadata store."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocikit-sqlite")

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._run_new(lambda: _connect(self.path))
        writer = self._writer
        await self._run_new(lambda: writer.executescript(SCHEMA))  # its own transaction
        self._reader = _connect(self.path)

    async def _run_new(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        if self._writer is not None:
            writer = self._writer
            await self._run_new(writer.close)
        if self._reader is not None:
            self._reader.close()
        self._executor.shutdown(wait=True)

    # --------------------------------------------------------------- plumbing

    @property
    def _read(self) -> sqlite3.Connection:
        assert self._reader is not None, "the store is not open"
        return self._reader

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one IMMEDIATE transaction on the writer thread."""
        writer = self._writer
        assert writer is not None, "the store is not open"

        def transaction() -> T:
            writer.execute("BEGIN IMMEDIATE")
            try:
                result = work(writer)
            except BaseException:
                writer.execute("ROLLBACK")
                raise
            writer.execute("COMMIT")
            return result

        return await asyncio.get_running_loop().run_in_executor(self._executor, transaction)

    def _one(self, sql: str, *params: Any) -> Any:
        row = self._read.execute(sql, params).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _repository_id(connection: sqlite3.Connection, name: str, create: bool) -> int | None:
        row = connection.execute("SELECT id FROM repositories WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        if not create:
            return None
        cursor = connection.execute(
            "INSERT INTO repositories (name, created_at) VALUES (?, ?)", (name, time.time())
        )
        return int(cursor.lastrowid or 0)

    # ------------------------------------------------- repositories and blobs

    async def repository_exists(self, repository: str) -> bool:
        return self._one("SELECT 1 FROM repositories WHERE name = ?", repository) is not None

    async def repositories(self, limit: int, last: str | None) -> list[str]:
        rows = self._read.execute(
            "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?", (last or "", limit)
        ).fetchall()
        return [row[0] for row in rows]

    async def linked_blob_size(self, repository: str, digest: Digest) -> int | None:
        size = self._one(
            "SELECT b.size FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
            "JOIN blobs b ON b.digest = rb.digest WHERE r.name = ? AND rb.digest = ?",
            repository,
            digest,
        )
        return None if size is None else int(size)

    async def blob_repositories(self, digest: Digest) -> list[str]:
        rows = self._read.execute(
            "SELECT r.name FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
            "WHERE rb.digest = ? ORDER BY r.name",
            (digest,),
        ).fetchall()
        return [row[0] for row in rows]

    async def blob_is_recorded(self, digest: Digest) -> bool:
        return self._one("SELECT 1 FROM blobs WHERE digest = ?", digest) is not None

    async def link_blob(self, repository: str, digest: Digest, size: int) -> None:
        def link(c: sqlite3.Connection) -> None:
            now = time.time()
            repository_id = self._repository_id(c, repository, create=True)
            c.execute(
                "INSERT INTO blobs (digest, size, pushed_at) VALUES (?, ?, ?) "
                "ON CONFLICT (digest) DO UPDATE SET pushed_at = excluded.pushed_at",
                (digest, size, now),
            )
            c.execute(
                "INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (?, ?, ?) "
                "ON CONFLICT (repository_id, digest) DO UPDATE SET linked_at = excluded.linked_at",
                (repository_id, digest, now),
            )

        await self._write(link)

    async def unlink_blob(self, repository: str, digest: Digest) -> bool:
        def unlink(c: sqlite3.Connection) -> bool:
            repository_id = self._repository_id(c, repository, create=False)
            cursor = c.execute(
                "DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?", (repository_id, digest)
            )
            return cursor.rowcount > 0

        return await self._write(unlink)

    # ------------------------------------------------------ manifests and tags

    async def manifest(self, repository: str, digest: Digest) -> ManifestRecord | None:
        row = self._read.execute(
            "SELECT m.media_type, m.content, m.artifact_type, m.subject, m.annotations, m.config_media_type "
            "FROM manifests m JOIN repositories r ON r.id = m.repository_id "
            "WHERE r.name = ? AND m.digest = ?",
            (repository, digest),
        ).fetchone()
        if row is None:
            return None
        media_type, content, artifact_type, subject, annotations, config_media_type = row
        return ManifestRecord(
            digest=digest,
            media_type=media_type,
            content=bytes(content),
            artifact_type=artifact_type,
            subject=Digest(subject) if subject else None,
            annotations=json.loads(annotations) if annotations else None,
            config_media_type=config_media_type,
        )

    async def tag_target(self, repository: str, tag: str) -> Digest | None:
        digest = self._one(
            "SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id "
            "WHERE r.name = ? AND t.name = ?",
            repository,
            tag,
        )
        return None if digest is None else Digest(digest)

    async def put_manifest(
        self,
        repository: str,
        record: ManifestRecord,
        *,
        blobs: list[Digest],
        children: list[Digest],
        tags: list[str],
        sparse: bool = False,
    ) -> list[Digest]:
        def put(c: sqlite3.Connection) -> list[Digest]:
            repository_id = self._repository_id(c, repository, create=True)
            if not sparse:
                missing = self._missing(c, repository_id, blobs, "repository_blobs", "digest")
                missing += self._missing(c, repository_id, children, "manifests", "digest")
                if missing:
                    return missing
            now = time.time()
            c.execute(
                "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, config_media_type, "
                "subject, annotations, content, pushed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (repository_id, digest) DO UPDATE SET pushed_at = excluded.pushed_at",
                (
                    repository_id,
                    record.digest,
                    record.media_type,
                    record.artifact_type,
                    record.config_media_type,
                    record.subject,
                    json.dumps(record.annotations) if record.annotations else None,
                    record.content,
                    now,
                ),
            )
            self._insert_pairs(
                c, "manifest_blobs", "manifest_digest, blob_digest", repository_id, record, blobs
            )
            self._insert_pairs(
                c, "manifest_children", "parent_digest, child_digest", repository_id, record, children
            )
            # A manifest that is referenced keeps its blobs' links fresh for the GC grace period.
            c.executemany(
                "UPDATE repository_blobs SET linked_at = ? WHERE repository_id = ? AND digest = ?",
                [(now, repository_id, blob) for blob in blobs],
            )
            c.executemany(
                "INSERT INTO tags (repository_id, name, digest, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (repository_id, name) DO UPDATE SET digest = excluded.digest, "
                "updated_at = excluded.updated_at",
                [(repository_id, tag, record.digest, now) for tag in tags],
            )
            return []

        return await self._write(put)

    @staticmethod
    def _missing(
        c: sqlite3.Connection, repository_id: int | None, digests: Iterable[Digest], table: str, column: str
    ) -> list[Digest]:
        sql = f"SELECT 1 FROM {table} WHERE repository_id = ? AND {column} = ?"
        return [d for d in dict.fromkeys(digests) if c.execute(sql, (repository_id, d)).fetchone() is None]

    @staticmethod
    def _insert_pairs(
        c: sqlite3.Connection,
        table: str,
        columns: str,
        repository_id: int | None,
        record: ManifestRecord,
        targets: list[Digest],
    ) -> None:
        c.executemany(
            f"INSERT INTO {table} (repository_id, {columns}) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [(repository_id, record.digest, target) for target in dict.fromkeys(targets)],
        )

    async def delete_manifest(self, repository: str, digest: Digest) -> bool:
        def delete(c: sqlite3.Connection) -> bool:
            repository_id = self._repository_id(c, repository, create=False)
            if repository_id is None:
                return False
            self._delete_manifests(c, [(repository_id, digest)])
            return bool(c.execute("SELECT changes()").fetchone()[0] > 0)

        return await self._write(delete)

    @staticmethod
    def _delete_manifests(c: sqlite3.Connection, keys: list[tuple[int, str]]) -> None:
        c.executemany("DELETE FROM tags WHERE repository_id = ? AND digest = ?", keys)
        c.executemany("DELETE FROM manifest_blobs WHERE repository_id = ? AND manifest_digest = ?", keys)
        c.executemany("DELETE FROM manifest_children WHERE repository_id = ? AND parent_digest = ?", keys)
        # Last, so that changes() reports whether the manifest itself existed.
        c.executemany("DELETE FROM manifests WHERE repository_id = ? AND digest = ?", keys)

    async def delete_tag(self, repository: str, tag: str) -> bool:
        def delete(c: sqlite3.Connection) -> bool:
            repository_id = self._repository_id(c, repository, create=False)
            cursor = c.execute("DELETE FROM tags WHERE repository_id = ? AND name = ?", (repository_id, tag))
            return cursor.rowcount > 0

        return await self._write(delete)

    async def tags(self, repository: str, limit: int, last: str | None) -> list[str] | None:
        repository_id = self._one("SELECT id FROM repositories WHERE name = ?", repository)
        if repository_id is None:
            return None
        rows = self._read.execute(
            "SELECT name FROM tags WHERE repository_id = ? AND name > ? ORDER BY name LIMIT ?",
            (repository_id, last or "", limit),
        ).fetchall()
        return [row[0] for row in rows]

    async def referrers(
        self, repository: str, subject: Digest, artifact_type: str | None, limit: int, last: str | None
    ) -> list[Referrer]:
        sql = (
            "SELECT m.digest, m.media_type, length(m.content), m.artifact_type, m.config_media_type, "
            "m.annotations FROM manifests m JOIN repositories r ON r.id = m.repository_id "
            "WHERE r.name = ? AND m.subject = ? AND m.digest > ?"
        )
        params: list[Any] = [repository, subject, last or ""]
        if artifact_type is not None:
            sql += " AND COALESCE(m.artifact_type, m.config_media_type) = ?"
            params.append(artifact_type)
        sql += " ORDER BY m.digest LIMIT ?"
        params.append(limit)
        return [
            Referrer(
                digest=Digest(digest),
                media_type=media_type,
                size=int(size),
                artifact_type=artifact or config_type,
                annotations=json.loads(annotations) if annotations else None,
            )
            for digest, media_type, size, artifact, config_type, annotations in self._read.execute(
                sql, params
            )
        ]

    # ----------------------------------------------------------------- uploads

    async def upload_create(self, upload_id: str, repository: str) -> None:
        now = time.time()
        await self._write(
            lambda c: c.execute(
                "INSERT INTO uploads (id, repository, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (upload_id, repository, now, now),
            )
        )

    async def upload(self, upload_id: str) -> UploadRecord | None:
        row = self._read.execute(
            "SELECT repository, created_at, updated_at FROM uploads WHERE id = ?", (upload_id,)
        ).fetchone()
        return None if row is None else UploadRecord(upload_id, row[0], row[1], row[2])

    async def upload_touch(self, upload_id: str) -> None:
        now = time.time()
        await self._write(
            lambda c: c.execute("UPDATE uploads SET updated_at = ? WHERE id = ?", (now, upload_id))
        )

    async def upload_delete(self, upload_id: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM uploads WHERE id = ?", (upload_id,)))

    async def uploads_older_than(self, timestamp: float) -> list[UploadRecord]:
        rows = self._read.execute(
            "SELECT id, repository, created_at, updated_at FROM uploads WHERE updated_at < ?", (timestamp,)
        ).fetchall()
        return [UploadRecord(*row) for row in rows]

    # ------------------------------------------------------ garbage collection

    async def collect_garbage(self, older_than: float, dry_run: bool) -> GCReport:
        def collect(c: sqlite3.Connection) -> GCReport:
            report = GCReport()
            names = dict(c.execute("SELECT id, name FROM repositories").fetchall())
            dead = c.execute(
                _LIVE_MANIFESTS + "SELECT m.repository_id, m.digest FROM manifests m WHERE NOT EXISTS "
                "(SELECT 1 FROM live l WHERE l.repository_id = m.repository_id AND l.digest = m.digest)",
                {"cutoff": older_than},
            ).fetchall()
            report.manifests = [(names[r], Digest(d)) for r, d in dead]
            self._delete_manifests(c, dead)
            dead_links = c.execute(
                "SELECT rb.repository_id, rb.digest FROM repository_blobs rb WHERE rb.linked_at < ? "
                "AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.repository_id = rb.repository_id "
                "AND mb.blob_digest = rb.digest)",
                (older_than,),
            ).fetchall()
            report.blob_links = [(names[r], Digest(d)) for r, d in dead_links]
            c.executemany("DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?", dead_links)
            orphans = c.execute(
                "SELECT digest, size FROM blobs b WHERE pushed_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest)",
                (older_than,),
            ).fetchall()
            report.blobs = [Digest(d) for d, _ in orphans]
            report.freed_bytes = sum(size for _, size in orphans)
            c.executemany("DELETE FROM blobs WHERE digest = ?", [(d,) for d, _ in orphans])
            if dry_run:
                raise _DryRun(report)
            return report

        try:
            return await self._write(collect)
        except _DryRun as outcome:
            return outcome.report


class _DryRun(Exception):
    """Rolls a garbage collection back after it has computed what it would remove."""

    def __init__(self, report: GCReport) -> None:
        super().__init__("dry run")
        self.report = report
