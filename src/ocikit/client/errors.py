"""Errors of the registry client, and turning a registry's error response into one.

A registry answers failures with ``{"errors": [{"code", "message", "detail"}]}``
(distribution-spec "Error Codes"). The codes are what a user can act on, so they go into the
message verbatim with the HTTP status; a body that is not that JSON is quoted, shortened.
"""

from __future__ import annotations

import json
from typing import Final

from ..store.transport import BlobLost, NotFound, TransportError
from .http import Response

__all__ = ["AuthenticationError", "RegistryError", "RegistryNotFound", "UploadLost", "error_from_response"]

_BODY_LIMIT: Final = 64 * 1024
_NOT_FOUND_CODES: Final = frozenset(
    {"BLOB_UNKNOWN", "MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UPLOAD_UNKNOWN"}
)


class RegistryError(TransportError):
    """The registry refused a request. ``codes`` holds the spec error codes it gave, if any."""

    def __init__(self, message: str, *, status: int = 0, codes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes


class RegistryNotFound(RegistryError, NotFound):
    """The repository, manifest, blob or upload does not exist (404)."""


class UploadLost(BlobLost):
    """The registry dropped a blob upload that cannot be resumed from memory; a copy can start
    the blob again from its source."""


class AuthenticationError(RegistryError):
    """Credentials are missing, wrong, or do not grant the access asked for (401/403)."""


def _summarise(body: bytes) -> tuple[str, tuple[str, ...]]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("errors"), list):
        parts, codes = [], []
        for error in data["errors"]:
            if not isinstance(error, dict):
                continue
            code = str(error.get("code", "")) or "UNKNOWN"
            message = str(error.get("message") or "")
            detail = error.get("detail")
            text = f"{code}: {message}" if message else code
            if detail not in (None, "", {}, []):
                text += f" ({json.dumps(detail)[:200]})"
            parts.append(text)
            codes.append(code)
        if parts:
            return "; ".join(parts), tuple(codes)
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return (text[:200] + ("…" if len(text) > 200 else "")), ()


async def error_from_response(response: Response, what: str) -> RegistryError:
    """A :class:`RegistryError` describing ``response`` (its body is consumed). ``what`` says what
    was being done, e.g. ``"pull manifest example.com/app:1"``."""
    try:
        body = await response.read(_BODY_LIMIT)
    except TransportError:
        body = b""
    summary, codes = _summarise(body)
    status = response.status
    message = f"{what}: HTTP {status} {response.reason}".rstrip()
    if summary:
        message += f": {summary}"
    if status in (401, 403) or {"UNAUTHORIZED", "DENIED"} & set(codes):
        return AuthenticationError(message, status=status, codes=codes)
    if status == 404 or (codes and set(codes) <= _NOT_FOUND_CODES):
        return RegistryNotFound(message, status=status, codes=codes)
    return RegistryError(message, status=status, codes=codes)
