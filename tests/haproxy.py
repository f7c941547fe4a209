"""HAProxy (Debian's) in front of registry replicas: the load balancer of the scale-out tests
and of bench/scaleout.py.

Requests are balanced round-robin one by one, never by client connection or address: in
HAProxy's keep-alive mode every request is balanced on its own, and ``http-reuse safe`` sends
it over a kept connection to the chosen replica, so the POST, each PATCH and the closing PUT of
one upload land on different replicas, as they may behind any load balancer. Every response
names its replica in ``X-Ocikit-Replica`` (what an operator adds to trace a request, and what
the tests use to know whom to kill). A replica that does not answer ``GET /v2/`` is taken out
of rotation within a second, and a request whose connection to a dead replica is refused is
sent to another one (``option redispatch``); HAProxy never resends a request that a replica has
started to read, so a retried PATCH is the client's decision alone.
"""

from __future__ import annotations

import csv
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from process_group import stop_group

#: Every response names the replica that served it.
REPLICA_HEADER = "x-ocikit-replica"


def haproxy_config(port: int, admin_port: int, backends: Sequence[str], *, health_path: str = "/v2/") -> str:
    """The configuration: one frontend on 127.0.0.1:``port``, round-robin per request over
    ``backends`` (HOST:PORT each, named r0, r1, …) with health checks on ``health_path``, and
    the runtime API on 127.0.0.1:``admin_port``."""
    servers = "\n".join(f"    server r{index} {address}" for index, address in enumerate(backends))
    return f"""\
global
    maxconn 4096
    tune.bufsize 65536
    stats socket ipv4@127.0.0.1:{admin_port} level admin

defaults
    mode http
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    timeout http-request 30s
    timeout queue 10s
    option redispatch
    option forwardfor
    option splice-auto
    retries 2

frontend registry
    bind 127.0.0.1:{port}
    http-response set-header X-Ocikit-Replica %[srv_name]
    default_backend replicas

backend replicas
    balance roundrobin
    http-reuse safe
    option httpchk GET {health_path}
    http-check expect status 200
    default-server check inter 500ms fall 2 rise 1
{servers}
"""


@dataclass
class HAProxy:
    """A running HAProxy; ``url``/``host`` are its frontend."""

    url: str
    host: str
    config: Path
    process: subprocess.Popen[bytes]
    log: Path
    admin_port: int

    def stop(self) -> None:
        stop_group(self.process)

    def wait_healthy(self, count: int, timeout: float = 20) -> None:
        """Until ``count`` distinct replicas have answered through the frontend."""
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{self.url}/v2/", timeout=2)
                if response.status_code == 200:
                    seen.add(response.headers.get(REPLICA_HEADER, ""))
                    if len(seen) >= count:
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(
            f"only {sorted(seen)} of {count} replicas answered through HAProxy:\n{self.tail()}"
        )

    def command(self, line: str) -> str:
        """One command of HAProxy's runtime API, and its answer."""
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=5) as connection:
            connection.sendall(line.encode() + b"\n")
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        return answer.decode()

    def busy(self) -> dict[str, int]:
        """Requests in progress per replica name (health checks not counted)."""
        rows = csv.DictReader(self.command("show stat").removeprefix("# ").splitlines())
        return {
            row["svname"]: int(row["scur"])
            for row in rows
            if row["pxname"] == "replicas" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def start_haproxy(binary: str, workdir: Path, ports: tuple[int, int], backends: Sequence[str]) -> HAProxy:
    """Start HAProxy (``binary``) on 127.0.0.1 ``ports`` (frontend, runtime API) over
    ``backends``, its config and log in ``workdir``. Only stdlib and httpx here:
    bench/scaleout.py starts it the same way."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "haproxy.cfg"
    port, admin_port = ports
    config.write_text(haproxy_config(port, admin_port, backends))
    checked = subprocess.run(
        [binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if checked.returncode != 0:
        raise RuntimeError(f"haproxy refused {config}:\n{checked.stderr}")
    log = workdir / "haproxy.log"
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    proxy = HAProxy(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", config, process, log, admin_port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {process.returncode}:\n{proxy.tail()}")
        try:
            httpx.get(f"{proxy.url}/", timeout=1)
            return proxy
        except httpx.TransportError:
            time.sleep(0.05)
    proxy.stop()
    raise RuntimeError(f"haproxy did not listen on {proxy.host}:\n{proxy.tail()}")
