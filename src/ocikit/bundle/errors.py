"""The one error the bundle layer raises for bad input."""

from __future__ import annotations

__all__ = ["BundleError"]


class BundleError(Exception):
    """A bundle cannot be made from this image or these options; the message says why."""
