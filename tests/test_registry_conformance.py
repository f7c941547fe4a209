"""The distribution-spec, one test per requirement, against a real ``ocikit serve``.

Section names follow the spec: base, pull, push, content discovery, content management,
error codes and warnings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from auth_helpers import BearerFlow
from client_servers import htpasswd_file
from cluster import Cluster
from conftest import ServerProcess, start_registry
from registry_helpers import (
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
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


@pytest.fixture(scope="module")
def signed_in_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A registry with users (an htpasswd file, no policy: a signed-in user may do all)."""
    workdir = tmp_path_factory.mktemp("signed-in")
    htpasswd = htpasswd_file(workdir / "htpasswd", {"conformance": "conformance-pw"})
    server = start_registry(workdir / "data", extra=["--htpasswd", str(htpasswd)])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry(deployment: ServerProcess | Cluster) -> ServerProcess | Cluster:
    """Tests that use the registry itself run against one ``ocikit serve`` and against the
    three-replica deployment."""
    return deployment


@pytest.fixture(params=["open", "signed-in", "scale-out"])
def client(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """Every test runs against the open registry, through the token flow against one with
    access control on, and against the three-replica S3 + PostgreSQL deployment."""
    if request.param == "signed-in":
        server: ServerProcess = request.getfixturevalue("signed_in_registry")
        with server.client(auth=BearerFlow("conformance", "conformance-pw")) as c:
            yield c
        return
    name = "local_registry" if request.param == "open" else "cluster"
    with request.getfixturevalue(name).client() as c:
        yield c


@pytest.fixture
def repo() -> str:
    return repo_name()


# ----------------------------------------------------------------------------- base


def test_base_endpoint_answers_200_with_api_version(client: httpx.Client) -> None:
    response = client.get("/v2/")
    assert response.status_code == 200
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"
    assert response.json() == {}


def test_unknown_endpoint_is_404_with_json_error(client: httpx.Client) -> None:
    response = client.get("/v2/a/b/nothing-here/x")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"]


# ----------------------------------------------------------------------------- pull


def test_manifest_get_by_tag_and_digest_returns_exact_bytes(client: httpx.Client, repo: str) -> None:
    d, body = push_image(client, repo, tag="v1")
    for reference in ("v1", d):
        response = client.get(f"/v2/{repo}/manifests/{reference}", headers={"accept": OCI_MANIFEST})
        assert response.status_code == 200
        assert response.content == body
        assert response.headers["content-type"] == OCI_MANIFEST
        assert response.headers["docker-content-digest"] == d
        assert int(response.headers["content-length"]) == len(body)


def test_manifest_head_has_digest_and_length_but_no_body(client: httpx.Client, repo: str) -> None:
    d, body = push_image(client, repo, tag="v1")
    response = client.head(f"/v2/{repo}/manifests/v1")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["docker-content-digest"] == d
    assert int(response.headers["content-length"]) == len(body)
    assert response.headers["content-type"] == OCI_MANIFEST


def test_unknown_manifest_is_404_manifest_unknown(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, tag="v1")
    for reference in ("nope", digest(b"nothing"), ".INVALID_MANIFEST_NAME"):
        response = client.get(f"/v2/{repo}/manifests/{reference}")
        assert response.status_code == 404
        assert error_codes(response) == ["MANIFEST_UNKNOWN"]
        assert client.head(f"/v2/{repo}/manifests/{reference}").status_code == 404


def test_unknown_repository_is_404_name_unknown(client: httpx.Client) -> None:
    response = client.get(f"/v2/{repo_name('nowhere')}/manifests/latest")
    assert response.status_code == 404
    assert error_codes(response) == ["NAME_UNKNOWN"]


def test_malformed_digest_reference_is_400_digest_invalid(client: httpx.Client, repo: str) -> None:
    response = client.get(f"/v2/{repo}/manifests/sha256:totallywrong")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_invalid_repository_name_is_400_name_invalid(client: httpx.Client) -> None:
    response = client.get("/v2/Upper/Case/manifests/latest")
    assert response.status_code == 400
    assert error_codes(response) == ["NAME_INVALID"]


def test_tag_not_matching_accept_header_is_not_served(client: httpx.Client, repo: str) -> None:
    d, _ = push_image(client, repo, tag="v1")
    docker_only = {"accept": "application/vnd.docker.distribution.manifest.v2+json"}
    assert client.get(f"/v2/{repo}/manifests/v1", headers=docker_only).status_code == 404
    # A digest names the content exactly: it is served whatever the Accept header says.
    assert client.get(f"/v2/{repo}/manifests/{d}", headers=docker_only).status_code == 200
    assert client.get(f"/v2/{repo}/manifests/v1", headers={"accept": "*/*"}).status_code == 200


def fetch_blob(
    client: httpx.Client, repo: str, blob: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, httpx.Response]:
    """GET a blob as a client does: the registry's answer, and the one with the bytes — the
    same, or that of the object store a 307 sends the client to (the spec allows it; the
    store then answers ``Range`` itself)."""
    answer = client.get(f"/v2/{repo}/blobs/{blob}", headers=headers, follow_redirects=False)
    if answer.status_code != 307:
        return answer, answer
    assert answer.headers["docker-content-digest"] == blob
    location = answer.headers["location"]
    assert location.startswith("http"), "a redirect goes to the object store, an absolute URL"
    return answer, httpx.get(location, headers=headers, timeout=60)


def test_blob_get_and_head(client: httpx.Client, repo: str) -> None:
    data = os.urandom(4096)
    d = push_blob(client, repo, data)
    answer, response = fetch_blob(client, repo, d)
    assert response.status_code == 200
    assert response.content == data
    assert answer.headers["docker-content-digest"] == d
    head = client.head(f"/v2/{repo}/blobs/{d}")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(data)
    assert head.headers["docker-content-digest"] == d


def test_blob_missing_is_404_blob_unknown(client: httpx.Client, repo: str) -> None:
    response = client.get(f"/v2/{repo}/blobs/{digest(os.urandom(8))}")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UNKNOWN"]
    assert client.head(f"/v2/{repo}/blobs/{digest(os.urandom(8))}").status_code == 404


def test_blob_of_another_repository_is_not_visible(client: httpx.Client) -> None:
    first, second = repo_name(), repo_name()
    d = push_blob(client, first, os.urandom(100))
    assert client.get(f"/v2/{second}/blobs/{d}").status_code == 404


def test_empty_blob(client: httpx.Client, repo: str) -> None:
    d = push_blob(client, repo, b"")
    response = client.get(f"/v2/{repo}/blobs/{d}")
    assert response.status_code == 200
    assert response.content == b""
    assert client.head(f"/v2/{repo}/blobs/{d}").headers["content-length"] == "0"


@pytest.mark.parametrize(
    ("header", "status", "span"),
    [
        ("bytes=500-1499", 206, (500, 1499)),
        ("bytes=500-", 206, (500, 2047)),
        ("bytes=-500", 206, (1548, 2047)),
        ("bytes=2000-5000", 206, (2000, 2047)),
        ("bytes=500-0", 416, None),
        ("bytes=5000-10000", 416, None),
    ],
)
def test_blob_range_requests(
    client: httpx.Client, repo: str, header: str, status: int, span: tuple[int, int] | None
) -> None:
    data = os.urandom(2048)
    d = push_blob(client, repo, data)
    answer, response = fetch_blob(client, repo, d, {"range": header})
    assert response.status_code == status
    if span is None and answer is not response:
        return  # the object store's 416 has a body of its own (S3's XML error)
    if span is None:
        assert response.content == b""
        assert response.headers["content-range"] == "bytes */2048"
        return
    start, end = span
    assert response.content == data[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/2048"
    assert int(response.headers["content-length"]) == end - start + 1


@pytest.mark.parametrize(
    "header",
    ["bytes=\u00b2-", "bytes=\u0661-\u0662", "bytes=0-" + "9" * 5000, "bytes=-" + "9" * 5000, "bytes=abc-5"],
    ids=["superscript", "arabic-indic", "5000-digit-end", "5000-digit-suffix", "letters"],
)
def test_blob_range_that_is_no_number_is_ignored(client: httpx.Client, repo: str, header: str) -> None:
    """RFC 9110 lets a server ignore a Range it cannot read: the whole blob, never a 500."""
    data = os.urandom(2048)
    d = push_blob(client, repo, data)
    answer = client.get(f"/v2/{repo}/blobs/{d}", headers={"range": header.encode()}, follow_redirects=False)
    if answer.status_code == 307:
        return  # the object store reads the Range, not the registry
    assert answer.status_code == 200
    assert answer.content == data


def test_an_unsatisfiable_range_is_not_cacheable(client: httpx.Client, repo: str) -> None:
    d = push_blob(client, repo, os.urandom(100))
    answer = client.get(f"/v2/{repo}/blobs/{d}", headers={"range": "bytes=999-"}, follow_redirects=False)
    if answer.status_code == 307:
        return  # the object store answers the Range itself
    assert answer.status_code == 416
    assert answer.headers["content-range"] == "bytes */100"
    assert "cache-control" not in answer.headers
    assert "etag" not in answer.headers


# ----------------------------------------------------------------------------- push: blobs


@pytest.mark.parametrize(
    "content_range",
    ["0-\u00b2", "\u0661-\u0662", "0-" + "9" * 5000, "9" * 5000 + "-" + "9" * 5000],
    ids=["superscript", "arabic-indic", "5000-digit-end", "5000-digits"],
)
def test_a_content_range_that_is_no_number_is_refused(
    client: httpx.Client, repo: str, content_range: str
) -> None:
    data = os.urandom(100)
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    refused = client.patch(location, content=data, headers={"content-range": content_range.encode()})
    assert refused.status_code == 400
    assert error_codes(refused) == ["BLOB_UPLOAD_INVALID"]
    done = client.put(location, params={"digest": digest(data)}, content=data)
    assert done.status_code == 201, "the session survives a refused chunk"


def test_an_upload_announced_as_sha512_completes(client: httpx.Client, repo: str) -> None:
    data = os.urandom(3000)
    start = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest-algorithm": "sha512"})
    assert start.status_code == 202
    location = start.headers["location"]
    assert client.patch(location, content=data[:1000], headers={"content-range": "0-999"}).status_code == 202
    done = client.put(location, params={"digest": digest(data, "sha512")}, content=data[1000:])
    assert done.status_code == 201, done.text
    assert fetch_blob(client, repo, digest(data, "sha512"))[1].content == data


@pytest.mark.parametrize(
    "params",
    [{"digest-algorithm": "blake3"}, {"digest-algorithm": "md5"}, {"digest-algorithm": ""}],
    ids=["blake3", "md5", "empty"],
)
def test_an_algorithm_the_registry_cannot_store_is_refused_at_the_post(
    client: httpx.Client, repo: str, params: dict[str, str]
) -> None:
    refused = client.post(f"/v2/{repo}/blobs/uploads/", params=params)
    assert refused.status_code == 400
    assert error_codes(refused) == ["DIGEST_INVALID"]
    assert "location" not in refused.headers


def test_a_digest_algorithm_that_contradicts_the_digest_is_refused(client: httpx.Client, repo: str) -> None:
    data = os.urandom(100)
    params = {"digest": digest(data), "digest-algorithm": "sha512"}
    refused = client.post(f"/v2/{repo}/blobs/uploads/", params=params, content=data)
    assert refused.status_code == 400
    assert error_codes(refused) == ["DIGEST_INVALID"]
    assert client.head(f"/v2/{repo}/blobs/{digest(data)}").status_code == 404


def test_post_then_put(client: httpx.Client, repo: str) -> None:
    data = os.urandom(3000)
    start = client.post(f"/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202
    location = start.headers["location"]
    done = client.put(location, params={"digest": digest(data)}, content=data)
    assert done.status_code == 201
    assert done.headers["location"] == f"/v2/{repo}/blobs/{digest(data)}"
    assert done.headers["docker-content-digest"] == digest(data)
    assert client.get(done.headers["location"]).content == data


def test_single_post_monolithic_upload(client: httpx.Client, repo: str) -> None:
    data = os.urandom(3000)
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest(data)}, content=data)
    assert response.status_code == 201
    assert client.get(response.headers["location"]).content == data


def test_streamed_patch_upload(client: httpx.Client, repo: str) -> None:
    data = os.urandom(100_000)
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]

    def body() -> Iterator[bytes]:  # sent with chunked transfer encoding, no Content-Length
        for i in range(0, len(data), 7000):
            yield data[i : i + 7000]

    patched = client.patch(location, content=body())
    assert patched.status_code == 202
    assert patched.headers["range"] == f"0-{len(data) - 1}"
    done = client.put(patched.headers["location"], params={"digest": digest(data)})
    assert done.status_code == 201
    assert client.get(f"/v2/{repo}/blobs/{digest(data)}").content == data


