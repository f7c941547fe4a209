"""The two narrow interfaces every image transport implements: a source and a destination.

``ocikit copy`` moves an image between any pair of them without knowing what is behind either:
a remote registry (``docker://``, in ``ocikit.client``), an OCI image layout (``oci:``), an
``oci-archive:`` tarball or the local image store. A new transport is one new module that
implements these two protocols; the copy engine and the command line stay as they are.

Contract shared by all implementations:

- Manifests and indexes travel as their exact bytes. Nobody re-serialises a received document,
  because a digest names bytes, not the JSON value they encode.
- Every byte is verified against the descriptor it was asked for (size and digest) before it
  becomes visible at a destination. A destination that receives a wrong blob raises
  ``ocikit.spec.VerificationError`` and keeps nothing of it.
- Blob bodies are async iterators of chunks, so a copy runs in constant memory whatever the
  blob's size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from ..spec import Descriptor
from .files import BlobFile


class TransportError(Exception):
    """A transport could not do what was asked; the message is meant for the user."""


class NotFound(TransportError):
    """The reference, manifest or blob does not exist at this transport."""


class BlobLost(TransportError):
    """A destination lost a blob part-way through writing it and cannot continue from where it
    was; sending the blob again from its start can succeed (the copy engine does so)."""


@runtime_checkable
class ImageSource(Protocol):
    """Somewhere images are read from."""

    async def resolve(self, reference: str | None) -> Descriptor:
        """The descriptor (media type, digest, size) of the manifest or index that ``reference``
        names: a tag, a digest, or None for the transport's default (``latest``, or a layout's
        only image)."""
        ...

    async def fetch_manifest(self, descriptor: Descriptor) -> bytes:
        """The exact bytes of a manifest or index, verified against ``descriptor``."""
        ...

    def open_blob(self, descriptor: Descriptor, offset: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset`` on, in chunks. The caller verifies the digest; an
        implementation that can resume (HTTP Range) honours ``offset``."""
        ...

    async def referrers(self, descriptor: Descriptor, artifact_type: str | None = None) -> list[Descriptor]:
        """Manifests whose ``subject`` is ``descriptor``: an empty list where there are none
        or the transport cannot know."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class ImageDestination(Protocol):
    """Somewhere images are written to."""

    async def has_blob(self, descriptor: Descriptor) -> bool:
        """Whether the blob (or manifest) is already there, so that a copy can skip it."""
        ...

    async def put_blob(self, descriptor: Descriptor, chunks: AsyncIterator[bytes]) -> None:
        """Store a blob, verifying it against ``descriptor`` before it becomes visible."""
        ...

    async def put_manifest(self, descriptor: Descriptor, raw: bytes, tags: list[str]) -> None:
        """Store a manifest or index under its digest and, if given, under each of ``tags``.
        Called only after every blob and child manifest it refers to is in place."""
        ...

    async def commit(self) -> None:
        """Make what was written durable and visible (an archive is finished here)."""
        ...

    async def close(self) -> None: ...


# Optional capabilities. A transport offers one by having the method; the copy engine checks
# with ``isinstance`` (the protocols are runtime-checkable) and falls back to the plain
# protocol above when it is missing, so none of them is ever required.


@runtime_checkable
class BlobFileSource(Protocol):
    """A source whose blobs are spans of local files (a layout, an uncompressed archive), so
    that a copy to a local destination can run in the kernel (``copy_file_range``)."""

    def blob_file(self, descriptor: Descriptor) -> BlobFile | None:
        """The blob as an open file span, or None when it is not available that way. The
        caller closes it. The span is not verified: the destination verifies what it stores."""
        ...


@runtime_checkable
class BlobFileDestination(Protocol):
    """A destination that can take a blob from a file span without the bytes passing through
    Python."""

    async def put_blob_from_file(self, descriptor: Descriptor, blob: BlobFile) -> None:
        """Like ``put_blob``, verified the same way, from a file span."""
        ...


@runtime_checkable
class UntaggedRoots(Protocol):
    """A destination where an image copied without a tag must be recorded to stay reachable:
    an image layout lists it in ``index.json`` without a ref name, as skopeo does for
    ``oci:DIR``. A registry keeps untagged manifests by digest and needs no such call."""

    async def add_root(self, descriptor: Descriptor) -> None: ...


@runtime_checkable
class MountsBlobs(Protocol):
    """A destination that can make a blob appear without transferring it: a registry
    destination mounting from another repository of the same registry (distribution-spec
    cross-repository mount), the copy's ``source`` or one it remembers holding the blob. The copy
    engine asks it first, before checking whether the destination has the blob, so it must send
    nothing when it knows no place to mount from."""

    async def mount_blob(self, descriptor: Descriptor, source: ImageSource) -> bool:
        """True when the blob is now at the destination; False to fall back to copying."""
        ...


__all__ = [
    "BlobFileDestination",
    "BlobFileSource",
    "BlobLost",
    "ImageDestination",
    "ImageSource",
    "MountsBlobs",
    "NotFound",
    "TransportError",
    "UntaggedRoots",
]
