"""Manifest endpoints: ``GET``/``HEAD``/``PUT``/``DELETE /v2/<name>/manifests/<reference>``.

A pushed manifest is validated with the image-spec model, stored in the exact bytes received
and addressed by the digest of those bytes. Its config and layers must already be in the
repository (``MANIFEST_BLOB_UNKNOWN`` otherwise), as must an index's manifests; a ``subject``
may point anywhere, so that referrers can be pushed before what they refer to. Every
descriptor whose content the repository holds must describe it truly (``MANIFEST_INVALID``
otherwise): a registry that stored a wrong size would serve an image no client can pull.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..spec import mediatype as mt
from ..spec.digest import SUPPORTED_ALGORITHMS, Digest, digest_of
from ..spec.reference import is_valid_tag
from ..spec.validate import ValidationFailed, parse_json, validate
from .app import _warning_headers
from .descriptors import descriptor_findings, descriptors_of, required_references
from .errors import RegistryError, still_referenced
from .hooks import Event
from .http import BodyTooLarge, Request, Response
from .storage.base import ManifestRecord

if TYPE_CHECKING:
    from .app import Registry

__all__ = ["delete", "get", "put"]

_MAX_TAGS_PER_PUT = 100


def _is_digest(reference: str) -> bool:
    return ":" in reference


async def _pulled(reg: Registry, name: str, reference: str) -> ManifestRecord:
    """The manifest a tag or digest names, in one read of the metadata store."""
    if _is_digest(reference):
        digest = reg.parse_digest(reference)
        record = await reg.metadata.manifest(name, digest)
        what = f"manifest {digest}"
    else:
        record = await reg.metadata.tagged_manifest(name, reference) if is_valid_tag(reference) else None
        what = f"tag {reference!r}"
    if record is None:
        await _unknown(reg, name, what)
    assert record is not None
    return record


async def _unknown(reg: Registry, name: str, what: str) -> None:
    if not await reg.metadata.repository_exists(name):
        raise RegistryError("NAME_UNKNOWN", f"repository {name} is not known", detail={"name": name})
    raise RegistryError("MANIFEST_UNKNOWN", f"{what} is not in {name}")


def _accepts(request: Request, media_type: str) -> bool:
    accept = request.headers.get("accept")
    if not accept:
        return True
    offered = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(offered & {media_type, "*/*", "application/*"})


async def get(reg: Registry, request: Request, name: str, reference: str) -> Response:
    await reg.authorize(request, name, "pull")
    record = await _pulled(reg, name, reference)
    digest = record.digest
    if not _is_digest(reference) and not _accepts(request, record.media_type):
        raise RegistryError(
            "MANIFEST_UNKNOWN",
            f"{reference} is a {record.media_type}, which the Accept header does not allow",
            status=404,
        )
    headers = [
        ("content-type", record.media_type),
        ("docker-content-digest", digest),
        ("etag", f'"{digest}"'),
    ]
    return Response(headers=headers, body=record.content, head_length=record.size)


def _media_type(request: Request, node: Any) -> str:
    """The manifest's type: its ``mediaType`` field, which must agree with Content-Type."""
    header = request.headers.get("content-type", "").split(";")[0].strip() or None
    field = node.get("mediaType") if isinstance(node, dict) else None
    if isinstance(field, str) and header and field != header:
        raise RegistryError(
            "MANIFEST_INVALID", f"Content-Type {header!r} conflicts with the manifest's mediaType {field!r}"
        )
    media_type = field if isinstance(field, str) else header
    if media_type is None and isinstance(node, dict):
        media_type = mt.OCI_INDEX if "manifests" in node else mt.OCI_MANIFEST
    if media_type not in mt.IMAGE_DOCUMENT_TYPES:
        raise RegistryError(
            "MANIFEST_INVALID",
            f"unsupported manifest media type {media_type!r}; "
            f"accepted: {', '.join(sorted(mt.IMAGE_DOCUMENT_TYPES))}",
        )
    return media_type


def _record(node: dict[str, Any], raw: bytes, digest: Digest, media_type: str) -> ManifestRecord:
    subject = node.get("subject")
    # An index has no config: a stray "config" field, which index validation ignores, must
    # not lend it an artifactType in the referrers API.
    config = node.get("config") if media_type not in mt.INDEX_TYPES else None
    annotations = node.get("annotations")
    return ManifestRecord(
        digest=digest,
        media_type=media_type,
        content=raw,
        artifact_type=node.get("artifactType"),
        subject=Digest(subject["digest"]) if isinstance(subject, dict) else None,
        annotations=annotations if isinstance(annotations, dict) and annotations else None,
        config_media_type=config.get("mediaType") if isinstance(config, dict) else None,
    )


async def _check_descriptors(reg: Registry, name: str, node: dict[str, Any], media_type: str) -> None:
    """Refuse the first descriptor that disagrees with stored content; absent content is
    ``put_manifest``'s to judge (it knows whether sparse manifests are allowed)."""
    async for finding in descriptor_findings(reg.metadata, name, node, media_type):
        if not finding.absent:
            raise RegistryError(
                "MANIFEST_INVALID",
                str(finding),
                detail={"descriptor": finding.where, "digest": finding.digest},
            )