def test_chunked_upload_in_order(client: httpx.Client, repo: str) -> None:
    data = os.urandom(3067)
    location = client.post(f"/v2/{repo}/blobs/uploads/", headers={"content-length": "0"}).headers["location"]
    for start in range(0, len(data), 1024):
        chunk = data[start : start + 1024]
        response = client.patch(
            location,
            content=chunk,
            headers={
                "content-range": f"{start}-{start + len(chunk) - 1}",
                "content-type": "application/octet-stream",
            },
        )
        assert response.status_code == 202
        assert response.headers["range"] == f"0-{start + len(chunk) - 1}"
        location = response.headers["location"]
    done = client.put(location, params={"digest": digest(data)})
    assert done.status_code == 201
    assert client.get(f"/v2/{repo}/blobs/{digest(data)}").content == data


def test_chunked_upload_last_chunk_in_put(client: httpx.Client, repo: str) -> None:
    data = os.urandom(2000)
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    first = client.patch(location, content=data[:1024], headers={"content-range": "0-1023"})
    assert first.status_code == 202
    done = client.put(
        first.headers["location"],
        params={"digest": digest(data)},
        content=data[1024:],
        headers={"content-range": f"1024-{len(data) - 1}"},
    )
    assert done.status_code == 201
    assert client.get(f"/v2/{repo}/blobs/{digest(data)}").content == data


