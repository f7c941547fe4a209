"""Extension points: who may do what (authorization) and what happened (events).

An authorizer sees every request with the repository and the action it needs, and refuses
by raising :class:`~ocikit.registry.errors.RegistryError` (``UNAUTHORIZED`` with a
``WWW-Authenticate`` header, or ``DENIED``). :class:`ocikit.registry.auth.AccessControl` is
the one the settings build (users, tokens, policies); any async callable will do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from .http import Request

__all__ = ["Action", "Authorizer", "Event", "EventHook", "allow_all"]

#: ``pull`` reads, ``push`` writes, ``delete`` removes, ``catalog`` lists repositories.
Action = Literal["pull", "push", "delete", "catalog"]
Authorizer = Callable[[Request, str | None, Action], Awaitable[None]]


async def allow_all(request: Request, repository: str | None, action: Action) -> None:
    """The default: everyone may do everything (a registry on loopback or behind a proxy)."""


@dataclass(frozen=True, slots=True)
class Event:
    """Something changed: fired after the change is durable (for webhooks, audit logs)."""

    action: Literal["push", "mount", "delete"]
    repository: str
    kind: Literal["blob", "manifest", "tag"]
    digest: str | None = None
    tag: str | None = None
    media_type: str | None = None
    size: int | None = None


EventHook = Callable[[Event], Awaitable[None]]
