"""The scale-out deployment: three ``ocikit serve`` replicas behind HAProxy, every request
balanced on its own, driven through the load balancer as a client would."""

from __future__ import annotations

import hashlib
import itertools
import os

import httpx

from cluster import Cluster
from registry_helpers import digest, repo_name


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
