"""Crashes (kill -9 mid-push), upload expiry and garbage collection on a real server."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from conftest import OCIKIT, ServerProcess, start_registry
from registry_helpers import OCI_MANIFEST, digest, push_blob, push_image, put_manifest, repo_name


def _assert_store_consistent(root: Path) -> None:
    """Every visible blob file holds exactly the content its name claims; SQLite is intact."""
    for algorithm_dir in (root / "blobs").iterdir():
        for blob in algorithm_dir.iterdir():
            content = blob.read_bytes()
            assert hashlib.new(algorithm_dir.name, content).hexdigest() == blob.name, blob
    with sqlite3.connect(root / "metadata.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        dangling = db.execute(
            "SELECT t.name FROM tags t LEFT JOIN manifests m ON m.repository_id = t.repository_id "
            "AND m.digest = t.digest WHERE m.digest IS NULL"
        ).fetchall()
        assert dangling == []


def _slow_body(data: bytes, stop: threading.Event) -> Iterator[bytes]:
    for i in range(0, len(data), 65536):
        if stop.is_set():
            return
        yield data[i : i + 65536]
        time.sleep(0.002)


def test_kill_during_uploads_and_manifest_pushes_leaves_nothing_half_written(
    fresh_registry: ServerProcess,
) -> None:
    server = fresh_registry
    repo = repo_name("crash")
    big = os.urandom(16 * 1024 * 1024)
    stop = threading.Event()
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                location = c.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
                c.patch(location, content=_slow_body(big, stop))
        except httpx.HTTPError as exc:
            errors.append(exc)

    def push_manifests() -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                while not stop.is_set():
                    push_image(c, repo, tag=f"t{time.monotonic_ns() % 7}", layers=1)
        except (httpx.HTTPError, AssertionError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload), threading.Thread(target=push_manifests)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    server.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert errors, "the clients should have seen the crash"
    _assert_store_consistent(server.root)
    server.restart()
    with server.client() as c:
        assert c.head(f"/v2/{repo}/blobs/{digest(big)}").status_code == 404
        for tag in c.get(f"/v2/{repo}/tags/list").json()["tags"]:
            manifest = c.get(f"/v2/{repo}/manifests/{tag}")
            assert manifest.status_code == 200
            for layer in manifest.json()["layers"]:
                assert c.head(f"/v2/{repo}/blobs/{layer['digest']}").status_code == 200
        assert push_blob(c, repo, big) == digest(big)  # and the registry carries on
    _assert_store_consistent(server.root)


def test_abandoned_uploads_expire_and_their_data_is_purged(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", ["--upload-expiry", "1"])
    try:
        with server.client() as c:
            location = c.post(f"/v2/{repo_name()}/blobs/uploads/").headers["location"]
            c.patch(location, content=b"abandoned")
            upload_id = location.rsplit("/", 1)[1]
            assert (server.root / "uploads" / upload_id).exists()
            deadline = time.monotonic() + 15
            while c.get(location).status_code != 404:
                assert time.monotonic() < deadline, "the upload never expired"
                time.sleep(0.25)
            assert not (server.root / "uploads" / upload_id).exists()
    finally:
        server.stop()


def _gc(root: Path, *args: str) -> str:
    result = subprocess.run(
        [*OCIKIT, "gc", "--root", str(root), *args], capture_output=True, text=True, check=True
    )
    return result.stdout


def test_gc_removes_only_what_nothing_references(fresh_registry: ServerProcess) -> None:
    server = fresh_registry
    repo = repo_name("gc")
    with server.client() as c:
        kept, kept_body = push_image(c, repo, tag="kept")
        untagged, _ = push_image(c, repo)
        loose = push_blob(c, repo, os.urandom(300))
        subject = {"mediaType": OCI_MANIFEST, "digest": kept, "size": len(kept_body)}
        referrer, _ = push_image(c, repo, subject=subject, layers=1)
        assert "0 manifests" in _gc(server.root)  # everything is within the grace period
        listing = _gc(server.root, "--grace", "0", "--dry-run")
        assert f"would remove manifest {repo}@{untagged}" in listing
        assert f"would remove blob {loose}" in listing
        assert c.head(f"/v2/{repo}/manifests/{untagged}").status_code == 200  # dry run
        output = _gc(server.root, "--grace", "0")
        assert f"removed manifest {repo}@{untagged}" in output
        assert c.head(f"/v2/{repo}/manifests/{untagged}").status_code == 404
        assert c.head(f"/v2/{repo}/blobs/{loose}").status_code == 404
        assert c.head(f"/v2/{repo}/manifests/{referrer}").status_code == 200  # its subject lives
        manifest = json.loads(c.get(f"/v2/{repo}/manifests/kept").content)
        for blob in [manifest["config"], *manifest["layers"]]:
            assert c.get(f"/v2/{repo}/blobs/{blob['digest']}").status_code == 200
        # The registry still accepts a push of what was collected.
        assert push_blob(c, repo, b"again") == digest(b"again")
        _, body = push_image(c, repo, tag="new")
        assert put_manifest(c, repo, "new2", body).status_code == 201
    _assert_store_consistent(server.root)
