"""Keys the registry leaves in a request's ASGI scope for later layers.

A module of its own, importing nothing, so that the log formatting (which the server's main
process needs) reads the user without importing the access control that sets it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["USER_SCOPE_KEY"]

#: Where the authenticated user name is left for the access log (None: anonymous).
USER_SCOPE_KEY: Final = "ocikit.user"
