"""The audit log: one line per change (push, mount, tag move, delete) with who made it.

Lines name the user, the client address, the repository and the digest; credentials never
reach this logger, since only the user name is taken from the request.
"""

from __future__ import annotations

import logging

import msgspec

from .hooks import Event
from .http import Request
from .scope import USER_SCOPE_KEY

__all__ = ["record"]

audit_log = logging.getLogger("ocikit.registry.audit")


def record(event: Event, request: Request | None) -> None:
    user = request.scope.get(USER_SCOPE_KEY) if request is not None else None
    line = {
        "action": event.action,
        "kind": event.kind,
        "repository": event.repository,
        "digest": str(event.digest) if event.digest else None,
        "tag": event.tag,
        "user": user or "anonymous",
        "address": request.client_address if request is not None else None,
    }
    audit_log.info("%s", msgspec.json.encode({k: v for k, v in line.items() if v is not None}).decode())
