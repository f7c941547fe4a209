"""The server's edge, as a hostile client and a careless operator would meet it: idle and
stalled connections, a connection cap, oversized bodies, port ownership, workers outliving a
killed main process, and every start-up failure as one line on stderr."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from auth_helpers import start_auth_server
from conftest import OCIKIT, ServerProcess, free_port, require_tool, start_registry
from ocikit.registry.http import ClientDisconnected, Request
from registry_helpers import digest, error_codes, push_blob, repo_name

FLOOD = 5000
NOBODY = 65534


# ------------------------------------------------------------------ raw connections


def send_head(sock: socket.socket, method: str, path: str, length: int, extra: str = "") -> None:
    """A request's headers announcing ``length`` body bytes (which the caller may never send)."""
    sock.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: registry\r\nContent-Length: {length}\r\n{extra}\r\n".encode()
    )


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and whatever body arrived before the server closed or ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while b"\r\n\r\n" not in data or _incomplete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), f"no response within {timeout}s: {data!r}"
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _incomplete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").lower().split("\r\n"):
        if line.startswith("content-length: "):
            return len(body) < int(line.split(": ")[1])
    return False


def closed_by_server(sock: socket.socket, timeout: float = 5) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def connect(server: ServerProcess) -> socket.socket:
    host, port = server.host.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