def test_out_of_order_chunk_is_416_and_the_session_survives(client: httpx.Client, repo: str) -> None:
    data = os.urandom(2048)
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    ahead = client.patch(location, content=data[1024:], headers={"content-range": "1024-2047"})
    assert ahead.status_code == 416
    assert ahead.headers["range"] == "0-0"
    first = client.patch(location, content=data[:1024], headers={"content-range": "0-1023"})
    assert first.status_code == 202
    again = client.patch(location, content=data[:1024], headers={"content-range": "0-1023"})
    assert again.status_code == 416
    assert again.headers["range"] == "0-1023"
    # An out-of-order final chunk in the closing PUT is 416 too, not 400.
    wrong_put = client.put(
        location, params={"digest": digest(data)}, content=data[:1024], headers={"content-range": "0-1023"}
    )
    assert wrong_put.status_code == 416
    status = client.get(location)
    assert status.status_code == 204
    assert status.headers["range"] == "0-1023"
    done = client.put(
        status.headers["location"],
        params={"digest": digest(data)},
        content=data[1024:],
        headers={"content-range": "1024-2047"},
    )
    assert done.status_code == 201


def test_chunk_shorter_than_its_content_range_is_refused_and_undone(client: httpx.Client, repo: str) -> None:
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    response = client.patch(location, content=b"x" * 10, headers={"content-range": "0-19"})
    assert response.status_code == 400
    assert error_codes(response) == ["BLOB_UPLOAD_INVALID"]
    assert client.get(location).headers["range"] == "0-0"


