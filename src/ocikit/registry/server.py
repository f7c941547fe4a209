"""Running the registry on Granian, in one or several worker processes.

Workers are separate processes that import :func:`app_from_environment`; the parent hands
them its fully resolved settings through one environment variable so that every worker runs
with exactly the settings the parent validated.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import logging.handlers
import os
import queue
import sys
from pathlib import Path
from typing import Any, Final

from .app import Registry, create_app
from .settings import Settings

__all__ = ["app_from_environment", "serve"]

_SETTINGS_VARIABLE: Final = "OCIKIT_RESOLVED_SETTINGS"
_listener: logging.handlers.QueueListener | None = None


class _DeferredQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread unformatted: formatting and the write to stderr then
    cost the event loop nothing (an access line per request measured ~28% of a manifest GET).
    Safe because ocikit logs only plain values as arguments."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


@atexit.register  # flushes what is still queued when the process ends
def _stop_listener() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def _configure_logging(settings: Settings) -> None:
    fmt = "%(message)s" if settings.log_format == "json" else "%(asctime)s %(name)s %(levelname)s %(message)s"
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(logging.Formatter(fmt))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    global _listener
    _stop_listener()
    _listener = logging.handlers.QueueListener(records, writer)
    _listener.start()
    logging.basicConfig(level=logging.INFO, handlers=[_DeferredQueueHandler(records)], force=True)


def app_from_environment() -> Registry:
    """The factory each Granian worker calls."""
    values = json.loads(os.environ[_SETTINGS_VARIABLE])
    values["warnings"] = tuple(values.get("warnings", ()))
    settings = Settings(**values)
    _configure_logging(settings)
    return create_app(settings)


def _tls_options(settings: Settings) -> dict[str, Any]:
    """Granian's TLS: TLS 1.2 at least (clients such as skopeo and Docker still use it), and
    with ``tls_client_ca`` every connection must show a certificate issued by that CA.
    Granian 2.8 does not pass the client's certificate to the application, so it admits a
    connection but does not name a user: users still sign in with a password or a token."""
    if not settings.tls_cert:
        return {}
    from granian.constants import SSLProtocols

    options: dict[str, Any] = {
        "ssl_cert": Path(settings.tls_cert),
        "ssl_key": Path(settings.tls_key),
        "ssl_protocol_min": SSLProtocols.tls12,
    }
    if settings.tls_client_ca:
        options |= {"ssl_ca": Path(settings.tls_client_ca), "ssl_client_verify": True}
    return options


def _prepare_access(settings: Settings) -> None:
    """Build the access control once before the workers start: a bad htpasswd, policy or
    key fails here with a clear message, and the generated signing key exists before several
    workers could race to make it."""
    from .auth.configure import access_from_settings
    from .settings import SettingsError

    try:
        access_from_settings(settings)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"access control: {exc}") from None


def serve(settings: Settings) -> None:
    """Serve until interrupted."""
    from granian import Granian
    from granian.constants import Interfaces

    os.makedirs(settings.root, exist_ok=True)
    _prepare_access(settings)
    os.environ[_SETTINGS_VARIABLE] = json.dumps(dataclasses.asdict(settings))
    _configure_logging(settings)
    logging.getLogger("ocikit.registry").info(
        "ocikit registry on %s://%s:%d, data in %s, %d worker(s)",
        "https" if settings.tls_cert else "http",
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
        **_tls_options(settings),
    )
    server.serve()
