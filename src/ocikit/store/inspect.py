"""What an image is made of, read through any :class:`ImageSource`: the top document, and
per platform its manifest, config and layers with their sizes. ``ocikit inspect`` prints
this; it works the same for a registry, a layout, an archive or the local store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from ..spec import Descriptor, ImageConfig, Platform, VerificationError
from ..spec import mediatype as mt
from ..spec.digest import verify_bytes
from .copy import CopyError, parse_document
from .source import MAX_DOCUMENT
from .transport import ImageSource, TransportError

__all__ = ["ImageDescription", "ManifestDescription", "describe", "fetch_config"]


@dataclass(slots=True)
class ManifestDescription:
    """One image manifest. ``config`` is None when the config is not an image config (an
    artifact)."""

    descriptor: Descriptor
    raw: bytes
    config_descriptor: Descriptor
    config_raw: bytes
    config: ImageConfig | None
    layers: list[Descriptor]
    platform: Platform | None

    @property
    def size(self) -> int:
        """Manifest, config and layer bytes (layers as stored: compressed)."""
        return self.descriptor.size + self.config_descriptor.size + sum(layer.size for layer in self.layers)


@dataclass(slots=True)
class ImageDescription:
    """The image ``reference`` names: an index with several manifests, or one manifest."""

    descriptor: Descriptor
    raw: bytes
    manifests: list[ManifestDescription] = field(default_factory=list)
    platforms: list[Platform] = field(default_factory=list)

    @property
    def is_index(self) -> bool:
        return self.descriptor.media_type in mt.INDEX_TYPES


async def fetch_config(source: ImageSource, descriptor: Descriptor) -> bytes:
    """A config blob, bounded and verified (configs are blobs, so the source does not check)."""
    if descriptor.size > MAX_DOCUMENT:
        raise TransportError(f"config {descriptor.digest} is larger than {MAX_DOCUMENT} bytes")
    chunks: list[bytes] = []
    received = 0
    async for chunk in source.open_blob(descriptor):
        received += len(chunk)
        if received > descriptor.size:
            raise VerificationError(f"config {descriptor.digest}: longer than its {descriptor.size} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        verify_bytes(raw, descriptor.digest, descriptor.size)
    except ValueError as exc:
        raise type(exc)(f"config {descriptor.digest}: {exc}") from None
    return raw


async def _manifest(
    source: ImageSource, descriptor: Descriptor, platform: Platform | None
) -> ManifestDescription:
    raw = await source.fetch_manifest(descriptor)
    node = parse_document(descriptor, raw)
    try:
        config_descriptor = msgspec.convert(node["config"], Descriptor)
        layers = msgspec.convert(node.get("layers", []), list[Descriptor])
    except (KeyError, msgspec.ValidationError) as exc:
        raise CopyError(f"{descriptor.digest} is not an image manifest: {exc}") from None
    config_raw = await fetch_config(source, config_descriptor)
    config = None
    if config_descriptor.media_type in mt.CONFIG_TYPES:
        try:
            config = msgspec.json.decode(config_raw, type=ImageConfig)
        except msgspec.DecodeError as exc:
            raise CopyError(f"config {config_descriptor.digest}: {exc}") from None
    if platform is None and config is not None:
        platform = config.platform
    return ManifestDescription(descriptor, raw, config_descriptor, config_raw, config, layers, platform)


async def describe(
    source: ImageSource, reference: str | None, platform: Platform | None = None
) -> ImageDescription:
    """Read the image at ``source``; for an index every platform's manifest, or only the one
    matching ``platform``."""
    top = await source.resolve(reference)
    top = Descriptor(media_type=top.media_type, digest=top.digest, size=top.size)
    raw = await source.fetch_manifest(top)
    node = parse_document(top, raw)
    result = ImageDescription(top, raw)
    if top.media_type in mt.INDEX_TYPES or (top.media_type not in mt.MANIFEST_TYPES and "manifests" in node):
        children = msgspec.convert(node.get("manifests", []), list[Descriptor])
        result.platforms = [c.platform for c in children if c.platform is not None]
        chosen = [c for c in children if platform is None or _offers(c, platform)]
        if not chosen:
            offered = ", ".join(map(str, result.platforms)) or "none"
            name = reference or top.digest
            raise CopyError(f"{name} has no manifest for {platform} (it offers: {offered})")
        for child in chosen if platform is None else chosen[:1]:
            if child.media_type in mt.MANIFEST_TYPES:
                result.manifests.append(await _manifest(source, child, child.platform))
    else:
        result.manifests.append(await _manifest(source, top, None))
        if result.manifests[0].platform is not None:
            result.platforms = [result.manifests[0].platform]
    return result


def _offers(child: Descriptor, wanted: Platform) -> bool:
    return child.platform is not None and child.platform.matches(wanted)