def test_upload_status_of_new_session(client: httpx.Client, repo: str) -> None:
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    status = client.get(location)
    assert status.status_code == 204
    assert status.headers["range"] == "0-0"
    assert status.headers["location"] == location


def test_upload_cancel(client: httpx.Client, repo: str) -> None:
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    client.patch(location, content=b"partial")
    assert client.delete(location).status_code == 204
    gone = client.get(location)
    assert gone.status_code == 404
    assert error_codes(gone) == ["BLOB_UPLOAD_UNKNOWN"]
    assert client.delete(location).status_code == 404


def test_upload_belongs_to_its_repository(client: httpx.Client, repo: str) -> None:
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    upload_id = location.rsplit("/", 1)[1]
    response = client.get(f"/v2/{repo_name()}/blobs/uploads/{upload_id}")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


def test_unknown_upload_is_404(client: httpx.Client, repo: str) -> None:
    response = client.patch(f"/v2/{repo}/blobs/uploads/0123456789abcdef", content=b"x")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


@pytest.mark.parametrize("method", ["monolithic", "post-put", "chunked", "stream"])
def test_wrong_digest_is_400_and_nothing_is_stored(client: httpx.Client, repo: str, method: str) -> None:
    data = os.urandom(3072)
    claimed = digest(data[:3067])
    if method == "monolithic":
        response = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": claimed}, content=data)
    else:
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        if method == "post-put":
            response = client.put(location, params={"digest": claimed}, content=data)
        else:
            headers = {"content-range": f"0-{len(data) - 1}"} if method == "chunked" else {}
            location = client.patch(location, content=data, headers=headers).headers["location"]
            response = client.put(location, params={"digest": claimed})
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert client.head(f"/v2/{repo}/blobs/{claimed}").status_code == 404
    assert client.head(f"/v2/{repo}/blobs/{digest(data)}").status_code == 404


def test_closing_put_without_digest_is_400(client: httpx.Client, repo: str) -> None:
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
    response = client.put(location, content=b"abc")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_sha512_blob(client: httpx.Client, repo: str) -> None:
    data = os.urandom(5000)
    d = push_blob(client, repo, data, "sha512")
    answer, response = fetch_blob(client, repo, d)
    assert response.content == data
    assert answer.headers["docker-content-digest"] == d


def test_unsupported_digest_algorithm_is_400(client: httpx.Client, repo: str) -> None:
    response = client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": "blake3:" + "a" * 64}, content=b"data"
    )
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_cross_repository_mount_with_from(client: httpx.Client) -> None:
    source, target = repo_name(), repo_name()
    data = os.urandom(500)
    d = push_blob(client, source, data)
    response = client.post(f"/v2/{target}/blobs/uploads/", params={"mount": d, "from": source})
    assert response.status_code == 201
    assert response.headers["location"] == f"/v2/{target}/blobs/{d}"
    assert response.headers["docker-content-digest"] == d
    assert client.get(f"/v2/{target}/blobs/{d}").content == data


def test_cross_repository_mount_without_from(client: httpx.Client, request: pytest.FixtureRequest) -> None:
    source, target = repo_name(), repo_name()
    d = push_blob(client, source, os.urandom(500))
    response = client.post(f"/v2/{target}/blobs/uploads/", params={"mount": d})
    if "signed-in" in request.node.callspec.id:
        # A bearer token names no source a registry could find: an upload, as the spec allows.
        assert response.status_code == 202
        return
    assert response.status_code == 201
    assert client.head(f"/v2/{target}/blobs/{d}").status_code == 200


def test_mount_of_missing_blob_starts_an_upload(client: httpx.Client, repo: str) -> None:
    data = os.urandom(500)
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest(data), "from": repo_name()})
    assert response.status_code == 202
    done = client.put(response.headers["location"], params={"digest": digest(data)}, content=data)
    assert done.status_code == 201


def test_concurrent_pushes_of_the_same_blob(registry: ServerProcess, repo: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = os.urandom(1 << 20)

    def push(_: int) -> int:
        with registry.client() as c:
            return c.post(
                f"/v2/{repo}/blobs/uploads/", params={"digest": digest(data)}, content=data
            ).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(push, range(8))) == {201}
    with registry.client() as c:
        assert c.get(f"/v2/{repo}/blobs/{digest(data)}").content == data


# --------------------------------------------------------------------------- push: manifests


def test_manifest_put_by_tag(client: httpx.Client, repo: str) -> None:
    body, _ = image(client, repo)
    response = put_manifest(client, repo, "v1", body)
    assert response.status_code == 201
    assert response.headers["location"] == f"/v2/{repo}/manifests/{digest(body)}"
    assert response.headers["docker-content-digest"] == digest(body)


def test_manifest_put_by_digest_keeps_exact_bytes(client: httpx.Client, repo: str) -> None:
    _, manifest = image(client, repo)
    body = b"  " + json.dumps(manifest, indent=7, sort_keys=True).encode() + b"\n\n"
    assert put_manifest(client, repo, digest(body), body).status_code == 201
    assert client.get(f"/v2/{repo}/manifests/{digest(body)}").content == body


