"""Errors of layer application: one base class, one subclass per kind of refusal.

Every failure of :func:`~ocikit.layers.apply_layer` is a :class:`LayerError` whose message
is meant for the user as it is (no traceback needed to understand it). After any of them the
target directory holds a partial result that the caller must discard: a layer is applied
while it streams, so its digest is only known to be wrong once its files are written.
"""

from __future__ import annotations

__all__ = [
    "BadCompression",
    "BadTar",
    "DiffIDMismatch",
    "DigestMismatch",
    "LayerError",
    "LimitExceeded",
    "UnsafePath",
    "UnsupportedMediaType",
]


class LayerError(Exception):
    """A layer could not be applied; the target must be discarded."""


class UnsupportedMediaType(LayerError):
    """The media type names no layer format this engine reads."""


class DigestMismatch(LayerError):
    """The blob's bytes do not have the digest its descriptor claims."""


class DiffIDMismatch(LayerError):
    """The uncompressed tar stream does not have the diffID the image config claims."""


class UnsafePath(LayerError):
    """An entry names a path this engine refuses: ``..``, absolute, the root, a bad whiteout."""


class LimitExceeded(LayerError):
    """The layer is larger than a configured limit (entries, name length, uncompressed size)."""


class BadTar(LayerError):
    """The uncompressed stream is not a tar archive this engine accepts."""


class BadCompression(LayerError):
    """The blob is not valid gzip or zstd (garbage, truncated, trailing junk)."""
