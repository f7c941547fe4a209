"""Shared fixtures: real servers on free loopback ports, and external tools that skip (or,
with ``OCIKIT_REQUIRE_ALL=1``, fail) when absent."""

from __future__ import annotations

import doctest
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from process_group import kill_group, stop_group

#: Fixtures of the scale-out deployment (``cluster``, ``fresh_cluster``, ``deployment``).
pytest_plugins = ["cluster"]

REQUIRE_ALL = os.environ.get("OCIKIT_REQUIRE_ALL") == "1"
OCIKIT = [sys.executable, "-m", "ocikit.cli.main"]
#: The folders where ocikit (and the tools it drives) keep a user's data, caches and settings.
XDG_FOLDERS = ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME")


def _point_xdg_folders_at(base: Path, setenv: Callable[[str, str], object]) -> None:
    for name in XDG_FOLDERS:
        folder = base / name.lower()
        folder.mkdir()
        setenv(name, str(folder))


@pytest.fixture(scope="session", autouse=True)
def _sandboxed_session_folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Session fixtures (and the servers they start) never see the user's data folders."""
    saved = {name: os.environ.get(name) for name in XDG_FOLDERS}
    _point_xdg_folders_at(tmp_path_factory.mktemp("session-xdg"), os.environ.__setitem__)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _sandboxed_folders(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test has data folders of its own: an ``ocikit gc`` or ``ocikit create`` run by a
    test without ``--store``/``--snapshots`` can never touch the user's images or snapshots,
    nor trip over state that an earlier run left there."""
    _point_xdg_folders_at(tmp_path_factory.mktemp("xdg"), monkeypatch.setenv)


BENCH_REASON = "benchmarks run only with OCIKIT_BENCH=1 (they take time and are never timed tests)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bench: a benchmark smoke test, run only with OCIKIT_BENCH=1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Benchmark smoke tests (marker ``bench``) are opt-in: without ``OCIKIT_BENCH=1`` they skip."""
    if os.environ.get("OCIKIT_BENCH") == "1":
        return
    for item in items:
        if item.get_closest_marker("bench") is not None:
            item.add_marker(pytest.mark.skip(reason=BENCH_REASON))


def _allowed_skip(item: pytest.Item) -> bool:
    """The one skip ``OCIKIT_REQUIRE_ALL=1`` lets through: a benchmark smoke test that was not
    asked for. Benchmarks are a separate, opt-in run (``OCIKIT_BENCH=1``), not a component the
    machine lacks; the summary still lists them as skipped, with that reason."""
    return item.get_closest_marker("bench") is not None and os.environ.get("OCIKIT_BENCH") != "1"


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def _fail_the_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    reason = _skip_reason(report)
    report.outcome = "failed"
    report.longrepr = f"OCIKIT_REQUIRE_ALL=1: nothing may skip, and this would have: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under ``OCIKIT_REQUIRE_ALL=1`` a skip is a failure, whatever raised it: a missing tool,
    a missing schema, a root-only ``skipif``, an ``importorskip``. CI runs that way, so a test
    that stops running on some machine cannot go unnoticed."""
    report = yield
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail") and not _allowed_skip(item):
        _fail_the_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """The same for a whole module skipped while it is collected (``importorskip`` at the top)."""
    report = yield
    if REQUIRE_ALL and report.skipped:
        _fail_the_skip(report)
    return report


def require_tool(name: str, why: str = "") -> str:
    """The path of an external program; skip the test without it (fail under REQUIRE_ALL)."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    if path is None:
        message = f"{name} is not installed{': ' + why if why else ''} (make test installs it as root)"
        if REQUIRE_ALL:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own ``$XDG_CACHE_HOME``: the client's record of where blobs live
    (``ocikit.client.locations``) must neither touch the user's nor leak from one test to the
    next (a remembered location turns an upload into a mount)."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(
    url: str,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = 20,
    verify: ssl.SSLContext | bool = True,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            httpx.get(url, timeout=1, verify=verify)
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
    ca: Path | None = None  # the CA that signed its TLS certificate (None: plain HTTP)
    #: Variables added to the environment (credentials of the storage backends).
    env: dict[str, str] | None = None

    def client(self, **kwargs: object) -> httpx.Client:
        if self.ca is not None:
            kwargs.setdefault("verify", ssl.create_default_context(cafile=str(self.ca)))
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        kill_group(self.process)

    def stop(self) -> None:
        stop_group(self.process)

    def restart(self) -> None:
        """Stop (if still running) and start again on the same port, as a supervisor would."""
        self.stop()
        port = int(self.host.rpartition(":")[2])
        started = start_registry(
            self.root, extra=self.args, log=self.log, ca=self.ca, port=port, env=self.env
        )
        self.process, self.url, self.host = started.process, started.url, started.host

    def wait_ready(self, client_cert: tuple[Path, Path] | None = None) -> None:
        """Wait until it answers (trusting its CA, showing ``client_cert`` when it demands one)."""
        verify: ssl.SSLContext | bool = True
        if self.ca is not None:
            verify = ssl.create_default_context(cafile=str(self.ca))
            if client_cert is not None:
                verify.load_cert_chain(str(client_cert[1]), str(client_cert[0]))
        try:
            wait_for_http(f"{self.url}/v2/", self.process, verify=verify)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"ocikit serve did not start:\n{self.log.read_text()[-3000:]}") from None

    def access_lines(self) -> list[str]:
        """The access log, one ``METHOD PATH STATUS BYTES TIME`` per request (the client
        address and user that open each line left out), once the lines written in batches
        (at most 0.2 s apart) have stopped coming."""
        marker, seen = " ocikit.registry.access INFO ", -1
        while True:
            lines = [line for line in self.log.read_text().splitlines() if marker in line]
            if len(lines) == seen:
                return [line.split(marker, 1)[1].split(" ", 2)[2] for line in lines]
            seen = len(lines)
            time.sleep(0.3)


def launch_registry(
    root: Path,
    extra: list[str] | None = None,
    log: Path | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
    ca: Path | None = None,
) -> ServerProcess:
    """Start ``ocikit serve`` without waiting for it (several start in parallel); with ``ca``
    it serves HTTPS (``extra`` names the certificate that CA signed)."""
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
    scheme = "https" if ca is not None else "http"
    return ServerProcess(f"{scheme}://{host}", host, root, process, log, args, ca, env)


def start_registry(
    root: Path,
    extra: list[str] | None = None,
    log: Path | None = None,
    ca: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """``ocikit serve`` on a free port (or ``port``), waited for; with ``ca`` it serves HTTPS
    and is waited for with that CA trusted, and with the client certificate ``(key, cert)``
    when it demands one."""
    server = launch_registry(root, extra, log, port, env, ca)
    server.wait_ready(client_cert)
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
