"""Layer application: image-spec layer changesets streamed safely and quickly onto a directory.

``apply_layer`` is the whole interface; see docs/layerfs.md for the rules it implements and
the safety model.
"""

from .apply import apply_layer
from .errors import (
    BadCompression,
    BadTar,
    DiffIDMismatch,
    DigestMismatch,
    LayerError,
    LimitExceeded,
    UnsafePath,
    UnsupportedMediaType,
)
from .options import ApplyOptions, ApplyReport

__all__ = [
    "ApplyOptions",
    "ApplyReport",
    "BadCompression",
    "BadTar",
    "DiffIDMismatch",
    "DigestMismatch",
    "LayerError",
    "LimitExceeded",
    "UnsafePath",
    "UnsupportedMediaType",
    "apply_layer",
]
