"""The OCI data model: digests, media types, descriptors, manifests, indexes, configs,
platforms, references and the runtime bundle config, with validation.

This is the lowest layer of ocikit: it does no I/O and imports nothing else from the package.
"""

from . import mediatype
from .chain import chain_id, chain_ids
from .digest import Digest, Digester, DigestError, VerificationError, digest_of, is_valid_digest
from .models import (
    EMPTY_DESCRIPTOR,
    EMPTY_JSON,
    ContainerConfig,
    Content,
    Descriptor,
    History,
    ImageConfig,
    ImageIndex,
    ImageLayout,
    ImageManifest,
    RootFS,
)
from .platform import Platform, host_platform, parse_platform
from .reference import Reference, ReferenceError, parse_reference
from .validate import ValidationFailed, Violation, validate, validate_document

__all__ = [
    "EMPTY_DESCRIPTOR",
    "EMPTY_JSON",
    "ContainerConfig",
    "Content",
    "Descriptor",
    "Digest",
    "DigestError",
    "Digester",
    "History",
    "ImageConfig",
    "ImageIndex",
    "ImageLayout",
    "ImageManifest",
    "Platform",
    "Reference",
    "ReferenceError",
    "RootFS",
    "ValidationFailed",
    "VerificationError",
    "Violation",
    "chain_id",
    "chain_ids",
    "digest_of",
    "host_platform",
    "is_valid_digest",
    "mediatype",
    "parse_platform",
    "parse_reference",
    "validate",
    "validate_document",
]
