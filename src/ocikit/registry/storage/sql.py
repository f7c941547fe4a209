"""The metadata store's rules, written once in SQL for every database driver.

:class:`SQLMetadataStore` implements :class:`.base.MetadataStore` over a small seam,
:class:`Transaction`, that each driver provides (``sqlite.py``, ``postgres.py``): run a
statement, and serialise against other transactions by a key. A rule such as "refuse a blob
delete while a manifest uses it" therefore exists once, whatever the database.

Concurrency follows two patterns, so that PostgreSQL's READ COMMITTED (where each statement
sees what has committed before it) is as safe as SQLite's one writer at a time:

- garbage collection, stray deletion and migrations take a key exclusively; every write that
  garbage collection must not interleave with (links, manifests, publish announcements,
  deletes) takes it shared. On PostgreSQL these are transaction-scoped advisory locks;
  SQLite's ``BEGIN IMMEDIATE`` already runs one writer at a time.
- a check and the change it guards lock the same rows, lock first: a manifest PUT updates
  the blob links it needs (and ``FOR SHARE``-locks the child manifests) before storing itself,
  and a delete locks or deletes its row before looking for references, so whichever of two
  racing transactions comes second sees the other's committed result.

Drivers run statements written with ``?`` parameter markers; the logic is ``async`` because
PostgreSQL's driver is, and SQLite's transaction functions never suspend, so the SQLite
driver runs them to completion on its writer thread (:func:`run_to_completion`).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Final, Protocol, TypeVar

from ...spec.digest import Digest
from .base import DeleteOutcome, GCReport, ManifestRecord, Referrer, SchemaError, UploadRecord
from .schema import CURRENT_VERSION, MIGRATIONS, statements

__all__ = ["SQLMetadataStore", "Transaction", "run_to_completion"]

T = TypeVar("T")
Work = Callable[["Transaction"], Coroutine[Any, Any, T]]

#: Garbage collection against everything that creates or removes references.
_GC_KEY: Final = "ocikit:gc"
_MIGRATE_KEY: Final = "ocikit:migrate"

#: The database's clock in seconds since the epoch, as an SQL expression. Leases and publish
#: announcements are written by one replica and judged by another: judged by each replica's
#: own clock, a replica whose clock runs ahead would take a lease that is still held.
_CLOCK: Final = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
}
#: An expired announcement is still kept this long unless its digest is collected: its
#: publisher, stalled past its expiry, may still link the blob as long as the announcement is
#: there (see :meth:`SQLMetadataStore.link_blob`); after a day, it is surely dead.
_FORGET_ANNOUNCEMENTS: Final = 86400.0

_UPLOAD_COLUMNS: Final = (
    "id, repository, client, size, hash_state, stage, created_at, updated_at"  # UploadRecord order
)

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
    SELECT repository_id, digest FROM manifests WHERE pushed_at >= ?
    UNION
    SELECT e.repository_id, e.target FROM edges e
    JOIN live l ON e.repository_id = l.repository_id AND e.source = l.digest
)
"""


class Transaction(Protocol):
    """What the rules need from a database driver: statements with ``?`` parameter markers."""

    dialect: str
    #: Appended to a SELECT whose rows must stay as they are until the transaction ends.
    for_share: str
    for_update: str

    async def rows(self, sql: str, *args: Any) -> Sequence[Sequence[Any]]: ...

    async def row(self, sql: str, *args: Any) -> Sequence[Any] | None: ...

    async def run(self, sql: str, *args: Any) -> int:
        """Execute; the number of rows changed."""
        ...

    async def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def exclusive(self, key: str) -> None:
        """Hold ``key`` alone until the transaction ends."""
        ...

    async def shared(self, key: str) -> None:
        """Hold ``key`` beside other shared holders until the transaction ends."""
        ...

    async def table_exists(self, name: str) -> bool: ...


class _Rollback(Exception):
    """Ends a transaction without its changes, returning ``value`` to the caller."""

    def __init__(self, value: Any) -> None:
        super().__init__("rollback")
        self.value = value


