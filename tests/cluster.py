"""The scale-out deployment under test: N ``ocikit serve`` replicas, each its own process,
behind one HAProxy that balances every request on its own (tests/haproxy.py).

A :class:`Backend` says where the replicas keep their data — the flags and environment that
every replica gets. A :class:`Cluster` looks like one registry to a client (``url``,
``host``, ``client()``) and gives tests its replicas, to kill with SIGKILL, restart on the
same port, and read the access log of.
"""

from __future__ import annotations

import json
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
from postgres import PostgresServer
from seaweedfs import SeaweedFS, seaweedfs_fixture  # noqa: F401  (the session's SeaweedFS)

REPLICAS = 3
#: Where in its bucket the scale-out deployment keeps its blobs.
PREFIX = "registry"
#: The replicas believe X-Forwarded-For from HAProxy (on loopback), as docs/scale-out.md shows.
TRUSTED_PROXIES = ["127.0.0.1"]


@dataclass(frozen=True)
class Backend:
    """Shared storage of the replicas: one settings file (``config``, TOML, the way an
    operator keeps one for ``ocikit serve``, ``gc`` and ``migrate`` alike) and the environment
    that carries credentials.

    ``root`` is given to every replica as ``--root`` when the backend lives there (the shared
    local root of a single machine); None gives each replica a private, empty one, which a
    stateless replica must never need. ``list_blobs`` reads the digests of the blobs stored,
    behind the registry's back.
    """

    name: str
    config: Path
    list_blobs: Callable[[], set[str]]
    env: dict[str, str] = field(default_factory=dict)
    root: Path | None = None

    @property
    def args(self) -> list[str]:
        return ["--config", str(self.config)]

    def gc(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """``ocikit gc`` on this storage, as an operator runs it beside the replicas."""
        return self.run("gc", *extra)

    def run(self, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """An ``ocikit`` command with the deployment's settings file and credentials."""
        return subprocess.run(
            [*OCIKIT, command, *self.args, *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, **self.env},
        )

    def stored_blobs(self) -> set[str]:
        return self.list_blobs()


def write_settings(path: Path, settings: dict[str, object]) -> Path:
    """A registry settings file (TOML, under ``[registry]``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[registry]\n" + "".join(f"{name} = {json.dumps(value)}\n" for name, value in settings.items())
    )
    return path


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
        """A client of the load balancer that follows blob redirects to the object store."""
        options = {"follow_redirects": True, **kwargs}
        return httpx.Client(base_url=self.url, timeout=60, **options)  # type: ignore[arg-type]

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
    # As docs/scale-out.md says: the schema first, then the replicas.
    migrated = backend.run("migrate")
    assert migrated.returncode == 0, migrated.stderr
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


def shared_root_backend(root: Path, workdir: Path) -> Backend:
    """The single-machine scale-out: every replica on one local ``--root``, coordinated by the
    SQLite database there."""

    def list_blobs() -> set[str]:
        blobs = root / "blobs"
        return {f"{kind.name}:{blob.name}" for kind in blobs.iterdir() for blob in kind.iterdir()}

    config = write_settings(
        workdir / "registry.toml", {"root": str(root), "trusted_proxies": TRUSTED_PROXIES}
    )
    return Backend("shared-root", config, list_blobs, root=root)


def s3_postgres_backend(s3: SeaweedFS, postgres: PostgresServer, workdir: Path) -> Backend:
    """The scale-out proper: blobs in a fresh bucket of ``s3`` (under a prefix, as a shared
    bucket would be used), metadata in a fresh database of ``postgres``."""
    bucket = s3.new_bucket("cluster")
    settings = {
        "storage": f"s3://{bucket}/{PREFIX}",
        "s3_endpoint": s3.endpoint,
        "s3_region": s3.region,
        "metadata": postgres.database(),
        "trusted_proxies": TRUSTED_PROXIES,
    }

    def list_blobs() -> set[str]:
        found, start = set(), f"{PREFIX}/blobs/"
        for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
            found |= {item["Key"][len(start) :].replace("/", ":", 1) for item in page.get("Contents", [])}
        return found

    config = write_settings(workdir / "registry.toml", settings)
    return Backend("s3-postgres", config, list_blobs, env=s3.environment())


def _backend(request: pytest.FixtureRequest, kind: str, workdir: Path) -> Backend:
    if kind == "shared-root":
        return shared_root_backend(workdir / "data", workdir)
    return s3_postgres_backend(
        request.getfixturevalue("seaweedfs"), request.getfixturevalue("postgres"), workdir
    )


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One three-replica deployment on S3 and PostgreSQL for the whole session (the
    conformance and interop tests run on it)."""
    workdir = tmp_path_factory.mktemp("cluster")
    deployment = start_cluster(workdir, _backend(request, "s3-postgres", workdir))
    yield deployment
    deployment.stop()


@pytest.fixture
def fresh_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A deployment of the test's own, for tests that kill replicas or break a backend: on S3
    and PostgreSQL, or on a shared local root with ``indirect`` parametrisation by
    ``"shared-root"``."""
    kind = getattr(request, "param", "s3-postgres")
    deployment = start_cluster(tmp_path / "cluster", _backend(request, kind, tmp_path))
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session", params=["single", "scale-out"])
def deployment(request: pytest.FixtureRequest) -> ServerProcess | Cluster:
    """The session registry, then the session cluster: a module that overrides ``registry``
    with this runs each of its tests against both deployments."""
    name = "local_registry" if request.param == "single" else "cluster"
    server: ServerProcess | Cluster = request.getfixturevalue(name)
    return server
