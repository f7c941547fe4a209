"""An OCI Distribution Spec registry as an embeddable ASGI application.

>>> from ocikit.registry import Settings, create_app
>>> app = create_app(Settings(root="/tmp/ocikit-doctest"))
"""

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
