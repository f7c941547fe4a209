"""``index.json`` of an image layout as a table of references.

A reference is the ``org.opencontainers.image.ref.name`` annotation of an ``index.json``
entry, which is how skopeo, umoci and containerd name images in a layout (``oci:DIR:REF``).
The index is kept as decoded JSON rather than typed models so that entries and fields
written by other tools survive our updates untouched.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ..spec import Descriptor
from ..spec import mediatype as mt
from ..spec.digest import REGISTERED_ALGORITHMS, digest_error
from .transport import NotFound, TransportError

__all__ = [
    "MAX_INDEX",
    "REF_NAME",
    "add_untagged",
    "decode_index",
    "empty_index",
    "encode_index",
    "entries",
    "entry_descriptor",
    "find",
    "is_digest",
    "ref_name",
    "remove_ref",
    "set_ref",
]

REF_NAME: Final = "org.opencontainers.image.ref.name"
#: index.json of an untrusted layout is read whole, so it is bounded: 64 MiB is some 250,000
#: entries, far beyond any real store.
MAX_INDEX: Final = 64 * 1024 * 1024


def empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}


def decode_index(raw: bytes, where: str) -> dict[str, Any]:
    """The decoded ``index.json``, or a TransportError saying why it is unusable."""
    try:
        node = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise TransportError(f"{where}: index.json is not valid JSON ({exc})") from None
    if not isinstance(node, dict) or not isinstance(node.get("manifests", []), list):
        raise TransportError(f"{where}: index.json is not an image index")
    node.setdefault("manifests", [])
    return node


def encode_index(index: dict[str, Any]) -> bytes:
    return msgspec.json.encode(index)


def entries(index: dict[str, Any]) -> list[dict[str, Any]]:
    """The well-formed entries (object, digest, size, media type); others are skipped, not
    fatal, because one bad entry must not make every other image unreadable."""
    found = []
    for entry in index.get("manifests", []):
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("digest"), str)
            and digest_error(entry["digest"]) is None
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("mediaType"), str)
        ):
            found.append(entry)
    return found


def ref_name(entry: dict[str, Any]) -> str | None:
    annotations = entry.get("annotations")
    name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else None


def entry_descriptor(entry: dict[str, Any]) -> Descriptor:
    """The entry as a descriptor, without the layout-only ref-name annotation."""
    try:
        descriptor = msgspec.convert(entry, Descriptor)
    except msgspec.ValidationError as exc:
        raise TransportError(f"index.json entry {entry.get('digest')}: {exc}") from None
    annotations = {k: v for k, v in (descriptor.annotations or {}).items() if k != REF_NAME}
    descriptor.annotations = annotations or None
    return descriptor


def is_digest(text: str) -> bool:
    """Whether a reference typed by a user is a digest rather than a name. Only registered
    algorithms count: ``demo:1`` is digest-shaped by the grammar but is a name and a tag."""
    return text.partition(":")[0] in REGISTERED_ALGORITHMS and digest_error(text) is None


def find(index: dict[str, Any], reference: str | None, where: str) -> dict[str, Any] | None:
    """The entry ``reference`` names: a ref name, a digest (``sha256:…`` or ``@sha256:…``), or
    None for the only image of the layout. None when a digest is not listed (the caller may
    still find the blob); NotFound for an unknown name."""
    listed = entries(index)
    if reference is None:
        if len(listed) != 1:
            raise TransportError(
                f"{where} holds {len(listed)} images; name one ({', '.join(_names(listed)) or 'none named'})"
            )
        return listed[0]
    digest = reference.removeprefix("@")
    if is_digest(digest):
        return next((e for e in listed if e["digest"] == digest), None)
    named = [e for e in listed if ref_name(e) == reference]
    if not named:
        raise NotFound(f"{where} has no image named {reference!r}")
    return named[-1]


def _names(listed: list[dict[str, Any]]) -> list[str]:
    return [name for e in listed if (name := ref_name(e)) is not None]


def _entry(descriptor: Descriptor, name: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "mediaType": descriptor.media_type,
        "digest": descriptor.digest,
        "size": descriptor.size,
    }
    if descriptor.platform is not None:
        entry["platform"] = msgspec.to_builtins(descriptor.platform)
    if descriptor.artifact_type is not None:
        entry["artifactType"] = descriptor.artifact_type
    annotations = dict(descriptor.annotations or {})
    if name is not None:
        annotations[REF_NAME] = name
    if annotations:
        entry["annotations"] = annotations
    return entry


def set_ref(index: dict[str, Any], name: str, descriptor: Descriptor) -> None:
    """Point ``name`` at ``descriptor``: other entries of that name go (a name is unique, as
    skopeo keeps it), everything else stays as it was."""
    index["manifests"] = [e for e in index.get("manifests", []) if ref_name(e) != name]
    index["manifests"].append(_entry(descriptor, name))


def add_untagged(index: dict[str, Any], descriptor: Descriptor) -> None:
    """List ``descriptor`` without a name (an untagged image, a referrer) unless already listed."""
    if not any(e.get("digest") == descriptor.digest for e in index.get("manifests", [])):
        index.setdefault("manifests", []).append(_entry(descriptor, None))


def remove_ref(index: dict[str, Any], name: str) -> bool:
    before = len(index.get("manifests", []))
    index["manifests"] = [e for e in index.get("manifests", []) if ref_name(e) != name]
    return len(index["manifests"]) != before
