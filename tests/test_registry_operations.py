"""Operating the registry: several workers under concurrent pushes and a crash, online GC,
and the access log, each on a real ``ocikit serve``."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from conftest import OCIKIT, start_registry
from registry_helpers import digest, push_blob, push_image, put_manifest, repo_name
from test_registry_faults import _assert_store_consistent


def _wait_until(condition: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_two_workers_take_concurrent_pushes_of_one_blob_and_one_tag(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", ["--workers", "2"])
    repo = repo_name("workers")
    blob = os.urandom(3 * 1024 * 1024)
    try:

        def push_same_blob(_: int) -> str:
            with server.client() as c:
                return push_blob(c, repo, blob)

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(push_same_blob, range(8))) == {digest(blob)}

        def push_tag(_: int) -> str:
            with server.client() as c:
                return push_image(c, repo, tag="contended", layers=1)[0]

        with ThreadPoolExecutor(8) as pool:
            pushed = set(pool.map(push_tag, range(16)))
        with server.client() as c:
            assert c.get(f"/v2/{repo}/blobs/{digest(blob)}").content == blob
            winner = c.head(f"/v2/{repo}/manifests/contended").headers["docker-content-digest"]
            assert winner in pushed
            assert c.get(f"/v2/{repo}/tags/list").json()["tags"] == ["contended"]
    finally:
        server.stop()
    _assert_store_consistent(server.root)


def test_kill_of_a_multi_worker_server_mid_push_then_restart(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", ["--workers", "2"])
    repo = repo_name("crash2")
    stop = threading.Event()

    def keep_pushing(worker: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                while not stop.is_set():
                    push_blob(c, repo, os.urandom(512 * 1024))
                    push_image(c, repo, tag=f"w{worker}", layers=1)
        except (httpx.HTTPError, AssertionError):
            return  # the crash cut this client off, as intended

    threads = [threading.Thread(target=keep_pushing, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    server.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    _assert_store_consistent(server.root)
    server.restart()
    try:
        with server.client() as c:
            for tag in c.get(f"/v2/{repo}/tags/list").json().get("tags") or []:
                for layer in c.get(f"/v2/{repo}/manifests/{tag}").json()["layers"]:
                    assert c.head(f"/v2/{repo}/blobs/{layer['digest']}").status_code == 200
            push_image(c, repo, tag="after-restart")
    finally:
        server.stop()
    _assert_store_consistent(server.root)


def test_online_gc_collects_in_the_background_and_keeps_what_is_tagged(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", ["--gc-interval", "1", "--gc-grace", "1"])
    repo = repo_name("online-gc")
    try:
        with server.client() as c:
            tagged, tagged_body = push_image(c, repo, tag="kept")
            untagged, _ = push_image(c, repo)
            loose = push_blob(c, repo, os.urandom(4096))
            _wait_until(
                lambda: (
                    c.head(f"/v2/{repo}/manifests/{untagged}").status_code == 404
                    and c.head(f"/v2/{repo}/blobs/{loose}").status_code == 404
                ),
                "the background collector",
            )
            assert c.get(f"/v2/{repo}/manifests/kept").content == tagged_body
            for layer in json.loads(tagged_body)["layers"]:
                assert c.head(f"/v2/{repo}/blobs/{layer['digest']}").status_code == 200
            # Pushing again what was collected works while the collector keeps running.
            again, body = push_image(c, repo)
            assert put_manifest(c, repo, "again", body).status_code == 201
            time.sleep(2.5)
            assert c.head(f"/v2/{repo}/manifests/{again}").status_code == 200
            assert c.head(f"/v2/{repo}/manifests/{tagged}").status_code == 200
    finally:
        server.stop()
    _assert_store_consistent(server.root)


def test_json_access_log_has_one_line_per_request(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    server = start_registry(tmp_path / "data", ["--log-format", "json"], log=log)
    repo = repo_name("log")
    try:
        with server.client() as c:
            blob = push_blob(c, repo, b"logged")
            c.get(f"/v2/{repo}/blobs/{blob}")
            c.get(f"/v2/{repo}/manifests/absent")
    finally:
        server.stop()  # the queued lines are flushed when the process ends

    def access_lines() -> list[dict[str, object]]:
        entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        return [e for e in entries if "method" in e and repo in str(e["path"])]

    _wait_until(lambda: len(access_lines()) == 3, "three access lines")
    upload, get, missing = access_lines()
    assert (upload["method"], upload["status"]) == ("POST", 201)
    assert (get["method"], get["status"], get["bytes"]) == ("GET", 200, len(b"logged"))
    assert (missing["path"], missing["status"]) == (f"/v2/{repo}/manifests/absent", 404)
    assert all(isinstance(e["duration_ms"], float) and e["duration_ms"] >= 0 for e in (upload, get, missing))
    assert all(
        str(e["client"]).startswith("127.0.0.1:") and e["user"] is None for e in (upload, get, missing)
    )


def test_sparse_manifests_setting_accepts_absent_blobs_and_keeps_later_pushes(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", ["--sparse-manifests", "true", "--gc-grace", "0"])
    repo = repo_name("sparse")
    layer = os.urandom(2048)
    try:
        with server.client() as c:
            config = push_blob(c, repo, b"{}")
            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config,
                    "size": 2,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digest(layer),
                        "size": 2048,
                    }
                ],
            }
            body = json.dumps(manifest).encode()
            assert put_manifest(c, repo, "sparse", body).status_code == 201
            assert c.get(f"/v2/{repo}/manifests/sparse").content == body
            assert c.head(f"/v2/{repo}/blobs/{digest(layer)}").status_code == 404
            push_blob(c, repo, layer)  # the absent layer arrives later; the tagged manifest keeps it
    finally:
        server.stop()
    subprocess.run(
        [*OCIKIT, "gc", "--root", str(server.root), "--grace", "0"], check=True, capture_output=True
    )
    server.restart()
    try:
        with server.client() as c:
            assert c.get(f"/v2/{repo}/blobs/{digest(layer)}").content == layer
    finally:
        server.stop()
