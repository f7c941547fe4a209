"""S3 helpers shared by tests and benchmarks: CNCF distribution v3 with its own ``s3`` driver
on a SeaweedFS of :mod:`seaweedfs`, and a generated upload through :class:`S3BlobStore` whose
peak memory a separate process reports (``python tests/s3_helpers.py upload …``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from client_servers import Distribution
from conftest import free_port, wait_for_http
from seaweedfs import SeaweedFS

__all__ = ["DISTRIBUTION_V3", "Distribution", "distribution_s3_config", "start_distribution_s3", "upload_rss"]

#: The reference binary of this workspace; users pass the official release's path instead.
DISTRIBUTION_V3 = os.environ.get("OCIKIT_DISTRIBUTION_V3", "/work/shared/tools/distribution-v3/registry")


def distribution_s3_config(
    server: SeaweedFS, bucket: str, port: int, prefix: str = "/distribution", *, redirect: bool = True
) -> str:
    """A distribution v3 configuration storing on ``bucket`` of ``server`` (its ``s3`` driver,
    path-style, plain HTTP); blob GETs redirected to presigned URLs (distribution's default on
    S3) unless ``redirect`` is false."""
    return "\n".join(
        [
            "version: 0.1",
            "log: {level: error, accesslog: {disabled: true}}",
            "storage:",
            "  s3:",
            f"    accesskey: {server.access_key}",
            f"    secretkey: {server.secret_key}",
            f"    region: {server.region}",
            f"    regionendpoint: {server.endpoint}",
            f"    bucket: {bucket}",
            f"    rootdirectory: {prefix}",
            "    forcepathstyle: true",
            "    secure: false",
            "    v4auth: true",
            "  delete: {enabled: true}",
            f"  redirect: {{disable: {'false' if redirect else 'true'}}}",
            f"http: {{addr: '127.0.0.1:{port}'}}",
            "",
        ]
    )


def start_distribution_s3(
    server: SeaweedFS, directory: Path, bucket: str | None = None, binary: str = DISTRIBUTION_V3
) -> Distribution:
    """Start distribution v3 (``registry serve``) on a free loopback port over ``server``;
    RuntimeError when the binary is missing or does not answer."""
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"CNCF distribution v3 is not at {binary} (set OCIKIT_DISTRIBUTION_V3)")
    port = free_port()
    config = directory / "distribution-s3.yml"
    config.write_text(distribution_s3_config(server, bucket or server.bucket, port))
    # Its README: the S3 driver is checked without AWS_CA_BUNDLE in the environment.
    environment = {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}
    environment["OTEL_TRACES_EXPORTER"] = "none"  # v3 otherwise exports traces to localhost:4318
    log_path = directory / "distribution-s3.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, env=environment
        )
    started = Distribution(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", directory, log_path, process)
    try:
        wait_for_http(started.url + "/v2/", process)
    except RuntimeError:
        started.stop()
        raise
    return started


# ---------------------------------------------------------------- an upload's peak memory


async def _generated(size: int, chunk: int) -> AsyncIterator[bytes]:
    """``size`` bytes in ``chunk``-sized pieces, each distinct, from one random block."""
    block = os.urandom(chunk)
    for index, start in enumerate(range(0, size, chunk)):
        yield index.to_bytes(8, "big") + block[8 : min(chunk, size - start)]


async def _upload(store_args: dict[str, str | None], size: int, request: int, chunk: int) -> dict[str, float]:
    from ocikit.registry.storage.s3 import S3BlobStore
    from ocikit.spec.digest import Digest

    store = S3BlobStore(
        str(store_args["bucket"]), str(store_args["prefix"]), endpoint=store_args["endpoint"], region=None
    )
    await store.open()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    digest = hashlib.sha256()
    upload_id = "rss" + os.urandom(6).hex()
    started = time.perf_counter()
    stage, offset = await store.stage_create(upload_id), 0
    while offset < size:
        length = min(request, size - offset)

        async def hashed(length: int = length) -> AsyncIterator[bytes]:
            async for piece in _generated(length, chunk):
                digest.update(piece)
                yield piece

        written, stage = await store.stage_append(upload_id, stage, offset, hashed())
        offset += written
    appended = time.perf_counter()
    blob = Digest("sha256:" + digest.hexdigest())
    await store.stage_commit(upload_id, stage, size, blob)
    committed = time.perf_counter()
    await store.delete(blob)
    await store.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "append_seconds": appended - started,
        "commit_seconds": committed - appended,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "rss_before_mib": baseline,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }


def upload_rss(
    server: SeaweedFS, bucket: str, size: int, *, request: int | None = None, chunk: int = 1 << 20
) -> dict[str, float]:
    """Upload ``size`` generated bytes through :class:`S3BlobStore` in a fresh process, in
    requests of ``request`` bytes (one streamed request by default); its timings and peak RSS."""
    command = [
        sys.executable, __file__, "upload", "--endpoint", server.endpoint, "--bucket", bucket,
        "--size", str(size), "--request", str(request or size), "--chunk", str(chunk),
    ]  # fmt: skip
    done = subprocess.run(
        command, env={**os.environ, **server.environment()}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the upload failed: {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["upload"])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="rss")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--request", type=int, required=True)
    parser.add_argument("--chunk", type=int, default=1 << 20)
    args = parser.parse_args()
    store_args = {"bucket": args.bucket, "prefix": args.prefix, "endpoint": args.endpoint}
    print(json.dumps(asyncio.run(_upload(store_args, args.size, args.request, args.chunk))))


if __name__ == "__main__":
    main()
