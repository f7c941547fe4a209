"""Real servers for the registry-client tests: CNCF distribution (Debian's ``docker-registry``)
with htpasswd or token auth or TLS, a token service issuing signed JWTs, a TCP proxy that cuts
connections, a redirecting front with a separate blob host, and a registry that lies.

Everything listens on loopback ports; keys and certificates are made with the openssl CLI.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from conftest import free_port, require_tool, wait_for_http

# ---------------------------------------------------------------- keys and certificates


def make_certificate(directory: Path, name: str, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed RSA certificate (CN=name, SAN IP and DNS) and its key."""
    openssl = require_tool("openssl", "keys and certificates for the TLS and token tests")
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=IP:{ip},DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_jwt(claims: dict[str, Any], key: Path, cert: Path) -> str:
    """An RS256 JWT whose header carries the signing certificate (``x5c``), which is how
    distribution 2.8 finds the key: it verifies the chain against ``rootcertbundle``."""
    der = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-outform", "DER"], check=True, capture_output=True
    ).stdout
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode("ascii")]}
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(key)],
        input=signing_input.encode(),
        check=True,
        capture_output=True,
    ).stdout
    return f"{signing_input}.{_b64url(signature)}"


def htpasswd_file(path: Path, users: dict[str, str]) -> Path:
    """bcrypt entries (the only kind distribution accepts), made by Debian's apache2-utils."""
    htpasswd = require_tool("htpasswd", "bcrypt password files for docker-registry (apache2-utils)")
    lines = []
    for user, password in users.items():
        done = subprocess.run([htpasswd, "-Bbn", user, password], check=True, capture_output=True, text=True)
        lines.append(done.stdout.strip())
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- background HTTP servers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_in_thread(handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> _Server:
    server = _Server((host, free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def address(server: _Server | None) -> str:
    assert server is not None, "the server is not started"
    host, port = server.server_address[:2]
    return f"{host!s}:{port}"


def shutdown(*servers: _Server | None) -> None:
    for server in servers:
        if server is not None:
            server.shutdown()
            server.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# ---------------------------------------------------------------- token service


@dataclass
class TokenService:
    """A token endpoint in the shape of Docker's: GET with service and scope, optional Basic
    auth; it grants authenticated users what they ask for and anonymous callers ``pull`` only.

    ``unreadable`` holds (user, repository) pairs that get nothing on that repository: the
    token then leaves that scope out (as Docker's and Harbor's services do), or with
    ``refuse_unreadable`` the whole token request is answered 403 (as some others do)."""

    key: Path
    cert: Path
    users: dict[str, str]
    service: str = "ocikit-test"
    issuer: str = "ocikit-test-issuer"
    expires_in: int = 300
    requests: list[dict[str, Any]] = field(default_factory=list)
    unreadable: set[tuple[str, str]] = field(default_factory=set)
    refuse_unreadable: bool = False
    server: _Server | None = None

    @property
    def realm(self) -> str:
        return f"http://{address(self.server)}/token"

    def start(self) -> TokenService:
        service = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                service.handle(self)

        self.server = serve_in_thread(Handler)
        return self

    def stop(self) -> None:
        shutdown(self.server)

    def handle(self, request: QuietHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        scopes = query.get("scope", [])
        user = None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name) != password:
                self.requests.append({"user": name, "scopes": scopes, "denied": True})
                request.reply(401, b'{"details":"invalid credentials"}', {"Content-Type": "application/json"})
                return
            user = name
        self.requests.append({"user": user, "scopes": scopes, "service": query.get("service", [""])[0]})
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if (user or "", name) in self.unreadable:
                if self.refuse_unreadable:
                    request.reply(403, b'{"details":"access denied"}', {"Content-Type": "application/json"})
                    return
                continue
            granted = actions.split(",") if user else [a for a in actions.split(",") if a == "pull"]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        token = sign_jwt(claims, self.key, self.cert)
        body = json.dumps({"token": token, "access_token": token, "expires_in": self.expires_in}).encode()
        request.reply(200, body, {"Content-Type": "application/json"})


# ---------------------------------------------------------------- CNCF distribution


@dataclass
class Distribution:
    url: str
    host: str
    root: Path
    log: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_distribution(
    workdir: Path,
    *,
    auth: str = "",
    tls: tuple[Path, Path] | None = None,
    proxy: tuple[str, str, str] | None = None,
    trust: Path | None = None,
) -> Distribution:
    """``docker-registry serve`` on a free port, filesystem storage under ``workdir``, deletes
    enabled; ``auth`` is a YAML ``auth:`` block (already indented by two spaces). With
    ``proxy`` (remote URL, user, password) it is a pull-through cache of that registry, and
    ``trust`` is a CA bundle it trusts (Go reads ``SSL_CERT_FILE``)."""
    binary = require_tool("docker-registry", "CNCF distribution, the reference registry")
    port = free_port()
    root = workdir / "distribution-data"
    root.mkdir(parents=True, exist_ok=True)
    config = workdir / "distribution.yml"
    tls_block = f"  tls:\n    certificate: {tls[1]}\n    key: {tls[0]}\n" if tls else ""
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{tls_block}"
        + (f"auth:\n{auth}" if auth else "")
        + (
            f"proxy:\n  remoteurl: {proxy[0]}\n  username: {proxy[1]}\n  password: {proxy[2]}\n"
            if proxy
            else ""
        )
    )
    env = {**os.environ, "SSL_CERT_FILE": str(trust)} if trust else None
    log = workdir / "distribution.log"
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            [binary, "serve", str(config)], stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    scheme = "https" if tls else "http"
    server = Distribution(f"{scheme}://127.0.0.1:{port}", f"127.0.0.1:{port}", root, log, process)
    try:
        wait_for_port(port, process)
    except RuntimeError:
        server.stop()
        raise RuntimeError(f"docker-registry did not start:\n{log.read_text()[-3000:]}") from None
    if not tls:
        wait_for_http(f"{server.url}/v2/", process)
    return server


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("no listener")


@dataclass
class TokenSetup:
    """CNCF distribution behind a :class:`TokenService`."""

    registry: Distribution
    tokens: TokenService

    def stop(self) -> None:
        self.registry.stop()
        self.tokens.stop()


def start_token_distribution(workdir: Path, users: dict[str, str]) -> TokenSetup:
    """Distribution with token auth, its tokens signed by a certificate made in ``workdir``."""
    key, cert = make_certificate(workdir, "token-signer")
    tokens = TokenService(key, cert, users).start()
    auth = (
        "  token:\n"
        f"    realm: {tokens.realm}\n"
        f"    service: {tokens.service}\n"
        f"    issuer: {tokens.issuer}\n"
        f"    rootcertbundle: {cert}\n"
    )
    try:
        return TokenSetup(start_distribution(workdir, auth=auth), tokens)
    except BaseException:
        tokens.stop()
        raise


# ---------------------------------------------------------------- a proxy that breaks connections


_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE"})


@dataclass
class CuttingProxy:
    """A TCP proxy to ``upstream``. The first ``cuts`` connections that carry more than ``after``
    bytes in ``direction`` (``"down"``: responses, ``"up"``: requests) are cut there, both ways.
    With ``marker``, bytes are counted only from a request whose head contains it."""

    upstream: tuple[str, int]
    after: int
    direction: str = "down"
    cuts: int = 1
    marker: bytes | None = None
    heads: list[bytes] = field(default_factory=list)  # the start of every request seen
    cut_count: int = 0
    _listener: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        assert self._listener is not None
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> CuttingProxy:
        self._listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cut_count < self.cuts:
                self.cut_count += 1
                return True
            return False

    def _connection(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)
        state = {"cut": False}

        def pump(source: socket.socket, sink: socket.socket, direction: str) -> None:
            moved = 0
            armed: bool | None = None
            counting = self.marker is None
            try:
                while data := source.recv(65536):
                    if direction == "up" and data.split(b" ", 1)[0] in _METHODS:
                        self.heads.append(data[:4096])  # a request head starts a send
                        if self.marker is not None and self.marker in data[:4096]:
                            counting, moved = True, 0
                    if direction == self.direction and counting and not state["cut"]:
                        if moved + len(data) > self.after and armed is None:
                            armed = self._take_cut()
                        if armed:
                            sink.sendall(data[: max(0, self.after - moved)])
                            state["cut"] = True
                            break
                    moved += len(data)
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        up = threading.Thread(target=pump, args=(client, server, "up"), daemon=True)
        up.start()
        pump(server, client, "down")
        up.join(timeout=5)
        client.close()
        server.close()


# ---------------------------------------------------------------- redirects to another host


@dataclass
class RedirectingRegistry:
    """A front on 127.0.0.1 that demands Basic auth and redirects blob GETs to a blob host on
    127.0.0.2, which records the headers it receives."""

    user: str
    password: str
    blobs: dict[str, bytes]
    seen_by_blob_host: list[dict[str, str]] = field(default_factory=list)
    front: _Server | None = None
    backend: _Server | None = None

    @property
    def host(self) -> str:
        return address(self.front)

    def start(self) -> RedirectingRegistry:
        outer = self
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

        class Backend(QuietHandler):
            def do_GET(self) -> None:
                outer.seen_by_blob_host.append(dict(self.headers.items()))
                data = outer.blobs.get(self.path.rsplit("/", 1)[-1])
                self.reply(200 if data is not None else 404, data or b"")

        class Front(QuietHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != expected:
                    self.reply(401, b"", {"WWW-Authenticate": 'Basic realm="front"'})
                    return
                if self.path == "/v2/":
                    self.reply(200, b"{}", {"Content-Type": "application/json"})
                    return
                digest = self.path.rsplit("/", 1)[-1]
                target = f"http://{address(outer.backend)}/storage/{digest}"
                self.reply(307, b"", {"Location": target})

        self.backend = serve_in_thread(Backend, host="127.0.0.2")
        self.front = serve_in_thread(Front)
        return self

    def stop(self) -> None:
        shutdown(self.front, self.backend)


# ---------------------------------------------------------------- a registry that lies


Route = Callable[[QuietHandler], None]


@dataclass
class LyingRegistry:
    """Answers from a table of ``(method, path) -> handler``; everything else is a 404."""

    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    server: _Server | None = None

    @property
    def host(self) -> str:
        return address(self.server)

    def start(self) -> LyingRegistry:
        outer = self

        class Handler(QuietHandler):
            def _dispatch(self) -> None:
                route = outer.routes.get((self.command, self.path))
                if route is None:
                    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"nothing here"}]}'
                    self.reply(404, body, {"Content-Type": "application/json"})
                else:
                    route(self)

            do_GET = do_HEAD = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch

        self.server = serve_in_thread(Handler)
        return self

    def stop(self) -> None:
        shutdown(self.server)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def truncated(body: bytes, announced: int, content_type: str = "application/octet-stream") -> Route:
    """A response announcing ``announced`` bytes that sends ``body`` and closes the connection."""

    def route(handler: QuietHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(announced))
        handler.send_header("Content-Type", content_type)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
            handler.wfile.flush()
        handler.close_connection = True

    return route