def run_to_completion(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (SQLite transaction logic) synchronously."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("transaction logic suspended on a synchronous driver")


async def _value(tx: Transaction, sql: str, *args: Any) -> Any:
    row = await tx.row(sql, *args)
    return None if row is None else row[0]


async def _being_deleted(tx: Transaction, digest: Digest) -> bool:
    """Whether a collection has entered ``digest`` as being deleted and not yet deleted it."""
    return await tx.row("SELECT 1 FROM deleting WHERE digest = ?", digest) is not None


_MANIFEST_COLUMNS: Final = (
    "m.digest, m.media_type, m.content, m.artifact_type, m.subject, m.annotations, m.config_media_type"
)


def _manifest_record(row: Sequence[Any]) -> ManifestRecord:
    digest, media_type, content, artifact_type, subject, annotations, config_media_type = row
    return ManifestRecord(
        digest=Digest(digest),
        media_type=media_type,
        content=bytes(content),
        artifact_type=artifact_type,
        subject=Digest(subject) if subject else None,
        annotations=json.loads(annotations) if annotations else None,
        config_media_type=config_media_type,
    )


def _upload(row: Sequence[Any]) -> UploadRecord:
    upload_id, repository, client, size, hash_state, stage, created, updated = row
    return UploadRecord(
        upload_id,
        repository,
        client,
        int(size),
        bytes(hash_state or b""),
        bytes(stage or b""),
        created,
        updated,
    )


class SQLMetadataStore(ABC):
    """Every :class:`.base.MetadataStore` method, over a driver's :meth:`_read` and
    :meth:`_transaction`. Subclasses connect, and name themselves in :attr:`url`."""

    url: str = ""

    # ------------------------------------------------------------- the seam

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def _read(self, work: Work[T]) -> T:
        """Run read-only ``work`` (no transaction needed)."""

    @abstractmethod
    async def _transaction(self, work: Work[T]) -> T:
        """Run ``work`` in one transaction: committed when it returns, rolled back if it raises."""

    async def _write(self, work: Work[T]) -> T:
        try:
            return await self._transaction(work)
        except _Rollback as outcome:
            return outcome.value  # type: ignore[no-any-return]

    # ----------------------------------------------------------- the schema

    @staticmethod
    async def _version(tx: Transaction) -> int:
        if await tx.table_exists("schema_version"):
            return int(await _value(tx, "SELECT version FROM schema_version"))
        return 1 if await tx.table_exists("repositories") else 0

    async def _migrate(self, tx: Transaction) -> tuple[int, int]:
        before = await self._locked_version(tx)
        if before > CURRENT_VERSION:
            raise self._too_new(before)
        await self._upgrade(tx, before)
        return before, CURRENT_VERSION

    async def _locked_version(self, tx: Transaction) -> int:
        """The schema version, read only once this transaction holds the migration lock: a
        version read before waiting for it could be stale by the time the lock is granted (two
        replicas opening an empty database would both create the schema)."""
        await tx.exclusive(_MIGRATE_KEY)
        return await self._version(tx)

    async def _upgrade(self, tx: Transaction, before: int) -> None:
        for version in range(before, CURRENT_VERSION):
            for statement in statements(MIGRATIONS[version], tx.dialect):
                await tx.run(statement)
            if await tx.table_exists("schema_version"):
                await tx.run("DELETE FROM schema_version")
                await tx.run("INSERT INTO schema_version (version) VALUES (?)", version + 1)

    async def _prepare(self, tx: Transaction) -> None:
        """On opening: create the schema in an empty database, refuse one at another version
        unless the steps missing change nothing in this database (SQLite's version 3).
        Check and creation are one critical section under the migration lock."""
        version = await self._locked_version(tx)
        if version == 0 or (version < CURRENT_VERSION and not self._changes(version, tx.dialect)):
            await self._upgrade(tx, version)
        elif version < CURRENT_VERSION:
            raise SchemaError(
                f"the metadata database {self.url} has schema version {version}, this ocikit needs "
                f"{CURRENT_VERSION}: run `ocikit migrate --metadata {self.url}`"
            )
        elif version > CURRENT_VERSION:
            raise self._too_new(version)

    @staticmethod
    def _changes(version: int, dialect: str) -> bool:
        """Whether migrating from ``version`` runs any statement in ``dialect``."""
        return any(statements(MIGRATIONS[step], dialect) for step in range(version, CURRENT_VERSION))

    def _too_new(self, version: int) -> SchemaError:
        return SchemaError(
            f"the metadata database {self.url} has schema version {version}, newer than this "
            f"ocikit knows ({CURRENT_VERSION}): upgrade ocikit"
        )

    async def migrate(self) -> tuple[int, int]:
        return await self._write(self._migrate)

    # ------------------------------------------------------------- helpers

    @staticmethod
    async def _repository_id(tx: Transaction, name: str, *, create: bool) -> int | None:
        found = await _value(tx, "SELECT id FROM repositories WHERE name = ?", name)
        if found is not None or not create:
            return None if found is None else int(found)
        await tx.run(
            "INSERT INTO repositories (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            name,
            time.time(),
        )
        return int(await _value(tx, "SELECT id FROM repositories WHERE name = ?", name))

    @staticmethod
    async def _delete_manifests(tx: Transaction, keys: list[tuple[int, str]]) -> None:
        await tx.run_many("DELETE FROM tags WHERE repository_id = ? AND digest = ?", keys)
        await tx.run_many("DELETE FROM manifest_blobs WHERE repository_id = ? AND manifest_digest = ?", keys)
        await tx.run_many("DELETE FROM manifest_children WHERE repository_id = ? AND parent_digest = ?", keys)
        await tx.run_many("DELETE FROM manifests WHERE repository_id = ? AND digest = ?", keys)

    # --------------------------------------------------- repositories and blobs

    async def repository_exists(self, repository: str) -> bool:
        async def work(tx: Transaction) -> bool:
            return await tx.row("SELECT 1 FROM repositories WHERE name = ?", repository) is not None

        return await self._read(work)

    async def repositories(self, limit: int, last: str | None) -> list[str]:
        async def work(tx: Transaction) -> list[str]:
            rows = await tx.rows(
                "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?", last or "", limit
            )
            return [row[0] for row in rows]

        return await self._read(work)

    async def linked_blob_size(self, repository: str, digest: Digest) -> int | None:
        async def work(tx: Transaction) -> int | None:
            size = await _value(
                tx,
                "SELECT b.size FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
                "JOIN blobs b ON b.digest = rb.digest WHERE r.name = ? AND rb.digest = ?",
                repository,
                digest,
            )
            return None if size is None else int(size)

        return await self._read(work)

    async def blob_repositories(self, digest: Digest) -> list[str]:
        async def work(tx: Transaction) -> list[str]:
            rows = await tx.rows(
                "SELECT r.name FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
                "WHERE rb.digest = ? ORDER BY r.name",
                digest,
            )
            return [row[0] for row in rows]

        return await self._read(work)

    async def blob_is_recorded(self, digest: Digest) -> bool:
        async def work(tx: Transaction) -> bool:
            return await tx.row("SELECT 1 FROM blobs WHERE digest = ?", digest) is not None

        return await self._read(work)

    async def link_blob(self, repository: str, digest: Digest, size: int, *, announced_by: str) -> bool:
        async def work(tx: Transaction) -> bool:
            await tx.shared(_GC_KEY)
            # Under the shared key no collection runs: if the announcement is still there, no
            # collection has entered the digest as being deleted since it was made, as that
            # removes the digest's announcements in the same transaction.
            announced = "SELECT 1 FROM publishing WHERE digest = ? AND holder = ?"
            if await tx.row(announced, digest, announced_by) is None:
                return False
            if await _being_deleted(tx, digest):
                return False
            now = time.time()
            repository_id = await self._repository_id(tx, repository, create=True)
            await tx.run(
                "INSERT INTO blobs (digest, size, pushed_at) VALUES (?, ?, ?) "
                "ON CONFLICT (digest) DO UPDATE SET pushed_at = excluded.pushed_at",
                digest,
                size,
                now,
            )
            await tx.run(
                "INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (?, ?, ?) "
                "ON CONFLICT (repository_id, digest) DO UPDATE SET linked_at = excluded.linked_at",
                repository_id,
                digest,
                now,
            )
            return True

        return await self._write(work)

    async def unlink_blob(self, repository: str, digest: Digest, *, refuse_if_used: bool) -> DeleteOutcome:
        async def work(tx: Transaction) -> DeleteOutcome:
            await tx.shared(_GC_KEY)
            repository_id = await self._repository_id(tx, repository, create=False)
            if repository_id is None:
                return DeleteOutcome(False)
            deleted = await tx.run(
                "DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?", repository_id, digest
            )
            if deleted and refuse_if_used:  # checked after the delete has locked the link
                users = await tx.rows(
                    "SELECT manifest_digest FROM manifest_blobs WHERE repository_id = ? AND blob_digest = ? "
                    "ORDER BY manifest_digest",
                    repository_id,
                    digest,
                )
                if users:
                    raise _Rollback(DeleteOutcome(False, [Digest(user[0]) for user in users]))
            return DeleteOutcome(deleted > 0)

        return await self._write(work)

    # ------------------------------------------------------- manifests and tags

    async def manifest(self, repository: str, digest: Digest) -> ManifestRecord | None:
        async def work(tx: Transaction) -> ManifestRecord | None:
            row = await tx.row(
                f"SELECT {_MANIFEST_COLUMNS} FROM manifests m JOIN repositories r ON r.id = m.repository_id "
                "WHERE r.name = ? AND m.digest = ?",
                repository,
                digest,
            )
            return None if row is None else _manifest_record(row)

        return await self._read(work)

    async def manifest_digests(self, repository: str, limit: int, last: str | None) -> list[Digest]:
        async def work(tx: Transaction) -> list[Digest]:
            rows = await tx.rows(
                "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id "
                "WHERE r.name = ? AND m.digest > ? ORDER BY m.digest LIMIT ?",
                repository,
                last or "",
                limit,
            )
            return [Digest(row[0]) for row in rows]

        return await self._read(work)

    async def tag_target(self, repository: str, tag: str) -> Digest | None:
        async def work(tx: Transaction) -> Any:
            return await _value(
                tx,
                "SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repository_id "
                "WHERE r.name = ? AND t.name = ?",
                repository,
                tag,
            )

        digest = await self._read(work)
        return None if digest is None else Digest(digest)

    async def tagged_manifest(self, repository: str, tag: str) -> ManifestRecord | None:
        async def work(tx: Transaction) -> ManifestRecord | None:
            row = await tx.row(
                f"SELECT {_MANIFEST_COLUMNS} FROM tags t JOIN repositories r ON r.id = t.repository_id "
                "JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest "
                "WHERE r.name = ? AND t.name = ?",
                repository,
                tag,
            )
            return None if row is None else _manifest_record(row)

        return await self._read(work)

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
        # Rows are locked in one order (sorted) whatever the manifest's order: two pushes that
        # share blobs or tags then never wait for each other in a cycle (a deadlock).
        blobs, children, tags = sorted(set(blobs)), sorted(set(children)), sorted(set(tags))

        async def work(tx: Transaction) -> list[Digest]:
            await tx.shared(_GC_KEY)
            now = time.time()
            repository_id = await self._repository_id(tx, repository, create=False)
            if repository_id is None:
                if not sparse and (blobs or children):
                    return blobs + children  # nothing is linked: refuse without a trace
                repository_id = await self._repository_id(tx, repository, create=True)
            assert repository_id is not None
            # Refreshing the links locks them: a racing unlink or collection waits, or wins first.
            missing = [
                blob
                for blob in blobs
                if not await tx.run(
                    "UPDATE repository_blobs SET linked_at = ? WHERE repository_id = ? AND digest = ?",
                    now,
                    repository_id,
                    blob,
                )
            ]
            for child in children:
                sql = "SELECT 1 FROM manifests WHERE repository_id = ? AND digest = ?" + tx.for_share
                if await tx.row(sql, repository_id, child) is None:
                    missing.append(child)
            if missing and not sparse:
                raise _Rollback(missing)
            await self._store_manifest(tx, repository_id, record, now)
            await tx.run_many(
                "INSERT INTO manifest_blobs (repository_id, manifest_digest, blob_digest) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(repository_id, record.digest, blob) for blob in blobs],
            )
            await tx.run_many(
                "INSERT INTO manifest_children (repository_id, parent_digest, child_digest) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(repository_id, record.digest, child) for child in children],
            )
            await tx.run_many(
                "INSERT INTO tags (repository_id, name, digest, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (repository_id, name) DO UPDATE SET digest = excluded.digest, "
                "updated_at = excluded.updated_at",
                [(repository_id, tag, record.digest, now) for tag in tags],
            )
            return []

        return await self._write(work)

    @staticmethod
    async def _store_manifest(
        tx: Transaction, repository_id: int, record: ManifestRecord, now: float
    ) -> None:
        await tx.run(
            "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, config_media_type, "
            "subject, annotations, content, pushed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (repository_id, digest) DO UPDATE SET pushed_at = excluded.pushed_at",
            repository_id,
            record.digest,
            record.media_type,
            record.artifact_type,
            record.config_media_type,
            record.subject,
            json.dumps(record.annotations) if record.annotations else None,
            record.content,
            now,
        )

    async def delete_manifest(
        self, repository: str, digest: Digest, *, refuse_if_listed: bool
    ) -> DeleteOutcome:
        async def work(tx: Transaction) -> DeleteOutcome:
            await tx.shared(_GC_KEY)
            repository_id = await self._repository_id(tx, repository, create=False)
            sql = "SELECT 1 FROM manifests WHERE repository_id = ? AND digest = ?" + tx.for_update
            if repository_id is None or await tx.row(sql, repository_id, digest) is None:
                return DeleteOutcome(False)
            if refuse_if_listed:  # checked once the manifest's row is locked
                parents = await tx.rows(
                    "SELECT parent_digest FROM manifest_children "
                    "WHERE repository_id = ? AND child_digest = ? "
                    "ORDER BY parent_digest",
                    repository_id,
                    digest,
                )
                if parents:
                    return DeleteOutcome(False, [Digest(parent[0]) for parent in parents])
            await self._delete_manifests(tx, [(repository_id, digest)])
            return DeleteOutcome(True)

        return await self._write(work)

    async def delete_tag(self, repository: str, tag: str) -> bool:
        async def work(tx: Transaction) -> bool:
            repository_id = await self._repository_id(tx, repository, create=False)
            deleted = await tx.run(
                "DELETE FROM tags WHERE repository_id = ? AND name = ?", repository_id, tag
            )
            return deleted > 0

        return await self._write(work)

    async def tags(self, repository: str, limit: int, last: str | None) -> list[str] | None:
        async def work(tx: Transaction) -> list[str] | None:
            repository_id = await self._repository_id(tx, repository, create=False)
            if repository_id is None:
                return None
            rows = await tx.rows(
                "SELECT name FROM tags WHERE repository_id = ? AND name > ? ORDER BY name LIMIT ?",
                repository_id,
                last or "",
                limit,
            )
            return [row[0] for row in rows]

        return await self._read(work)

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

        async def work(tx: Transaction) -> Sequence[Sequence[Any]]:
            return await tx.rows(sql, *params)

        return [
            Referrer(
                digest=Digest(digest),
                media_type=media_type,
                size=int(size),
                artifact_type=artifact or config_type,
                annotations=json.loads(annotations) if annotations else None,
            )
            for digest, media_type, size, artifact, config_type, annotations in await self._read(work)
        ]

    # ------------------------------------------------------------ upload sessions

    async def upload_create(self, record: UploadRecord, *, per_repository: int, per_client: int) -> bool:
        caps = (("repository", record.repository, per_repository), ("client", record.client, per_client))

        async def work(tx: Transaction) -> bool:
            for column, value, cap in caps:
                if not cap:
                    continue
                await tx.exclusive(f"ocikit:uploads:{column}:{value}")  # counted, then inserted
                open_sessions = await _value(tx, f"SELECT count(*) FROM uploads WHERE {column} = ?", value)
                if int(open_sessions) >= cap:
                    return False
            await tx.run(
                f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                record.id,
                record.repository,
                record.client,
                record.size,
                record.hash_state,
                record.stage,
                record.created_at,
                record.updated_at,
            )
            return True

        return await self._write(work)

    async def upload(self, upload_id: str) -> UploadRecord | None:
        async def work(tx: Transaction) -> Sequence[Any] | None:
            return await tx.row(f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE id = ?", upload_id)

        row = await self._read(work)
        return None if row is None else _upload(row)

    async def upload_claim(self, upload_id: str, holder: str, ttl: float) -> UploadRecord | None:
        async def work(tx: Transaction) -> Sequence[Sequence[Any]]:
            now = _CLOCK[tx.dialect]  # another replica judges the lease: by the same clock
            return await tx.rows(
                f"UPDATE uploads SET lease_holder = ?, lease_expires = {now} + ? WHERE id = ? AND "
                f"(lease_holder IS NULL OR lease_holder = ? OR lease_expires < {now}) "
                f"RETURNING {_UPLOAD_COLUMNS}",
                holder,
                ttl,
                upload_id,
                holder,
            )

        rows = await self._write(work)
        return _upload(rows[0]) if rows else None

    async def upload_advance(
        self, upload_id: str, holder: str, *, size: int, hash_state: bytes, stage: bytes
    ) -> bool:
        async def work(tx: Transaction) -> int:
            return await tx.run(
                "UPDATE uploads SET size = ?, hash_state = ?, stage = ?, updated_at = ?, "
                "lease_holder = NULL, "
                "lease_expires = NULL WHERE id = ? AND lease_holder = ?",
                size,
                hash_state,
                stage,
                time.time(),
                upload_id,
                holder,
            )

        return await self._write(work) > 0

    async def upload_release(self, upload_id: str, holder: str) -> None:
        async def work(tx: Transaction) -> None:
            await tx.run(
                "UPDATE uploads SET lease_holder = NULL, lease_expires = NULL "
                "WHERE id = ? AND lease_holder = ?",
                upload_id,
                holder,
            )

        await self._write(work)

    async def upload_delete(self, upload_id: str) -> None:
        async def work(tx: Transaction) -> None:
            await tx.run("DELETE FROM uploads WHERE id = ?", upload_id)

        await self._write(work)

    async def uploads_older_than(self, timestamp: float) -> list[UploadRecord]:
        async def work(tx: Transaction) -> Sequence[Sequence[Any]]:
            # A session whose lease is live is being written to, however old its last change.
            return await tx.rows(
                f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE updated_at < ? "
                f"AND (lease_expires IS NULL OR lease_expires < {_CLOCK[tx.dialect]}) ORDER BY id",
                timestamp,
            )

        return [_upload(row) for row in await self._read(work)]

    # ------------------------------------------------- push-vs-sweep coordination

    async def publish_begin(self, digest: Digest, holder: str, ttl: float) -> bool:
        async def work(tx: Transaction) -> bool:
            await tx.shared(_GC_KEY)
            if await _being_deleted(tx, digest):
                return False
            await tx.run(
                f"INSERT INTO publishing (digest, holder, expires) VALUES (?, ?, {_CLOCK[tx.dialect]} + ?) "
                "ON CONFLICT (digest, holder) DO UPDATE SET expires = excluded.expires",
                digest,
                holder,
                ttl,
            )
            return True

        return await self._write(work)

    async def publish_end(self, digest: Digest, holder: str) -> None:
        async def work(tx: Transaction) -> None:
            await tx.run("DELETE FROM publishing WHERE digest = ? AND holder = ?", digest, holder)

        await self._write(work)

    # ------------------------------------------------------------ garbage collection

    async def collect_garbage(self, older_than: float, dry_run: bool) -> GCReport:
        async def work(tx: Transaction) -> GCReport:
            await tx.exclusive(_GC_KEY)
            report = GCReport()
            names = {int(row[0]): row[1] for row in await tx.rows("SELECT id, name FROM repositories")}
            dead = [
                (int(r), d)
                for r, d in await tx.rows(
                    _LIVE_MANIFESTS + "SELECT m.repository_id, m.digest FROM manifests m WHERE NOT EXISTS "
                    "(SELECT 1 FROM live l WHERE l.repository_id = m.repository_id AND l.digest = m.digest) "
                    "ORDER BY m.repository_id, m.digest",
                    older_than,
                )
            ]
            report.manifests = [(names[r], Digest(d)) for r, d in dead]
            await self._delete_manifests(tx, dead)
            dead_links = [
                (int(r), d)
                for r, d in await tx.rows(
                    "SELECT rb.repository_id, rb.digest FROM repository_blobs rb WHERE rb.linked_at < ? "
                    "AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb "
                    "WHERE mb.repository_id = rb.repository_id "
                    "AND mb.blob_digest = rb.digest) ORDER BY rb.repository_id, rb.digest",
                    older_than,
                )
            ]
            report.blob_links = [(names[r], Digest(d)) for r, d in dead_links]
            await tx.run_many(
                "DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?", dead_links
            )
            await self._sweep_blobs(tx, report, older_than)
            empty = await tx.rows(
                "SELECT id, name FROM repositories r WHERE created_at < ? "
                "AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id) "
                "AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = r.id) "
                "ORDER BY name",
                older_than,
            )
            report.repositories = [row[1] for row in empty]
            await tx.run_many("DELETE FROM repositories WHERE id = ?", [(row[0],) for row in empty])
            if dry_run:
                raise _Rollback(report)
            return report

        return await self._write(work)

    @staticmethod
    async def _sweep_blobs(tx: Transaction, report: GCReport, older_than: float) -> None:
        now = await _value(tx, f"SELECT {_CLOCK[tx.dialect]}")
        orphans = await tx.rows(
            "SELECT digest, size FROM blobs b WHERE pushed_at < ? "
            "AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest) "
            "AND NOT EXISTS (SELECT 1 FROM publishing p WHERE p.digest = b.digest AND p.expires >= ?) "
            "ORDER BY digest",
            older_than,
            now,
        )
        report.blobs = [Digest(digest) for digest, _ in orphans]
        report.freed_bytes = sum(int(size) for _, size in orphans)
        swept = [(digest,) for digest, _ in orphans]
        await tx.run_many("DELETE FROM blobs WHERE digest = ?", swept)
        await SQLMetadataStore._enter_deleting(tx, swept)
        await tx.run("DELETE FROM publishing WHERE expires < ?", now - _FORGET_ANNOUNCEMENTS)

    @staticmethod
    async def _enter_deleting(tx: Transaction, digests: list[tuple[str]]) -> None:
        """Enter blobs as being deleted, and drop their announcements (all expired: a live one
        keeps a blob from being collected), so that a publisher that announced one of them
        before it stalled is refused when it comes to link it (:meth:`link_blob`)."""
        await tx.run_many("DELETE FROM publishing WHERE digest = ?", digests)
        await tx.run_many(
            "INSERT INTO deleting (digest, since) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(digest, time.time()) for (digest,) in digests],
        )

    async def blob_delete_begin(self, digest: Digest) -> bool:
        async def work(tx: Transaction) -> bool:
            await tx.exclusive(_GC_KEY)
            if await tx.row("SELECT 1 FROM blobs WHERE digest = ?", digest) is not None:
                return False
            announced = f"SELECT 1 FROM publishing WHERE digest = ? AND expires >= {_CLOCK[tx.dialect]}"
            if await tx.row(announced, digest) is not None:
                return False
            await self._enter_deleting(tx, [(digest,)])
            return True

        return await self._write(work)

    async def blobs_being_deleted(self) -> list[Digest]:
        async def work(tx: Transaction) -> Sequence[Sequence[Any]]:
            return await tx.rows("SELECT digest FROM deleting ORDER BY digest")

        return [Digest(row[0]) for row in await self._read(work)]

    async def blob_delete_fence(self, digest: Digest, lease: str, holder: str, ttl: float) -> bool:
        async def work(tx: Transaction) -> bool:
            if not await self._take_lease(tx, lease, holder, ttl):
                return False
            return await _being_deleted(tx, digest)

        return await self._write(work)

    async def blob_deleted(self, digest: Digest, lease: str, holder: str) -> bool:
        async def work(tx: Transaction) -> bool:
            # The lease row is locked first: a holder taking the lease over either waits for
            # this removal (then finds the digest no longer being deleted) or has taken it
            # (then this removes nothing).
            current = await _value(tx, "SELECT holder FROM leases WHERE name = ?" + tx.for_update, lease)
            if current != holder:
                return False
            return await tx.run("DELETE FROM deleting WHERE digest = ?", digest) > 0

        return await self._write(work)

    # ------------------------------------------------------------------ leases

    @staticmethod
    async def _take_lease(tx: Transaction, name: str, holder: str, ttl: float) -> bool:
        """Renew or take the lease, by the database's clock; whether ``holder`` has it now.
        The row stays locked until the transaction ends (PostgreSQL locks it whether the
        upsert changes it or not)."""
        now = _CLOCK[tx.dialect]
        await tx.run(
            f"INSERT INTO leases (name, holder, expires) VALUES (?, ?, {now} + ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires "
            f"WHERE leases.holder = excluded.holder OR leases.expires < {now}",
            name,
            holder,
            ttl,
        )
        return bool(await _value(tx, "SELECT holder FROM leases WHERE name = ?", name) == holder)

    async def lease_acquire(self, name: str, holder: str, ttl: float) -> bool:
        async def work(tx: Transaction) -> bool:
            return await self._take_lease(tx, name, holder, ttl)

        return await self._write(work)

    async def lease_release(self, name: str, holder: str) -> None:
        async def work(tx: Transaction) -> None:
            await tx.run("DELETE FROM leases WHERE name = ? AND holder = ?", name, holder)

        await self._write(work)