def test_manifest_put_with_wrong_digest_is_400(client: httpx.Client, repo: str) -> None:
    body, _ = image(client, repo)
    response = put_manifest(client, repo, digest(body + b"  "), body)
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert put_manifest(client, repo, "sha256:baddigeststring", body).status_code == 400


def test_manifest_put_with_several_tags(client: httpx.Client, repo: str) -> None:
    body, _ = image(client, repo)
    response = client.put(
        f"/v2/{repo}/manifests/{digest(body)}",
        params=[("tag", "a"), ("tag", "b"), ("tag", "c")],
        content=body,
        headers={"content-type": OCI_MANIFEST},
    )
    assert response.status_code == 201
    assert sorted(response.headers.get_list("oci-tag")) == ["a", "b", "c"]
    for tag in "abc":
        assert client.get(f"/v2/{repo}/manifests/{tag}").content == body


def test_sha512_manifest(client: httpx.Client, repo: str) -> None:
    body, _ = image(client, repo)
    d = digest(body, "sha512")
    response = put_manifest(client, repo, d, body)
    assert response.status_code == 201
    assert response.headers["docker-content-digest"] == d
    assert client.get(f"/v2/{repo}/manifests/{d}").content == body


def test_retagging_moves_the_tag(client: httpx.Client, repo: str) -> None:
    first, _ = push_image(client, repo, tag="latest")
    second, _ = push_image(client, repo, tag="latest")
    assert client.head(f"/v2/{repo}/manifests/latest").headers["docker-content-digest"] == second
    assert client.head(f"/v2/{repo}/manifests/{first}").status_code == 200


def test_manifest_with_missing_blob_is_manifest_blob_unknown(client: httpx.Client, repo: str) -> None:
    _, manifest = image(client, repo)
    manifest["layers"].append(descriptor(OCI_LAYER, os.urandom(64)))
    response = put_manifest(client, repo, "v1", json.dumps(manifest).encode())
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]
    assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404


def test_index_with_missing_manifest_is_manifest_blob_unknown(client: httpx.Client, repo: str) -> None:
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor(OCI_MANIFEST, b"{}")]}
    response = put_manifest(client, repo, "idx", json.dumps(index).encode(), OCI_INDEX)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]


def test_index_of_pushed_manifests(client: httpx.Client, repo: str) -> None:
    children = [push_image(client, repo) for _ in range(2)]
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": d,
                "size": len(b),
                "platform": {"os": "linux", "architecture": a},
            }
            for (d, b), a in zip(children, ["amd64", "arm64"], strict=True)
        ],
    }
    body = json.dumps(index).encode()
    assert put_manifest(client, repo, "multi", body, OCI_INDEX).status_code == 201
    response = client.get(f"/v2/{repo}/manifests/multi", headers={"accept": OCI_INDEX})
    assert response.headers["content-type"] == OCI_INDEX
    assert response.content == body


def test_empty_index_is_accepted(client: httpx.Client, repo: str) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    assert put_manifest(client, repo, "empty", body, OCI_INDEX).status_code == 201


def test_manifest_without_layers_is_accepted_with_a_warning(client: httpx.Client, repo: str) -> None:
    _, manifest = image(client, repo, layers=0)
    response = put_manifest(client, repo, "nolayers", json.dumps(manifest).encode())
    assert response.status_code == 201
    assert response.headers["warning"].startswith('299 - "')


def test_nondistributable_layers_need_not_be_uploaded(client: httpx.Client, repo: str) -> None:
    _, manifest = image(client, repo, layers=1)
    manifest["layers"].append(
        descriptor(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            os.urandom(64),
            urls=["https://example.com/layer"],
        )
    )
    assert put_manifest(client, repo, "foreign", json.dumps(manifest).encode()).status_code == 201


def test_invalid_manifests_are_manifest_invalid(client: httpx.Client, repo: str) -> None:
    _, manifest = image(client, repo)
    cases = [
        b"not json",
        json.dumps({**manifest, "schemaVersion": 1}).encode(),
        json.dumps({**manifest, "config": {"mediaType": "invalid", "digest": "x", "size": -1}}).encode(),
        json.dumps({k: v for k, v in manifest.items() if k != "config"}).encode(),
        json.dumps([manifest]).encode(),
    ]
    for body in cases:
        response = put_manifest(client, repo, "bad", body)
        assert response.status_code == 400, body
        assert error_codes(response) == ["MANIFEST_INVALID"]


def test_content_type_conflicting_with_media_type_is_refused(client: httpx.Client, repo: str) -> None:
    body, _ = image(client, repo)
    response = put_manifest(client, repo, "v1", body, media_type=OCI_INDEX)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]


def test_unsupported_manifest_media_type_is_refused(client: httpx.Client, repo: str) -> None:
    response = put_manifest(client, repo, "v1", b"{}", media_type="application/x-unknown")
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]


def test_invalid_tag_is_refused(client: httpx.Client, repo: str) -> None:
    body, _ = image(client, repo)
    response = put_manifest(client, repo, "-bad", body)
    assert response.status_code == 400


