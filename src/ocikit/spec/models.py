"""Typed models of the image-spec documents, as msgspec Structs.

Decoding is lenient where the spec asks for it: unknown fields are ignored (and survive,
because :class:`Content` keeps the bytes that were received). Semantic rules that msgspec
cannot express live in :mod:`ocikit.spec.validate`, which reports every violation with its
JSON path rather than stopping at the first.
"""

from __future__ import annotations

import base64
import functools
from typing import Any, Final, Generic, TypeVar

import msgspec

from . import mediatype
from .digest import Digest, digest_of
from .platform import Platform

__all__ = [
    "EMPTY_DESCRIPTOR",
    "EMPTY_JSON",
    "ContainerConfig",
    "Content",
    "Descriptor",
    "History",
    "ImageConfig",
    "ImageIndex",
    "ImageLayout",
    "ImageManifest",
    "RootFS",
    "decode",
    "encode",
]


class Descriptor(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A reference to content by media type, digest and size."""

    media_type: str = msgspec.field(name="mediaType")
    digest: str
    size: int
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    data: str | None = None
    platform: Platform | None = None
    artifact_type: str | None = msgspec.field(default=None, name="artifactType")

    def __post_init__(self) -> None:
        # msgspec encodes exact ``str`` only: a Digest kept here would make the descriptor (and
        # every document holding it) fail to encode with any encoder in the code base.
        if type(self.digest) is not str:
            self.digest = str(self.digest)

    @classmethod
    def of(cls, media_type: str, content: bytes, **extra: Any) -> Descriptor:
        """A descriptor of ``content`` (sha256)."""
        return cls(media_type=media_type, digest=digest_of(content), size=len(content), **extra)

    def embedded_data(self) -> bytes | None:
        """The decoded ``data`` field, or None when absent."""
        return None if self.data is None else base64.b64decode(self.data, validate=True)


class ImageManifest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An image manifest (OCI, or Docker v2 schema 2 which has the same shape)."""

    schema_version: int = msgspec.field(name="schemaVersion")
    media_type: str | None = msgspec.field(default=None, name="mediaType")
    artifact_type: str | None = msgspec.field(default=None, name="artifactType")
    config: Descriptor
    layers: list[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class ImageIndex(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An image index (OCI), or a Docker manifest list."""

    schema_version: int = msgspec.field(name="schemaVersion")
    media_type: str | None = msgspec.field(default=None, name="mediaType")
    artifact_type: str | None = msgspec.field(default=None, name="artifactType")
    manifests: list[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class ContainerConfig(msgspec.Struct, kw_only=True, omit_defaults=True, rename="pascal"):
    """The execution parameters of an image (``config`` in the image config)."""

    user: str | None = None
    exposed_ports: dict[str, dict[str, Any]] | None = None
    env: list[str] | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    volumes: dict[str, dict[str, Any]] | None = None
    working_dir: str | None = None
    labels: dict[str, str] | None = None
    stop_signal: str | None = None
    args_escaped: bool | None = None


class RootFS(msgspec.Struct, kw_only=True):
    type: str
    diff_ids: list[str]


class History(msgspec.Struct, kw_only=True, omit_defaults=True):
    created: str | None = None
    author: str | None = None
    created_by: str | None = None
    comment: str | None = None
    empty_layer: bool | None = None


class ImageConfig(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The image configuration (``application/vnd.oci.image.config.v1+json``)."""

    architecture: str
    os: str
    created: str | None = None
    author: str | None = None
    os_version: str | None = msgspec.field(default=None, name="os.version")
    os_features: list[str] | None = msgspec.field(default=None, name="os.features")
    variant: str | None = None
    config: ContainerConfig | None = None
    rootfs: RootFS
    history: list[History] | None = None

    @property
    def platform(self) -> Platform:
        return Platform(
            architecture=self.architecture,
            os=self.os,
            os_version=self.os_version,
            os_features=self.os_features,
            variant=self.variant,
        )


class ImageLayout(msgspec.Struct, kw_only=True):
    """The ``oci-layout`` file at the root of an image layout."""

    image_layout_version: str = msgspec.field(name="imageLayoutVersion")


EMPTY_JSON: Final = b"{}"
#: The descriptor of the two-byte ``{}`` blob used where a config or layer is meaningless.
EMPTY_DESCRIPTOR: Final = Descriptor(
    media_type=mediatype.OCI_EMPTY,
    digest=Digest("sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"),
    size=2,
    data="e30=",
)

T = TypeVar("T")


def enc_hook(value: object) -> object:
    """Lets msgspec encode ``str`` subclasses such as :class:`Digest` as the strings they are."""
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"cannot encode objects of type {type(value).__name__} as JSON")


_encoder: Final = msgspec.json.Encoder(enc_hook=enc_hook)


def decode(data: bytes | str, kind: type[T]) -> T:
    """Decode JSON into a model, raising ``msgspec.ValidationError`` with the JSON path."""
    return msgspec.json.decode(data, type=kind)


def encode(value: msgspec.Struct) -> bytes:
    """Compact JSON. Only for documents this process creates: received ones keep their bytes."""
    return _encoder.encode(value)


class Content(msgspec.Struct, Generic[T], frozen=True, dict=True):
    """A parsed document beside the exact bytes it was parsed from.

    Digests are always of ``raw``: a re-serialisation may differ in whitespace or key order and
    would name different content.
    """

    raw: bytes
    value: T
    media_type: str

    @classmethod
    def parse(cls, raw: bytes, kind: type[T], media_type: str) -> Content[T]:
        return cls(raw=raw, value=decode(raw, kind), media_type=media_type)

    @functools.cached_property  # kept in the instance's __dict__ (dict=True), outside its fields
    def digest(self) -> Digest:
        return digest_of(self.raw)

    def descriptor(self, **extra: Any) -> Descriptor:
        return Descriptor(media_type=self.media_type, digest=self.digest, size=len(self.raw), **extra)
