"""What a manifest's descriptors say against what a repository stores: one rule for the push
handler (which refuses a lie) and for ``ocikit fsck --root`` (which reports stored ones).

A descriptor is judged only against content the repository holds. Reading before storing is
sound because what a digest names never changes: a blob's size and a manifest's bytes (hence
its size and media type) are fixed once stored, so a check passed now stays true.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from ..spec import mediatype as mt
from ..spec.digest import Digest
from .storage.base import MetadataStore

__all__ = ["Finding", "descriptor_findings", "descriptors_of", "required_references"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One descriptor that disagrees with stored content, or (``absent``) whose required
    content the repository does not hold."""

    #: Where in the manifest: ``config``, ``layers[2]``, ``manifests[0]``, ``subject``.
    where: str
    digest: str
    problem: str
    absent: bool = False

    def __str__(self) -> str:
        return f"descriptor {self.where} ({self.digest}) {self.problem}"


def descriptors_of(node: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The descriptors in ``node[key]`` (``layers``, ``manifests``), skipping anything else."""
    value = node.get(key)
    return [d for d in value if isinstance(d, dict)] if isinstance(value, list) else []


def _is_foreign(layer: dict[str, Any]) -> bool:
    return bool(layer.get("urls")) or layer.get("mediaType") in mt.NONDISTRIBUTABLE_LAYER_TYPES


def _described(node: dict[str, Any], media_type: str) -> Iterator[tuple[str, dict[str, Any], bool, bool]]:
    """(where, descriptor, is a manifest, must be present) for every descriptor of a
    validated manifest or index. A subject may be pushed later and a foreign layer is fetched
    from elsewhere: neither must be present."""
    if media_type in mt.INDEX_TYPES:
        for index, child in enumerate(descriptors_of(node, "manifests")):
            yield f"manifests[{index}]", child, True, True
    else:
        yield "config", node["config"], False, True
        for index, layer in enumerate(descriptors_of(node, "layers")):
            yield f"layers[{index}]", layer, False, not _is_foreign(layer)
    subject = node.get("subject")
    if isinstance(subject, dict):
        yield "subject", subject, True, False


def required_references(node: dict[str, Any], media_type: str) -> tuple[list[Digest], list[Digest]]:
    """(blobs, child manifests) that a validated manifest needs present in its repository."""
    blobs: list[Digest] = []
    children: list[Digest] = []
    for _, descriptor, is_manifest, required in _described(node, media_type):
        if required:
            (children if is_manifest else blobs).append(Digest(descriptor["digest"]))
    return blobs, children


async def descriptor_findings(
    metadata: MetadataStore, repository: str, node: dict[str, Any], media_type: str
) -> AsyncIterator[Finding]:
    """Every descriptor of a validated manifest that disagrees with what ``repository``
    stores (size; for a manifest also media type), and every required one that is absent.

    Each digest is looked up once: a 4 MiB index that repeats one child 28,000 times costs
    one query, not 28,000."""
    looked_up: dict[tuple[bool, Digest], tuple[int, str | None] | None] = {}
    for where, descriptor, is_manifest, required in _described(node, media_type):
        digest = Digest(descriptor["digest"])
        if (is_manifest, digest) not in looked_up:
            lookup = _stored_manifest if is_manifest else _stored_blob
            looked_up[is_manifest, digest] = await lookup(metadata, repository, digest)
        stored = looked_up[is_manifest, digest]
        if stored is None:
            if required:
                yield Finding(where, digest, "names content that is not in the repository", absent=True)
            continue
        problem = _disagreement(descriptor, *stored)
        if problem:
            yield Finding(where, digest, problem)


async def _stored_manifest(
    metadata: MetadataStore, repository: str, digest: Digest
) -> tuple[int, str | None] | None:
    record = await metadata.manifest(repository, digest)
    return None if record is None else (record.size, record.media_type)


async def _stored_blob(
    metadata: MetadataStore, repository: str, digest: Digest
) -> tuple[int, str | None] | None:
    size = await metadata.linked_blob_size(repository, digest)
    return None if size is None else (size, None)


def _disagreement(descriptor: dict[str, Any], size: int, media_type: str | None) -> str | None:
    kind = "blob" if media_type is None else "manifest"
    if descriptor.get("size") != size:
        return f"says size {descriptor.get('size')}, but the stored {kind} has {size} bytes"
    if media_type is not None and descriptor.get("mediaType") != media_type:
        return f"says mediaType {descriptor.get('mediaType')!r}, but the stored manifest is a {media_type}"
    return None
