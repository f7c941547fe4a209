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
from .runtime import (
    Capabilities,
    Hook,
    Hooks,
    Linux,
    LinuxDevice,
    LinuxIDMapping,
    LinuxNamespace,
    Mount,
    POSIXRlimit,
    Process,
    Root,
    RuntimeConfig,
    RuntimeConfigError,
    User,
    dump_runtime_config,
    load_runtime_config,
)
from .validate import ValidationFailed, Violation, validate, validate_document

__all__ = [
    "EMPTY_DESCRIPTOR",
    "EMPTY_JSON",
    "Capabilities",
    "ContainerConfig",
    "Content",
    "Descriptor",
    "Digest",
    "DigestError",
    "Digester",
    "History",
    "Hook",
    "Hooks",
    "ImageConfig",
    "ImageIndex",
    "ImageLayout",
    "ImageManifest",
    "Linux",
    "LinuxDevice",
    "LinuxIDMapping",
    "LinuxNamespace",
    "Mount",
    "POSIXRlimit",
    "Platform",
    "Process",
    "Reference",
    "ReferenceError",
    "Root",
    "RootFS",
    "RuntimeConfig",
    "RuntimeConfigError",
    "User",
    "ValidationFailed",
    "VerificationError",
    "Violation",
    "chain_id",
    "chain_ids",
    "digest_of",
    "dump_runtime_config",
    "host_platform",
    "is_valid_digest",
    "load_runtime_config",
    "mediatype",
    "parse_platform",
    "parse_reference",
    "validate",
    "validate_document",
]
