"""Running the registry on Granian, in one or several worker processes.

Workers are separate processes that import :func:`app_from_environment`; the parent hands
them its fully resolved settings through one environment variable so that every worker runs
with exactly the settings the parent validated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Final

from .app import Registry, create_app
from .settings import Settings

__all__ = ["app_from_environment", "serve"]

_SETTINGS_VARIABLE: Final = "OCIKIT_RESOLVED_SETTINGS"


def _configure_logging(settings: Settings) -> None:
    fmt = "%(message)s" if settings.log_format == "json" else "%(asctime)s %(name)s %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr, force=True)


def app_from_environment() -> Registry:
    """The factory each Granian worker calls."""
    values = json.loads(os.environ[_SETTINGS_VARIABLE])
    values["warnings"] = tuple(values.get("warnings", ()))
    settings = Settings(**values)
    _configure_logging(settings)
    return create_app(settings)


def serve(settings: Settings) -> None:
    """Serve until interrupted."""
    from granian import Granian
    from granian.constants import Interfaces

    os.makedirs(settings.root, exist_ok=True)
    os.environ[_SETTINGS_VARIABLE] = json.dumps(dataclasses.asdict(settings))
    _configure_logging(settings)
    logging.getLogger("ocikit.registry").info(
        "ocikit registry on http://%s:%d, data in %s, %d worker(s)",
        settings.host,
        settings.port,
        settings.root,
        settings.workers,
    )
    server = Granian(
        "ocikit.registry.server:app_from_environment",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        factory=True,
        log_access=False,
        backlog=2048,
    )
    server.serve()
