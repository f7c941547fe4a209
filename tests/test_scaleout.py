"""The scale-out deployment: three ``ocikit serve`` replicas behind HAProxy, every request
balanced on its own, driven through the load balancer as a client would."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster import Cluster, s3_postgres_backend, shared_root_backend, start_cluster
from conftest import OCIKIT, free_port, require_tool
from debian_image import DEBIAN_TAG, debian_layout
from registry_helpers import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    digest,
    error_codes,
    image,
    push_blob,
    push_image,
    put_manifest,
    repo_name,
)


def chunked_upload(
    client: httpx.Client, repo: str, data: bytes, chunk: int
) -> tuple[str, list[httpx.Response]]:
    """POST, one PATCH per ``chunk`` bytes with its Content-Range, closing PUT; the upload's
    path and every response, each asserted to be what the spec says."""
    responses = [client.post(f"/v2/{repo}/blobs/uploads/")]
    assert responses[0].status_code == 202, responses[0].text
    location = responses[0].headers["location"]
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        response = client.patch(
            location,
            content=piece,
            headers={
                "content-type": "application/octet-stream",
                "content-range": f"{start}-{start + len(piece) - 1}",
            },
        )
        assert response.status_code == 202, response.text
        assert response.headers["range"] == f"0-{start + len(piece) - 1}"
        location = response.headers["location"]
        responses.append(response)
    response = client.put(location, params={"digest": digest(data)})
    assert response.status_code == 201, response.text
    responses.append(response)
    return location.split("?")[0], responses


def test_each_request_of_one_upload_goes_to_the_next_replica(cluster: Cluster) -> None:
    repo = repo_name("spread")
    data = os.urandom(6 * 256 * 1024 + 123)
    with cluster.client() as client:
        path, responses = chunked_upload(client, repo, data, 256 * 1024)
        served = [response.headers["x-ocikit-replica"] for response in responses]
        # Round-robin per request: consecutive requests never meet the same replica.
        assert all(a != b for a, b in itertools.pairwise(served)), served
        pulled = client.get(f"/v2/{repo}/blobs/{digest(data)}")
    assert pulled.status_code == 200
    assert hashlib.sha256(pulled.content).hexdigest() == digest(data).split(":")[1]

    # Each replica's own access log holds its share of the upload: all three took part.
    upload_id = path.rsplit("/", 1)[1]
    logged = cluster.replica_lines(upload_id)
    assert all(logged.values()), logged
    assert sum(len(lines) for lines in logged.values()) == len(responses) - 1  # the POST has no id yet
    patches = sum(1 for lines in logged.values() for line in lines if line.startswith("PATCH "))
    assert patches == len(responses) - 2


# ----------------------------------------------------------------------------- faults


def _slow(data: bytes, piece: int = 64 * 1024, pause: float = 0.01) -> Iterator[bytes]:
    """A request body that takes its time, so that a replica can be killed while reading it."""
    for start in range(0, len(data), piece):
        yield data[start : start + piece]
        time.sleep(pause)


def _in_background(send: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[object]]:
    """Run ``send`` in a thread; its response or the error it raised lands in the list."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(send())
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _failed(outcome: list[object]) -> bool:
    """The killed request failed: a transport error, or HAProxy's 502/503/504."""
    (result,) = outcome
    return isinstance(result, httpx.HTTPError) or (
        isinstance(result, httpx.Response) and result.status_code in (502, 503, 504)
    )


def _patch(client: httpx.Client, location: str, data: bytes, start: int) -> httpx.Response:
    return client.patch(
        location,
        content=data,
        headers={
            "content-type": "application/octet-stream",
            "content-range": f"{start}-{start + len(data) - 1}",
        },
    )


def test_the_next_patch_continues_on_another_replica_after_a_kill(fresh_cluster: Cluster) -> None:
    cluster, repo = fresh_cluster, repo_name("killed-patch")
    data, chunk = os.urandom(3 * 1024 * 1024 + 17), 1024 * 1024
    with cluster.client() as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        first = _patch(client, location, data[:chunk], 0)
        assert first.status_code == 202, first.text
        victim = cluster.served_by(first)
        victim.kill()

        # Another replica knows where the upload stands, and takes the next chunk.
        status = client.get(first.headers["location"])
        assert status.status_code == 204, status.text
        assert status.headers["range"] == f"0-{chunk - 1}"
        location = status.headers["location"]
        for start in range(chunk, len(data), chunk):
            response = _patch(client, location, data[start : start + chunk], start)
            assert response.status_code == 202, response.text
            assert cluster.served_by(response) is not victim
            assert response.headers["range"] == f"0-{min(start + chunk, len(data)) - 1}"
            location = response.headers["location"]
        closed = client.put(location, params={"digest": digest(data)})
        assert closed.status_code == 201, closed.text
        cluster.restart(victim)
        for replica in cluster.replicas:  # every replica, the restarted one too, serves it whole
            pulled = httpx.get(
                f"{replica.url}/v2/{repo}/blobs/{digest(data)}", timeout=30, follow_redirects=True
            )
            assert pulled.status_code == 200
            assert pulled.content == data


