"""Interop with oras-py, the ORAS project's Python SDK: artifacts with custom media types,
referrers pushed with a ``subject``, found again through the referrers API and pulled back.

Every request to the registry goes through oras's own HTTP client (its ``requests`` session
and its retry and auth wrapper); the test only builds what the SDK's high-level ``push``
cannot express (a manifest with an ``artifactType`` field), and pushes it with the SDK's
lower-level ``upload_blob`` and ``upload_manifest``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from cluster import Cluster
from conftest import REQUIRE_ALL, ServerProcess

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = {
    "mediaType": "application/vnd.oci.empty.v1+json",
    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    "size": 2,
}
SBOM_CONFIG = "application/vnd.example.sbom.config.v1+json"
SBOM_LAYER = "application/vnd.example.sbom.v1+json"
SIGNATURE_CONFIG = "application/vnd.example.signature.config.v1+json"
SIGNATURE_LAYER = "application/vnd.example.signature.v1"
ATTESTATION = "application/vnd.example.attestation.v1+json"

pytestmark = [pytest.mark.timeout(120)]


def _import_oras() -> ModuleType:
    try:
        for module in ("oras.oci", "oras.provider"):
            importlib.import_module(module)
        return importlib.import_module("oras")
    except ImportError:
        message = "the oras SDK is not installed (pip install -e '.[test]')"
        if REQUIRE_ALL:
            pytest.fail(message)
        pytest.skip(message)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def registry(deployment: ServerProcess | Cluster) -> ServerProcess | Cluster:
    """Each test runs against one ``ocikit serve`` and against the three-replica deployment."""
    return deployment


@pytest.fixture
def client(registry: ServerProcess) -> Any:
    """An oras client for the session registry, over plain HTTP.

    oras retries a request answered 500 five times, sleeping 3 + 5 + 11 + 29 + 83 seconds; a
    registry that answers 500 to the HEAD oras sends before each upload fails here at once.
    """
    sdk = _import_oras()
    probe = httpx.head(f"{registry.url}/v2/interop/oras/probe/blobs/{sha256(b'absent')}")
    assert probe.status_code == 404, f"HEAD of an absent blob answered {probe.status_code}, not 404"
    return sdk.provider.Registry(hostname=registry.host, insecure=True)


def manifest_bytes(client: Any, target: str) -> tuple[bytes, str]:
    """The manifest's bytes as served, fetched with oras's session, and its digest header."""
    container = client.get_container(target)
    response = client.do_request(
        f"{client.prefix}://{container.manifest_url()}", "GET", headers={"Accept": OCI_MANIFEST}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == OCI_MANIFEST
    assert sha256(response.content) == response.headers["docker-content-digest"]
    return response.content, response.headers["docker-content-digest"]


def referrers(client: Any, registry: ServerProcess, repo: str, subject: str, **params: str) -> Any:
    """GET /v2/<name>/referrers/<digest> with oras's HTTP session (the SDK has no call for it)."""
    url = f"{registry.url}/v2/{repo}/referrers/{subject}"
    if params:
        url += "?" + httpx.QueryParams(params).__str__()
    # oras's session itself: do_request would retry a 500 for two minutes.
    response = client.session.get(url, headers={"Accept": OCI_INDEX}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == OCI_INDEX
    index = response.json()
    assert (index["schemaVersion"], index["mediaType"]) == (2, OCI_INDEX)
    return response, index


def test_artifacts_with_a_subject_are_found_through_the_referrers_api(
    client: Any, registry: ServerProcess, tmp_path: Path
) -> None:
    sdk = _import_oras()
    repo = "interop/oras/referrers"
    host = registry.host
    source = tmp_path / "source"
    source.mkdir()

    # 1. The subject: an SBOM file with its own layer and config media types.
    sbom = source / "sbom.json"
    sbom.write_text(json.dumps({"packages": [{"name": "ocikit", "version": "0.1.0"}]}))
    config = source / "config.json"
    config.write_text('{"created-by": "test_interop_oras"}')
    response = client.push(
        target=f"{host}/{repo}:sbom",
        files=[f"{sbom}:{SBOM_LAYER}"],
        manifest_config=f"{config}:{SBOM_CONFIG}",
        manifest_annotations={"org.example.kind": "sbom"},
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201, response.text
    subject_raw, subject_digest = manifest_bytes(client, f"{host}/{repo}:sbom")
    assert response.headers["docker-content-digest"] == subject_digest
    subject = sdk.oci.Subject(mediaType=OCI_MANIFEST, digest=subject_digest, size=len(subject_raw))

    # 2. A signature pushed with oras's high-level push and a subject: no artifactType field,
    #    so the referrers API must report its config's media type instead.
    signature = source / "signature.sig"
    signature.write_bytes(b"\x00signed\xff" * 20)
    response = client.push(
        target=f"{host}/{repo}:signature",
        files=[f"{signature}:{SIGNATURE_LAYER}"],
        manifest_config=f"{source / 'no-config'}:{SIGNATURE_CONFIG}",
        subject=subject,
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201, response.text
    assert response.headers["oci-subject"] == subject_digest
    signature_raw, signature_digest = manifest_bytes(client, f"{host}/{repo}:signature")
    assert json.loads(signature_raw)["subject"]["digest"] == subject_digest

    # 3. An attestation with an artifactType, which oras's push cannot set: the manifest is
    #    written here and pushed with the SDK's own blob and manifest calls.
    attestation = source / "attestation.json"
    attestation.write_text(json.dumps({"predicateType": "https://example.org/provenance", "ok": True}))
    container = client.get_container(f"{host}/{repo}:attestation")
    layer = sdk.oci.NewLayer(str(attestation), media_type=ATTESTATION)
    layer["annotations"] = {"org.opencontainers.image.title": attestation.name}
    for path, descriptor in ((attestation, layer), (source / "empty.json", EMPTY)):
        if path.name == "empty.json":
            path.write_text("{}")
        uploaded = client.upload_blob(str(path), container, descriptor)
        assert uploaded.status_code in (200, 201), uploaded.text
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ATTESTATION,
        "config": EMPTY,
        "layers": [layer],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": len(subject_raw)},
        "annotations": {"org.example.note": "attestation — non-ASCII sized in bytes ✓"},
    }
    response = client.upload_manifest(manifest, container)
    assert response.status_code == 201, response.text
    assert response.headers["oci-subject"] == subject_digest
    attestation_raw, attestation_digest = manifest_bytes(client, f"{host}/{repo}:attestation")
    assert json.loads(attestation_raw) == manifest

    # The referrers API lists both, described by the registry from the manifests themselves.
    response, index = referrers(client, registry, repo, subject_digest)
    assert "oci-filters-applied" not in response.headers
    found = {d["digest"]: d for d in index["manifests"]}
    assert found == {
        signature_digest: {
            "mediaType": OCI_MANIFEST,
            "digest": signature_digest,
            "size": len(signature_raw),
            "artifactType": SIGNATURE_CONFIG,
        },
        attestation_digest: {
            "mediaType": OCI_MANIFEST,
            "digest": attestation_digest,
            "size": len(attestation_raw),
            "artifactType": ATTESTATION,
            "annotations": manifest["annotations"],
        },
    }

    # Filtered by artifactType, each alone, and the registry says it filtered.
    for artifact_type, digest in ((ATTESTATION, attestation_digest), (SIGNATURE_CONFIG, signature_digest)):
        response, index = referrers(client, registry, repo, subject_digest, artifactType=artifact_type)
        assert response.headers["oci-filters-applied"] == "artifactType"
        assert [d["digest"] for d in index["manifests"]] == [digest]
    response, index = referrers(client, registry, repo, subject_digest, artifactType="application/vnd.none")
    assert response.headers["oci-filters-applied"] == "artifactType"
    assert index["manifests"] == []

    # A subject nothing refers to has an empty list, never a 404; neither do the referrers.
    assert referrers(client, registry, repo, sha256(b"unknown subject"))[1]["manifests"] == []
    assert referrers(client, registry, repo, signature_digest)[1]["manifests"] == []

    # Pulled back with oras, by tag and by digest, every file is as pushed.
    for target, files in (
        (f"{host}/{repo}:sbom", [sbom]),
        (f"{host}/{repo}@{signature_digest}", [signature]),
        (f"{host}/{repo}@{attestation_digest}", [attestation]),
    ):
        out = tmp_path / "pulled" / target.rsplit("/", 1)[1].replace(":", "-").replace("@", "-")
        pulled = client.pull(target=target, outdir=str(out))
        assert sorted(Path(p).name for p in pulled) == sorted(f.name for f in files)
        for file in files:
            assert (out / file.name).read_bytes() == file.read_bytes()
    # The config oras pushed for the SBOM is the file given, byte for byte.
    config_digest = json.loads(subject_raw)["config"]["digest"]
    blob = client.get_blob(f"{host}/{repo}:sbom", config_digest)
    assert blob.status_code == 200
    assert blob.content == config.read_bytes()
    assert json.loads(subject_raw)["config"]["mediaType"] == SBOM_CONFIG


def test_chunked_push_of_a_directory_and_pull(client: Any, registry: ServerProcess, tmp_path: Path) -> None:
    """oras's chunked upload (POST, PATCH with Content-Range per chunk, closing PUT) of a
    directory it packs as a tar+gzip layer, then unpacks again on pull."""
    host, repo = registry.host, "interop/oras/chunked"
    tree = tmp_path / "tree"
    (tree / "nested").mkdir(parents=True)
    files = {"a.bin": os.urandom(10_000), "nested/b.txt": b"chunked upload\n" * 500}
    for name, content in files.items():
        (tree / name).write_bytes(content)
    response = client.push(
        target=f"{host}/{repo}:v1",
        files=[str(tree)],
        do_chunked=True,
        chunk_size=1000,
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201, response.text
    raw, _ = manifest_bytes(client, f"{host}/{repo}:v1")
    (layer,) = json.loads(raw)["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert layer["size"] > 1000  # more than one chunk went up

    out = tmp_path / "out"
    client.pull(target=f"{host}/{repo}:v1", outdir=str(out))
    for name, content in files.items():
        assert (out / "tree" / name).read_bytes() == content
