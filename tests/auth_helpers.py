"""An ``ocikit serve`` with access control on, over TLS with a test CA: users in an htpasswd
file made by Apache's ``htpasswd``, a policy file, and helpers to get and forge tokens."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from client_servers import htpasswd_file
from conftest import ServerProcess, require_tool, start_registry
from ocikit.client.auth import parse_challenges

USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "admin": "admin-pw"}

POLICY = """
[groups]
ci = ["carol"]

[[rule]]
users = ["admin"]
repositories = ["**"]
actions = ["pull", "push", "delete"]

[[rule]]
users = ["*"]
repositories = ["secret/**"]
actions = ["pull", "push", "delete"]
allow = false

[[rule]]
users = ["alice"]
repositories = ["team-a/**", "secret2/*"]
actions = ["pull", "push", "delete"]

[[rule]]
users = ["bob"]
repositories = ["team-a/**"]
actions = ["pull"]

[[rule]]
users = ["bob", "group:ci"]
repositories = ["team-b/*"]
actions = ["pull", "push"]

[[rule]]
users = ["anonymous", "*"]
repositories = ["public/**"]
actions = ["pull"]
"""


def _openssl(*args: str | Path) -> None:
    openssl = require_tool("openssl", "keys and certificates for the TLS tests")
    subprocess.run([openssl, *map(str, args)], check=True, capture_output=True)


def make_ca(directory: Path, name: str = "ocikit-test-ca") -> tuple[Path, Path]:
    """A CA certificate and its key."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
        "-keyout", key, "-out", cert, "-subj", f"/CN={name}",
    )  # fmt: skip
    return key, cert


def issue_certificate(directory: Path, ca: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost, signed by ``ca``: (key, cert)."""
    key, request, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.crt"
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", f"/CN={name}")
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
        "-out", cert, "-days", "2", "-sha256", "-extfile", extensions,
    )  # fmt: skip
    return key, cert


@dataclass
class AuthServer:
    server: ServerProcess
    ca: Path
    htpasswd: Path
    policy: Path
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def host(self) -> str:
        return self.server.host

    def client(self, user: str | None = None, **kwargs: Any) -> httpx.Client:
        """A client sending Basic credentials with every request (distribution's htpasswd way)."""
        if user is not None:
            kwargs["auth"] = (user, self.users[user])
        return self.server.client(**kwargs)

    def token(self, user: str | None, *scopes: str) -> str:
        with self.client(user) as client:
            response = client.get("/token", params={"service": "ocikit", "scope": list(scopes)})
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def bearer(self, token: str) -> httpx.Client:
        return self.server.client(headers={"authorization": f"Bearer {token}"})

    def signing_key(self) -> bytes:
        return (self.server.root / "token-key.pem").read_bytes()

    def forge(self, claims: dict[str, Any], **overrides: Any) -> str:
        """A token signed with the registry's own key: only its claims are wrong."""
        now = int(time.time())
        body = {"iss": "ocikit", "aud": "ocikit", "sub": "bob", "iat": now, "nbf": now - 1, "exp": now + 300}
        body |= claims
        return jwt.encode(body, self.signing_key(), algorithm="ES256", headers=overrides or None)

    def stop(self) -> None:
        self.server.stop()


def start_auth_server(
    workdir: Path,
    *,
    policy: str = POLICY,
    extra: list[str] | None = None,
    tls: bool = True,
    client_cert: tuple[Path, Path] | None = None,
) -> AuthServer:
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = htpasswd_file(workdir / "htpasswd", USERS)
    policy_file = workdir / "policy.toml"
    policy_file.write_text(policy)
    args = ["--htpasswd", str(htpasswd), "--policy", str(policy_file), *(extra or [])]
    ca_key, ca_cert = make_ca(workdir)
    if tls:
        key, cert = issue_certificate(workdir, (ca_key, ca_cert), "registry")
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
    server = start_registry(
        workdir / "data", extra=args, ca=ca_cert if tls else None, client_cert=client_cert
    )
    return AuthServer(server, ca_cert, htpasswd, policy_file)


def b64url(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class BearerFlow(httpx.Auth):
    """The token flow as registry clients run it: on a 401 (or a 403 naming a missing scope),
    fetch a token for the challenge's scope from its realm with Basic credentials, retry."""

    def __init__(self, user: str, password: str, verify: Any = True) -> None:
        self._basic = httpx.BasicAuth(user, password)
        self._verify = verify
        self._tokens: dict[str, str] = {}

    def auth_flow(self, request: httpx.Request) -> Any:
        # A mount's source needs pull in the same token: clients ask for it up front.
        source = request.url.params.get("from")
        extra = [f"repository:{source}:pull"] if source else []
        key = " ".join([self._scope_of_path(request.url.path), *extra])
        if key in self._tokens:
            request.headers["authorization"] = f"Bearer {self._tokens[key]}"
        response = yield request
        challenges = parse_challenges(response.headers.get_list("www-authenticate"))
        bearer = [c for c in challenges if c.scheme == "bearer"]
        if response.status_code not in (401, 403) or not bearer:
            return
        values = bearer[0].params
        params = {
            "service": values["service"],
            "scope": " ".join(filter(None, [values.get("scope"), *extra])),
        }
        token = httpx.get(values["realm"], params=params, auth=self._basic, verify=self._verify).json()[
            "token"
        ]
        self._tokens[key] = token
        request.headers["authorization"] = f"Bearer {token}"
        yield request

    @staticmethod
    def _scope_of_path(path: str) -> str:
        for marker in ("/blobs/", "/manifests/", "/tags/", "/referrers/"):
            if marker in path:
                return path.split(marker)[0]
        return path
