"""Shared fixtures: real servers on free loopback ports, and external tools that skip (or,
with ``OCIKIT_REQUIRE_ALL=1``, fail) when absent."""

from __future__ import annotations

import doctest
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

#: Fixtures of the scale-out deployment (``cluster``, ``fresh_cluster``, ``deployment``).
pytest_plugins = ["cluster"]

REQUIRE_ALL = os.environ.get("OCIKIT_REQUIRE_ALL") == "1"
OCIKIT = [sys.executable, "-m", "ocikit.cli.main"]


def require_tool(name: str, why: str = "") -> str:
    """The path of an external program; skip the test without it (fail under REQUIRE_ALL)."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        message = f"{name} is not installed{': ' + why if why else ''} (make test installs it as root)"
        if REQUIRE_ALL:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"no answer from {url} within {timeout}s")


@dataclass
class ServerProcess:
    """An ``ocikit serve`` process under test."""

    url: str
    host: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path
    args: list[str]
    #: Variables added to the environment (credentials of the storage backends).
    env: dict[str, str] | None = None

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Stop (if still running) and start again on the same port, as a supervisor would."""
        self.stop()
        port = int(self.host.rpartition(":")[2])
        started = start_registry(self.root, extra=self.args, log=self.log, port=port, env=self.env)
        self.process, self.url, self.host = started.process, started.url, started.host

    def wait_ready(self) -> None:
        try:
            wait_for_http(f"{self.url}/v2/", self.process)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"ocikit serve did not start:\n{self.log.read_text()[-3000:]}") from None

    def access_lines(self) -> list[str]:
        """The access log so far, one ``METHOD PATH STATUS BYTES TIME`` per request."""
        marker = " ocikit.registry.access INFO "
        return [line.split(marker, 1)[1] for line in self.log.read_text().splitlines() if marker in line]


def launch_registry(
    root: Path,
    extra: list[str] | None = None,
    log: Path | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start ``ocikit serve`` without waiting for it (several start in parallel)."""
    port = port or free_port()
    host = f"127.0.0.1:{port}"
    log = log or root.parent / f"{root.name}-serve.log"
    args = list(extra or [])
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            [*OCIKIT, "serve", "--listen", host, "--root", str(root), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
    return ServerProcess(f"http://{host}", host, root, process, log, args, env)


def start_registry(
    root: Path,
    extra: list[str] | None = None,
    log: Path | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    server = launch_registry(root, extra, log, port, env)
    server.wait_ready()
    return server


@pytest.fixture(scope="session")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One ``ocikit serve`` on default settings for the whole session."""
    root = tmp_path_factory.mktemp("registry") / "data"
    server = start_registry(root)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry(local_registry: ServerProcess) -> ServerProcess:
    """The session registry; test modules that also run against the scale-out deployment
    override it with ``cluster.deployment``."""
    return local_registry


@pytest.fixture
def fresh_registry(tmp_path: Path) -> Iterator[ServerProcess]:
    """A registry of its own, for tests that kill, restart or reconfigure it."""
    server = start_registry(tmp_path / "data")
    yield server
    server.stop()


DOCS = Path(__file__).resolve().parent.parent / "docs"


def run_page_examples(page: str) -> doctest.TestResults:
    """Run the doctest examples of ``docs/PAGE`` (``...`` and whitespace are lenient)."""
    return doctest.testfile(
        str(DOCS / page),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        raise_on_error=False,
        verbose=False,
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A private PostgreSQL cluster for the session (``tests/postgres.py``): ``.database()``
    gives a test a fresh database URL, ``.restart()`` restarts the server under its clients."""
    from postgres import start_postgres, stop_postgres

    server = start_postgres()
    if server is None:
        message = "PostgreSQL server binaries (/usr/lib/postgresql/*/bin) or psql are not installed"
        if REQUIRE_ALL:
            pytest.fail(message)
        pytest.skip(message)
    yield server
    stop_postgres(server)
