"""The registry on its storage settings: ``--metadata`` on PostgreSQL, ``ocikit migrate``,
start-up refusals, 503 while the database is away, and uploads whose requests land on
different replicas (processes sharing one root), with leases held by a dead writer."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import OCIKIT, ServerProcess, start_registry
from ocikit.registry.storage.schema import MIGRATIONS, statements
from ocikit.registry.storage.sqlite import SQLiteMetadataStore
from registry_helpers import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    digest,
    error_codes,
    push_blob,
    push_image,
    put_manifest,
    repo_name,
)


def _serve_once(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``ocikit serve`` expected to refuse to start."""
    return subprocess.run(
        [*OCIKIT, "serve", "--listen", "127.0.0.1:1", *args], capture_output=True, text=True, timeout=timeout
    )


def _version_1_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        for statement in statements(MIGRATIONS[0], "sqlite"):
            db.execute(statement)
        db.execute("INSERT INTO repositories (name, created_at) VALUES ('old/repo', 1)")


def test_serve_refuses_an_old_schema_until_migrated(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    _version_1_database(root / "metadata.db")
    refused = _serve_once("--root", str(root))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "schema version 1" in refused.stderr
    assert "ocikit migrate --metadata sqlite://" in refused.stderr
    url = f"sqlite://{root / 'metadata.db'}"
    migrated = subprocess.run(
        [*OCIKIT, "migrate", "--metadata", url], capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "migrated from schema version 1 to 3" in migrated.stdout
    again = subprocess.run(
        [*OCIKIT, "migrate", "--root", str(root)], capture_output=True, text=True, timeout=60
    )
    assert "nothing to migrate" in again.stdout
    server = start_registry(root)
    try:
        assert server.client().get("/v2/_catalog").json() == {"repositories": ["old/repo"]}
    finally:
        server.stop()


def test_bad_settings_and_credentials_are_one_line(tmp_path: Path, postgres: Any) -> None:
    wrong = _serve_once("--root", str(tmp_path), "--metadata", postgres.url(password="wrong"))
    assert wrong.returncode == 1
    assert wrong.stderr.count("\n") == 1, wrong.stderr
    assert "PostgreSQL" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert "wrong" not in wrong.stderr
    bad_url = _serve_once("--root", str(tmp_path), "--metadata", "mysql://x/y")
    assert bad_url.returncode == 2
    assert "metadata must be a URL" in bad_url.stderr
    s3 = _serve_once("--root", str(tmp_path), "--storage", "ftp://bucket")
    assert s3.returncode == 2
    assert "storage must be a URL" in s3.stderr


@pytest.fixture
def pg_registry(tmp_path: Path, postgres: Any) -> Any:
    url = postgres.database()
    server = start_registry(tmp_path / "data", extra=["--metadata", url])
    yield server, url
    server.stop()


def test_a_registry_on_postgresql(pg_registry: Any, tmp_path: Path) -> None:
    server, url = pg_registry
    name = repo_name()
    with server.client() as client:
        manifest_digest, body = push_image(client, name, tag="v1")
        got = client.get(
            f"/v2/{name}/manifests/v1", headers={"accept": "application/vnd.oci.image.manifest.v1+json"}
        )
        assert got.status_code == 200
        assert got.content == body
        assert client.get(f"/v2/{name}/tags/list").json() == {"name": name, "tags": ["v1"]}
        assert client.delete(f"/v2/{name}/manifests/{manifest_digest}").status_code == 202
    # The metadata is in PostgreSQL, not in a SQLite file under the root.
    assert not (server.root / "metadata.db").exists()
    collected = subprocess.run(
        [*OCIKIT, "gc", "--storage", server.root.as_uri(), "--metadata", url, "--grace", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert collected.returncode == 0, collected.stderr
    assert "3 blobs" in collected.stdout
    assert "1 empty repositories" in collected.stdout
    assert not list((server.root / "blobs" / "sha256").iterdir())


def test_postgresql_restarted_while_serving(pg_registry: Any, postgres: Any) -> None:
    server, _ = pg_registry
    name = repo_name()
    with server.client() as client:
        push_image(client, name, tag="v1")
        postgres.stop()
        try:
            down = client.get(f"/v2/{name}/tags/list")
            assert down.status_code == 503
            assert error_codes(down) == ["UNAVAILABLE"]
            assert "PostgreSQL" in down.text
        finally:
            postgres.start()
        deadline = time.monotonic() + 30
        while (response := client.get(f"/v2/{name}/tags/list")).status_code == 503:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.2)
        assert response.json()["tags"] == ["v1"]
        # A restart between two requests: the next read is answered, on a fresh connection in
        # place of the pooled ones that the server closed.
        for _ in range(4):
            client.get(f"/v2/{name}/manifests/v1")  # several pooled connections in use
        postgres.restart()
        for _ in range(3):
            assert client.get(f"/v2/{name}/tags/list").json()["tags"] == ["v1"]
        push_image(client, name, tag="v2")  # writes work again too
    assert server.process.poll() is None  # never restarted


def _replicas(root: Path, count: int) -> list[ServerProcess]:
    return [start_registry(root, log=root.parent / f"replica-{i}.log") for i in range(count)]


def test_a_chunked_upload_spread_over_replicas(tmp_path: Path) -> None:
    """POST on one replica, each PATCH on another, the closing PUT on a third: the digest
    state travels with the session, and the blob is whole."""
    root = tmp_path / "data"
    replicas = _replicas(root, 3)
    try:
        name = repo_name()
        data = os.urandom(3 * 1024 * 1024 + 17)
        clients = [replica.client() for replica in replicas]
        started = clients[0].post(f"/v2/{name}/blobs/uploads/")
        location = started.headers["location"]
        chunks = [data[i : i + 700_000] for i in range(0, len(data), 700_000)]
        offset = 0
        for i, chunk in enumerate(chunks[:-1]):
            response = clients[(i + 1) % 3].patch(
                location,
                content=chunk,
                headers={
                    "content-range": f"{offset}-{offset + len(chunk) - 1}",
                    "content-type": "application/octet-stream",
                },
            )
            assert response.status_code == 202, response.text
            offset += len(chunk)
            assert response.headers["range"] == f"0-{offset - 1}"
        done = clients[2].put(location, params={"digest": digest(data)}, content=chunks[-1])
        assert done.status_code == 201, done.text
        got = clients[1].get(f"/v2/{name}/blobs/{digest(data)}")
        assert got.content == data
    finally:
        for replica in replicas:
            replica.stop()


def test_a_lease_left_by_a_dead_writer_is_waited_out(fresh_registry: ServerProcess) -> None:
    name = repo_name()
    with fresh_registry.client() as client:
        location = client.post(f"/v2/{name}/blobs/uploads/").headers["location"]
        upload_id = location.rsplit("/", 1)[-1]

        async def claim_and_die() -> None:  # a replica that took the lease and was killed
            store = SQLiteMetadataStore(fresh_registry.root / "metadata.db")
            await store.open()
            assert await store.upload_claim(upload_id, "killed-replica", 2.0) is not None
            await store.close()

        asyncio.run(claim_and_die())
        started = time.monotonic()
        response = client.patch(
            location, content=b"hello", headers={"content-type": "application/octet-stream"}
        )
        waited = time.monotonic() - started
        assert response.status_code == 202, response.text
        assert 1.0 < waited < 10, waited
        done = client.put(location, params={"digest": digest(b"hello")})
        assert done.status_code == 201, done.text


def test_a_writer_that_pauses_keeps_its_lease(fresh_registry: ServerProcess) -> None:
    """A PATCH whose body pauses longer than the lease (the client, or an object store slow
    to take a part) still owns the session: a second PATCH meanwhile is turned away instead of
    writing the same staging area, and the first one's bytes are the upload's."""
    name = repo_name()
    first_half, second_half = os.urandom(4000), os.urandom(4000)
    with fresh_registry.client() as client:
        location = client.post(f"/v2/{name}/blobs/uploads/").headers["location"]
        host, port = fresh_registry.host.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as sock:
            head = (
                f"PATCH {location} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(first_half) + len(second_half)}\r\n\r\n"
            )
            sock.sendall(head.encode() + first_half)
            time.sleep(1)
            intruder = client.patch(location, content=b"intruder", headers={"content-range": "0-7"})
            assert intruder.status_code == 409, intruder.text  # after waiting out a lease that never lapsed
            sock.sendall(second_half)
            sock.settimeout(30)
            answer = sock.recv(65536).decode("latin-1")
        assert answer.startswith("HTTP/1.1 202"), answer
        data = first_half + second_half
        done = client.put(location, params={"digest": digest(data)})
        assert done.status_code == 201, done.text
        assert client.get(f"/v2/{name}/blobs/{digest(data)}").content == data


def test_a_sha512_upload_is_verified_by_reading_it_back(registry: ServerProcess) -> None:
    """The carried state is SHA-256; a blob named by SHA-512 is hashed from the staging area."""
    name = repo_name()
    data = os.urandom(200_000)
    with registry.client() as client:
        location = client.post(f"/v2/{name}/blobs/uploads/").headers["location"]
        assert client.patch(location, content=data[:1000]).status_code == 202
        wrong = client.put(location, params={"digest": digest(b"other", "sha512")}, content=data[1000:])
        assert wrong.status_code == 400
        assert error_codes(wrong) == ["DIGEST_INVALID"]
        location = client.post(f"/v2/{name}/blobs/uploads/").headers["location"]
        assert client.patch(location, content=data[:1000]).status_code == 202
        done = client.put(location, params={"digest": digest(data, "sha512")}, content=data[1000:])
        assert done.status_code == 201, done.text
        assert client.get(f"/v2/{name}/blobs/{digest(data, 'sha512')}").content == data


def test_storage_unavailable_is_503_for_library_users(tmp_path: Path) -> None:
    """An embedding application's own store that cannot be reached: 503, the registry lives on."""
    from ocikit.registry import create_app
    from ocikit.registry.settings import Settings
    from ocikit.registry.storage import StorageUnavailable

    class Unreachable(SQLiteMetadataStore):
        async def tagged_manifest(self, repository: str, tag: str) -> Any:
            raise StorageUnavailable("the catalogue database", "connection refused")

    app = create_app(Settings(root=str(tmp_path)), metadata=Unreachable(tmp_path / "m.db"))

    async def scenario() -> httpx.Response:
        await app.startup()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
                return await client.get("/v2/a/manifests/latest")
        finally:
            await app.shutdown()

    response = asyncio.run(scenario())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert (
        response.json()["errors"][0]["message"] == "the catalogue database is unavailable: connection refused"
    )


def test_an_upload_whose_staging_is_gone_is_unknown(fresh_registry: ServerProcess) -> None:
    """As after a replica was killed between publishing a blob and closing its session: the
    retried PUT is told to start again (404), not answered 500, and the session is gone."""
    name = repo_name()
    with fresh_registry.client() as client:
        location = client.post(f"/v2/{name}/blobs/uploads/").headers["location"]
        assert client.patch(location, content=b"partial").status_code == 202
        (fresh_registry.root / "uploads" / location.rsplit("/", 1)[-1]).unlink()
        retried = client.put(location, params={"digest": digest(b"partial!")}, content=b"!")
        assert retried.status_code == 404
        assert error_codes(retried) == ["BLOB_UPLOAD_UNKNOWN"]
        assert client.get(location).status_code == 404


def test_deletions_of_a_crashed_collection_are_finished(tmp_path: Path) -> None:
    """A collection that died after entering blobs as being deleted: the housekeeping replica
    deletes their bytes, and a push of the same content then goes through."""
    server = start_registry(tmp_path / "data", extra=["--upload-expiry", "2"])  # a 0.5 s tick
    try:
        name = repo_name()
        data = os.urandom(5000)
        with server.client() as client:
            push_blob(client, name, data)
            assert client.delete(f"/v2/{name}/blobs/{digest(data)}").status_code == 202
            blob_file = server.root / "blobs" / "sha256" / digest(data).removeprefix("sha256:")
            assert blob_file.exists()

            async def crash_mid_collection() -> list[str]:
                store = SQLiteMetadataStore(server.root / "metadata.db")
                await store.open()
                try:  # the collection's transaction, then no deletion of the bytes
                    report = await store.collect_garbage(time.time() + 10, dry_run=False)
                    return list(report.blobs)
                finally:
                    await store.close()

            assert asyncio.run(crash_mid_collection()) == [digest(data)]
            deadline = time.monotonic() + 20
            while blob_file.exists():
                assert time.monotonic() < deadline, "the interrupted deletion was not finished"
                time.sleep(0.2)
            push_blob(client, name, data)
            assert client.get(f"/v2/{name}/blobs/{digest(data)}").content == data
    finally:
        server.stop()


def test_pushes_beside_a_collector_with_no_grace_period(tmp_path: Path) -> None:
    """Two replicas on one root, each with an online collector running every second with no
    grace period, and four pushers of images sharing a base layer: every image whose tag was
    accepted pulls whole afterwards, and the blobs pushed again are never lost."""
    root = tmp_path / "data"
    replicas = [
        start_registry(
            root,
            ["--gc-interval", "1", "--gc-grace", "0", "--upload-expiry", "4"],
            log=tmp_path / f"r{i}.log",
        )
        for i in range(2)
    ]
    base = os.urandom(200_000)
    accepted: dict[str, tuple[str, list[bytes]]] = {}
    failures: list[str] = []

    def pusher(worker: int) -> None:
        with replicas[worker % 2].client() as client:
            for round_ in range(4):
                name, tag = f"stress/w{worker}", f"r{round_}"
                layers = [base, os.urandom(50_000 + worker)]
                for _ in range(10):  # a blob collected before its manifest came: push again
                    config = json.dumps({"worker": worker, "round": round_}).encode()
                    for blob in (config, *layers):
                        push_blob(client, name, blob)
                    manifest = {
                        "schemaVersion": 2,
                        "mediaType": OCI_MANIFEST,
                        "config": descriptor(OCI_CONFIG, config),
                        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
                    }
                    body = json.dumps(manifest).encode()
                    response = put_manifest(client, name, tag, body)
                    if response.status_code == 201:
                        accepted[f"{name}:{tag}"] = (digest(body), [config, *layers])
                        break
                    if error_codes(response) != ["MANIFEST_BLOB_UNKNOWN"]:
                        failures.append(response.text)
                        break

    try:
        threads = [threading.Thread(target=pusher, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert len(accepted) >= 10, "too few pushes got through to prove anything"
        with replicas[1].client() as client:
            for reference, (manifest_digest, blobs) in accepted.items():
                name, tag = reference.split(":")
                got = client.get(f"/v2/{name}/manifests/{tag}", headers={"accept": OCI_MANIFEST})
                assert got.headers.get("docker-content-digest") == manifest_digest, got.text
                for blob in blobs:
                    fetched = client.get(f"/v2/{name}/blobs/{digest(blob)}")
                    assert fetched.status_code == 200, (reference, fetched.text)
                    assert fetched.content == blob
    finally:
        for replica in replicas:
            replica.stop()


def test_two_patches_racing_on_one_upload_never_interleave(registry: ServerProcess) -> None:
    """Both claim chunk 0-N of one upload at once: one is written, the other waits for the
    session's lease and is then told where the upload stands (416 with its Range)."""
    name = repo_name()
    first, second = os.urandom(2_000_000), os.urandom(2_000_000)
    with registry.client() as client:
        location = client.post(f"/v2/{name}/blobs/uploads/").headers["location"]
    results: dict[int, httpx.Response] = {}

    def send(index: int, data: bytes) -> None:
        with registry.client() as own:
            headers = {"content-range": f"0-{len(data) - 1}", "content-type": "application/octet-stream"}
            results[index] = own.patch(location, content=data, headers=headers)

    threads = [threading.Thread(target=send, args=(i, data)) for i, data in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(response.status_code for response in results.values())
    assert statuses == [202, 416], [r.text for r in results.values()]
    winner = first if results[0].status_code == 202 else second
    refused = next(r for r in results.values() if r.status_code == 416)
    assert refused.headers["range"] == f"0-{len(winner) - 1}"
    with registry.client() as client:
        done = client.put(location, params={"digest": digest(winner)})
        assert done.status_code == 201, done.text
        assert client.get(f"/v2/{name}/blobs/{digest(winner)}").content == winner


def test_the_closing_put_reads_nothing_back_when_the_state_was_carried(tmp_path: Path) -> None:
    """A chunked upload is verified from the digest state saved with the session (SHA-256, or
    the POST's ``digest-algorithm``); only an algorithm other than the carried one makes the
    registry read the staged bytes again."""
    from ocikit.registry import create_app
    from ocikit.registry.settings import Settings
    from ocikit.registry.storage.filesystem import FilesystemBlobStore

    reads: list[int] = []

    class Recording(FilesystemBlobStore):
        def stage_read(self, upload_id: str, stage: bytes, size: int) -> Any:
            reads.append(size)
            return super().stage_read(upload_id, stage, size)

    app = create_app(Settings(root=str(tmp_path)), blobs=Recording(tmp_path / "blobs"))
    data = os.urandom(300_000)

    async def chunked(algorithm: str, announced: bool = False) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
            params = {"digest-algorithm": algorithm} if announced else {}
            location = (await client.post("/v2/a/blobs/uploads/", params=params)).headers["location"]
            for start in range(0, 200_000, 100_000):
                await client.patch(location, content=data[start : start + 100_000])
            done = await client.put(
                location, params={"digest": digest(data, algorithm)}, content=data[200_000:]
            )
            return done.status_code

    async def scenario() -> tuple[int, int, int]:
        async with app:
            return await chunked("sha256"), await chunked("sha512"), await chunked("sha512", announced=True)

    assert asyncio.run(scenario()) == (201, 201, 201)
    assert reads == [len(data)]  # the SHA-512 upload that the POST did not announce only


@pytest.mark.parametrize("source", ["PGPASSWORD", "PGPASSFILE"])
def test_the_postgresql_password_from_the_environment_or_a_passfile(
    source: str, tmp_path: Path, postgres: Any
) -> None:
    """As libpq: a URL without a password takes it from PGPASSWORD or the password file."""
    url = postgres.database()
    without_password = url.replace(f":{postgres.password}@", "@")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if source == "PGPASSWORD":
        env["PGPASSWORD"] = postgres.password
    else:
        passfile = tmp_path / "pgpass"
        passfile.write_text(f"127.0.0.1:{postgres.port}:*:ocikit:{postgres.password}\n")
        passfile.chmod(0o600)
        env["PGPASSFILE"] = str(passfile)
    migrated = subprocess.run(
        [*OCIKIT, "migrate", "--metadata", without_password],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "nothing to migrate" in migrated.stdout or "migrated from schema version 0" in migrated.stdout
    refused = subprocess.run(
        [*OCIKIT, "migrate", "--metadata", without_password],
        capture_output=True,
        text=True,
        timeout=60,
        env={key: value for key, value in env.items() if not key.startswith("PG")},
    )
    assert refused.returncode == 1
    assert "PostgreSQL is unavailable" in refused.stderr


async def _open_and_migrate_together(url: str, count: int) -> None:
    from ocikit.registry.storage.postgres import PostgresMetadataStore

    stores = [PostgresMetadataStore(url, pool_size=2) for _ in range(count)]
    try:
        await asyncio.gather(*(store.open() if i % 2 else store.migrate() for i, store in enumerate(stores)))
    finally:
        await asyncio.gather(*(store.close() for store in stores))


_OPEN_IN_A_PROCESS = """
import asyncio, sys
from ocikit.registry.storage.postgres import PostgresMetadataStore
async def main():
    store = PostgresMetadataStore(sys.argv[1], pool_size=1)
    await store.open()
    await store.close()
asyncio.run(main())
"""


def test_replicas_opening_an_empty_postgresql_together_create_one_schema(postgres: Any) -> None:
    """Version check and schema creation are one critical section: stores opened and migrated
    at once on a fresh database (in one event loop, then in separate processes) all succeed."""
    asyncio.run(_open_and_migrate_together(postgres.database(), 6))
    url = postgres.database()
    processes = [
        subprocess.Popen([OCIKIT[0], "-c", _OPEN_IN_A_PROCESS, url], stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    outcomes = [(process.communicate(timeout=60)[1], process.returncode) for process in processes]
    assert [stderr for stderr, code in outcomes if code] == []


def test_online_gc_runs_when_the_first_replica_has_it_off(tmp_path: Path, postgres: Any) -> None:
    """The replica started first (and so leading the shared housekeeping) has no gc_interval;
    the one with it set still collects, as online GC has a lease of its own."""
    root, url = tmp_path / "data", postgres.database()
    gc_off = start_registry(root, extra=["--metadata", url], log=tmp_path / "off.log")
    gc_on = None
    try:
        time.sleep(1)  # the first replica takes the housekeeping lease
        gc_on = start_registry(
            root, extra=["--metadata", url, "--gc-interval", "1", "--gc-grace", "0"], log=tmp_path / "on.log"
        )
        name = repo_name()
        with gc_off.client() as client:
            loose = push_blob(client, name, os.urandom(4096))
            deadline = time.monotonic() + 20
            while client.head(f"/v2/{name}/blobs/{loose}").status_code != 404:
                assert time.monotonic() < deadline, "online GC never ran"
                time.sleep(0.3)
    finally:
        for replica in (gc_off, gc_on):
            if replica is not None:
                replica.stop()


def test_maintenance_commands_follow_the_registry_environment(pg_registry: Any, tmp_path: Path) -> None:
    """``ocikit gc``/``fsck``/``migrate`` without location flags address the registry the
    ``OCIKIT_*`` environment names, as ``ocikit serve`` does; an explicit ``--store`` still
    means the local image store."""
    server, url = pg_registry
    name = repo_name()
    with server.client() as client:
        loose = push_blob(client, name, os.urandom(2048))
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "OCIKIT_ROOT": str(server.root),
        "OCIKIT_METADATA": url,
    }
    env.pop("OCIKIT_STORE", None)

    def ocikit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*OCIKIT, *args], capture_output=True, text=True, timeout=60, env=env)

    gc = ocikit("gc", "--grace", "0", "--dry-run")
    assert gc.returncode == 0, gc.stderr
    assert f"would remove blob {loose}" in gc.stdout
    fsck = ocikit("fsck")
    assert fsck.returncode == 0, fsck.stderr
    assert "checked 1 repositories" in fsck.stdout
    assert "nothing to migrate" in ocikit("migrate").stdout
    local = ocikit("gc", "--grace", "0", "--dry-run", "--store", str(tmp_path / "store"))
    assert local.returncode == 0, local.stderr
    assert loose not in local.stdout


def test_the_main_process_never_loads_the_backend_libraries(pg_registry: Any) -> None:
    """The start-up check runs in a forked child: the main process, which lives as long as
    the server, holds no database driver (asyncpg's compiled protocol) and no token
    cryptography in memory; and workers of a registry without tokens load no cryptography."""
    server, _ = pg_registry
    main = server.process.pid
    maps = Path(f"/proc/{main}/maps").read_text()
    assert "asyncpg" not in maps
    assert "protocol.cpython" not in maps
    assert "cryptography" not in maps
    deadline = time.monotonic() + 20  # a loaded machine may still be spawning the worker
    while not (workers := Path(f"/proc/{main}/task/{main}/children").read_text().split()):
        assert time.monotonic() < deadline, "no worker was started"
        time.sleep(0.1)
    for worker in workers:
        # The server answered through one worker; another may still be opening its stores.
        while "asyncpg" not in (worker_maps := Path(f"/proc/{worker}/maps").read_text()):
            assert time.monotonic() < deadline, "a worker never loaded asyncpg"  # it serves on PostgreSQL
            time.sleep(0.1)
        assert "cryptography" not in worker_maps


def test_stores_opening_an_empty_sqlite_database_together_create_one_schema(tmp_path: Path) -> None:
    """The same on SQLite, where the check and the creation share one BEGIN IMMEDIATE."""
    path = tmp_path / "metadata.db"

    async def together() -> None:
        stores = [SQLiteMetadataStore(path) for _ in range(6)]
        try:
            await asyncio.gather(
                *(store.open() if i % 2 else store.migrate() for i, store in enumerate(stores))
            )
        finally:
            await asyncio.gather(*(store.close() for store in stores))

    asyncio.run(together())
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM schema_version").fetchone() == (1,)


def test_an_index_repeating_one_child_looks_it_up_once(tmp_path: Path) -> None:
    """An attacker's 4 MiB index can list one manifest thousands of times: the push must not
    cost the metadata store one query per entry."""
    from ocikit.registry import create_app
    from ocikit.registry.settings import Settings
    from ocikit.spec.digest import Digest

    looked_up: list[Digest] = []

    class Counting(SQLiteMetadataStore):
        async def manifest(self, repository: str, reference: str) -> Any:
            looked_up.append(Digest(reference))
            return await super().manifest(repository, reference)

    app = create_app(Settings(root=str(tmp_path)), metadata=Counting(tmp_path / "metadata.db"))
    config, layer = b"{}", os.urandom(100)
    child = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
        }
    ).encode()
    entry = {"mediaType": OCI_MANIFEST, "digest": digest(child), "size": len(child)}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry] * 5000}).encode()

    async def push() -> int:
        transport = httpx.ASGITransport(app=app)
        async with app, httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
            for blob in (config, layer):
                posted = await client.post(
                    "/v2/a/blobs/uploads/", params={"digest": digest(blob)}, content=blob
                )
                assert posted.status_code == 201
            headers = {"content-type": OCI_MANIFEST}
            assert (
                await client.put(f"/v2/a/manifests/{digest(child)}", content=child, headers=headers)
            ).is_success
            looked_up.clear()
            headers = {"content-type": OCI_INDEX}
            return (await client.put("/v2/a/manifests/many", content=index, headers=headers)).status_code

    assert asyncio.run(push()) == 201
    assert looked_up.count(Digest(digest(child))) == 1


def test_a_catalog_page_reads_hidden_names_in_batches(tmp_path: Path) -> None:
    """A caller who may see one repository of thousands: ``?n=1`` must not cost a query per
    hidden name, and the pages still list exactly what the caller may see, without gaps."""
    from ocikit.registry import RegistryError, create_app
    from ocikit.registry.http import Request
    from ocikit.registry.settings import Settings

    queries: list[int] = []

    class Counting(SQLiteMetadataStore):
        async def repositories(self, limit: int, last: str | None) -> list[str]:
            queries.append(limit)
            return await super().repositories(limit, last)

    async def hide(request: Request, repository: str | None, action: str) -> None:
        if repository is not None and repository.startswith("hidden/"):
            raise RegistryError("DENIED", "hidden")

    path = tmp_path / "metadata.db"
    visible = ["a/first", "z/last"]

    async def create_schema() -> None:
        store = Counting(path)
        await store.open()
        await store.close()

    asyncio.run(create_schema())  # then 5,000 hidden repositories at once
    db = sqlite3.connect(path)
    with db:
        rows = [(name, 0.0) for name in visible + [f"hidden/{i:05}" for i in range(5000)]]
        db.executemany("INSERT INTO repositories (name, created_at) VALUES (?, ?)", rows)
    db.close()
    app = create_app(Settings(root=str(tmp_path)), metadata=Counting(path), authorize=hide)

    async def pages() -> list[list[str]]:
        transport = httpx.ASGITransport(app=app)
        seen, url = [], "/v2/_catalog?n=1"
        async with app, httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
            while url:
                response = await client.get(url)
                seen.append(response.json()["repositories"])
                url = response.links.get("next", {}).get("url", "")
        return seen

    queries.clear()
    assert asyncio.run(pages()) == [["a/first"], ["z/last"]]
    assert len(queries) <= 2 * 6, queries  # 5,002 names, a thousand a query, twice
