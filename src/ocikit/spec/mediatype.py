"""Media types of the OCI image-spec and of Docker's image manifest v2 schema 2.

Unknown media types are legal almost everywhere in the specs; these constants are for the
places that must recognise a type (choosing a parser, a decompressor, a platform index).
"""

from __future__ import annotations

from typing import Final

# OCI image-spec
OCI_DESCRIPTOR: Final = "application/vnd.oci.descriptor.v1+json"
OCI_LAYOUT_HEADER: Final = "application/vnd.oci.layout.header.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDISTRIBUTABLE_ZSTD: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY: Final = "application/vnd.oci.empty.v1+json"

# Docker image manifest v2, schema 2
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD: Final = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_PLUGIN_CONFIG: Final = "application/vnd.docker.plugin.v1+json"

MANIFEST_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES: Final = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
#: Types a registry stores under /manifests/ and that reference other content.
IMAGE_DOCUMENT_TYPES: Final = MANIFEST_TYPES | INDEX_TYPES
CONFIG_TYPES: Final = frozenset({OCI_CONFIG, DOCKER_CONFIG})

UNCOMPRESSED_LAYER_TYPES: Final = frozenset({OCI_LAYER, OCI_LAYER_NONDISTRIBUTABLE, DOCKER_LAYER})
GZIP_LAYER_TYPES: Final = frozenset(
    {OCI_LAYER_GZIP, OCI_LAYER_NONDISTRIBUTABLE_GZIP, DOCKER_LAYER_GZIP, DOCKER_FOREIGN_LAYER_GZIP}
)
ZSTD_LAYER_TYPES: Final = frozenset({OCI_LAYER_ZSTD, OCI_LAYER_NONDISTRIBUTABLE_ZSTD, DOCKER_LAYER_ZSTD})
LAYER_TYPES: Final = UNCOMPRESSED_LAYER_TYPES | GZIP_LAYER_TYPES | ZSTD_LAYER_TYPES
#: Layers whose blobs may legitimately be absent from a registry or layout.
NONDISTRIBUTABLE_LAYER_TYPES: Final = frozenset(
    {
        OCI_LAYER_NONDISTRIBUTABLE,
        OCI_LAYER_NONDISTRIBUTABLE_GZIP,
        OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
        DOCKER_FOREIGN_LAYER_GZIP,
    }
)

# RFC 6838 section 4.2: restricted-name = first char alnum, then up to 126 of these.
_RESTRICTED_FIRST: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_RESTRICTED_CHARS: Final = _RESTRICTED_FIRST | frozenset("!#$&-^_.+")
_MAX_NAME: Final = 127


def _restricted_name_error(name: str, part: str) -> str | None:
    if not name:
        return f"the {part} is empty"
    if name[0] not in _RESTRICTED_FIRST:
        return f"the {part} {name!r} must start with a letter or digit"
    if len(name) > _MAX_NAME:
        return f"the {part} is longer than {_MAX_NAME} characters"
    bad = next((c for c in name if c not in _RESTRICTED_CHARS), None)
    if bad is not None:
        return f"the {part} {name!r} has {bad!r}, not allowed by RFC 6838 section 4.2"
    return None


def media_type_error(value: str) -> str | None:
    """Why ``value`` is not an RFC 6838 ``type/subtype`` media type, or None when it is.

    Parameters (``; charset=…``) are refused: descriptors carry bare media types.
    """
    kind, slash, subtype = value.partition("/")
    if not slash:
        return f"{value!r} is not of the form type/subtype"
    return _restricted_name_error(kind, "type") or _restricted_name_error(subtype, "subtype")


def is_valid_media_type(value: object) -> bool:
    return isinstance(value, str) and media_type_error(value) is None


def layer_compression(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"``, ``""`` (plain tar) for a known layer type, None otherwise."""
    if media_type in GZIP_LAYER_TYPES:
        return "gzip"
    if media_type in ZSTD_LAYER_TYPES:
        return "zstd"
    if media_type in UNCOMPRESSED_LAYER_TYPES:
        return ""
    return None
