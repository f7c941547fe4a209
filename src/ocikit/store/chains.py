"""Which layer stacks the local store's images use: the ChainIDs that snapshot garbage
collection must keep.

Every ``index.json`` entry counts, named or not (``ocikit create`` from a layout or an
archive keeps its image unnamed, by digest), and every platform of an index. A child
manifest that is absent is skipped: a store may hold an index without all its platforms.
Anything else that cannot be read is an error, because a collector that cannot tell what is
in use must not guess.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..spec import Descriptor, chain_ids
from ..spec import mediatype as mt
from . import refs
from .images import ImageStore
from .transport import NotFound, TransportError

__all__ = ["stored_chain_ids"]


def _decode(store: ImageStore, descriptor: Descriptor) -> Any:
    try:
        return msgspec.json.decode(store.document(descriptor))
    except msgspec.DecodeError as exc:
        raise TransportError(f"{descriptor.digest} in the store is not JSON: {exc}") from None


def _descriptors(node: Any, key: str) -> list[Descriptor]:
    items = node.get(key) if isinstance(node, dict) else None
    found = []
    for item in items if isinstance(items, list) else []:
        try:
            found.append(msgspec.convert(item, Descriptor))
        except msgspec.ValidationError:
            continue
    return found


def _config_chains(store: ImageStore, manifest: Any) -> list[str]:
    config = _descriptors({"config": [manifest.get("config")]}, "config")
    if not config or config[0].media_type not in mt.CONFIG_TYPES:
        return []  # an artifact (signature, SBOM...), not an image: no layers to unpack
    document = _decode(store, config[0])
    rootfs = document.get("rootfs") if isinstance(document, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        return []
    try:
        return [str(chain) for chain in chain_ids(diff_ids)]
    except ValueError:
        return []  # a malformed diffID: such an image was never unpacked


def stored_chain_ids(store: ImageStore) -> set[str]:
    """The ChainID of every layer prefix of every image in ``store``."""
    pending = [(refs.entry_descriptor(entry), False) for entry in refs.entries(store.layout.read_index())]
    seen: set[str] = set()
    chains: set[str] = set()
    while pending:
        descriptor, optional = pending.pop()
        if descriptor.digest in seen:
            continue
        seen.add(descriptor.digest)
        try:
            node = _decode(store, descriptor)
        except NotFound:
            if optional:
                continue
            raise
        if descriptor.media_type in mt.INDEX_TYPES or (isinstance(node, dict) and "manifests" in node):
            pending.extend((child, True) for child in _descriptors(node, "manifests"))
        elif isinstance(node, dict):
            chains.update(_config_chains(store, node))
    return chains