def test_a_kill_during_the_closing_put_publishes_nothing_and_the_upload_resumes(
    fresh_cluster: Cluster,
) -> None:
    cluster, repo = fresh_cluster, repo_name("killed-put")
    head, tail = os.urandom(1024 * 1024), os.urandom(8 * 1024 * 1024)
    blob = digest(head + tail)
    with cluster.client() as client:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        location = _patch(client, location, head, 0).headers["location"]
        closing, outcome = _in_background(
            lambda: client.put(
                location,
                params={"digest": blob},
                content=_slow(tail),
                headers={"content-type": "application/octet-stream", "content-length": str(len(tail))},
            )
        )
        victim = cluster.busy_replica()
        victim.kill()
        closing.join(30)
        assert _failed(outcome), outcome

        assert client.head(f"/v2/{repo}/blobs/{blob}").status_code == 404
        cluster.restart(victim)
        for replica in cluster.replicas:
            assert httpx.head(f"{replica.url}/v2/{repo}/blobs/{blob}").status_code == 404
        # The session is where it was before the PUT: the retry sends only what is missing.
        status = client.get(location)
        assert status.status_code == 204, status.text
        assert status.headers["range"] == f"0-{len(head) - 1}"
        retried = client.put(status.headers["location"], params={"digest": blob}, content=tail)
        assert retried.status_code == 201, retried.text
        assert client.get(f"/v2/{repo}/blobs/{blob}").content == head + tail


def test_a_kill_during_a_manifest_put_leaves_no_manifest_and_a_retry_succeeds(fresh_cluster: Cluster) -> None:
    cluster, repo = fresh_cluster, repo_name("killed-manifest")
    with cluster.client() as client:
        # A manifest large enough (annotations) to be read slowly: 1 MiB.
        body, _ = image(client, repo, annotations={"padding": "x" * (1024 * 1024)})
        sending, outcome = _in_background(
            lambda: client.put(
                f"/v2/{repo}/manifests/v1",
                content=_slow(body, 16 * 1024, 0.02),
                headers={"content-type": OCI_MANIFEST, "content-length": str(len(body))},
            )
        )
        victim = cluster.busy_replica()
        victim.kill()
        sending.join(30)
        assert _failed(outcome), outcome

        cluster.restart(victim)
        for replica in cluster.replicas:
            with replica.client() as direct:
                for reference in ("v1", digest(body)):
                    gone = direct.get(f"/v2/{repo}/manifests/{reference}", headers={"accept": OCI_MANIFEST})
                    assert gone.status_code == 404, gone.text
                    assert error_codes(gone) == ["MANIFEST_UNKNOWN"]
                tags = direct.get(f"/v2/{repo}/tags/list")
                assert tags.status_code == 404 or tags.json()["tags"] == [], tags.text
        retried = put_manifest(client, repo, "v1", body)
        assert retried.status_code == 201, retried.text
        assert client.get(f"/v2/{repo}/manifests/v1", headers={"accept": OCI_MANIFEST}).content == body


# ----------------------------------------------------------------------------- GC under load


