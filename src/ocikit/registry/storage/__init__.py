"""Storage backends of the registry, each behind :mod:`.base`'s two interfaces."""

from .base import (
    BlobStore,
    GCReport,
    ManifestRecord,
    MetadataStore,
    Referrer,
    UploadOffsetError,
    UploadRecord,
)

__all__ = [
    "BlobStore",
    "GCReport",
    "ManifestRecord",
    "MetadataStore",
    "Referrer",
    "UploadOffsetError",
    "UploadRecord",
]
