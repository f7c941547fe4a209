"""OCI runtime bundles: a rootfs snapshot plus a ``config.json`` converted from the image config."""

from __future__ import annotations

from .config import Overrides, annotations_for, check_convertible, hostname_for, runtime_config
from .create import BundleState, create_bundle, read_state, remove_bundle
from .errors import BundleError
from .users import resolve_user

__all__ = [
    "BundleError",
    "BundleState",
    "Overrides",
    "annotations_for",
    "check_convertible",
    "create_bundle",
    "hostname_for",
    "read_state",
    "remove_bundle",
    "resolve_user",
    "runtime_config",
]
