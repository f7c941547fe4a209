"""An OCI Distribution Spec registry as an embeddable ASGI application.

>>> from ocikit.registry import Settings, create_app
>>> app = create_app(Settings(root="/tmp/ocikit-doctest"))

The names below are imported on first use: ``ocikit serve``'s main process, which only
supervises the workers, imports ``ocikit.registry.settings`` and ``.server`` without the
application (handlers, access control, storage backends: tens of megabytes it would hold for
the server's lifetime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .app import Registry, create_app
    from .errors import RegistryError
    from .hooks import Action, Authorizer, Event, EventHook, allow_all
    from .settings import Settings, load_settings

__all__ = [
    "Action",
    "Authorizer",
    "Event",
    "EventHook",
    "Registry",
    "RegistryError",
    "Settings",
    "allow_all",
    "create_app",
    "load_settings",
]

_HOMES = {
    "Registry": "app",
    "create_app": "app",
    "RegistryError": "errors",
    "Action": "hooks",
    "Authorizer": "hooks",
    "Event": "hooks",
    "EventHook": "hooks",
    "allow_all": "hooks",
    "Settings": "settings",
    "load_settings": "settings",
}


__getattr__ = lazy_attributes(__name__, _HOMES)
