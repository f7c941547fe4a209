"""A real forward HTTP proxy for tests: Debian's tinyproxy (``tinyproxy-bin``), as the
corporate proxy a user's ``HTTP_PROXY``/``HTTPS_PROXY`` names.

Each proxy listens on a free 127.0.0.1 port, admits only 127.0.0.1, optionally demands
``BasicAuth``, and logs at the ``Connect`` level, which records every request line it is asked
to forward (``Request (file descriptor N): HEAD http://… HTTP/1.1``) and nothing of the bodies:
:meth:`Tinyproxy.requests` reads them back, so a test sees what went through the proxy and what
did not. Use the ``tinyproxy`` fixture (function scope: a fresh log per test) or
:func:`start_tinyproxy`.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import free_port, require_tool
from process_group import stop_group

__all__ = ["Tinyproxy", "start_tinyproxy", "tinyproxy_fixture"]

_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")


@dataclass
class Tinyproxy:
    """A running tinyproxy at 127.0.0.1:``port``; ``credentials`` when it demands BasicAuth."""

    port: int
    credentials: tuple[str, str] | None
    log: Path
    process: subprocess.Popen[bytes]

    def url(self, credentials: tuple[str, str] | None = None) -> str:
        """The proxy's URL as a user sets it in ``HTTP_PROXY``, with ``credentials`` as its
        userinfo (percent-encoded) when given."""
        if credentials is None:
            return f"http://127.0.0.1:{self.port}"
        user, password = (urllib.parse.quote(part, safe="") for part in credentials)
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[str, urllib.parse.SplitResult]]:
        """(method, target URL) of every request the proxy was asked to forward, in order,
        refused ones included."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [(method, urllib.parse.urlsplit(target)) for method, target in _REQUEST.findall(text)]

    def stop(self) -> None:
        stop_group(self.process)

    def tail(self) -> str:
        """The end of its log and of its output (where a refused configuration is named)."""
        files = (self.log, self.log.with_suffix(".out"))
        return "".join(path.read_text(errors="replace")[-3000:] for path in files if path.exists())


def tinyproxy_config(port: int, log: Path, credentials: tuple[str, str] | None) -> str:
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 60",
        f'LogFile "{log}"',
        "LogLevel Connect",
        "MaxClients 64",
        "Allow 127.0.0.1",
    ]
    if credentials is not None:  # tinyproxy admits only [A-Za-z0-9._-] in them
        lines.append("BasicAuth {} {}".format(*credentials))
    return "\n".join([*lines, ""])


def start_tinyproxy(
    binary: str, workdir: Path, *, credentials: tuple[str, str] | None = None, port: int | None = None
) -> Tinyproxy:
    """Start tinyproxy (``binary``) in the foreground on 127.0.0.1 (``port`` or a free one),
    its config and log in ``workdir``; returns once it accepts connections."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    config, log = workdir / "tinyproxy.conf", workdir / "tinyproxy.log"
    config.write_text(tinyproxy_config(port, log, credentials))
    with open(workdir / "tinyproxy.out", "ab") as sink:
        process = subprocess.Popen(
            [binary, "-d", "-c", str(config)], stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    proxy = Tinyproxy(port, credentials, log, process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tinyproxy exited with {process.returncode}:\n{proxy.tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proxy
        except OSError:
            time.sleep(0.02)
    proxy.stop()
    raise RuntimeError(f"tinyproxy did not listen on 127.0.0.1:{port}:\n{proxy.tail()}")


@pytest.fixture(name="tinyproxy")
def tinyproxy_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Tinyproxy]]:
    """Starts proxies for the test (``tinyproxy(credentials=("user", "password"))`` for one
    that demands BasicAuth; ``port=`` to take a stopped one's place) and stops them after."""
    binary = require_tool("tinyproxy", "the forward proxy of the HTTP_PROXY tests")
    started: list[Tinyproxy] = []

    def start(*, credentials: tuple[str, str] | None = None, port: int | None = None) -> Tinyproxy:
        proxy = start_tinyproxy(
            binary, tmp_path_factory.mktemp("tinyproxy"), credentials=credentials, port=port
        )
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
