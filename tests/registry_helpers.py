"""Building blocks for registry tests: content, pushes and manifests, over plain httpx."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def repo_name(prefix: str = "test") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def push_blob(client: httpx.Client, repo: str, data: bytes, algorithm: str = "sha256") -> str:
    d = digest(data, algorithm)
    response = client.post(
        f"/v2/{repo}/blobs/uploads/",
        params={"digest": d},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    return d


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


def image(
    client: httpx.Client, repo: str, layers: int = 2, **manifest_extra: Any
) -> tuple[bytes, dict[str, Any]]:
    """Push a config and ``layers`` random layers; return the manifest bytes (not pushed)."""
    layer_blobs = [os.urandom(1024 + i) for i in range(layers)]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest(b) for b in layer_blobs]},
        }
    ).encode()
    push_blob(client, repo, config)
    for blob in layer_blobs:
        push_blob(client, repo, blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, b) for b in layer_blobs],
        **manifest_extra,
    }
    return json.dumps(manifest, indent=1).encode(), manifest


def put_manifest(
    client: httpx.Client,
    repo: str,
    reference: str,
    body: bytes,
    media_type: str = OCI_MANIFEST,
    **params: Any,
) -> httpx.Response:
    return client.put(
        f"/v2/{repo}/manifests/{reference}", content=body, headers={"content-type": media_type}, params=params
    )


def push_image(client: httpx.Client, repo: str, tag: str | None = None, **extra: Any) -> tuple[str, bytes]:
    body, _ = image(client, repo, **extra)
    d = digest(body)
    response = put_manifest(client, repo, tag or d, body)
    assert response.status_code == 201, response.text
    return d, body


def error_codes(response: httpx.Response) -> list[str]:
    return [e["code"] for e in response.json()["errors"]]
