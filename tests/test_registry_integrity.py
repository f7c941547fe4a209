"""The registry as a hostile client tries it: manifests whose descriptors lie about stored
content, pushes that fail but would leave traces, deletes that would break images, and
floods of upload sessions. Each test fails on a registry that trusts the client."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx

from conftest import ServerProcess, start_registry
from registry_helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    digest,
    error_codes,
    image,
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


def test_referrers_recorded_under_the_tag_schema_are_found_for_any_algorithm(registry: ServerProcess) -> None:
    """The registry and its clients build the fallback tag by one rule: for ``sha256+b64u`` the
    ``+`` becomes ``-``, which is the tag a client pushes the fallback index under."""
    repo = repo_name("referrers")
    subject = "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564="
    with registry.client() as c:
        artifact, body = push_image(c, repo, layers=1)
        entry = {"mediaType": OCI_MANIFEST, "digest": artifact, "size": len(body), "artifactType": "a/b"}
        tag = "sha256-b64u-LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564-"
        assert put_manifest(c, repo, tag, _index(entry), OCI_INDEX).status_code == 201
        response = c.get(f"/v2/{repo}/referrers/{subject}")
        assert response.status_code == 200, response.text
        assert response.json()["manifests"] == [entry]


# ---------------------------------------------------------------- background errors


def test_a_failing_upload_purge_is_logged(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", ["--upload-expiry", "1"])
    try:
        uploads = server.root / "uploads"
        shutil.rmtree(uploads)
        uploads.write_text("not a directory: listing the staged uploads fails")
        deadline = time.monotonic() + 10
        while "purging expired uploads failed" not in server.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "purging expired uploads failed" in server.log.read_text()
        assert "NotADirectoryError" in server.log.read_text()
    finally:
        server.stop()


# ---------------------------------------------------------------- upload sessions


def test_an_abandoned_upload_session_expires_within_an_hour_by_default() -> None:
    from ocikit.registry.settings import load_settings

    assert load_settings({}, {}).upload_expiry <= 3600
