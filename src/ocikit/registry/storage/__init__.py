"""Storage backends of the registry, each behind :mod:`.base`'s two interfaces, and the
factory that picks them from the ``storage`` and ``metadata`` settings (URLs).

Backends are imported only when a URL names them, so that the embedded default needs none
of the object-store or PostgreSQL client libraries loaded.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..settings import Settings, SettingsError
from .base import (
    BlobInfo,
    BlobStore,
    DeleteOutcome,
    GCReport,
    ManifestRecord,
    MetadataStore,
    Referrer,
    SchemaError,
    StorageUnavailable,
    UploadRecord,
)

__all__ = [
    "BlobInfo",
    "BlobStore",
    "DeleteOutcome",
    "GCReport",
    "ManifestRecord",
    "MetadataStore",
    "Referrer",
    "SchemaError",
    "StorageUnavailable",
    "UploadRecord",
    "blob_store_for",
    "metadata_store_for",
]


def blob_store_for(settings: Settings) -> BlobStore:
    """The (not yet opened) blob store ``settings.storage`` names; files under the root by default."""
    url = settings.storage or Path(settings.root).absolute().as_uri()
    parts = urlsplit(url)
    if parts.scheme == "file":
        from .filesystem import FilesystemBlobStore

        return FilesystemBlobStore(unquote(parts.path))
    if parts.scheme == "s3":
        try:
            from .s3 import S3BlobStore  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise SettingsError(f"storage {url}: S3 storage is not available in this build ({exc})") from None
        store: BlobStore = S3BlobStore(
            parts.netloc,
            parts.path.strip("/"),
            endpoint=settings.s3_endpoint or None,
            region=settings.s3_region or None,
        )
        return store
    raise SettingsError(f"storage must be file:///PATH or s3://BUCKET[/PREFIX], got {url!r}")


def metadata_store_for(settings: Settings) -> MetadataStore:
    """The (not yet opened) metadata store ``settings.metadata`` names; SQLite under the root by default."""
    url = settings.metadata or f"sqlite://{Path(settings.root).absolute() / 'metadata.db'}"
    scheme = url.partition("://")[0]
    if scheme == "sqlite":
        from .sqlite import SQLiteMetadataStore

        return SQLiteMetadataStore(unquote(urlsplit(url).path))
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresMetadataStore

        return PostgresMetadataStore(url)
    raise SettingsError(f"metadata must be sqlite:///PATH or postgresql://..., got {url!r}")
