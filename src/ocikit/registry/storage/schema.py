"""The metadata schema and its migrations: one list of steps for SQLite and PostgreSQL.

Steps are written in the SQL both databases share, but for what one of them alone has
(PostgreSQL's triggers that NOTIFY); :func:`statements` adapts the few words that differ
(PostgreSQL stores bytes as ``BYTEA``, generates ids with an identity column, and compares
text in byte order only under ``COLLATE "C"``, which names, tags and digests need).

A database records its version in ``schema_version``. Databases created before that table
existed hold exactly version 1 (``repositories`` present, no ``schema_version``). Migrations
only ever go forward, in the same transaction as the version they set (``schema_version``
exists from version 2 on).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["CURRENT_VERSION", "LINKS_CHANNEL", "MIGRATIONS", "statements"]

#: Where PostgreSQL announces a change to blob links (version 3 on).
LINKS_CHANNEL: Final = "ocikit_links_removed"

_V1: Final = """
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

# Version 2: the coordination of replicas moves into the database. Upload sessions carry
# their size, digest state, staging state and write lease (a version-1 session's size was its
# staging file's, which no longer counts: such sessions are dropped and clients start again);
# publish announcements, blobs being deleted and named leases get tables.
_V2: Final = """
DELETE FROM uploads;
ALTER TABLE uploads ADD COLUMN client TEXT NOT NULL DEFAULT '';
ALTER TABLE uploads ADD COLUMN size BIGINT NOT NULL DEFAULT 0;
ALTER TABLE uploads ADD COLUMN hash_state BLOB;
ALTER TABLE uploads ADD COLUMN stage BLOB;
ALTER TABLE uploads ADD COLUMN lease_holder TEXT;
ALTER TABLE uploads ADD COLUMN lease_expires DOUBLE PRECISION;
CREATE INDEX uploads_by_repository ON uploads (repository);
CREATE INDEX uploads_by_client ON uploads (client);
CREATE INDEX uploads_by_update ON uploads (updated_at);
CREATE TABLE publishing (
    digest TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (digest, holder)
);
CREATE TABLE deleting (
    digest TEXT PRIMARY KEY,
    since DOUBLE PRECISION NOT NULL
);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
"""

# Version 3: replicas remember blob links (``links.py``) while PostgreSQL tells them of every
# change that could make one wrong, whoever makes it (ocikit, or an operator's own SQL): a
# NOTIFY on LINKS_CHANNEL, one per transaction however many rows (identical
# notifications are folded into one). SQLite replicas remember nothing, so have nothing to do.
_V3: Final = {
    "sqlite": (),
    "postgresql": (
        f"""CREATE FUNCTION ocikit_links_removed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{LINKS_CHANNEL}', '');
            RETURN NULL;
        END $$""",
        """CREATE TRIGGER repository_blobs_removed
        AFTER DELETE OR UPDATE OF repository_id, digest ON repository_blobs
        FOR EACH ROW EXECUTE FUNCTION ocikit_links_removed()""",
        """CREATE TRIGGER repository_blobs_truncated AFTER TRUNCATE ON repository_blobs
        FOR EACH STATEMENT EXECUTE FUNCTION ocikit_links_removed()""",
        """CREATE TRIGGER repositories_renamed AFTER UPDATE OF id, name ON repositories
        FOR EACH ROW EXECUTE FUNCTION ocikit_links_removed()""",
        """CREATE TRIGGER blobs_resized AFTER UPDATE OF digest, size ON blobs
        FOR EACH ROW EXECUTE FUNCTION ocikit_links_removed()""",
    ),
}

#: Step ``i`` takes a database from version ``i`` to ``i + 1``: SQL both databases share, or
#: each database's own statements.
MIGRATIONS: Final[tuple[str | dict[str, tuple[str, ...]], ...]] = (_V1, _V2, _V3)
CURRENT_VERSION: Final = len(MIGRATIONS)

_POSTGRES_WORDS: Final = (
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
)


def statements(step: str | dict[str, tuple[str, ...]], dialect: str) -> list[str]:
    """The statements of one migration step, in ``dialect`` ('sqlite' or 'postgresql')."""
    if isinstance(step, dict):
        return list(step[dialect])
    if dialect == "postgresql":
        for pattern, replacement in _POSTGRES_WORDS:
            step = pattern.sub(replacement, step)
    return [statement.strip() for statement in step.split(";") if statement.strip()]