def fixed(status: int, body: bytes, headers: dict[str, str] | None = None) -> Route:
    def route(handler: QuietHandler) -> None:
        handler.reply(status, body, headers)

    return route


def chunks_of(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# ---------------------------------------------------------------- tokens that stop working


@dataclass
class RevokingRegistry:
    """A registry front whose token service (same server, ``/token``) issues opaque tokens and
    whose ``/v2/`` endpoints accept only tokens not yet revoked: what a registry does when a
    token expires on its clock before the client's."""

    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    server: _Server | None = None

    @property
    def host(self) -> str:
        return address(self.server)

    def start(self) -> RevokingRegistry:
        outer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/token"):
                    token = secrets.token_hex(8)
                    outer.issued.append(token)
                    self.reply(200, json.dumps({"token": token, "expires_in": 3600}).encode())
                    return
                offered = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if offered not in outer.issued or offered in outer.revoked:
                    challenge = (
                        f'Bearer realm="http://{outer.host}/token",service="revoking",error="invalid_token"'
                    )
                    self.reply(401, b"", {"WWW-Authenticate": challenge})
                    return
                self.reply(200, b'{"name": "r/x", "tags": ["v1"]}', {"Content-Type": "application/json"})

        self.server = serve_in_thread(Handler)
        return self

    def stop(self) -> None:
        shutdown(self.server)
