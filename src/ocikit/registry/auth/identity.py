"""Who is calling, as the authenticator established it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Identity"]


@dataclass(frozen=True, slots=True)
class Identity:
    """``user`` is None for an anonymous caller. ``grants`` holds what a bearer token allows
    (``"repository:team/app"`` -> ``{"pull"}``, ``"registry:catalog"`` -> ``{"*"}``); None
    means the caller proved who they are without a token, and only the policy limits them."""

    user: str | None = None
    grants: Mapping[str, frozenset[str]] | None = field(default=None, compare=False)
    via: str = "none"  # "basic", "token", "certificate" or "none": for the audit log

    def token_allows(self, resource: str, action: str) -> bool:
        if self.grants is None:
            return True
        actions = self.grants.get(resource)
        return actions is not None and (action in actions or "*" in actions)


ANONYMOUS_IDENTITY = Identity()
