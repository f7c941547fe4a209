"""The distribution-spec's error codes and the JSON body every error response carries."""

from __future__ import annotations

from typing import Any

import msgspec

from ..spec.models import enc_hook

_json = msgspec.json.Encoder(enc_hook=enc_hook)

__all__ = ["RegistryError"]

# code -> (HTTP status, default message)
_CODES: dict[str, tuple[int, str]] = {
    "BLOB_UNKNOWN": (404, "blob unknown to registry"),
    "BLOB_UPLOAD_INVALID": (400, "blob upload invalid"),
    "BLOB_UPLOAD_UNKNOWN": (404, "blob upload unknown to registry"),
    "DIGEST_INVALID": (400, "provided digest did not match uploaded content"),
    "MANIFEST_BLOB_UNKNOWN": (400, "manifest references a manifest or blob unknown to registry"),
    "MANIFEST_INVALID": (400, "manifest invalid"),
    "MANIFEST_UNKNOWN": (404, "manifest unknown to registry"),
    "NAME_INVALID": (400, "invalid repository name"),
    "NAME_UNKNOWN": (404, "repository name not known to registry"),
    "SIZE_INVALID": (400, "provided length did not match content length"),
    "UNAUTHORIZED": (401, "authentication required"),
    "DENIED": (403, "requested access to the resource is denied"),
    "UNSUPPORTED": (405, "the operation is unsupported"),
    "TOOMANYREQUESTS": (429, "too many requests"),
    # Not in the spec's table; distribution answers it when its storage cannot be reached.
    "UNAVAILABLE": (503, "service unavailable"),
}


class RegistryError(Exception):
    """An error answered with the spec's JSON body: ``{"errors": [{code, message, detail}]}``."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        detail: Any = None,
        status: int | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        default_status, default_message = _CODES[code]
        self.code = code
        self.message = message or default_message
        self.detail = detail
        self.status = status or default_status
        self.headers = headers or []
        super().__init__(f"{code}: {self.message}")

    def body(self) -> bytes:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return _json.encode({"errors": [error]})
