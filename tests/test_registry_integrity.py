"""The registry as a hostile client tries it: manifests whose descriptors lie about stored
content, pushes that fail but would leave traces, deletes that would break images, and
floods of upload sessions. Each test fails on a registry that trusts the client."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from conftest import OCIKIT, ServerProcess, start_registry
from registry_helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    digest,
    error_codes,
    image,
    push_blob,
    push_image,
    put_manifest,
    repo_name,
)


def _refused_as_invalid(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 400, response.text
    assert error_codes(response) == ["MANIFEST_INVALID"]
    message = response.json()["errors"][0]["message"]
    for word in words:
        assert word in message, message


def _index(*children: dict[str, Any]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(children)}).encode()


def _push_index(client: httpx.Client, repo: str, tag: str, child: str, child_body: bytes) -> bytes:
    """An index listing one pushed manifest, pushed under ``tag``; its bytes."""
    index = _index({"mediaType": OCI_MANIFEST, "digest": child, "size": len(child_body)})
    assert put_manifest(client, repo, tag, index, OCI_INDEX).status_code == 201
    return index


def _assert_untagged(client: httpx.Client, repo: str, tag: str) -> None:
    assert client.get(f"/v2/{repo}/manifests/{tag}").status_code == 404


# ---------------------------------------------------------------- descriptors vs stored content


def test_a_layer_descriptor_with_a_wrong_size_is_refused_and_names_the_layer(registry: ServerProcess) -> None:
    repo = repo_name("lying")
    with registry.client() as c:
        _, manifest = image(c, repo, layers=2)
        manifest["layers"][1]["size"] = 12345
        response = put_manifest(c, repo, "v1", json.dumps(manifest).encode())
        _refused_as_invalid(response, "layers[1]", manifest["layers"][1]["digest"], "12345", "1025")
        _assert_untagged(c, repo, "v1")


def test_a_config_descriptor_with_a_wrong_size_is_refused(registry: ServerProcess) -> None:
    repo = repo_name("lying")
    with registry.client() as c:
        _, manifest = image(c, repo, layers=1)
        manifest["config"]["size"] += 1
        _refused_as_invalid(put_manifest(c, repo, "v1", json.dumps(manifest).encode()), "config")


def test_an_index_child_with_a_wrong_size_or_media_type_is_refused(registry: ServerProcess) -> None:
    repo = repo_name("lying")
    with registry.client() as c:
        child, body = push_image(c, repo, layers=1)
        good = {"mediaType": OCI_MANIFEST, "digest": child, "size": len(body)}
        wrong_size = _index(good, {**good, "size": len(body) - 1})
        _refused_as_invalid(put_manifest(c, repo, "i", wrong_size, OCI_INDEX), "manifests[1]", str(len(body)))
        wrong_type = _index({**good, "mediaType": OCI_INDEX})
        _refused_as_invalid(put_manifest(c, repo, "i", wrong_type, OCI_INDEX), "manifests[0]", "mediaType")
        _assert_untagged(c, repo, "i")
        assert put_manifest(c, repo, "i", _index(good), OCI_INDEX).status_code == 201


def test_a_subject_present_in_the_repository_must_be_described_truly(registry: ServerProcess) -> None:
    repo = repo_name("lying")
    with registry.client() as c:
        subject, body = push_image(c, repo, layers=1)
        _, referrer = image(c, repo, layers=1)
        referrer["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(body) + 7}
        _refused_as_invalid(
            put_manifest(c, repo, digest(json.dumps(referrer).encode()), json.dumps(referrer).encode()),
            "subject",
        )
        absent = "sha256:" + "ab" * 32  # a subject pushed later cannot be judged: accepted
        referrer["subject"] = {"mediaType": OCI_MANIFEST, "digest": absent, "size": 3}
        raw = json.dumps(referrer).encode()
        assert put_manifest(c, repo, digest(raw), raw).status_code == 201


def test_sparse_manifests_check_only_the_content_that_is_present(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", ["--sparse-manifests", "true"])
    repo = repo_name("sparse")
    try:
        with server.client() as c:
            _, manifest = image(c, repo, layers=1)
            absent = b"not pushed"
            manifest["layers"].append(descriptor("application/vnd.oci.image.layer.v1.tar", absent, size=99))
            assert put_manifest(c, repo, "ok", json.dumps(manifest).encode()).status_code == 201
            manifest["layers"][0]["size"] += 1  # present, and wrong
            _refused_as_invalid(put_manifest(c, repo, "bad", json.dumps(manifest).encode()), "layers[0]")
    finally:
        server.stop()


# ---------------------------------------------------------------- mounts


def test_a_mount_from_an_invalid_repository_name_is_name_invalid(registry: ServerProcess) -> None:
    repo = repo_name("mount")
    with registry.client() as c:
        for source in ("../x", "UPPER/case", "a//b", ""):
            response = c.post(
                f"/v2/{repo}/blobs/uploads/", params={"mount": "sha256:" + "0" * 64, "from": source}
            )
            assert response.status_code == 400, (source, response.text)
            assert error_codes(response) == ["NAME_INVALID"]
        assert c.get(f"/v2/{repo}/tags/list").status_code == 404  # and no session, no repository


# ---------------------------------------------------------------- referrers tag schema


def test_referrers_are_found_for_a_subject_of_any_algorithm(registry: ServerProcess) -> None:
    """A ``subject`` may name a digest of an algorithm the registry does not store
    (``sha256+b64u``): the referrers API still finds what refers to it, by the digest as
    written."""
    repo = repo_name("referrers")
    subject = "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564="
    with registry.client() as c:
        pointer = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 123}
        artifact, body = push_image(c, repo, layers=1, subject=pointer, artifactType="a/b")
        response = c.get(f"/v2/{repo}/referrers/{subject}")
        assert response.status_code == 200, response.text
        entry = {"mediaType": OCI_MANIFEST, "digest": artifact, "size": len(body), "artifactType": "a/b"}
        assert response.json()["manifests"] == [entry]


# ---------------------------------------------------------------- background errors


def test_a_failing_upload_purge_is_logged(tmp_path: Path) -> None:
    # One worker: a second one starting after the sabotage would refuse to start instead.
    server = start_registry(tmp_path / "data", ["--upload-expiry", "1", "--workers", "1"])
    try:
        uploads = server.root / "uploads"
        shutil.rmtree(uploads)
        uploads.write_text("not a directory: listing the staged uploads fails")
        deadline = time.monotonic() + 10  # a purge between the two lines above logs ENOENT first
        while "NotADirectoryError" not in server.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "purging expired uploads failed" in server.log.read_text()
        assert "NotADirectoryError" in server.log.read_text()
    finally:
        server.stop()


# ---------------------------------------------------------------- upload sessions


def test_an_abandoned_upload_session_expires_within_an_hour_by_default() -> None:
    from ocikit.registry.settings import load_settings

    assert load_settings({}, {}).upload_expiry <= 3600


def _catalog(client: httpx.Client) -> list[str]:
    repositories: list[str] = client.get("/v2/_catalog", params={"n": 100000}).json()["repositories"]
    return repositories


def _staged_uploads(server: ServerProcess) -> int:
    return len(list((server.root / "uploads").iterdir()))


def _too_many(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert error_codes(response) == ["TOOMANYREQUESTS"]
    assert int(response.headers["retry-after"]) > 0


def test_one_client_address_cannot_hold_more_than_1000_upload_sessions(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data")
    try:
        with server.client() as c:
            for index in range(1000):
                response = c.post(f"/v2/flood/r{index % 7}/blobs/uploads/")
                assert response.status_code == 202, (index, response.text)
            _too_many(c.post("/v2/flood/another/blobs/uploads/"))
            assert _staged_uploads(server) == 1000  # the refused session left nothing
            assert "flood/another" not in _catalog(c)
    finally:
        server.stop()


def test_upload_caps_per_repository_and_per_client_are_settings(tmp_path: Path) -> None:
    server = start_registry(
        tmp_path / "data", ["--repository-upload-limit", "2", "--client-upload-limit", "3"]
    )
    try:
        with server.client() as c:
            first = c.post("/v2/capped/one/blobs/uploads/")
            assert c.post("/v2/capped/one/blobs/uploads/").status_code == 202
            _too_many(c.post("/v2/capped/one/blobs/uploads/"))  # the repository's cap
            assert c.post("/v2/capped/two/blobs/uploads/").status_code == 202
            _too_many(c.post("/v2/capped/three/blobs/uploads/"))  # the address's cap
            data = b"a monolithic push counts too"
            _too_many(
                c.post("/v2/capped/three/blobs/uploads/", params={"digest": digest(data)}, content=data)
            )
            assert c.head(f"/v2/capped/three/blobs/{digest(data)}").status_code == 404
            assert (
                c.delete(first.headers["location"]).status_code == 204
            )  # a finished session frees its place
            assert c.post("/v2/capped/one/blobs/uploads/").status_code == 202
            assert _staged_uploads(server) == 3
            assert _catalog(c) == []
    finally:
        server.stop()


# ---------------------------------------------------------------- nothing refused leaves a trace


def test_a_refused_manifest_push_creates_no_repository(registry: ServerProcess) -> None:
    repo = repo_name("ghost")
    with registry.client() as c:
        _, manifest = image(c, repo_name("elsewhere"), layers=1)  # blobs that are not in repo
        response = put_manifest(c, repo, "v1", json.dumps(manifest).encode())
        assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]
        index = _index({"mediaType": OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 9})
        assert error_codes(put_manifest(c, repo, "v2", index, OCI_INDEX)) == ["MANIFEST_BLOB_UNKNOWN"]
        assert repo not in _catalog(c)
        tags = c.get(f"/v2/{repo}/tags/list")
        assert (tags.status_code, error_codes(tags)) == (404, ["NAME_UNKNOWN"])
        assert error_codes(c.get(f"/v2/{repo}/manifests/v1")) == ["NAME_UNKNOWN"]


def test_a_refused_blob_push_leaves_no_repository_link_or_session(fresh_registry: ServerProcess) -> None:
    repo = repo_name("ghost")
    with fresh_registry.client() as c:
        data = b"the content"
        wrong = digest(b"other content")
        response = c.post(f"/v2/{repo}/blobs/uploads/", params={"digest": wrong}, content=data)
        assert error_codes(response) == ["DIGEST_INVALID"]
        location = c.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        assert c.patch(location, content=data).status_code == 202
        assert error_codes(c.put(location, params={"digest": wrong})) == ["DIGEST_INVALID"]
        assert c.get(location).status_code == 404
        assert c.head(f"/v2/{repo}/blobs/{wrong}").status_code == 404
        assert c.head(f"/v2/{repo}/blobs/{digest(data)}").status_code == 404
        assert repo not in _catalog(c)
        assert _staged_uploads(fresh_registry) == 0


def test_gc_removes_repositories_left_empty(fresh_registry: ServerProcess) -> None:
    repo = repo_name("emptied")
    with fresh_registry.client() as c:
        manifest, _ = push_image(c, repo, layers=1)
        assert c.delete(f"/v2/{repo}/manifests/{manifest}").status_code == 202
        assert repo in _catalog(c)
    report = subprocess.run(
        [*OCIKIT, "gc", "--root", str(fresh_registry.root), "--grace", "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"removed empty repository {repo}" in report.stdout
    with fresh_registry.client() as c:
        assert repo not in _catalog(c)
        assert error_codes(c.get(f"/v2/{repo}/tags/list")) == ["NAME_UNKNOWN"]


# ---------------------------------------------------------------- deletes that would break an image


def _denied(response: httpx.Response, *referrers: str) -> None:
    assert response.status_code == 409, response.text
    assert error_codes(response) == ["DENIED"]
    message = response.json()["errors"][0]["message"]
    for referrer in referrers:
        assert referrer in message, message


def test_a_blob_that_a_manifest_uses_cannot_be_deleted(registry: ServerProcess) -> None:
    repo = repo_name("del")
    with registry.client() as c:
        body, manifest = image(c, repo, layers=2)
        assert put_manifest(c, repo, "v1", body).status_code == 201
        untagged, _ = push_image(c, repo, layers=1)
        layer = manifest["layers"][1]["digest"]
        _denied(c.delete(f"/v2/{repo}/blobs/{layer}"), digest(body))
        _denied(c.delete(f"/v2/{repo}/blobs/{manifest['config']['digest']}"), digest(body))
        untagged_config = json.loads(c.get(f"/v2/{repo}/manifests/{untagged}").content)["config"]["digest"]
        _denied(c.delete(f"/v2/{repo}/blobs/{untagged_config}"), untagged)  # untagged still counts
        assert c.get(f"/v2/{repo}/blobs/{layer}").status_code == 200
        assert c.get(f"/v2/{repo}/manifests/v1").status_code == 200


def test_a_manifest_that_an_index_lists_cannot_be_deleted(registry: ServerProcess) -> None:
    repo = repo_name("del")
    with registry.client() as c:
        child, body = push_image(c, repo, layers=1)
        index = _push_index(c, repo, "multi", child, body)
        _denied(c.delete(f"/v2/{repo}/manifests/{child}"), digest(index))
        assert c.get(f"/v2/{repo}/manifests/{child}").status_code == 200


def test_deleting_in_client_order_index_then_manifests_then_blobs_works(registry: ServerProcess) -> None:
    repo = repo_name("del")
    with registry.client() as c:
        body, manifest = image(c, repo, layers=2)
        child = digest(body)
        assert put_manifest(c, repo, child, body).status_code == 201
        index = _push_index(c, repo, "latest", child, body)
        assert c.delete(f"/v2/{repo}/manifests/{digest(index)}").status_code == 202
        assert c.get(f"/v2/{repo}/manifests/latest").status_code == 404  # its tag went with it
        assert c.delete(f"/v2/{repo}/manifests/{child}").status_code == 202
        for blob in [manifest["config"], *manifest["layers"]]:
            assert c.delete(f"/v2/{repo}/blobs/{blob['digest']}").status_code == 202
            assert c.head(f"/v2/{repo}/blobs/{blob['digest']}").status_code == 404


def test_a_tagged_manifest_can_be_deleted_by_digest_and_loses_its_tags(registry: ServerProcess) -> None:
    repo = repo_name("del")
    with registry.client() as c:
        manifest, body = push_image(c, repo, layers=1)
        assert put_manifest(c, repo, manifest, body, tag=["a", "b"]).status_code == 201
        assert c.delete(f"/v2/{repo}/manifests/{manifest}").status_code == 202
        assert c.get(f"/v2/{repo}/tags/list").json()["tags"] == []
        for reference in ("a", "b", manifest):
            assert c.get(f"/v2/{repo}/manifests/{reference}").status_code == 404


def test_content_used_only_in_another_repository_can_be_deleted(registry: ServerProcess) -> None:
    repo, other = repo_name("del"), repo_name("del")
    with registry.client() as c:
        body, manifest = image(c, repo, layers=1)
        for blob in (manifest["config"]["digest"], manifest["layers"][0]["digest"]):
            mounted = c.post(f"/v2/{other}/blobs/uploads/", params={"mount": blob, "from": repo})
            assert mounted.status_code == 201
        assert put_manifest(c, other, "v1", body).status_code == 201
        layer = manifest["layers"][0]["digest"]
        assert c.delete(f"/v2/{repo}/blobs/{layer}").status_code == 202
        assert c.get(f"/v2/{other}/blobs/{layer}").status_code == 200


def test_referrers_follow_their_subject_and_their_own_deletion(registry: ServerProcess) -> None:
    """Deleting a referrer removes it from the list; deleting a subject leaves its referrers
    listed (the referrers API never answers 404), as the spec lets them exist without it."""
    repo = repo_name("del")
    with registry.client() as c:
        subject, subject_body = push_image(c, repo, layers=1)
        described = {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(subject_body)}
        kept, _ = push_image(c, repo, layers=1, subject=described, artifactType="a/kept")
        dropped, _ = push_image(c, repo, layers=1, subject=described, artifactType="a/dropped")
        assert c.delete(f"/v2/{repo}/manifests/{dropped}").status_code == 202
        listed = c.get(f"/v2/{repo}/referrers/{subject}").json()["manifests"]
        assert [entry["digest"] for entry in listed] == [kept]
        assert c.delete(f"/v2/{repo}/manifests/{subject}").status_code == 202
        response = c.get(f"/v2/{repo}/referrers/{subject}")
        assert response.status_code == 200
        assert [entry["digest"] for entry in response.json()["manifests"]] == [kept]


def test_delete_referenced_restores_the_permissive_behaviour(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", ["--delete-referenced", "true"])
    repo = repo_name("del")
    try:
        with server.client() as c:
            child, body = push_image(c, repo, "v1", layers=1)
            _push_index(c, repo, "multi", child, body)
            layer = json.loads(body)["layers"][0]["digest"]
            assert c.delete(f"/v2/{repo}/blobs/{layer}").status_code == 202
            assert c.delete(f"/v2/{repo}/manifests/{child}").status_code == 202
    finally:
        server.stop()


# ---------------------------------------------------------------- ocikit fsck --root


def _fsck(root: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*OCIKIT, "fsck", "--root", str(root), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_fsck_of_a_registry_root_reports_every_stored_inconsistency(tmp_path: Path) -> None:
    """Content a sparse registry accepted and a disk that lost a file: each problem one line."""
    server = start_registry(tmp_path / "data", ["--sparse-manifests", "true"])
    repo = repo_name("fsck")
    try:
        with server.client() as c:
            healthy, _ = push_image(c, repo, "healthy", layers=1)
            assert _fsck(server.root).stdout.endswith(
                "checked 1 repositories, 1 manifests, 1 tags: 0 problems\n"
            )
            _, manifest = image(c, repo, layers=1)
            late = b"pushed after the manifest, with another size than it declared"
            manifest["layers"].append(descriptor("application/vnd.oci.image.layer.v1.tar", late, size=5))
            lying = json.dumps(manifest).encode()
            assert put_manifest(c, repo, "lying", lying).status_code == 201
            push_blob(c, repo, late)
            absent = "sha256:" + "5" * 64
            index = _index({"mediaType": OCI_MANIFEST, "digest": absent, "size": 7})
            assert put_manifest(c, repo, "partial", index, OCI_INDEX).status_code == 201
            lost_layer = manifest["layers"][0]["digest"]
    finally:
        server.stop()
    (server.root / "blobs" / "sha256" / lost_layer.split(":")[1]).unlink()

    result = _fsck(server.root)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    expected = [
        f"{repo}: manifest {digest(lying)}: descriptor layers[1] ({digest(late)}) says size 5, "
        f"but the stored blob has {len(late)} bytes",
        f"{repo}: manifest {digest(lying)}: blob {lost_layer} is recorded, but its bytes are missing "
        "from the blob store",
        f"{repo}: manifest {digest(index)}: descriptor manifests[0] ({absent}) names content that is "
        "not in the repository",
    ]
    assert sorted(lines[:-1]) == sorted(expected), result.stdout
    assert lines[-1] == "checked 1 repositories, 3 manifests, 3 tags: 3 problems"
    assert healthy not in result.stdout

    config = tmp_path / "registry.toml"
    config.write_text(f'root = "{server.root}"\nsparse_manifests = true\n')
    sparse = subprocess.run(
        [*OCIKIT, "fsck", "--config", str(config), "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    problems = json.loads(sparse.stdout)["problems"]
    assert sparse.returncode == 1
    assert len(problems) == 2  # absent children are what a sparse registry allows
    assert {p["item"] for p in problems} == {f"manifest {digest(lying)}"}


def test_fsck_reports_a_tag_without_its_manifest_and_bytes_that_are_not_their_digest(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data")
    repo = repo_name("fsck")
    try:
        with server.client() as c:
            manifest, _ = push_image(c, repo, "v1", layers=1)
            other, _ = push_image(c, repo, "v2", layers=1)
    finally:
        server.stop()
    with sqlite3.connect(server.root / "metadata.db") as db:
        db.execute("PRAGMA foreign_keys = OFF")
        db.execute("DELETE FROM manifests WHERE digest = ?", (manifest,))
        db.execute("UPDATE manifests SET content = CAST(? AS BLOB) WHERE digest = ?", (b"{}", other))
    result = _fsck(server.root)
    assert result.returncode == 1
    assert f"{repo}: tag v1: points at manifest {manifest}, which is not stored" in result.stdout
    assert f"{repo}: manifest {other}: the stored bytes have digest {digest(b'{}')}" in result.stdout


def test_fsck_of_a_registry_refuses_delete_and_reports_a_bad_root(tmp_path: Path) -> None:
    assert _fsck(tmp_path, "--delete").returncode == 2
    (tmp_path / "a-file").write_text("not a registry root")
    (tmp_path / "metadata.db").write_text("not a database")
    for root in (tmp_path / "a-file", tmp_path):
        checked = _fsck(root)
        assert (checked.returncode, checked.stderr[:13]) == (1, "ocikit fsck: "), checked.stderr
        collected = subprocess.run(
            [*OCIKIT, "gc", "--root", str(root)], capture_output=True, text=True, check=False
        )
        assert (collected.returncode, collected.stderr[:11]) == (1, "ocikit gc: "), collected.stderr


def test_delete_refusals_caps_and_fsck_on_postgresql(tmp_path: Path, postgres: Any) -> None:
    """The same rules on the PostgreSQL metadata store: they live in the storage contract."""
    url = postgres.database()
    server = start_registry(tmp_path / "data", ["--metadata", url, "--client-upload-limit", "1"])
    repo = repo_name("pg")
    try:
        with server.client() as c:
            manifest, body = push_image(c, repo, "v1", layers=1)
            layer = json.loads(body)["layers"][0]["digest"]
            _denied(c.delete(f"/v2/{repo}/blobs/{layer}"), manifest)
            assert c.post(f"/v2/{repo}/blobs/uploads/").status_code == 202
            _too_many(c.post(f"/v2/{repo}/blobs/uploads/"))
    finally:
        server.stop()
    env = {"OCIKIT_METADATA": url}
    assert _fsck(server.root, "--metadata", url).returncode == 0
    (server.root / "blobs" / "sha256" / layer.split(":")[1]).unlink()
    result = _fsck(server.root, env=env)
    assert result.returncode == 1
    assert (
        f"{repo}: manifest {manifest}: blob {layer} is recorded, but its bytes are missing" in result.stdout
    )
