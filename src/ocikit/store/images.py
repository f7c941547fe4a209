"""The local image store: one OCI image layout under ``$OCIKIT_STORE`` holding every image.

Blobs are shared by all images (a base layer is stored once); names live in ``index.json`` as
``org.opencontainers.image.ref.name`` annotations holding full references
(``docker.io/library/busybox:latest``, or ``name@sha256:…`` for an image pulled by digest),
updated atomically under a lock. Being a plain layout, the store can also be read by other
tools: ``skopeo inspect oci:$OCIKIT_STORE:docker.io/library/busybox:latest``.

:meth:`ImageStore.image` is the entry point for code that builds containers: it resolves a
name (and a platform, for an index) to a :class:`StoredImage` with the manifest, the config
and, per layer, its descriptor, diffID, chainID and the path of its blob.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import msgspec

from ..spec import (
    Content,
    Descriptor,
    ImageConfig,
    ImageIndex,
    ImageManifest,
    Platform,
    ReferenceError,
    chain_ids,
    host_platform,
    parse_reference,
)
from ..spec import mediatype as mt
from ..spec.digest import Digest
from . import refs
from .files import data_dir
from .layout import LayoutDestination, OCILayout
from .source import IndexedSource
from .transport import NotFound, TransportError

T = TypeVar("T")

__all__ = [
    "ImageStore",
    "StoredImage",
    "StoredLayer",
    "StoredName",
    "default_store_path",
    "normalize_name",
]


def default_store_path() -> Path:
    """``$OCIKIT_STORE``, else ``${XDG_DATA_HOME:-~/.local/share}/ocikit/store``."""
    explicit = os.environ.get("OCIKIT_STORE")
    if explicit:
        return Path(explicit)
    return data_dir("store")


def normalize_name(text: str) -> str:
    """The name the store keeps an image under, as Docker would resolve what was typed:
    ``busybox`` is ``docker.io/library/busybox:latest``; a digest reference keeps only the
    digest (``name@sha256:…``); a bare digest stays a digest."""
    if refs.is_digest(text):
        return text
    try:
        reference = parse_reference(text)
    except ReferenceError as exc:
        raise TransportError(str(exc)) from None
    if reference.digest is not None:
        return f"{reference.name}@{reference.digest}"
    return f"{reference.name}:{reference.tag or 'latest'}"


@dataclass(frozen=True, slots=True)
class StoredLayer:
    """One layer of a stored image. ``chain_id`` names this layer together with every layer
    beneath it: what a snapshot of the applied stack is keyed by."""

    descriptor: Descriptor
    diff_id: Digest
    chain_id: Digest
    path: Path

    @property
    def size(self) -> int:
        return self.descriptor.size

    def open(self) -> BinaryIO:
        """The blob as stored (compressed as ``descriptor.media_type`` says), for reading; a
        symlink planted in its place is refused."""
        return os.fdopen(os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")


@dataclass(frozen=True, slots=True)
class StoredImage:
    """A single-platform image as stored: everything needed to unpack and run it."""

    name: str | None
    descriptor: Descriptor
    index: Descriptor | None
    manifest: Content[ImageManifest]
    config: Content[ImageConfig]
    layers: tuple[StoredLayer, ...]

    @property
    def platform(self) -> Platform:
        return self.config.value.platform

    @property
    def size(self) -> int:
        """Bytes of manifest, config and (compressed) layers."""
        return self.descriptor.size + len(self.config.raw) + sum(layer.size for layer in self.layers)

    @property
    def chain_id(self) -> Digest | None:
        return self.layers[-1].chain_id if self.layers else None


@dataclass(frozen=True, slots=True)
class StoredName:
    """A name in the store and what it points to (a manifest or an index)."""

    name: str
    descriptor: Descriptor


class _StoreSource(IndexedSource):
    """Reads the store by the names people type (``busybox`` is
    ``docker.io/library/busybox:latest``)."""

    async def resolve(self, reference: str | None) -> Descriptor:
        return await super().resolve(None if reference is None else normalize_name(reference))


class _StoreDestination(LayoutDestination):
    """Writes into the store under full names: a tag ``busybox`` is stored as
    ``docker.io/library/busybox:latest``, so that it resolves the way it is typed."""

    async def put_manifest(self, descriptor: Descriptor, raw: bytes, tags: list[str]) -> None:
        await super().put_manifest(descriptor, raw, [normalize_name(tag) for tag in tags])


class ImageStore:
    """The local image store. Open with ``ImageStore()`` (default location) or
    ``ImageStore(path)``; close it, or use it as a context manager."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_path()
        self.layout = OCILayout.open(self.root, create=True)

    def close(self) -> None:
        self.layout.close()

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- names -------------------------------------------------------------------------------

    def names(self) -> list[StoredName]:
        """Every named image, in the order they were named."""
        return [
            StoredName(name, refs.entry_descriptor(entry))
            for entry in refs.entries(self.layout.read_index())
            if (name := refs.ref_name(entry)) is not None
        ]

    def resolve(self, name: str) -> Descriptor:
        """The manifest or index a name (or a digest) points to."""
        entry = refs.find(self.layout.read_index(), normalize_name(name), str(self.root))
        if entry is None:
            raise NotFound(f"no image {name} in the store")
        return refs.entry_descriptor(entry)

    def tag(self, name: str, new_name: str) -> Descriptor:
        """Give the image ``name`` points to a second name."""
        descriptor = self.resolve(name)
        target = normalize_name(new_name)
        if refs.is_digest(target) or "@" in target:
            raise TransportError(f"{new_name}: a new name needs a tag, not a digest")
        plain = Descriptor(media_type=descriptor.media_type, digest=descriptor.digest, size=descriptor.size)
        self.layout.update_index(lambda index: refs.set_ref(index, target, plain))
        return descriptor

    def remove(self, name: str) -> list[str]:
        """Forget a name (or, given a digest, every name of that image). The blobs stay until
        garbage collection finds them unreferenced. Returns the names removed."""
        target = normalize_name(name)
        removed: list[str] = []

        def forget(index: dict[str, Any]) -> None:
            keep = []
            for entry in index.get("manifests", []):
                entry_name = refs.ref_name(entry) if isinstance(entry, dict) else None
                if entry_name == target or (
                    refs.is_digest(target) and isinstance(entry, dict) and entry.get("digest") == target
                ):
                    removed.append(entry_name or str(entry.get("digest")))
                else:
                    keep.append(entry)
            index["manifests"] = keep

        self.layout.update_index(forget)
        if not removed:
            raise NotFound(f"no image {name} in the store")
        return removed

    # -- images ------------------------------------------------------------------------------

    def document(self, descriptor: Descriptor) -> bytes:
        """A stored manifest, index or config, verified."""
        return self.layout.source().read_document(descriptor)

    @classmethod
    def reading(cls, layout: OCILayout) -> ImageStore:
        """The images of another layout (``oci:DIR``), to read them as the store's are read.
        Its blobs are not trusted: open them through ``layout.locate``, never by path."""
        store = cls.__new__(cls)
        store.root, store.layout = layout.path, layout
        return store

    def image(self, name: str, platform: Platform | None = None) -> StoredImage:
        """The image ``name`` points to; for an index, its manifest for ``platform`` (default:
        this machine's platform)."""
        stored_name = None if refs.is_digest(name) else normalize_name(name)
        return self.image_of(self.resolve(name), platform, stored_name)

    def image_of(
        self, top: Descriptor, platform: Platform | None = None, name: str | None = None
    ) -> StoredImage:
        """The image of the manifest or index ``top``, as :meth:`image` chooses it."""
        index: Descriptor | None = None
        descriptor = top
        if top.media_type in mt.INDEX_TYPES:
            index = top
            descriptor = self._choose(top, platform or host_platform(), name or top.digest)
        elif top.media_type not in mt.MANIFEST_TYPES:
            raise TransportError(f"{name or top.digest} is a {top.media_type}, not an image")
        return self.load(descriptor, name, index)

    def load(
        self, descriptor: Descriptor, name: str | None = None, index: Descriptor | None = None
    ) -> StoredImage:
        """The image of the manifest ``descriptor`` (named or not, e.g. a platform's manifest
        recorded earlier by digest)."""
        manifest = self._parse(descriptor, ImageManifest)
        config = self._parse(manifest.value.config, ImageConfig)
        diff_ids = config.value.rootfs.diff_ids
        if len(diff_ids) != len(manifest.value.layers):
            raise TransportError(
                f"{name or descriptor.digest}: the config lists {len(diff_ids)} diffIDs for "
                f"{len(manifest.value.layers)} layers"
            )
        chains = chain_ids(diff_ids)
        layers = tuple(
            StoredLayer(layer, Digest(diff_id), chain, self.layout.blob_path(layer.digest))
            for layer, diff_id, chain in zip(manifest.value.layers, diff_ids, chains, strict=True)
        )
        return StoredImage(name, descriptor, index, manifest, config, layers)

    def platforms(self, name: str) -> list[Platform]:
        """The platforms an image offers: those of its index, or its config's."""
        top = self.resolve(name)
        if top.media_type in mt.INDEX_TYPES:
            index = self._parse(top, ImageIndex)
            return [m.platform for m in index.value.manifests if m.platform is not None]
        return [self.image(name).platform]

    def _choose(self, index_descriptor: Descriptor, wanted: Platform, name: str) -> Descriptor:
        index = self._parse(index_descriptor, ImageIndex)
        for child in index.value.manifests:
            if child.platform is not None and child.platform.matches(wanted):
                return child
        offered = ", ".join(str(m.platform) for m in index.value.manifests if m.platform) or "none"
        raise NotFound(f"{name} has no image for {wanted} (it offers: {offered})")

    def _parse(self, descriptor: Descriptor, kind: type[T]) -> Content[T]:
        raw = self.document(descriptor)
        try:
            return Content.parse(raw, kind, descriptor.media_type)
        except msgspec.DecodeError as exc:
            raise TransportError(f"{descriptor.digest} in the store is not a valid document: {exc}") from None

    # -- transports --------------------------------------------------------------------------

    def source(self, *, owned: bool = False) -> IndexedSource:
        """An ImageSource over the store, resolving names as people type them; ``owned``
        closes the store with the source."""
        on_close = self.close if owned else None
        return _StoreSource(str(self.root), self.layout.read_index, self.layout.locate, on_close)

    def destination(self, *, owned: bool = False) -> LayoutDestination:
        """An ImageDestination into the store; tags are names as people type them. Blobs found
        present are touched so that a concurrent ``gc`` keeps them until the image that
        reuses them is named."""
        return _StoreDestination(self.layout, touch_existing=True, owned=owned)
