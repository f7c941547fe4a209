"""Image locations in skopeo's syntax, parsed and opened as sources and destinations.

=================================  ==========================================================
``docker://HOST/REPO[:TAG|@DIG]``  a repository of a registry (``ocikit.client.registry``)
``oci:DIR[:REF]``                  an OCI image layout directory; REF is a ref name or digest
``oci-archive:FILE[:REF]``         a tar of an OCI image layout
``NAME[:TAG|@DIGEST]``             the local image store (``busybox`` is
                                   ``docker.io/library/busybox:latest``)
=================================  ==========================================================

As in skopeo, ``oci:`` and ``oci-archive:`` split at the first ``:`` after the transport, so
the directory or file name cannot contain one, while the REF can
(``oci:/srv/store:docker.io/library/busybox:latest``).

Each transport's module is imported when a location of its kind is opened (the archive's brings
tarfile and the compressors): a command is a process of its own, and its start-up is part of
every push and pull a user times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

from ..spec import Platform, Reference, ReferenceError, parse_reference
from ..store.copy import DEFAULT_CONCURRENCY, CopyResult, ProgressCallback, copy_image
from ..store.layout import OCILayout
from ..store.refs import is_digest
from ..store.transport import ImageDestination, ImageSource, TransportError

__all__ = ["TransportSpec", "copy_between", "open_destination", "open_source", "parse_transport"]

Kind = Literal["docker", "oci", "oci-archive", "store"]

#: skopeo transports ocikit does not implement: named so the error says so, instead of the
#: text being taken for an image name of the local store.
_UNSUPPORTED = ("dir:", "docker-archive:", "docker-daemon:", "containers-storage:", "ostree:", "sif:")


class TransportSpec(msgspec.Struct, frozen=True):
    """A parsed location.

    ``location`` is the registry repository (``HOST/REPO``), the layout directory or archive
    file, or empty for the local store. ``reference`` is what to resolve there: a tag or
    digest, a layout ref name, a store name; None for a layout's only image. ``image`` is the
    parsed reference for ``docker://`` and the store.
    """

    kind: Kind
    location: str
    reference: str | None
    text: str
    image: Reference | None = None

    @property
    def tags(self) -> list[str]:
        """The names a copy *to* this location gives the image: none for a digest."""
        if self.reference is None or is_digest(self.reference.removeprefix("@")):
            return []
        if self.kind == "docker" and self.image is not None:
            return [self.image.tag] if self.image.tag else []
        return [self.reference]  # in the store, a pull by digest is named name@digest

    def __str__(self) -> str:
        return self.text


def _split_path(rest: str, text: str) -> tuple[str, str | None]:
    path, _, reference = rest.partition(":")
    if not path:
        raise TransportError(f"{text!r}: the path is empty")
    return path, reference or None


def parse_transport(text: str) -> TransportSpec:
    """Parse a location; raises TransportError with what is wrong."""
    if text.startswith("docker://"):
        rest = text.removeprefix("docker://")
        try:
            image = parse_reference(rest)
        except ReferenceError as exc:
            raise TransportError(f"{text!r}: {exc}") from None
        if image.digest is None and image.tag is None:
            image = Reference(image.registry, image.repository, tag="latest")
        return TransportSpec("docker", image.name, image.digest or image.tag, text, image)
    if text.startswith("oci-archive:"):
        path, reference = _split_path(text.removeprefix("oci-archive:"), text)
        return TransportSpec("oci-archive", path, reference, text)
    if text.startswith("oci:"):
        path, reference = _split_path(text.removeprefix("oci:"), text)
        return TransportSpec("oci", path, reference, text)
    if text.startswith(_UNSUPPORTED):
        raise TransportError(f"{text!r}: the {text.split(':')[0]} transport is not supported by ocikit")
    from ..store.images import normalize_name

    name = normalize_name(text)
    stored = None if is_digest(name) else parse_reference(name)
    return TransportSpec("store", "", name, text, stored)


def _open_registry(
    spec: TransportSpec, role: Literal["source", "destination"], options: dict[str, Any]
) -> Any:
    """``docker://`` dispatches to ``ocikit.client.registry`` (imported here, so that the
    local transports start without the HTTP client); ``options`` carries TLS and credentials."""
    from .registry import open_registry

    if spec.image is None:
        raise TransportError(f"{spec.text}: not a registry reference")
    return open_registry(spec.image, role, options)


def open_source(spec: TransportSpec, *, store: str | Path | None = None, **options: Any) -> ImageSource:
    """An ImageSource for ``spec``; ``store`` overrides the local store's location, other
    ``options`` are for the registry transport (TLS, credentials)."""
    if spec.kind == "docker":
        source: ImageSource = _open_registry(spec, "source", options)
        return source
    if spec.kind == "oci":
        return OCILayout.open(spec.location).source(owned=True)
    if spec.kind == "oci-archive":
        from ..store.archive import ArchiveSource

        return ArchiveSource(spec.location)
    from ..store.images import ImageStore

    return ImageStore(store).source(owned=True)


def open_destination(
    spec: TransportSpec, *, store: str | Path | None = None, **options: Any
) -> ImageDestination:
    """An ImageDestination for ``spec`` (see :func:`open_source`). A layout directory is
    created when missing; an archive file is replaced when the copy commits."""
    if spec.kind == "docker":
        destination: ImageDestination = _open_registry(spec, "destination", options)
        return destination
    if spec.kind == "oci":
        return OCILayout.open(spec.location, create=True).destination(owned=True)
    if spec.kind == "oci-archive":
        from ..store.archive import ArchiveDestination

        return ArchiveDestination(spec.location)
    from ..store.images import ImageStore

    return ImageStore(store).destination(owned=True)


async def copy_between(
    source: str | TransportSpec,
    destination: str | TransportSpec,
    *,
    platform: Platform | None = None,
    with_referrers: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: ProgressCallback | None = None,
    store: str | Path | None = None,
    **options: Any,
) -> CopyResult:
    """``ocikit copy SRC DST`` from Python: parse both locations, open them, copy (see
    :func:`ocikit.store.copy.copy_image`), close them whatever happens."""
    src = source if isinstance(source, TransportSpec) else parse_transport(source)
    dst = destination if isinstance(destination, TransportSpec) else parse_transport(destination)
    reader = open_source(src, store=store, **options)
    try:
        writer = open_destination(dst, store=store, **options)
        try:
            return await copy_image(
                reader,
                writer,
                src.reference,
                tags=dst.tags,
                platform=platform,
                with_referrers=with_referrers,
                concurrency=concurrency,
                progress=progress,
            )
        finally:
            await writer.close()
    finally:
        await reader.close()
