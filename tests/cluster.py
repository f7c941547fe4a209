"""The scale-out deployment under test: N ``ocikit serve`` replicas, each its own process,
behind one HAProxy that balances every request on its own (tests/haproxy.py).

A :class:`Backend` says where the replicas keep their data — the flags and environment that
every replica gets. A :class:`Cluster` looks like one registry to a client (``url``,
``host``, ``client()``) and gives tests its replicas, to kill with SIGKILL, restart on the
same port, and read the access log of.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from conftest import OCIKIT, ServerProcess, free_port, launch_registry, require_tool
from haproxy import REPLICA_HEADER, HAProxy, start_haproxy

REPLICAS = 3


@dataclass(frozen=True)
class Backend:
    """Shared storage of the replicas: ``ocikit serve`` settings and environment variables.

    ``root`` is given to every replica as ``--root`` when the backend lives there (the shared
    local root of a single machine); None gives each replica a private, empty one, which a
    stateless replica must never need. ``list_blobs`` reads the digests of the blobs stored,
    behind the registry's back.
    """

    name: str
    settings: dict[str, str]
    list_blobs: Callable[[], set[str]]
    env: dict[str, str] = field(default_factory=dict)
    root: Path | None = None

    @property
    def args(self) -> list[str]:
        """The settings as ``ocikit serve`` flags."""
        return [
            item for name, value in self.settings.items() for item in (f"--{name.replace('_', '-')}", value)
        ]

    def environment(self) -> dict[str, str]:
        """The settings as ``OCIKIT_*`` variables, with the credentials."""
        return {**self.env, **{f"OCIKIT_{name.upper()}": value for name, value in self.settings.items()}}

    def gc(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """``ocikit gc`` on this storage, as an operator runs it beside the replicas."""
        where = ["--root", str(self.root)] if self.root else []
        return subprocess.run(
            [*OCIKIT, "gc", *where, *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, **self.environment()},
        )

    def stored_blobs(self) -> set[str]:
        return self.list_blobs()


@dataclass
class Cluster:
    backend: Backend
    replicas: list[ServerProcess]
    proxy: HAProxy

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def host(self) -> str:
        return self.proxy.host

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    def served_by(self, response: httpx.Response) -> ServerProcess:
        """The replica that answered ``response`` (HAProxy names it ``r0``, ``r1``…)."""
        name = response.headers[REPLICA_HEADER]
        return self.replicas[int(name.removeprefix("r"))]

    def access_lines(self) -> list[str]:
        """Every replica's access log, replica after replica."""
        return [line for replica in self.replicas for line in replica.access_lines()]

    def replica_lines(self, marker: str) -> dict[int, list[str]]:
        """Per replica index, its access-log lines containing ``marker``."""
        return {
            index: [line for line in replica.access_lines() if marker in line]
            for index, replica in enumerate(self.replicas)
        }

    def busy_replica(self, timeout: float = 10) -> ServerProcess:
        """The one replica with a request in progress, as HAProxy sees it (the test's own
        slow request), once there is exactly one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [name for name, sessions in self.proxy.busy().items() if sessions]
            if len(busy) == 1:
                return self.replicas[int(busy[0].removeprefix("r"))]
            time.sleep(0.02)
        raise AssertionError(f"no single replica busy within {timeout}s: {self.proxy.busy()}")

    def restart(self, replica: ServerProcess) -> None:
        """Start a killed (or running) replica again on its port and wait until HAProxy
        sends it requests again."""
        replica.restart()
        self.proxy.wait_healthy(len(self.replicas))

    def stop(self) -> None:
        self.proxy.stop()
        for replica in self.replicas:
            replica.stop()


def start_cluster(
    workdir: Path, backend: Backend, replicas: int = REPLICAS, extra: list[str] | None = None
) -> Cluster:
    """``replicas`` processes of ``ocikit serve`` on ``backend`` (started together), then
    HAProxy in front of them; ``workdir`` holds their logs and private roots."""
    haproxy = require_tool("haproxy", "the load balancer of the scale-out deployment")
    workdir.mkdir(parents=True, exist_ok=True)
    started: list[ServerProcess] = []
    try:
        for index in range(replicas):
            root = backend.root or workdir / f"replica{index}"
            args = [*backend.args, *(extra or [])]
            log = workdir / f"replica{index}.log"
            started.append(launch_registry(root, args, log=log, env=backend.env))
        for replica in started:
            replica.wait_ready()
        proxy = start_haproxy(
            haproxy, workdir / "haproxy", (free_port(), free_port()), [r.host for r in started]
        )
    except BaseException:
        for replica in started:
            replica.stop()
        raise
    cluster = Cluster(backend, started, proxy)
    try:
        proxy.wait_healthy(replicas)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def shared_root_backend(root: Path) -> Backend:
    """The single-machine scale-out: every replica on one local ``--root``; SQLite and file
    locks on that disk coordinate them."""

    def list_blobs() -> set[str]:
        blobs = root / "blobs"
        return {f"{kind.name}:{blob.name}" for kind in blobs.iterdir() for blob in kind.iterdir()}

    return Backend("shared-root", {}, list_blobs, root=root)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One three-replica deployment for the whole session (conformance and interop tests)."""
    workdir = tmp_path_factory.mktemp("cluster")
    deployment = start_cluster(workdir, shared_root_backend(workdir / "data"))
    yield deployment
    deployment.stop()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A deployment of the test's own, for tests that kill replicas or break a backend."""
    deployment = start_cluster(tmp_path / "cluster", shared_root_backend(tmp_path / "data"))
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session", params=["single", "scale-out"])
def deployment(request: pytest.FixtureRequest) -> ServerProcess | Cluster:
    """The session registry, then the session cluster: a module that overrides ``registry``
    with this runs each of its tests against both deployments."""
    name = "local_registry" if request.param == "single" else "cluster"
    server: ServerProcess | Cluster = request.getfixturevalue(name)
    return server
