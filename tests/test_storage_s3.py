"""The S3 blob store (``registry/storage/s3.py``) against a real SeaweedFS, and the SeaweedFS
fixture itself: what the shared backend suite cannot see (part sizes, restarts between
appends, presigned URLs, signatures, memory)."""

from __future__ import annotations

import botocore.exceptions
import httpx
import pytest

from seaweedfs import SeaweedFS, seaweedfs_fixture  # noqa: F401  (the seaweedfs fixture)


def test_seaweedfs_refuses_anonymous_requests(seaweedfs: SeaweedFS) -> None:
    for method, path in [("GET", "/"), ("GET", f"/{seaweedfs.bucket}"), ("PUT", f"/{seaweedfs.bucket}/anon")]:
        answer = httpx.request(method, seaweedfs.endpoint + path, content=b"x" if method == "PUT" else None)
        assert answer.status_code == 403, (method, path, answer.text)
        assert "AccessDenied" in answer.text


def test_seaweedfs_refuses_a_wrong_secret(seaweedfs: SeaweedFS) -> None:
    forged = seaweedfs.client(secret_key=seaweedfs.secret_key[::-1])
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        forged.put_object(Bucket=seaweedfs.bucket, Key="forged", Body=b"x")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    unknown = seaweedfs.client(access_key="AKIDNOBODY")
    with pytest.raises(botocore.exceptions.ClientError):
        unknown.list_objects_v2(Bucket=seaweedfs.bucket)
    with pytest.raises(botocore.exceptions.ClientError):
        seaweedfs.client().head_object(Bucket=seaweedfs.bucket, Key="forged")


def test_seaweedfs_accepts_its_identity(seaweedfs: SeaweedFS) -> None:
    client = seaweedfs.client()
    bucket = seaweedfs.new_bucket()
    client.put_object(Bucket=bucket, Key="k", Body=b"hello")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"hello"
