"""Where ocikit keeps its data for this user; a module that imports nothing of ocikit's, for
callers (the registry's settings) that need a path but not the store."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir"]


def data_dir(name: str) -> Path:
    """Where ocikit keeps ``name`` (store, snapshots, registry) for this user:
    ``${XDG_DATA_HOME:-~/.local/share}/ocikit/NAME``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ocikit" / name