@contextlib.contextmanager
def open_files(count: int) -> Iterator[None]:
    """Room for ``count`` more descriptors in this process, within its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, count + 1024) if hard != resource.RLIM_INFINITY else count + 1024
    if wanted < count + 256:
        pytest.skip(f"the hard limit on open files ({hard}) is below the {count} connections needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def upload_url(client: httpx.Client, repo: str) -> str:
    response = client.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202, response.text
    return str(response.headers["location"])


# ------------------------------------------------------------ slow and idle clients


def test_five_thousand_idle_bodies_do_not_stop_other_clients(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data")  # defaults: one worker per CPU, default cap
    repo = repo_name("flood")
    with server.client() as c:
        blob = push_blob(c, repo, b"still served")
    idle: list[socket.socket] = []
    try:
        with open_files(FLOOD):
            for _ in range(FLOOD):
                sock = connect(server)
                send_head(sock, "PUT", f"/v2/{repo}/manifests/idle", 100)
                idle.append(sock)
            time.sleep(0.5)  # let the workers take every request in
            with httpx.Client(base_url=server.url, timeout=1) as other:
                started = time.monotonic()
                assert other.get("/v2/").status_code == 200
                got = other.get(f"/v2/{repo}/blobs/{blob}")
                assert (got.status_code, got.content) == (200, b"still served")
                assert time.monotonic() - started < 2
            assert all(s.fileno() >= 0 for s in idle)
            for sock in idle:
                sock.close()
            idle.clear()
    finally:
        for sock in idle:
            sock.close()
        server.stop()


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[ServerProcess]:
    """A registry with a one-second body timeout and a cap of 20 requests in one worker."""
    server = start_registry(
        tmp_path / "data", ["--body-timeout", "1", "--max-connections", "20", "--workers", "1"]
    )
    yield server
    server.stop()


def test_a_stalled_body_is_answered_408_and_the_upload_survives(impatient: ServerProcess) -> None:
    repo = repo_name("stall")
    data = os.urandom(64)
    with impatient.client() as c:
        location = upload_url(c, repo)
        with connect(impatient) as sock:
            send_head(sock, "PATCH", location, len(data), "Content-Type: application/octet-stream\r\n")
            sock.sendall(data[:10])
            started = time.monotonic()
            status, headers, _ = read_response(sock, timeout=10)
            assert (status, headers.get("connection")) == (408, "close")
            assert 0.9 < time.monotonic() - started < 5
            assert closed_by_server(sock)
        status_response = c.get(location)
        assert status_response.status_code == 204
        assert status_response.headers["range"] == "0-9"  # what arrived before the stall is kept
        done = c.put(location, params={"digest": digest(data)}, content=data[10:])
        assert done.status_code == 201, done.text
        assert c.get(f"/v2/{repo}/blobs/{digest(data)}").content == data


def _body_request(*chunks: bytes, then_silent: bool = False) -> Request:
    """A request whose client sends ``chunks`` at once, then the end of its body or nothing."""
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        if pending:
            return {"type": "http.request", "body": pending.pop(0), "more_body": True}
        if then_silent:
            await asyncio.sleep(3600)
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "PATCH", "path": "/", "query_string": b"", "headers": []}
    return Request(scope, receive, body_timeout=0.2)


def test_the_body_timeout_counts_only_the_waits_for_the_client() -> None:
    """Storage slower than the body timeout over every chunk never cuts a body; a client that
    then falls silent is cut one timeout later, not sooner; a cancellation from elsewhere (the
    server shutting down) stays a cancellation."""

    async def scenario() -> None:
        slow_storage = _body_request(b"a", b"b", b"c")
        received = []
        async for chunk in slow_storage.stream():
            received.append(chunk)
            await asyncio.sleep(0.3)
        assert (received, slow_storage.stalled) == ([b"a", b"b", b"c"], False)

        async def consume(request: Request, per_chunk: float = 0) -> float:
            """When the last chunk was handled."""
            handled = time.monotonic()
            async for _ in request.stream():
                await asyncio.sleep(per_chunk)
                handled = time.monotonic()
            return handled

        silent, started = _body_request(b"a", then_silent=True), time.monotonic()
        with pytest.raises(ClientDisconnected, match=r"no body bytes for 0\.2 s"):
            await consume(silent, per_chunk=0.3)
        assert silent.stalled
        assert 0.45 < time.monotonic() - started < 1.5  # 0.3 s on the chunk, then 0.2 s of silence

        waiting = asyncio.ensure_future(consume(_body_request(then_silent=True)))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(scenario())


def test_a_slow_but_progressing_upload_completes(impatient: ServerProcess) -> None:
    """Ten bytes at 0.4 s each: four seconds in all, four times the body timeout."""
    repo = repo_name("slow")
    data = os.urandom(10)
    with impatient.client() as c:
        location = upload_url(c, repo)
        path = f"{location}{'&' if '?' in location else '?'}digest={digest(data)}"
        with connect(impatient) as sock:
            send_head(sock, "PUT", path, len(data), "Content-Type: application/octet-stream\r\n")
            for byte in data:
                time.sleep(0.4)
                sock.sendall(bytes([byte]))
            status, _, body = read_response(sock, timeout=10)
            assert status == 201, body
        assert c.get(f"/v2/{repo}/blobs/{digest(data)}").content == data


def test_above_the_connection_cap_clients_get_a_fast_503(impatient: ServerProcess) -> None:
    repo = repo_name("cap")
    idle = [connect(impatient) for _ in range(20)]
    try:
        for sock in idle:
            send_head(sock, "PUT", f"/v2/{repo}/manifests/idle", 100)
        time.sleep(0.3)
        with httpx.Client(base_url=impatient.url, timeout=5) as c:
            started = time.monotonic()
            refused = c.get("/v2/")
            assert time.monotonic() - started < 1
            assert (refused.status_code, error_codes(refused)) == (503, ["TOOMANYREQUESTS"])
            assert refused.headers["retry-after"] == "1"
        for sock in idle:  # the body timeout frees them
            status, _, _ = read_response(sock, timeout=5)
            assert status == 408
        with httpx.Client(base_url=impatient.url, timeout=5) as c:
            assert c.get("/v2/").status_code == 200
    finally:
        for sock in idle:
            sock.close()


@pytest.fixture
def watchful(tmp_path: Path) -> Iterator[ServerProcess]:
    """A registry with a two-second header timeout and one worker accepting 100 connections."""
    server = start_registry(
        tmp_path / "data", ["--header-timeout", "2", "--max-connections", "50", "--workers", "1"]
    )
    yield server
    server.stop()


def test_a_connection_that_never_sends_a_byte_is_closed(watchful: ServerProcess) -> None:
    with connect(watchful) as silent, connect(watchful) as late:
        started = time.monotonic()
        time.sleep(1.2)  # within the header timeout: a late request is still served
        late.sendall(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n")
        assert read_response(late, timeout=5)[0] == 200
        assert closed_by_server(silent, timeout=6)
        assert 1.9 < time.monotonic() - started < 4.5


def test_silent_connections_cannot_fill_a_worker(watchful: ServerProcess) -> None:
    """Four times the connections the worker accepts, none sending a byte: before the sweep of
    silent connections, every later client waited as long as the attacker liked."""
    silent = [connect(watchful) for _ in range(400)]
    try:
        time.sleep(0.3)
        with httpx.Client(base_url=watchful.url, timeout=10) as other:
            started = time.monotonic()
            assert other.get("/v2/").status_code == 200
            assert time.monotonic() - started < 5
        assert all(closed_by_server(sock, timeout=5) for sock in silent)
    finally:
        for sock in silent:
            sock.close()


def test_a_quiet_request_in_progress_is_not_cut(tmp_path: Path) -> None:
    """The body timeout governs a request in progress, not the sweep of silent connections."""
    server = start_registry(tmp_path / "data", ["--header-timeout", "1", "--body-timeout", "6"])
    repo = repo_name("quiet")
    data = os.urandom(64)
    try:
        with server.client() as c, connect(server) as sock:
            location = upload_url(c, repo)
            send_head(sock, "PATCH", location, len(data), "Content-Type: application/octet-stream\r\n")
            sock.sendall(data[:32])
            time.sleep(2.5)  # twice the header timeout, silent in both directions
            sock.sendall(data[32:])
            status, _, body = read_response(sock, timeout=5)
            assert status == 202, body
            assert c.put(location, params={"digest": digest(data)}).status_code == 201
    finally:
        server.stop()


def test_a_stalled_tls_handshake_is_closed(tmp_path: Path) -> None:
    server = start_auth_server(tmp_path, extra=["--header-timeout", "2", "--workers", "1"])
    try:
        with connect(server.server) as sock:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's first bytes, no more
            started = time.monotonic()
            assert closed_by_server(sock, timeout=6)
            assert time.monotonic() - started < 4.5
    finally:
        server.stop()


# ---------------------------------------------------------------- oversized bodies


@pytest.mark.parametrize("path", ["/v2/{repo}/manifests/latest", "/v2/{repo}/manifests/sha256:" + "a" * 64])
def test_a_body_announced_above_the_limit_is_refused_before_it_is_read(
    registry: ServerProcess, path: str
) -> None:
    with connect(registry) as sock:
        send_head(
            sock,
            "PUT",
            path.format(repo=repo_name("huge")),
            99_999_999_999,
            "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n",
        )
        started = time.monotonic()
        status, headers, body = read_response(sock, timeout=5)
        assert time.monotonic() - started < 1
        assert (status, json.loads(body)["errors"][0]["code"]) == (413, "SIZE_INVALID")
        assert headers["connection"] == "close"  # the announced body is never waited for
        assert closed_by_server(sock)


def test_an_error_answer_does_not_wait_for_a_large_unread_body(registry: ServerProcess) -> None:
    with connect(registry) as sock:
        send_head(sock, "DELETE", f"/v2/{repo_name('nothing')}/blobs/sha256:{'b' * 64}", 10**10)
        status, headers, _ = read_response(sock, timeout=5)
        assert (status, headers["connection"]) == (404, "close")


# ------------------------------------------------------------------ port ownership


def serve_once(*args: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    """``ocikit serve`` that is expected to fail at start-up (it is killed if it does not)."""
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if as_nobody else []
    return subprocess.run(
        [*drop, *OCIKIT, "serve", *args], capture_output=True, text=True, timeout=30, cwd="/"
    )


def assert_one_line_failure(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode != 0
    assert result.stderr.splitlines() == [expected], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_second_registry_on_a_port_in_use_refuses_to_start(registry: ServerProcess, tmp_path: Path) -> None:
    result = serve_once("--listen", registry.host, "--root", str(tmp_path / "other"))
    assert_one_line_failure(result, f"ocikit serve: {registry.host} is already in use")
    with registry.client() as c:
        assert all(c.get("/v2/").status_code == 200 for _ in range(20))


def test_a_port_held_by_another_program_is_refused(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a sharing server would
        other.bind(("127.0.0.1", 0))
        other.listen()
        host = f"127.0.0.1:{other.getsockname()[1]}"
        result = serve_once("--listen", host, "--root", str(tmp_path / "data"))
    assert_one_line_failure(result, f"ocikit serve: {host} is already in use")


def test_no_program_can_share_the_port_of_a_running_registry(registry: ServerProcess) -> None:
    host, port = registry.host.rsplit(":", 1)
    with socket.socket() as intruder:
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError, match="in use") as refused:
            intruder.bind((host, int(port)))
    assert refused.value.errno == errno.EADDRINUSE


def worker_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_die_with_a_killed_main_process(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", ["--workers", "2"])
    try:
        workers = worker_pids(server.process.pid)
        assert len(workers) == 2
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        deadline = time.monotonic() + 5
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(alive, workers)), "a worker outlived its main process"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/v2/", timeout=2)
        replacement = start_registry(server.root, log=server.log)  # the port is free again
        replacement.stop()
    finally:
        server.stop()


# ------------------------------------------------------------- start-up failures


def test_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for root in (tmp_path / "file", tmp_path / "file" / "below"):
        result = serve_once("--listen", f"127.0.0.1:{free_port()}", "--root", str(root))
        assert_one_line_failure(result, f"ocikit serve: root {root} is not a directory")


def test_root_whose_database_cannot_be_opened(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "metadata.db").mkdir(parents=True)
    result = serve_once("--listen", f"127.0.0.1:{free_port()}", "--root", str(root))
    assert_one_line_failure(result, "ocikit serve: SQLite is unavailable: unable to open database file")


def test_bad_flag_value() -> None:
    result = serve_once("--workers", "two")
    assert_one_line_failure(
        result,
        "ocikit serve: setting workers: 'two' is not valid: invalid literal for int() with base 10: 'two'",
    )
    assert_one_line_failure(
        serve_once("--body-timeout", "0"),
        "ocikit serve: header_timeout and body_timeout must be more than 0 seconds",
    )
    assert_one_line_failure(
        serve_once("--warnings", "na\u00efve"),
        "ocikit serve: warnings must be printable ASCII, got 'na\u00efve'",
    )


def test_config_that_is_not_toml(tmp_path: Path) -> None:
    config = tmp_path / "registry.toml"
    config.write_text("workers = \n")
    result = serve_once("--config", str(config))
    assert_one_line_failure(
        result, f"ocikit serve: cannot read settings file {config}: Invalid value (at line 1, column 11)"
    )


@pytest.fixture
def as_nobody() -> Iterator[Path]:
    """A directory user nobody may write (outside pytest's private tree), for the failures
    only an unprivileged user meets."""
    if os.getuid() != 0:
        pytest.skip("switching to user nobody needs root")
    require_tool("setpriv", "to run ocikit serve as user nobody")
    shared = Path(tempfile.mkdtemp(prefix="ocikit-nobody-"))
    shared.chmod(0o777)
    yield shared
    shutil.rmtree(shared)


def test_unreadable_config(as_nobody: Path) -> None:
    config = as_nobody / "registry.toml"
    config.write_text("workers = 1\n")
    config.chmod(0o600)
    result = serve_once("--config", str(config), as_nobody=True)
    assert_one_line_failure(
        result, f"ocikit serve: cannot read settings file {config}: [Errno 13] Permission denied: '{config}'"
    )


def test_root_not_writable(as_nobody: Path) -> None:
    root = as_nobody / "root"
    root.mkdir(mode=0o755)
    result = serve_once("--listen", f"127.0.0.1:{free_port()}", "--root", str(root), as_nobody=True)
    assert_one_line_failure(result, f"ocikit serve: root {root} is not writable by this user")
    result = serve_once("--listen", f"127.0.0.1:{free_port()}", "--root", str(root / "sub"), as_nobody=True)
    assert_one_line_failure(result, f"ocikit serve: cannot create root {root / 'sub'}: Permission denied")


def test_privileged_port_as_an_unprivileged_user(as_nobody: Path) -> None:
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 80:
        pytest.skip("this machine lets every user bind port 80")
    result = serve_once("--listen", "127.0.0.1:80", "--root", str(as_nobody / "root"), as_nobody=True)
    assert_one_line_failure(
        result,
        "ocikit serve: permission denied to listen on 127.0.0.1:80 "
        "(ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    )


def test_address_not_of_this_machine(tmp_path: Path) -> None:
    result = serve_once("--listen", "192.0.2.1:5000", "--root", str(tmp_path / "data"))
    assert_one_line_failure(
        result, "ocikit serve: cannot listen on 192.0.2.1:5000: not an address of this machine"
    )


# ------------------------------------------------------------------ fast defaults


def test_workers_default_to_the_cpus_available_to_the_process(tmp_path: Path) -> None:
    first_cpu = min(os.sched_getaffinity(0))
    log = tmp_path / "serve.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [*OCIKIT, "serve", "--listen", f"127.0.0.1:{free_port()}", "--root", str(tmp_path / "data")],
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {first_cpu}),  # as `taskset -c` would
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while "Started worker" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ", 1 worker(s)" in log.read_text()
        assert len(worker_pids(process.pid)) == 1
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)


def logged_lines(server: ServerProcess, marker: str) -> list[str]:
    """The server's log lines holding ``marker``, once batched request lines have been written."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in server.log.read_text().splitlines() if marker in line]
        if lines:
            return lines
        time.sleep(0.1)
    return []


def test_a_path_cannot_forge_a_line_in_the_text_log(registry: ServerProcess) -> None:
    marker = repo_name("forge").replace("/", "-")
    with registry.client() as c:
        c.get(f"/v2/{marker}%0A2026-01-01 00:00:00,000 ocikit.registry.access INFO forged%20/tags/list")
    [line] = logged_lines(registry, marker)
    fields = line.split(" ")  # date, time, logger, level, client, user, method, path, ...
    assert (fields[4].startswith("127.0.0.1:"), fields[5], fields[6]) == (True, "-", "GET")
    assert f"/v2/{marker}\\n2026-01-01\\x2000:00:00,000\\x20ocikit.registry.access" in line
    lines = registry.log.read_text().splitlines()
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in lines)


def test_the_access_line_names_the_user_the_auth_layer_put_in_the_scope(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from ocikit.registry import create_app
    from ocikit.registry.settings import Settings

    async def request(app: Any, user: str | None) -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/v2/",
            "headers": [],
            "client": ("192.0.2.7", 40000),
            "ocikit.user": user,
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 200

    async def run() -> None:
        async with create_app(Settings(root=str(tmp_path / "data"), log_format="json")) as app:
            await request(app, "alice")
            await request(app, None)

    asyncio.run(run())  # shutting down writes the batch
    entries = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert [(e["client"], e["user"], e["path"], e["status"]) for e in entries] == [
        ("192.0.2.7:40000", "alice", "/v2/", 200),
        ("192.0.2.7:40000", None, "/v2/", 200),
    ]
