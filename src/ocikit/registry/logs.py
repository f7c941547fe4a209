"""The server's log lines: every line in one format (``text`` or ``json``), the request lines
written in batches.

A request line through :mod:`logging` (a record, a handler lock, a formatter, a write per
line) cost about a quarter of a manifest GET; here a request appends a tuple to a list, and
the list is formatted and written with one ``write`` when it is full or a fraction of a second
after its first line, whichever is sooner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .scope import USER_SCOPE_KEY

if TYPE_CHECKING:
    from .http import Scope

__all__ = ["TEXT_FORMAT", "AccessLog", "JsonFormatter", "formatter", "logging_config"]

TEXT_FORMAT: Final = "%(asctime)s %(name)s %(levelname)s %(message)s"
ACCESS_LOGGER: Final = "ocikit.registry.access"
_BATCH_LINES: Final = 256
_BATCH_DELAY: Final = 0.2  # seconds a line may wait for the batch's write


_second: list[Any] = [None, ""]  # the last second formatted, and its text


def _timestamp(epoch: float) -> str:
    """Local time with milliseconds, as :class:`logging.Formatter` writes it (each second is
    formatted once: a batch of lines mostly shares it)."""
    second = int(epoch)
    if _second[0] != second:
        _second[:] = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
    return f"{_second[1]},{int(epoch % 1 * 1000):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` (and ``error``
    with the traceback when there is one), so that a log shipper needs no text parsing."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        # The standard library here: the server's main process formats its few lines without
        # loading msgspec, which the workers' access log uses for its many.
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def logging_config(log_format: str) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for Granian's own logger, in the registry's format."""
    factory = f"{JsonFormatter.__module__}.JsonFormatter" if log_format == "json" else "logging.Formatter"
    options = {} if log_format == "json" else {"fmt": TEXT_FORMAT}
    return {
        "formatters": {"ocikit": {"()": factory, **options}},
        "handlers": {
            "ocikit": {"formatter": "ocikit", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
        },
        "loggers": {"_granian": {"handlers": ["ocikit"], "level": "INFO", "propagate": False}},
    }


def _printable(text: str) -> str:
    """Security decision: a decoded path may hold a newline (``%0A``); escaped, so that no
    client can write a line of its own into the text log."""
    if text.isprintable() and " " not in text:
        return text
    return text.encode("unicode_escape").decode().replace(" ", "\\x20")


_Line = tuple[float, tuple[str, int] | None, str | None, str, str, int, int, float]


def _address(client: tuple[str, int] | None) -> str:
    if not client:
        return "-"
    return f"{client[0]}:{client[1]}" if client[1] else client[0]  # forwarded: no port known


class AccessLog:
    """One line per request: client address, user, method, path, status, bytes, duration."""

    def __init__(self, log_format: str, fd: int = 2) -> None:
        import msgspec  # here: only workers keep an access log

        self._json = log_format == "json"
        self._encode_lines = msgspec.json.Encoder().encode_lines if self._json else None
        self._fd = fd
        self._pending: list[_Line] = []
        self._timer: asyncio.TimerHandle | None = None

    def record(self, scope: Scope, status: int, sent: int, duration: float) -> None:
        self._pending.append(
            (
                time.time(),
                scope.get("client"),
                scope.get(USER_SCOPE_KEY),  # set by the authentication layer; None: anonymous
                scope["method"],
                scope["path"],
                status,
                sent,
                duration,
            )
        )
        if len(self._pending) >= _BATCH_LINES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_BATCH_DELAY, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._pending = self._pending, []
        if not lines:
            return
        if self._encode_lines is not None:
            data = self._encode_lines(list(map(self._json_entry, lines)))
        else:
            data = "".join(map(self._text_line, lines)).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    @staticmethod
    def _text_line(line: _Line) -> str:
        at, client, user, method, path, status, sent, duration = line
        return (
            f"{_timestamp(at)} {ACCESS_LOGGER} INFO {_address(client)} {_printable(user or '-')} "
            f"{method} {_printable(path)} {status} {sent} {duration * 1000:.1f}ms\n"
        )

    @staticmethod
    def _json_entry(line: _Line) -> Mapping[str, Any]:
        at, client, user, method, path, status, sent, duration = line
        return {
            "time": _timestamp(at),
            "level": "INFO",
            "logger": ACCESS_LOGGER,
            "client": _address(client),
            "user": user,
            "method": method,
            "path": path,
            "status": status,
            "bytes": sent,
            "duration_ms": round(duration * 1000, 3),
        }
