"""An :class:`ImageSource` over anything shaped like an image layout: an ``index.json`` and
blobs that are spans of local files. The layout directory and the ``oci-archive`` tarball
differ only in where those spans live, so both read through this one class.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import msgspec

from ..spec import Descriptor
from ..spec import mediatype as mt
from ..spec.digest import VerificationError, verify_bytes
from . import refs
from .files import BlobFile
from .transport import NotFound, TransportError

__all__ = ["MAX_DOCUMENT", "IndexedSource"]

#: Manifests and indexes larger than this are refused, as registries refuse them.
MAX_DOCUMENT: Final = 4 * 1024 * 1024


class IndexedSource:
    """Images of a layout-shaped store, read and verified.

    ``load_index`` returns the current ``index.json`` (re-read on each resolve, so refs
    written by another process meanwhile are seen); ``locate`` opens a blob as a file span
    or returns None when it is absent.
    """

    def __init__(
        self,
        where: str,
        load_index: Callable[[], dict[str, Any]],
        locate: Callable[[str], BlobFile | None],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.where = where
        self._load_index = load_index
        self._locate = locate
        self._on_close = on_close
        self._documents: dict[str, bytes] = {}

    # -- ImageSource -------------------------------------------------------------------------

    async def resolve(self, reference: str | None) -> Descriptor:
        entry = refs.find(self._load_index(), reference, self.where)
        if entry is not None:
            return refs.entry_descriptor(entry)
        assert reference is not None  # find() returns None only for an unlisted digest
        return self._descriptor_of_blob(reference.removeprefix("@"))

    async def fetch_manifest(self, descriptor: Descriptor) -> bytes:
        return self.read_document(descriptor)

    async def open_blob(self, descriptor: Descriptor, offset: int = 0) -> AsyncIterator[bytes]:
        with self._open(descriptor) as blob:
            for chunk in blob.chunks(offset):
                yield chunk

    async def referrers(self, descriptor: Descriptor, artifact_type: str | None = None) -> list[Descriptor]:
        """Manifests listed in ``index.json`` whose ``subject`` is ``descriptor``: that is where
        a layout keeps referrers (image-spec 1.1 tools add them there untagged)."""
        found: list[Descriptor] = []
        seen: set[str] = set()
        for entry in refs.entries(self._load_index()):
            if entry["digest"] in seen or entry["mediaType"] not in mt.IMAGE_DOCUMENT_TYPES:
                continue
            seen.add(entry["digest"])
            node = self._try_document(refs.entry_descriptor(entry))
            subject = node.get("subject") if isinstance(node, dict) else None
            if not isinstance(subject, dict) or subject.get("digest") != descriptor.digest:
                continue
            kind = _artifact_type(node)
            if artifact_type is not None and kind != artifact_type:
                continue
            annotations = node.get("annotations") if isinstance(node.get("annotations"), dict) else None
            found.append(
                Descriptor(
                    media_type=entry["mediaType"],
                    digest=entry["digest"],
                    size=entry["size"],
                    artifact_type=kind,
                    annotations=annotations,
                )
            )
        return found

    async def close(self) -> None:
        self._documents.clear()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    # -- BlobFileSource ----------------------------------------------------------------------

    def blob_file(self, descriptor: Descriptor) -> BlobFile | None:
        return self._locate(descriptor.digest)

    # -- helpers -----------------------------------------------------------------------------

    def _open(self, descriptor: Descriptor) -> BlobFile:
        blob = self._locate(descriptor.digest)
        if blob is None:
            raise NotFound(f"{self.where}: blob {descriptor.digest} is missing")
        return blob

    def read_document(self, descriptor: Descriptor) -> bytes:
        """A manifest, index or config, verified against ``descriptor`` (size first)."""
        cached = self._documents.get(descriptor.digest)
        if cached is not None and len(cached) == descriptor.size:
            return cached
        if descriptor.size > MAX_DOCUMENT:
            raise TransportError(f"{self.where}: {descriptor.digest} is larger than {MAX_DOCUMENT} bytes")
        with self._open(descriptor) as blob:
            if blob.size != descriptor.size:
                raise VerificationError(
                    f"{self.where}: {descriptor.digest} has {blob.size} bytes, its descriptor says "
                    f"{descriptor.size}"
                )
            raw = b"".join(blob.chunks())
        try:
            verify_bytes(raw, descriptor.digest, descriptor.size)
        except ValueError as exc:
            raise type(exc)(f"{self.where}: {descriptor.digest}: {exc}") from None
        self._documents[descriptor.digest] = raw
        return raw

    def _try_document(self, descriptor: Descriptor) -> Any:
        with contextlib.suppress(TransportError, ValueError, msgspec.DecodeError):
            return msgspec.json.decode(self.read_document(descriptor))
        return None

    def _descriptor_of_blob(self, digest: str) -> Descriptor:
        """A digest not listed in ``index.json``: the blob itself says what it is."""
        blob = self._locate(digest)
        if blob is None:
            raise NotFound(f"{self.where} has no manifest {digest}")
        with blob:
            size = blob.size
        node = self._try_document(Descriptor(media_type="", digest=digest, size=size))
        media_type = node.get("mediaType") if isinstance(node, dict) else None
        if not isinstance(media_type, str):
            if isinstance(node, dict) and "manifests" in node:
                media_type = mt.OCI_INDEX
            elif isinstance(node, dict) and "layers" in node:
                media_type = mt.OCI_MANIFEST
            else:
                raise TransportError(f"{self.where}: {digest} is not a manifest or index")
        return Descriptor(media_type=media_type, digest=digest, size=size)


def _artifact_type(node: dict[str, Any]) -> str | None:
    """What the referrers API reports as a manifest's artifactType: its own, else its config's
    media type (distribution-spec)."""
    kind = node.get("artifactType")
    if isinstance(kind, str):
        return kind
    config = node.get("config")
    media_type = config.get("mediaType") if isinstance(config, dict) else None
    return media_type if isinstance(media_type, str) else None