def test_large_manifest_up_to_4_mib_is_accepted_and_larger_is_413(client: httpx.Client, repo: str) -> None:
    _, manifest = image(client, repo)
    manifest["annotations"] = {f"key{i}": "v" * 10_000 for i in range(390)}  # ~3.9 MB
    body = json.dumps(manifest).encode()
    assert put_manifest(client, repo, "large", body).status_code == 201
    manifest["annotations"]["pad"] = "v" * (4 * 1024 * 1024 - len(body) + 10)
    response = put_manifest(client, repo, "huge", json.dumps(manifest).encode())
    assert response.status_code == 413


def test_subject_is_accepted_when_missing_and_answered_with_oci_subject(
    client: httpx.Client, repo: str
) -> None:
    missing = {"mediaType": OCI_MANIFEST, "digest": digest(b"missing content"), "size": 123}
    body, _ = image(client, repo, subject=missing)
    response = put_manifest(client, repo, digest(body), body)
    assert response.status_code == 201
    assert response.headers["oci-subject"] == missing["digest"]


# ------------------------------------------------------------------------- content discovery


def test_tags_list_is_sorted_and_paginated(client: httpx.Client, repo: str) -> None:
    _, body = push_image(client, repo)
    tags = ["b", "A", "a", "c1", "C0", "_x", "1.0"]
    for tag in tags:
        assert put_manifest(client, repo, tag, body).status_code == 201
    everything = client.get(f"/v2/{repo}/tags/list")
    assert everything.status_code == 200
    assert everything.json() == {"name": repo, "tags": sorted(tags)}
    page = client.get(f"/v2/{repo}/tags/list", params={"n": 3})
    assert page.json()["tags"] == sorted(tags)[:3]
    link = page.headers["link"]
    assert link.endswith('; rel="next"')
    next_page = client.get(link[1 : link.index(">")])
    assert next_page.json()["tags"] == sorted(tags)[3:6]
    after = client.get(f"/v2/{repo}/tags/list", params={"last": sorted(tags)[2]})
    assert after.json()["tags"] == sorted(tags)[3:]
    assert "link" not in after.headers


def test_tags_list_n_zero_is_empty_without_link(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, tag="v1")
    response = client.get(f"/v2/{repo}/tags/list", params={"n": 0})
    assert response.json()["tags"] == []
    assert "link" not in response.headers


def test_tags_list_of_unknown_repository_is_404(client: httpx.Client) -> None:
    response = client.get(f"/v2/{repo_name()}/tags/list")
    assert response.status_code == 404
    assert error_codes(response) == ["NAME_UNKNOWN"]


#: Numbers as an attacker writes them: negative, a superscript and Arabic-Indic digits (which
#: ``str.isdigit`` accepts and ``int`` refuses or reads), and more digits than ``int`` takes.
NOT_NUMBERS = ["-1", "\u00b2", "\u0661\u0662", "9" * 5000]


@pytest.mark.parametrize("n", NOT_NUMBERS, ids=["negative", "superscript", "arabic-indic", "5000-digits"])
def test_listings_with_bad_n_are_400(client: httpx.Client, repo: str, n: str) -> None:
    subject = push_image(client, repo, tag="v1")
    for path in (f"/v2/{repo}/tags/list", f"/v2/{repo}/referrers/{subject[0]}", "/v2/_catalog"):
        response = client.get(path, params={"n": n})
        assert response.status_code == 400, path
        assert error_codes(response) == ["UNSUPPORTED"]


def test_catalog_is_sorted_and_paginated(client: httpx.Client) -> None:
    prefix = repo_name("catalog")
    names = [f"{prefix}/r{i}" for i in range(3)]
    for name in names:
        push_blob(client, name, os.urandom(10))
    everything = client.get("/v2/_catalog", params={"n": 10000}).json()["repositories"]
    assert everything == sorted(everything)
    assert set(names) <= set(everything)
    page = client.get("/v2/_catalog", params={"n": 1, "last": names[0]})
    assert page.json()["repositories"] == [names[1]]
    assert 'rel="next"' in page.headers["link"]


def _referrer(
    client: httpx.Client, repo: str, subject: tuple[str, bytes], **extra: object
) -> tuple[str, bytes]:
    return push_image(client, repo, subject=_subject(subject), layers=1, **extra)


def _subject(subject: tuple[str, bytes]) -> dict[str, Any]:
    return {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": len(subject[1])}


def _index_referrer(subject: tuple[str, bytes], **extra: object) -> bytes:
    """An index with no manifests whose ``subject`` is ``subject``."""
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [],
        "subject": _subject(subject),
        **extra,
    }
    return json.dumps(index).encode()


def test_referrers_of_unknown_subject_is_an_empty_index(client: httpx.Client) -> None:
    response = client.get(f"/v2/{repo_name()}/referrers/{digest(os.urandom(8))}")
    assert response.status_code == 200
    assert response.headers["content-type"] == OCI_INDEX
    assert response.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def test_referrers_list_and_filter(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo, tag="subject")
    sbom = _referrer(
        client,
        repo,
        subject,
        artifactType="application/vnd.example.sbom",
        annotations={"org.example.kind": "sbom"},
    )
    sig = _referrer(client, repo, subject, artifactType="application/vnd.example.sig")
    plain = _referrer(client, repo, subject)  # no artifactType: the config's mediaType stands in
    response = client.get(f"/v2/{repo}/referrers/{subject[0]}")
    assert response.status_code == 200
    assert response.headers["content-type"] == OCI_INDEX
    found = {m["digest"]: m for m in response.json()["manifests"]}
    assert set(found) == {sbom[0], sig[0], plain[0]}
    assert found[sbom[0]]["artifactType"] == "application/vnd.example.sbom"
    assert found[sbom[0]]["annotations"] == {"org.example.kind": "sbom"}
    assert found[sbom[0]]["size"] == len(sbom[1])
    assert found[sbom[0]]["mediaType"] == OCI_MANIFEST
    assert found[plain[0]]["artifactType"] == OCI_CONFIG
    filtered = client.get(
        f"/v2/{repo}/referrers/{subject[0]}", params={"artifactType": "application/vnd.example.sig"}
    )
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    assert [m["digest"] for m in filtered.json()["manifests"]] == [sig[0]]


