"""The ``docker://`` transport: images in a remote registry, read and written through the
:mod:`ocikit.store.transport` protocols. The implementations live in :mod:`.source` and
:mod:`.destination`; this module is the name the rest of ocikit imports them by."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ..spec import Reference, parse_reference
from .destination import RegistryDestination
from .options import ClientOptions
from .source import RegistrySource, referrers_tag

__all__ = [
    "RegistryDestination",
    "RegistrySource",
    "open_destination",
    "open_registry",
    "open_source",
    "referrers_tag",
]


def open_source(reference: str | Reference, options: ClientOptions | None = None) -> RegistrySource:
    """A source for ``HOST/REPO[:TAG|@DIGEST]`` (the part after ``docker://``)."""
    parsed = parse_reference(reference) if isinstance(reference, str) else reference
    return RegistrySource(parsed, options)


def open_destination(reference: str | Reference, options: ClientOptions | None = None) -> RegistryDestination:
    """A destination for ``HOST/REPO[:TAG]`` (the part after ``docker://``)."""
    parsed = parse_reference(reference) if isinstance(reference, str) else reference
    return RegistryDestination(parsed, options)


def open_registry(
    image: Reference, role: Literal["source", "destination"], options: Mapping[str, Any]
) -> RegistrySource | RegistryDestination:
    """The ``docker://`` end of a copy (what ``client.transports`` dispatches to).

    ``options`` are the keyword options of ``copy_between``: ``source_options`` and
    ``destination_options`` (a :class:`ClientOptions` each, as the ``--src-*``/``--dest-*``
    flags give) or ``client_options`` for both; none of them means the defaults. Blobs of the
    source are not hashed here: every destination verifies what it stores, so hashing twice
    would only cost time.
    """
    chosen = options.get(f"{role}_options") or options.get("client_options")
    if chosen is not None and not isinstance(chosen, ClientOptions):
        raise TypeError(f"{role}_options must be a ClientOptions, not {type(chosen).__name__}")
    if role == "source":
        return RegistrySource(image, chosen, verify_blobs=False)
    return RegistryDestination(image, chosen)