class _Pusher:
    """Pushes images the way skopeo does (HEAD each blob, upload what is missing, then the
    manifest), through the load balancer. Each round's image has the shared base layers and a
    layer of its own and moves the tag ``latest``, so the previous one becomes garbage; the
    first is also tagged ``first``. A manifest refused for a blob that garbage collection took
    meanwhile is answered by uploading that blob again, as a client retries."""

    def __init__(self, cluster: Cluster, repo: str, base: list[bytes]) -> None:
        self.cluster, self.repo, self.base = cluster, repo, base
        self.tagged: dict[str, bytes] = {}  # tag -> manifest
        self.blobs: dict[str, bytes] = {}
        self.rounds = self.retries = 0

    def blob(self, client: httpx.Client, data: bytes, media_type: str) -> dict[str, object]:
        d = digest(data)
        self.blobs[d] = data
        if client.head(f"/v2/{self.repo}/blobs/{d}").status_code != 200:
            if media_type == OCI_LAYER:
                chunked_upload(client, self.repo, data, len(data) // 3 + 1)
            else:
                response = client.post(f"/v2/{self.repo}/blobs/uploads/", params={"digest": d}, content=data)
                assert response.status_code == 201, response.text
        return {"mediaType": media_type, "digest": d, "size": len(data)}

    def push_round(self) -> None:
        own = os.urandom(128 * 1024)
        config = json.dumps({"architecture": "amd64", "os": "linux", "round": f"{self.repo}/{self.rounds}"})
        tags = ["latest", "first"] if self.rounds == 0 else ["latest"]
        with self.cluster.client() as client:
            for _ in range(10):
                manifest = {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": self.blob(client, config.encode(), OCI_CONFIG),
                    "layers": [self.blob(client, data, OCI_LAYER) for data in [*self.base, own]],
                }
                body = json.dumps(manifest).encode()
                response = put_manifest(client, self.repo, digest(body), body, tag=tags)
                if response.status_code == 201:
                    self.tagged.update(dict.fromkeys(tags, body))
                    self.rounds += 1
                    return
                assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"], response.text
                self.retries += 1
        raise AssertionError(f"{self.repo} round {self.rounds} refused 10 times")


def test_a_deleted_blob_is_soon_unknown_to_every_replica(cluster: Cluster) -> None:
    """Replicas remember the blob links they read, and PostgreSQL tells each of every removal
    as it commits: a blob deleted through one replica is unknown to the others a notification
    later (on an idle machine, by the next request)."""
    repo, data = repo_name("forget"), os.urandom(1000)
    path = f"/v2/{repo}/blobs/{digest(data)}"
    with cluster.client() as client:
        push_blob(client, repo, data)
    others = [httpx.Client(base_url=replica.url) for replica in cluster.replicas[1:]]
    try:
        for replica in others:
            assert replica.get(path).status_code == 307  # read, so remembered
        assert httpx.delete(cluster.replicas[0].url + path).status_code == 202
        deadline = time.monotonic() + 2
        for replica in others:
            while (gone := replica.get(path)).status_code == 307:
                assert time.monotonic() < deadline, "a replica still redirects to the deleted blob"
                time.sleep(0.01)
            assert (gone.status_code, error_codes(gone)) == (404, ["BLOB_UNKNOWN"])
    finally:
        for replica in others:
            replica.close()


def test_gc_with_no_grace_beside_eight_pushers_loses_nothing(fresh_cluster: Cluster) -> None:
    """Eight clients push through the load balancer while ``ocikit gc --grace 0`` runs in a
    loop beside the replicas; every manifest the registry accepted must pull whole."""
    cluster = fresh_cluster
    base = [os.urandom(256 * 1024) for _ in range(2)]  # the layers every image shares
    pushers = [_Pusher(cluster, f"stress/image{n}", base) for n in range(8)]
    collections: list[subprocess.CompletedProcess[str]] = []
    done = threading.Event()

    def collect() -> None:
        while not done.is_set():
            collections.append(cluster.backend.gc("--grace", "0"))

    def push(pusher: _Pusher) -> None:
        deadline = time.monotonic() + 40
        while pusher.rounds < 3 or (len(collections) < 3 and time.monotonic() < deadline):
            pusher.push_round()

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        workers = [threading.Thread(target=push, args=(pusher,)) for pusher in pushers]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
    finally:
        done.set()
        collector.join(60)
    assert all(run.returncode == 0 for run in collections), [run.stderr for run in collections]
    assert len(collections) >= 3, "garbage collection must have run throughout the pushes"
    assert all(pusher.rounds >= 3 for pusher in pushers), "every pusher must have finished"

    kept: set[str] = set()
    with cluster.client() as client:
        for pusher in pushers:
            tags = client.get(f"/v2/{pusher.repo}/tags/list")
            assert tags.json()["tags"] == ["first", "latest"], tags.text
            for tag, body in pusher.tagged.items():
                served = client.get(f"/v2/{pusher.repo}/manifests/{tag}", headers={"accept": OCI_MANIFEST})
                assert served.status_code == 200, f"dangling tag {pusher.repo}:{tag}"
                assert served.content == body
                kept.add(digest(body))
                manifest = json.loads(body)
                for descriptor in [manifest["config"], *manifest["layers"]]:
                    blob = descriptor["digest"]
                    pulled = client.get(f"/v2/{pusher.repo}/blobs/{blob}", follow_redirects=True)
                    assert pulled.status_code == 200, f"lost blob {blob} of {pusher.repo}:{tag}"
                    assert pulled.content == pusher.blobs[blob]
                    kept.add(blob)

    # The final collection leaves exactly what the tags reach.
    final = cluster.backend.gc("--grace", "0")
    assert final.returncode == 0, final.stderr
    assert cluster.backend.stored_blobs() - kept == set()


# ----------------------------------------------------------------------------- real clients


def test_skopeo_pushes_and_pulls_the_debian_image_through_the_load_balancer(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The Debian image (three layers, 145 MB) goes up with skopeo, each blob's POST, PATCH
    and PUT on different replicas, and comes back byte for byte."""
    skopeo = require_tool("skopeo")
    layout = debian_layout()
    remote = f"docker://{cluster.host}/scaleout/debian:bookworm"
    tls = ("--src-tls-verify=false", "--dest-tls-verify=false")
    for source, destination in (
        (f"oci:{layout}:{DEBIAN_TAG}", remote),
        (remote, f"oci:{tmp_path / 'out'}:v1"),
    ):
        copied = subprocess.run(
            [skopeo, "copy", "--quiet", *tls, "--preserve-digests", source, destination],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert copied.returncode == 0, copied.stderr

    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = index["manifests"]
    pulled = json.loads((tmp_path / "out" / "index.json").read_text())["manifests"][0]
    assert pulled["digest"] == descriptor["digest"]
    manifest = json.loads((layout / "blobs" / descriptor["digest"].replace(":", "/")).read_bytes())
    for blob in [manifest["config"], *manifest["layers"]]:
        relative = Path("blobs") / blob["digest"].replace(":", "/")
        assert _sha256_file(tmp_path / "out" / relative) == blob["digest"]
        assert (tmp_path / "out" / relative).stat().st_size == blob["size"]

    # Every upload session of the push was served by more than one replica.
    sessions: dict[str, set[int]] = {}
    for index_, lines in cluster.replica_lines("/v2/scaleout/debian/blobs/uploads/").items():
        for line in lines:
            session = line.split()[1].removeprefix("/v2/scaleout/debian/blobs/uploads/")
            if session:
                sessions.setdefault(session, set()).add(index_)
    assert len(sessions) >= len(manifest["layers"])
    assert all(len(replicas) >= 2 for replicas in sessions.values()), sessions


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            hasher.update(block)
    return "sha256:" + hasher.hexdigest()


# ----------------------------------------------------------------------------- backends down


def _until_served(
    client: httpx.Client, path: str, replicas: int, timeout: float = 60, method: str = "GET"
) -> None:
    """Until ``path`` has answered 200 twice from every replica in a row: all have recovered."""
    deadline, streak = time.monotonic() + timeout, 0
    while streak < 2 * replicas:
        response = client.request(method, path)
        streak = streak + 1 if response.status_code == 200 else 0
        assert time.monotonic() < deadline, response.text
        if not streak:
            time.sleep(0.2)


def _assert_unavailable(cluster: Cluster, client: httpx.Client, path: str, component: str) -> None:
    """Every replica answers 503 UNAVAILABLE naming the component, with a Retry-After."""
    served = set()
    for _ in range(2 * len(cluster.replicas)):
        down = client.get(path)
        assert down.status_code == 503, down.text
        assert error_codes(down) == ["UNAVAILABLE"]
        assert component in down.json()["errors"][0]["message"]
        assert down.headers["retry-after"]
        served.add(down.headers["x-ocikit-replica"])
    assert len(served) == len(cluster.replicas)


def _assert_head_unavailable(cluster: Cluster, client: httpx.Client, path: str) -> None:
    """Every replica answers a HEAD 503 with a Retry-After (a HEAD has no body to name the
    component in)."""
    served = set()
    for _ in range(2 * len(cluster.replicas)):
        down = client.head(path)
        assert down.status_code == 503
        assert down.headers["retry-after"]
        served.add(down.headers["x-ocikit-replica"])
    assert len(served) == len(cluster.replicas)


def test_postgresql_restarted_under_the_replicas(fresh_cluster: Cluster, postgres: Any) -> None:
    cluster, repo = fresh_cluster, repo_name("pg-restart")
    pids = [replica.process.pid for replica in cluster.replicas]
    with cluster.client() as client:
        push_image(client, repo, tag="v1")
        postgres.stop()
        try:
            _assert_unavailable(cluster, client, f"/v2/{repo}/manifests/v1", "PostgreSQL")
            assert client.post(f"/v2/{repo}/blobs/uploads/").status_code == 503
        finally:
            postgres.start()
        _until_served(client, f"/v2/{repo}/tags/list", len(cluster.replicas))
        assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1"]
        push_image(client, repo, tag="v2")  # writes work again, on whichever replica
    assert [replica.process.pid for replica in cluster.replicas] == pids
    assert all(replica.process.poll() is None for replica in cluster.replicas)


def test_the_object_store_unreachable_under_the_replicas(fresh_cluster: Cluster, seaweedfs: Any) -> None:
    cluster, repo = fresh_cluster, repo_name("s3-down")
    pids = [replica.process.pid for replica in cluster.replicas]
    data = os.urandom(100_000)
    with cluster.client() as client:
        blob = push_blob(client, repo, data)
        seaweedfs.halt()
        try:
            _assert_head_unavailable(cluster, client, f"/v2/{repo}/blobs/{blob}")
            # A redirect is answered from the metadata: the client meets the store's own error.
            redirected = client.get(f"/v2/{repo}/blobs/{blob}", follow_redirects=False)
            assert redirected.status_code == 307, redirected.text
            with pytest.raises(httpx.ConnectError):
                httpx.get(redirected.headers["location"], timeout=5)
            # An upload fails at its first step that needs the store (staging starts at POST).
            started = client.post(f"/v2/{repo}/blobs/uploads/")
            if started.status_code == 202:
                started = _patch(client, started.headers["location"], b"chunk", 0)
            assert started.status_code == 503, started.text
        finally:
            seaweedfs.restart()
        _until_served(client, f"/v2/{repo}/blobs/{blob}", len(cluster.replicas), method="HEAD")
        assert client.get(f"/v2/{repo}/blobs/{blob}").content == data
        push_image(client, repo, tag="after")
    assert [replica.process.pid for replica in cluster.replicas] == pids


def test_bad_credentials_stop_a_replica_at_start_with_one_line(
    tmp_path: Path, seaweedfs: Any, postgres: Any
) -> None:
    backend = s3_postgres_backend(seaweedfs, postgres, tmp_path)
    listen = ["--listen", f"127.0.0.1:{free_port()}", "--root", str(tmp_path / "root")]
    wrong_key = {**backend.env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    metadata = tomllib.loads(backend.config.read_text())["registry"]["metadata"]
    wrong_password = {"OCIKIT_METADATA": metadata.replace(postgres.password, "not-the-password")}
    for component, env in (
        ("S3 object storage", wrong_key),
        ("PostgreSQL", {**backend.env, **wrong_password}),
    ):
        refused = subprocess.run(
            [*OCIKIT, "serve", *backend.args, *listen],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, **env},
        )
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert refused.stderr.startswith(f"ocikit serve: {component}"), refused.stderr
        assert "not-the-" not in refused.stderr


def test_clients_behind_the_balancer_are_told_apart(tmp_path: Path) -> None:
    """HAProxy forwards each client's address and the replicas trust it from HAProxy only: two
    clients (on 127.0.0.2 and 127.0.0.3) get an upload cap each, a forged X-Forwarded-For
    changes nothing, and the access log names the real client."""
    cluster = start_cluster(
        tmp_path / "cluster",
        shared_root_backend(tmp_path / "data", tmp_path),
        replicas=2,
        extra=["--client-upload-limit", "2"],
    )
    try:
        first, second = (
            cluster.client(transport=httpx.HTTPTransport(local_address=address))
            for address in ("127.0.0.2", "127.0.0.3")
        )
        with first, second:
            started = [first.post("/v2/caps/a/blobs/uploads/").status_code for _ in range(3)]
            assert started == [202, 202, 429]
            forged = first.post("/v2/caps/a/blobs/uploads/", headers={"x-forwarded-for": "198.51.100.9"})
            assert forged.status_code == 429
            assert second.post("/v2/caps/a/blobs/uploads/").status_code == 202
        cluster.access_lines()  # waits until the replicas' logs are written out
        marker = " ocikit.registry.access INFO "
        logged = [
            line.split(marker, 1)[1]
            for replica in cluster.replicas
            for line in replica.log.read_text().splitlines()
            if marker in line and "/caps/" in line
        ]
        assert sorted(line.split()[0] for line in logged) == ["127.0.0.2"] * 4 + ["127.0.0.3"]
        assert sum("127.0.0.2 - POST /v2/caps/a/blobs/uploads/ 429" in line for line in logged) == 2
    finally:
        cluster.stop()
