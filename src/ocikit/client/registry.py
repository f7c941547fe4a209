"""The ``docker://`` transport: images in a remote registry, read and written through the
:mod:`ocikit.store.transport` protocols. The implementations live in :mod:`.source` and
:mod:`.destination`; this module is the name the rest of ocikit imports them by."""

from __future__ import annotations

from ..spec import Reference, parse_reference
from .destination import RegistryDestination
from .options import ClientOptions
from .source import RegistrySource, referrers_tag

__all__ = ["RegistryDestination", "RegistrySource", "open_destination", "open_source", "referrers_tag"]


def open_source(reference: str | Reference, options: ClientOptions | None = None) -> RegistrySource:
    """A source for ``HOST/REPO[:TAG|@DIGEST]`` (the part after ``docker://``)."""
    parsed = parse_reference(reference) if isinstance(reference, str) else reference
    return RegistrySource(parsed, options)


def open_destination(reference: str | Reference, options: ClientOptions | None = None) -> RegistryDestination:
    """A destination for ``HOST/REPO[:TAG]`` (the part after ``docker://``)."""
    parsed = parse_reference(reference) if isinstance(reference, str) else reference
    return RegistryDestination(parsed, options)