def _requested_tags(request: Request, reference: str) -> list[str]:
    tags = [] if _is_digest(reference) else [reference]
    tags += request.query.get("tag", [])
    if len(tags) > _MAX_TAGS_PER_PUT:
        raise RegistryError("MANIFEST_INVALID", f"at most {_MAX_TAGS_PER_PUT} tags per request", status=414)
    for tag in tags:
        if not is_valid_tag(tag):
            raise RegistryError(
                "MANIFEST_INVALID", f"invalid tag {tag!r}: [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}"
            )
    return list(dict.fromkeys(tags))


def _portability_warnings(node: dict[str, Any], media_type: str) -> list[str]:
    warnings = []
    if media_type in mt.MANIFEST_TYPES and node.get("layers") == []:
        warnings.append("manifest has no layers; for portability it should have at least one")
    layers = descriptors_of(node, "layers")
    if any(layer.get("mediaType") in mt.NONDISTRIBUTABLE_LAYER_TYPES for layer in layers):
        warnings.append("non-distributable layer media types are deprecated")
    return warnings


async def _read_manifest(reg: Registry, request: Request) -> bytes:
    limit = reg.settings.max_manifest_size
    too_large = RegistryError(
        "SIZE_INVALID", f"manifests larger than {limit} bytes are not accepted here", status=413
    )
    if (request.content_length or 0) > limit:
        raise too_large
    try:
        return await request.body(limit)
    except BodyTooLarge:
        raise too_large from None


async def put(reg: Registry, request: Request, name: str, reference: str) -> Response:
    await reg.authorize(request, name, "push")
    expected = reg.parse_digest(reference) if _is_digest(reference) else None
    if expected is not None and expected.algorithm not in SUPPORTED_ALGORITHMS:
        raise RegistryError("DIGEST_INVALID", f"digest algorithm {expected.algorithm} is not supported")
    tags = _requested_tags(request, reference)
    raw = await _read_manifest(reg, request)
    try:
        node = parse_json(raw)
    except ValidationFailed as exc:
        raise RegistryError("MANIFEST_INVALID", str(exc)) from None
    media_type = _media_type(request, node)
    kind = "index" if media_type in mt.INDEX_TYPES else "manifest"
    violations = validate(node, kind, allow_empty_layers=True)
    if violations:
        raise RegistryError(
            "MANIFEST_INVALID", "; ".join(map(str, violations[:20])), detail=[str(v) for v in violations]
        )
    digest = digest_of(raw, expected.algorithm if expected else "sha256")
    if expected is not None and digest != expected:
        raise RegistryError("DIGEST_INVALID", f"the manifest's digest is {digest}, not {expected}")
    await _check_descriptors(reg, name, node, media_type)
    blobs, children = required_references(node, media_type)
    record = _record(node, raw, digest, media_type)
    missing = await reg.metadata.put_manifest(
        name, record, blobs=blobs, children=children, tags=tags, sparse=reg.settings.sparse_manifests
    )
    if missing:
        raise RegistryError(
            "MANIFEST_BLOB_UNKNOWN",
            f"{len(missing)} referenced blob(s) or manifest(s) are not in {name}: {', '.join(missing[:5])}",
            detail=[{"digest": d} for d in missing],
        )
    headers = [("location", f"/v2/{name}/manifests/{digest}"), ("docker-content-digest", digest)]
    if record.subject is not None:
        headers.append(("oci-subject", record.subject))
    if request.query.get("tag"):
        headers += [("oci-tag", tag) for tag in tags]
    headers += _warning_headers(_portability_warnings(node, media_type))
    await reg.emit(Event("push", name, "manifest", digest=digest, media_type=media_type, size=len(raw)))
    for tag in tags:
        await reg.emit(Event("push", name, "tag", digest=digest, tag=tag, media_type=media_type))
    return Response(status=201, headers=headers)


async def delete(reg: Registry, request: Request, name: str, reference: str) -> Response:
    await reg.authorize(request, name, "delete")
    if _is_digest(reference):
        if not reg.settings.delete_manifests:
            raise RegistryError("UNSUPPORTED", "manifest deletion is disabled on this registry")
        digest = reg.parse_digest(reference)
        outcome = await reg.metadata.delete_manifest(
            name, digest, refuse_if_listed=not reg.settings.delete_referenced
        )
        if outcome.referenced_by:
            raise still_referenced(f"manifest {digest}", "listed by", name, outcome.referenced_by)
        if not outcome.deleted:
            await _unknown(reg, name, f"manifest {digest}")
        await reg.emit(Event("delete", name, "manifest", digest=digest))
        return Response(status=202)
    if not reg.settings.delete_tags:
        raise RegistryError("UNSUPPORTED", "tag deletion is disabled on this registry")
    if not is_valid_tag(reference) or not await reg.metadata.delete_tag(name, reference):
        await _unknown(reg, name, f"tag {reference!r}")
    await reg.emit(Event("delete", name, "tag", tag=reference))
    return Response(status=202)
