#!/usr/bin/env python3
"""Benchmark ``ocikit serve`` against CNCF distribution v3 (its current release), and against
Debian's distribution 2.8 (``docker-registry``) as a second column when it is installed.

Every registry runs on its defaults (ocikit: one worker per available CPU, access log on;
distribution: a minimal filesystem configuration, access log on) on free loopback ports with
temporary roots (removed afterwards; the servers are always stopped), receives the same
content, and is measured with the same clients, in turns. Every figure is reported as an
absolute value and as a ratio ocikit / distribution v3:

a) manifest GET by tag: requests/s with 64 concurrent connections, by ``wrk`` (plain GET with
   the OCI manifest Accept header), a fixed duration after a warm-up, three rounds taken in
   turns, the median round of each registry;
b) blob GET throughput (256 MiB, body fully read and discarded), median of several runs;
c) monolithic blob PUT throughput (128 MiB, POST then PUT <location>?digest=...), median of
   several runs, a fresh random blob each run (generated before timing);
d) ocikit's peak RSS (main process + workers, VmRSS sampled every 50 ms) during a 4 GiB
   streamed upload (POST, one streamed PATCH, PUT ?digest=), data generated in chunks and
   hashed while streaming.

Run from the repository root after ``make test-deps``::

    .venv/bin/python bench/registry.py            # full run (several minutes)
    .venv/bin/python bench/registry.py --quick    # smoke run
    .venv/bin/python bench/registry.py --json     # machine-readable output

Needs ``wrk`` (a Debian package; ``make test-deps`` installs it as root) and the
distribution v3 ``registry`` binary (the official release): ``--distribution PATH``, else
``$OCIKIT_BENCH_DISTRIBUTION``, else ``../shared/tools/distribution-v3/registry`` beside the
project.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REPOSITORY = "bench/app"
TAG = "latest"
PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_DISTRIBUTION = PROJECT.parent / "shared" / "tools" / "distribution-v3" / "registry"
REFERENCE = "distribution"  # v3, the column every ratio is taken against
DEBIAN = "distribution-2.8"
WRK_CONNECTIONS = 64
MANIFEST_ROUNDS = 3
TARGETS: dict[
    str, tuple[str, Callable[[float, float], bool]]
] = {  # ratio ocikit / distribution, or an absolute bound
    "manifest_get": ("ratio >= 3.0", lambda ratio, _: ratio >= 3.0),
    "blob_get": ("ratio >= 1.0", lambda ratio, _: ratio >= 1.0),
    "blob_put": ("ratio >= 1.0", lambda ratio, _: ratio >= 1.0),
    "upload_rss": ("ocikit < 150 MB", lambda _, ocikit: ocikit < 150.0),
}


@dataclass(frozen=True)
class Plan:
    warmup: float
    duration: float
    blob_get_size: int
    blob_put_size: int
    runs: int
    stream_size: int

    @classmethod
    def full(cls) -> Plan:
        return cls(
            warmup=3,
            duration=10,
            blob_get_size=256 * MiB,
            blob_put_size=128 * MiB,
            runs=5,
            stream_size=4096 * MiB,
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            warmup=1,
            duration=3,
            blob_get_size=32 * MiB,
            blob_put_size=16 * MiB,
            runs=3,
            stream_size=256 * MiB,
        )


# ---------------------------------------------------------------- tools and servers


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and os.path.exists(f"/usr/bin/{name}"):
        found = f"/usr/bin/{name}"
    return found


def ocikit_workers() -> int:
    """What ``ocikit serve`` defaults to: the CPUs available to the process."""
    return len(os.sched_getaffinity(0))


def missing_tools_message(missing: list[str]) -> str:
    names = " ".join(missing)
    return (
        f"bench/registry.py needs {names}, which is not installed.\n"
        f"Install it with:  sudo apt-get install {names}\n"
        "(or `make test-deps` as root, which runs scripts/install-system-deps.sh)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    host: str
    port: int
    root: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log, "ab") as sink:
            self.process = subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, _, _ = request(self, "GET", "/v2/")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer within 30 s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Workers that outlived their parent are still in the process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def tree(self) -> list[int]:
        """The server's pid and all its descendants."""
        assert self.process is not None
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    stat = handle.read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        pids, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo.extend(children.get(pid, []))
        return pids