def test_referrer_pushed_before_its_subject(client: httpx.Client, repo: str) -> None:
    future_body, _ = image(client, repo)
    future = (digest(future_body), future_body)
    early = _referrer(client, repo, future, artifactType="application/vnd.example.early")
    assert put_manifest(client, repo, "later", future_body).status_code == 201
    manifests = client.get(f"/v2/{repo}/referrers/{future[0]}").json()["manifests"]
    assert [m["digest"] for m in manifests] == [early[0]]


def test_index_referrer_without_artifact_type_omits_it(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo)
    body = _index_referrer(subject)
    response = put_manifest(client, repo, digest(body), body, OCI_INDEX)
    assert response.headers["oci-subject"] == subject[0]
    manifests = client.get(f"/v2/{repo}/referrers/{subject[0]}").json()["manifests"]
    assert manifests == [{"mediaType": OCI_INDEX, "digest": digest(body), "size": len(body)}]


def test_a_referrers_tag_index_lends_nothing_to_the_referrers_api(client: httpx.Client, repo: str) -> None:
    """What a tag-schema index lists is a client's claim: the API lists the manifests whose
    ``subject`` is the digest (every one ever pushed here), each with its own artifactType."""
    subject = push_image(client, repo)
    unrelated = push_image(client, repo)  # no subject: not a referrer, whatever the index says
    real_type = "application/vnd.example.real"
    real, real_raw = _referrer(client, repo, subject, artifactType=real_type)
    claims = [
        {
            "mediaType": OCI_MANIFEST,
            "digest": unrelated[0],
            "size": len(unrelated[1]),
            "artifactType": "x/lie",
        },
        {"mediaType": OCI_MANIFEST, "digest": real, "size": len(real_raw), "artifactType": "x/lie"},
    ]
    fallback = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": claims}).encode()
    tag = subject[0].replace(":", "-")
    assert put_manifest(client, repo, tag, fallback, OCI_INDEX).status_code == 201
    for params in ({}, {"artifactType": "x/lie"}, {"artifactType": real_type}):
        listed = client.get(f"/v2/{repo}/referrers/{subject[0]}", params=params).json()["manifests"]
        expected = [] if params.get("artifactType") == "x/lie" else [(real, real_type)]
        assert [(m["digest"], m["artifactType"]) for m in listed] == expected, params


def test_an_index_has_no_config_to_lend_an_artifact_type(client: httpx.Client, repo: str) -> None:
    subject = push_image(client, repo)
    body = _index_referrer(subject, config={"mediaType": "application/x-stray"})
    assert put_manifest(client, repo, digest(body), body, OCI_INDEX).status_code == 201
    listed = client.get(f"/v2/{repo}/referrers/{subject[0]}").json()["manifests"]
    assert listed == [{"mediaType": OCI_INDEX, "digest": digest(body), "size": len(body)}]
    filtered = client.get(
        f"/v2/{repo}/referrers/{subject[0]}", params={"artifactType": "application/x-stray"}
    )
    assert filtered.json()["manifests"] == []
    for stray in ({}, 123, ["x"]):  # not even a string: still no 500
        odd = _index_referrer(subject, config={"mediaType": stray})
        assert put_manifest(client, repo, digest(odd), odd, OCI_INDEX).status_code == 201


def test_referrers_with_invalid_digest_is_400(client: httpx.Client, repo: str) -> None:
    assert client.get(f"/v2/{repo}/referrers/sha256:nope").status_code == 400


