"""Content discovery: tag lists, the repository catalog and the referrers API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ..spec import mediatype as mt
from ..spec.numbers import decimal
from .errors import RegistryError
from .http import Request, Response
from .storage.base import Referrer

if TYPE_CHECKING:
    from .app import Registry

__all__ = ["catalog", "referrers", "tags"]

#: Repository names read per query when access control hides some.
_CATALOG_BATCH = 1000


def _page_size(reg: Registry, request: Request) -> int:
    text = request.param("n")
    if text is None or text == "":
        return reg.settings.page_size
    number = decimal(text)
    if number is None:
        raise RegistryError("UNSUPPORTED", f"n must be a non-negative integer, got {text!r}", status=400)
    return min(number, reg.settings.page_size)


def _next_link(path: str, params: dict[str, str]) -> tuple[str, str]:
    return ("link", f'<{path}?{urlencode(params)}>; rel="next"')


async def tags(reg: Registry, request: Request, name: str, _: str) -> Response:
    await reg.authorize(request, name, "pull")
    limit, last = _page_size(reg, request), request.param("last")
    if limit:
        found = await reg.metadata.tags(name, limit + 1, last)
    else:  # n=0: an empty list and no Link, but an unknown repository is still unknown
        found = [] if await reg.metadata.repository_exists(name) else None
    if found is None:
        raise RegistryError("NAME_UNKNOWN", f"repository {name} is not known", detail={"name": name})
    headers = []
    if len(found) > limit:
        found = found[:limit]
        headers.append(_next_link(f"/v2/{name}/tags/list", {"n": str(limit), "last": found[-1]}))
    return Response.json({"name": name, "tags": found}, headers=headers)


async def _visible_repositories(reg: Registry, request: Request, limit: int, last: str | None) -> list[str]:
    """Up to ``limit`` repositories after ``last`` that the caller may pull: names are read
    until enough are visible, so hidden repositories leave no gaps and no hints.

    A caller who may see few of many repositories makes each page read many names. They are
    read ``_CATALOG_BATCH`` at a time, whatever ``n`` is, so that ``?n=1`` costs one query
    per thousand names and not one per name. Reading them all is the price of telling
    nothing: a page cut short would have to resume after a hidden name."""
    if not reg.filters_listings:
        return await reg.metadata.repositories(limit, last)
    visible: list[str] = []
    while len(visible) < limit:
        batch = await reg.metadata.repositories(_CATALOG_BATCH, last)
        visible += [name for name in batch if await reg.lists(request, name)]
        if len(batch) < _CATALOG_BATCH:
            break
        last = batch[-1]
    return visible[:limit]


async def catalog(reg: Registry, request: Request, _name: str, _arg: str) -> Response:
    await reg.authorize(request, None, "catalog")
    limit, last = _page_size(reg, request), request.param("last")
    found = await _visible_repositories(reg, request, limit + 1, last) if limit else []
    headers = []
    if len(found) > limit:
        found = found[:limit]
        headers.append(_next_link("/v2/_catalog", {"n": str(limit), "last": found[-1]}))
    return Response.json({"repositories": found}, headers=headers)


def _descriptor(referrer: Referrer) -> dict[str, Any]:
    descriptor: dict[str, Any] = {
        "mediaType": referrer.media_type,
        "digest": referrer.digest,
        "size": referrer.size,
    }
    if referrer.artifact_type:
        descriptor["artifactType"] = referrer.artifact_type
    if referrer.annotations:
        descriptor["annotations"] = referrer.annotations
    return descriptor


async def referrers(reg: Registry, request: Request, name: str, reference: str) -> Response:
    await reg.authorize(request, name, "pull")
    subject = reg.parse_digest(reference)
    artifact_type = request.param("artifactType") or None
    limit, last = _page_size(reg, request), request.param("last")
    found = await reg.metadata.referrers(name, subject, artifact_type, limit + 1, last) if limit else []
    headers = []
    if len(found) > limit:
        params = {"n": str(limit), "last": found[limit - 1].digest}
        if artifact_type:
            params["artifactType"] = artifact_type
        headers.append(_next_link(f"/v2/{name}/referrers/{subject}", params))
    if artifact_type:
        headers.append(("oci-filters-applied", "artifactType"))
    manifests = [_descriptor(r) for r in found[:limit]]
    body = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
    return Response.json(body, headers=headers, content_type=mt.OCI_INDEX)