def start_ocikit(workdir: Path) -> Server:
    port = free_port()
    server = Server("ocikit", "127.0.0.1", port, workdir / "ocikit", workdir / "ocikit.log")
    argv = [
        sys.executable,
        "-m",
        "ocikit.cli.main",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--root",
        str(server.root),
    ]
    env = dict(os.environ)
    src = Path(__file__).resolve().parent.parent / "src"
    if (src / "ocikit").is_dir():  # run the checkout this script belongs to
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    server.start(argv, env)
    return server


def start_distribution(workdir: Path, binary: str, name: str) -> Server:
    """Distribution on its defaults (access log on). For Debian's 2.8: its packaged
    configuration, minus auth and the health check. Both on a private root and port."""
    port = free_port()
    server = Server(name, "127.0.0.1", port, workdir / name, workdir / f"{name}.log")
    server.root.mkdir(parents=True)
    config = workdir / f"{name}.yml"
    cache = "  cache:\n    blobdescriptor: inmemory\n" if name == DEBIAN else ""
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  fields:\n    service: registry\n"
        f"storage:\n{cache}"
        f"  filesystem:\n    rootdirectory: {server.root}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        "  headers:\n    X-Content-Type-Options: [nosniff]\n"
    )
    server.start(
        [binary, "serve", str(config)], env={k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    )
    return server


# ---------------------------------------------------------------- HTTP helpers (stdlib)


def connect(server: Server, timeout: float = 300) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def request(
    server: Server, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = connect(server)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def location_path(location: str) -> str:
    """The path and query of an upload Location (distribution sends absolute URLs)."""
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_query(path: str, **params: str) -> str:
    return path + ("&" if "?" in path else "?") + urllib.parse.urlencode(params)


def start_upload(conn: http.client.HTTPConnection, name: str) -> str:
    conn.request("POST", f"/v2/{name}/blobs/uploads/", headers={"Content-Length": "0"})
    response = conn.getresponse()
    response.read()
    if response.status != 202:
        raise RuntimeError(f"POST upload: {response.status}")
    return location_path(response.getheader("location", ""))


def push_blob(server: Server, name: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    conn = connect(server)
    try:
        location = start_upload(conn, name)
        conn.request(
            "PUT",
            with_query(location, digest=digest),
            body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        response = conn.getresponse()
        response.read()
        if response.status != 201:
            raise RuntimeError(f"{server.name}: PUT blob {digest}: {response.status}")
    finally:
        conn.close()
    return digest


def push_image(server: Server, layer: bytes) -> str:
    """A small image tagged ``latest``; returns the manifest body (the same bytes everywhere)."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        }
    ).encode()
    config_digest = push_blob(server, REPOSITORY, config)
    layer_digest = push_blob(server, REPOSITORY, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
        },
        indent=2,
    ).encode()
    status, _, body = request(
        server, "PUT", f"/v2/{REPOSITORY}/manifests/{TAG}", manifest, {"Content-Type": OCI_MANIFEST}
    )
    if status != 201:
        raise RuntimeError(f"{server.name}: PUT manifest: {status} {body[:300]!r}")
    status, headers, body = request(
        server, "GET", f"/v2/{REPOSITORY}/manifests/{TAG}", headers={"Accept": OCI_MANIFEST}
    )
    if status != 200 or body != manifest or headers.get("content-type") != OCI_MANIFEST:
        raise RuntimeError(f"{server.name}: GET manifest by tag returned {status} {headers}")
    return manifest.decode()


# ---------------------------------------------------------------- measurements


def run_wrk(wrk: str, server: Server, seconds: float, threads: int) -> dict[str, Any]:
    url = f"{server.url}/v2/{REPOSITORY}/manifests/{TAG}"
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{WRK_CONNECTIONS}",
        f"-d{seconds:g}s",
        "--latency",
        "-H",
        f"Accept: {OCI_MANIFEST}",
        url,
    ]
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:(.*)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if rate is None or total is None:
        raise RuntimeError(f"could not parse wrk output:\n{output}")
    return {
        "requests_per_s": float(rate.group(1)),
        "requests": int(total.group(1)),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
        "latency_p50": p50.group(1) if p50 else "",
        "latency_p99": p99.group(1) if p99 else "",
    }


def manifest_get(wrk: str, servers: list[Server], plan: Plan) -> dict[str, dict[str, Any]]:
    """wrk on each server in turns, ``MANIFEST_ROUNDS`` times: the median round of each, so
    that a burst of other work on the machine does not decide a ratio by itself."""
    threads = min(2, os.cpu_count() or 1)
    for server in servers:
        run_wrk(wrk, server, plan.warmup, threads)  # warm-up: connections, caches, JIT-free paths
    rounds: dict[str, list[dict[str, Any]]] = {server.name: [] for server in servers}
    for _ in range(MANIFEST_ROUNDS):
        for server in servers:
            run = run_wrk(wrk, server, plan.duration, threads)
            if run["non_2xx"]:
                raise RuntimeError(f"{server.name}: {run['non_2xx']} non-2xx manifest GETs")
            rounds[server.name].append(run)
    results = {}
    for name, runs in rounds.items():
        ordered = sorted(runs, key=lambda run: float(run["requests_per_s"]))
        results[name] = {
            **ordered[len(ordered) // 2],
            "runs_requests_per_s": [round(run["requests_per_s"]) for run in runs],
        }
    return results


def time_blob_get(server: Server, digest: str, size: int) -> float:
    buffer = memoryview(bytearray(MiB))
    conn = connect(server)
    try:
        started = time.perf_counter()
        conn.request("GET", f"/v2/{REPOSITORY}/blobs/{digest}")
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{server.name}: GET blob: {response.status}")
        received = 0
        while n := response.readinto(buffer):
            received += n
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    if received != size:
        raise RuntimeError(f"{server.name}: GET blob returned {received} bytes, not {size}")
    return elapsed


def time_blob_put(server: Server, data: bytes, digest: str) -> float:
    conn = connect(server)
    try:
        started = time.perf_counter()
        location = start_upload(conn, REPOSITORY)
        conn.request(
            "PUT",
            with_query(location, digest=digest),
            body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    if response.status != 201:
        raise RuntimeError(f"{server.name}: monolithic PUT: {response.status}")
    return elapsed


def throughput_summary(size: int, times: list[float], cpu_seconds: float) -> dict[str, Any]:
    rates = [size / t / 1e6 for t in times]
    return {
        "mb_per_s": statistics.median(rates),
        "runs_mb_per_s": [round(r, 1) for r in rates],
        "min_mb_per_s": min(rates),
        "max_mb_per_s": max(rates),
        # CPU (user + system) the server's processes spent per GB moved: steadier than MB/s.
        "server_cpu_s_per_gb": cpu_seconds / (len(times) * size / 1e9),
    }


def tree_cpu_seconds(server: Server) -> float:
    ticks = 0
    for pid in server.tree():
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def blob_get(servers: list[Server], plan: Plan) -> dict[str, dict[str, Any]]:
    data = os.urandom(plan.blob_get_size)
    digests = {s.name: push_blob(s, REPOSITORY, data) for s in servers}
    del data
    times: dict[str, list[float]] = {s.name: [] for s in servers}
    cpu: dict[str, float] = {s.name: 0.0 for s in servers}
    for server in servers:  # warm-up: page cache, connection paths
        time_blob_get(server, digests[server.name], plan.blob_get_size)
    for _ in range(plan.runs):  # alternate the servers so drift hits both alike
        for server in servers:
            before = tree_cpu_seconds(server)
            times[server.name].append(time_blob_get(server, digests[server.name], plan.blob_get_size))
            cpu[server.name] += tree_cpu_seconds(server) - before
    return {name: throughput_summary(plan.blob_get_size, t, cpu[name]) for name, t in times.items()}


def blob_put(servers: list[Server], plan: Plan) -> dict[str, dict[str, Any]]:
    times: dict[str, list[float]] = {s.name: [] for s in servers}
    cpu: dict[str, float] = {s.name: 0.0 for s in servers}
    for _ in range(plan.runs):
        for server in servers:
            data = os.urandom(plan.blob_put_size)  # fresh content each run, made before timing
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            # Write back the previous runs' dirty pages first, so that no run pays for another's.
            os.sync()
            before = tree_cpu_seconds(server)
            times[server.name].append(time_blob_put(server, data, digest))
            cpu[server.name] += tree_cpu_seconds(server) - before
            del data
    return {name: throughput_summary(plan.blob_put_size, t, cpu[name]) for name, t in times.items()}


def tree_rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass  # a process that just exited
    return total


@contextlib.contextmanager
def in_background(work: Callable[[threading.Event], None]) -> Iterator[None]:
    """``work(stop)`` in a thread of its own while the block runs; ``stop`` is set at its end,
    and the block waits for the thread."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def rss_sampler(server: Server, interval: float = 0.05) -> Iterator[dict[str, float]]:
    result = {"peak_mb": 0.0, "baseline_mb": 0.0, "samples": 0, "processes": 0}
    pids = server.tree()
    result["processes"] = len(pids)
    result["baseline_mb"] = tree_rss_kib(pids) * 1024 / 1e6

    def sample(stop: threading.Event) -> None:
        nonlocal pids
        peak, count = 0, 0
        while not stop.is_set():
            if count % 20 == 0:  # pick up respawned workers now and then (~1 s)
                pids = server.tree()
            peak = max(peak, tree_rss_kib(pids))
            count += 1
            stop.wait(interval)
        result["peak_mb"] = peak * 1024 / 1e6
        result["samples"] = count

    with in_background(sample):
        yield result


def streamed_upload(server: Server, size: int, chunk: int = MiB, timeout: float = 300) -> tuple[float, str]:
    """POST, one streamed PATCH of ``size`` generated bytes, PUT ?digest=; (seconds, digest)."""
    block = bytearray(os.urandom(chunk))
    hasher = hashlib.sha256()
    conn = connect(server, timeout)
    try:
        started = time.perf_counter()
        location = start_upload(conn, REPOSITORY)
        conn.putrequest("PATCH", location, skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        sent = 0
        while sent < size:
            struct.pack_into("<Q", block, 0, sent)  # every chunk differs from every other
            piece = memoryview(block)[: min(chunk, size - sent)]
            hasher.update(piece)
            conn.send(piece)
            sent += len(piece)
        response = conn.getresponse()
        response.read()
        if response.status != 202:
            raise RuntimeError(f"{server.name}: streamed PATCH: {response.status}")
        location = location_path(response.getheader("location", location))
        digest = "sha256:" + hasher.hexdigest()
        conn.request("PUT", with_query(location, digest=digest), headers={"Content-Length": "0"})
        response = conn.getresponse()
        response.read()
        if response.status != 201:
            raise RuntimeError(f"{server.name}: closing PUT: {response.status}")
        return time.perf_counter() - started, digest
    finally:
        conn.close()


def upload_rss(servers: list[Server], plan: Plan) -> dict[str, dict[str, Any]]:
    results = {}
    for server in servers:
        with rss_sampler(server) as rss:
            seconds, digest = streamed_upload(server, plan.stream_size)
        status, headers, _ = request(server, "HEAD", f"/v2/{REPOSITORY}/blobs/{digest}")
        if status != 200 or int(headers.get("content-length", -1)) != plan.stream_size:
            raise RuntimeError(f"{server.name}: the streamed blob is not there: {status} {headers}")
        request(server, "DELETE", f"/v2/{REPOSITORY}/blobs/{digest}")  # spare the disk
        results[server.name] = {
            "peak_rss_mb": rss["peak_mb"],
            "idle_rss_mb": rss["baseline_mb"],
            "processes": rss["processes"],
            "samples": rss["samples"],
            "upload_mb_per_s": plan.stream_size / seconds / 1e6,
        }
    return results


# ---------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    memory_kib = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions(references: dict[str, str]) -> dict[str, str]:
    out = {}
    with contextlib.suppress(Exception):
        import granian

        out["granian"] = granian.__version__
    for name, binary in references.items():
        with contextlib.suppress(Exception):
            text = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
            out[name] = text.strip().split()[-1]
    with contextlib.suppress(Exception):
        text = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
        out["wrk"] = text.split()[1]
    return out


METRICS = [  # key, label, field, unit, ratio: ocikit/distribution v3 ("higher is better")
    ("manifest_get", f"manifest GET by tag, {WRK_CONNECTIONS} connections", "requests_per_s", "req/s"),
    ("blob_get", "blob GET", "mb_per_s", "MB/s"),
    ("blob_put", "monolithic blob PUT", "mb_per_s", "MB/s"),
    ("upload_rss", "peak RSS during streamed upload", "peak_rss_mb", "MB"),
]


def summarise(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary = {}
    for key, _, name, unit in METRICS:
        if key not in results:
            continue
        ocikit = results[key]["ocikit"][name]
        dist = results[key][REFERENCE][name]
        ratio = ocikit / dist if dist else float("inf")
        target, check = TARGETS[key]
        summary[key] = {
            "ocikit": ocikit,
            "distribution": dist,
            "ratio": ratio,
            "unit": unit,
            "target": target,
            "met": bool(check(ratio, ocikit)),
        }
        if DEBIAN in results[key]:
            debian = results[key][DEBIAN][name]
            summary[key][DEBIAN] = debian
            summary[key]["ratio_2_8"] = ocikit / debian if debian else float("inf")
    return summary


def print_report(report: dict[str, Any]) -> None:
    plan, m = report["plan"], report["machine"]
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}"
    )
    print(f"versions: {report['versions']}")
    print(
        f"load average (1, 5, 15 min): before {report['load_average_before']}, "
        f"after {report['load_average_after']}"
    )
    print(
        f"ocikit serve on its defaults ({report['ocikit_workers']} workers: the CPUs available); "
        f"distribution v3 on a minimal filesystem configuration; distribution 2.8 (if present) "
        f"with Debian's default settings (inmemory blob descriptor cache); access logs on"
    )
    print(
        f"wrk: {WRK_CONNECTIONS} connections, {report['wrk_threads']} threads, "
        f"{plan['warmup']:g} s warm-up then {MANIFEST_ROUNDS} rounds of {plan['duration']:g} s in turns "
        f"(median round), Accept: {OCI_MANIFEST}"
    )
    get_mib, put_mib = plan["blob_get_size"] // MiB, plan["blob_put_size"] // MiB
    print(
        f"blob GET {get_mib} MiB, blob PUT {put_mib} MiB: median of {plan['runs']} runs; "
        f"streamed upload {plan['stream_size'] // MiB} MiB"
    )
    print()
    header = (
        f"{'measure':<44} {'ocikit':>10} {'dist v3':>10} {'ratio':>7}  {'target':<16} met"
        f" {'dist 2.8':>10} {'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    labels = {key: f"{label} ({unit})" for key, label, _, unit in METRICS}
    for key, row in report["summary"].items():
        debian = f" {row[DEBIAN]:>10.1f} {row['ratio_2_8']:>6.2f}x" if DEBIAN in row else ""
        print(
            f"{labels[key]:<44} {row['ocikit']:>10.1f} {row['distribution']:>10.1f} {row['ratio']:>6.2f}x  "
            f"{row['target']:<16} {'yes' if row['met'] else 'NO ':<3}{debian}"
        )
    print()
    details = report["results"]
    if "manifest_get" in details:
        for name, r in details["manifest_get"].items():
            errors = f", socket errors: {r['socket_errors']}" if r["socket_errors"] else ""
            print(
                f"  manifest GET {name}: rounds {r['runs_requests_per_s']} req/s; median round: "
                f"{r['requests']} requests, p50 {r['latency_p50']}, p99 {r['latency_p99']}, "
                f"non-2xx {r['non_2xx']}{errors}"
            )
    for key in ("blob_get", "blob_put"):
        for name, r in details.get(key, {}).items():
            print(
                f"  {key} {name}: runs {r['runs_mb_per_s']} MB/s, "
                f"server CPU {r['server_cpu_s_per_gb']:.2f} s/GB"
            )
    for note in report["notes"]:
        print(f"  note: {note}")
    for name, r in details.get("upload_rss", {}).items():
        print(
            f"  streamed upload {name}: peak RSS {r['peak_rss_mb']:.1f} MB "
            f"over {r['processes']} process(es) (idle {r['idle_rss_mb']:.1f} MB, {r['samples']} samples), "
            f"{r['upload_mb_per_s']:.0f} MB/s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes and durations (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--tmpdir", help="where the temporary registry roots go (default: $TMPDIR or /tmp)")
    parser.add_argument(
        "--distribution",
        default=os.environ.get("OCIKIT_BENCH_DISTRIBUTION", str(DEFAULT_DISTRIBUTION)),
        help="the distribution v3 `registry` binary [env OCIKIT_BENCH_DISTRIBUTION; "
        f"default: {DEFAULT_DISTRIBUTION}]",
    )
    parser.add_argument(
        "--no-debian", action="store_true", help="leave out Debian's distribution 2.8 (docker-registry)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[m[0] for m in METRICS],
        help="run only this measurement (repeatable)",
    )
    args = parser.parse_args(argv)

    wrk = find_tool("wrk")
    if wrk is None:
        print(missing_tools_message(["wrk"]), file=sys.stderr)
        return 2
    if not os.access(args.distribution, os.X_OK):
        print(
            f"bench/registry.py: no distribution v3 binary at {args.distribution}: pass --distribution "
            "PATH or set OCIKIT_BENCH_DISTRIBUTION (the `registry` binary of the official release)",
            file=sys.stderr,
        )
        return 2
    references = {REFERENCE: args.distribution}
    debian = None if args.no_debian else find_tool("docker-registry")
    if debian is not None:
        references[DEBIAN] = debian
    plan = Plan.quick() if args.quick else Plan.full()
    wanted = args.only or [m[0] for m in METRICS]
    progress: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    # SIGTERM/SIGHUP become exceptions so that the finally below stops the servers.
    def interrupted(signum: int, _: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="ocikit-bench-", dir=args.tmpdir))
    servers: list[Server] = []
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        progress(f"starting ocikit serve and {', '.join(references)} in {workdir}")
        servers.append(start_ocikit(workdir))
        servers.extend(start_distribution(workdir, binary, name) for name, binary in references.items())
        layer = os.urandom(64 * 1024)
        manifests = {push_image(s, layer) for s in servers}
        assert len(manifests) == 1, "every registry must serve the same manifest"
        steps: list[tuple[str, str, Callable[[], dict[str, dict[str, Any]]]]] = [
            ("manifest_get", "manifest GET (wrk)", lambda: manifest_get(wrk, servers, plan)),
            ("blob_get", "blob GET", lambda: blob_get(servers, plan)),
            ("blob_put", "blob PUT", lambda: blob_put(servers, plan)),
            ("upload_rss", "streamed upload RSS", lambda: upload_rss(servers, plan)),
        ]
        for key, label, step in steps:
            if key in wanted:
                progress(f"measuring {label} ...")
                results[key] = step()
    except BaseException:
        for server in servers:
            progress(f"--- {server.name} log tail ---\n{server.log_tail()}")
        raise
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "machine": machine(),
        "versions": versions(references),
        "ocikit_workers": ocikit_workers(),
        "wrk_threads": min(2, os.cpu_count() or 1),
        "wrk_connections": WRK_CONNECTIONS,
        "mode": "quick" if args.quick else "full",
        "plan": plan.__dict__,
        "results": results,
        "summary": summarise(results),
        "notes": [f"{server.name}: {note}" for server in servers for note in server.notes],
        # Other work on the machine skews every figure: compare these with nproc.
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
    except KeyboardInterrupt as exc:  # the servers were stopped and the roots removed by then
        print(f"bench/registry.py: interrupted ({exc or 'Ctrl-C'})", file=sys.stderr)
        sys.exit(130)