def test_referrers_and_tags_paginate(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", ["--page-size", "2"])
    try:
        with server.client() as c:
            repo = repo_name()
            subject = push_image(c, repo, tag="s")
            referrers = sorted(_referrer(c, repo, subject)[0] for _ in range(3))
            first = c.get(f"/v2/{repo}/referrers/{subject[0]}")
            assert [m["digest"] for m in first.json()["manifests"]] == referrers[:2]
            link = first.headers["link"]
            second = c.get(link[1 : link.index(">")])
            assert [m["digest"] for m in second.json()["manifests"]] == referrers[2:]
            assert "link" not in second.headers
    finally:
        server.stop()


# ------------------------------------------------------------------------ content management


def test_delete_tag(client: httpx.Client, repo: str) -> None:
    d, _ = push_image(client, repo, tag="gone")
    assert client.delete(f"/v2/{repo}/manifests/gone").status_code == 202
    assert client.head(f"/v2/{repo}/manifests/gone").status_code == 404
    assert client.head(f"/v2/{repo}/manifests/{d}").status_code == 200
    assert "gone" not in client.get(f"/v2/{repo}/tags/list").json()["tags"]
    assert client.delete(f"/v2/{repo}/manifests/gone").status_code == 404


def test_delete_manifest_removes_its_tags(client: httpx.Client, repo: str) -> None:
    d, _ = push_image(client, repo, tag="doomed")
    assert client.delete(f"/v2/{repo}/manifests/{d}").status_code == 202
    assert client.head(f"/v2/{repo}/manifests/{d}").status_code == 404
    assert client.head(f"/v2/{repo}/manifests/doomed").status_code == 404
    response = client.delete(f"/v2/{repo}/manifests/{d}")
    assert response.status_code == 404
    assert error_codes(response) == ["MANIFEST_UNKNOWN"]


def test_delete_blob(client: httpx.Client, repo: str) -> None:
    d = push_blob(client, repo, os.urandom(100))
    assert client.delete(f"/v2/{repo}/blobs/{d}").status_code == 202
    assert client.head(f"/v2/{repo}/blobs/{d}").status_code == 404
    response = client.delete(f"/v2/{repo}/blobs/{d}")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UNKNOWN"]


def test_deletes_can_be_switched_off(tmp_path: Path) -> None:
    flags = ["--delete-blobs", "false", "--delete-manifests", "false", "--delete-tags", "false"]
    server = start_registry(tmp_path / "data", flags)
    try:
        with server.client() as c:
            repo = repo_name()
            d, _ = push_image(c, repo, tag="kept")
            blob = push_blob(c, repo, b"blob")
            for path in ("manifests/kept", f"manifests/{d}", f"blobs/{blob}"):
                response = c.delete(f"/v2/{repo}/{path}")
                assert response.status_code == 405
                assert error_codes(response) == ["UNSUPPORTED"]
            assert c.head(f"/v2/{repo}/manifests/kept").status_code == 200
    finally:
        server.stop()


# -------------------------------------------------------------- errors, warnings, settings


def test_error_bodies_follow_the_spec_format(client: httpx.Client, repo: str) -> None:
    response = client.get(f"/v2/{repo}/blobs/{digest(b'x')}")
    body = response.json()
    assert set(body) == {"errors"}
    assert {"code", "message"} <= set(body["errors"][0])
    assert body["errors"][0]["code"].replace("_", "").isalpha()
    assert body["errors"][0]["code"].isupper()


def test_method_not_allowed_is_405(client: httpx.Client, repo: str) -> None:
    response = client.post(f"/v2/{repo}/manifests/latest")
    assert response.status_code == 405
    assert error_codes(response) == ["UNSUPPORTED"]


def test_operator_warnings_and_chunk_min_length(tmp_path: Path) -> None:
    long = "x" * 4000
    server = start_registry(
        tmp_path / "data",
        ["--warnings", f'this registry moves on "Friday",second,{long}', "--chunk-min-length", "4096"],
    )
    try:
        with server.client() as c:
            response = c.get("/v2/")
            assert response.headers.get_list("warning") == [
                '299 - "this registry moves on \\"Friday\\""',
                '299 - "second"',
                f'299 - "{long}"',
            ]
            start = c.post(f"/v2/{repo_name()}/blobs/uploads/")
            assert start.headers["oci-chunk-min-length"] == "4096"
            repo = repo_name()
            body, _ = image(c, repo, layers=0)  # warned about: no layers
            pushed = c.put(f"/v2/{repo}/manifests/v1", content=body, headers={"content-type": OCI_MANIFEST})
            warnings = pushed.headers.get_list("warning")
            assert any("no layers" in w for w in warnings)
            assert sum(len(w) for w in warnings) <= 4096, "one budget for every Warning of a response"
    finally:
        server.stop()


def test_several_workers_share_uploads_and_metadata(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", ["--workers", "2"])
    try:
        repo = repo_name()
        data = os.urandom(64 * 1024)
        location = None
        # New connections land on either worker; the upload must carry on across them.
        for start in range(0, len(data), 8192):
            with server.client() as c:
                if location is None:
                    location = c.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
                chunk = data[start : start + 8192]
                response = c.patch(
                    location, content=chunk, headers={"content-range": f"{start}-{start + 8191}"}
                )
                assert response.status_code == 202, response.text
        with server.client() as c:
            assert c.put(location, params={"digest": digest(data)}).status_code == 201
            _, body = push_image(c, repo, tag="shared")
        for _ in range(6):
            with server.client() as c:
                assert c.get(f"/v2/{repo}/manifests/shared").content == body
                assert c.get(f"/v2/{repo}/blobs/{digest(data)}").content == data
    finally:
        server.stop()


def test_empty_config_artifact(client: httpx.Client, repo: str) -> None:
    push_blob(client, repo, b"{}")
    layer = push_blob(client, repo, b"artifact payload")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.thing",
        "config": {"mediaType": OCI_EMPTY, "digest": digest(b"{}"), "size": 2, "data": "e30="},
        "layers": [{"mediaType": "application/vnd.example.thing", "digest": layer, "size": 16}],
    }
    assert put_manifest(client, repo, "artifact", json.dumps(manifest).encode()).status_code == 201
    del manifest["artifactType"]
    response = put_manifest(client, repo, "artifact2", json.dumps(manifest).encode())
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]
