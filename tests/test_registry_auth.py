"""Access control against a real ``ocikit serve`` over TLS: the security suite (every case
asserts the exact status and that nothing was stored), the token endpoint, hot reload,
rate limits, the audit log, and tokens from an external token server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import ssl
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from jwt.algorithms import RSAAlgorithm

from auth_helpers import USERS, AuthServer, b64url, start_auth_server
from client_servers import TokenService, htpasswd_file, make_certificate
from conftest import start_registry
from registry_helpers import digest, error_codes, push_blob, push_image

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    server = start_auth_server(tmp_path_factory.mktemp("auth"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hidden(auth: AuthServer) -> tuple[str, str]:
    """An image and a blob in ``secret/hidden``, which only admin may see: (manifest, blob)."""
    with auth.client("admin") as admin:
        manifest, _ = push_image(admin, "secret/hidden", "v1")
        blob = push_blob(admin, "secret/hidden", b"hidden blob " + os.urandom(8))
    return manifest, blob


def stored_anywhere(auth: AuthServer, data: bytes) -> bool:
    """Whether a file named by the data's digest exists anywhere under the registry root."""
    name = hashlib.sha256(data).hexdigest()
    return any(path.name.startswith(name) for path in auth.server.root.rglob("*"))


def upload(client: httpx.Client, repo: str, data: bytes) -> httpx.Response:
    return client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest(data)}, content=data)


def raw_request(auth: AuthServer, method: str, path: str, headers: dict[str, str] | None = None) -> int:
    """A request whose path is sent exactly as written (httpx would normalise ``..``)."""
    context = ssl.create_default_context(cafile=str(auth.ca))
    host, port = auth.host.split(":")
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0  # the server closed the connection without an answer
    finally:
        connection.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# ------------------------------------------------------------------ the security suite

Attempt = Callable[[AuthServer, str, bytes], httpx.Response]


def with_client(make: Callable[[AuthServer], httpx.Client]) -> Attempt:
    def attempt(auth: AuthServer, repo: str, data: bytes) -> httpx.Response:
        with make(auth) as client:
            return upload(client, repo, data)

    return attempt


def with_token(make: Callable[[AuthServer], str]) -> Attempt:
    return with_client(lambda auth: auth.bearer(make(auth)))


def _hs256_with_public_key(auth: AuthServer) -> str:
    """The old confusion attack: an HMAC keyed with the (public) verification key."""
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(auth.signing_key(), password=None)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {
        "iss": "ocikit",
        "aud": "ocikit",
        "sub": "bob",
        "exp": now + 300,
        "nbf": now - 1,
        "access": _push_all(),
    }
    signing_input = f"{b64url({'alg': 'HS256', 'typ': 'JWT'})}.{b64url(claims)}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def _push_all() -> list[dict[str, object]]:
    return [{"type": "repository", "name": f"{team}/{case}", "actions": ["pull", "push"]}
            for team in ("team-a", "team-b", "secret") for case in CASE_NAMES]  # fmt: skip


def _alg_none(auth: AuthServer) -> str:
    now = int(time.time())
    claims = {"iss": "ocikit", "aud": "ocikit", "sub": "alice", "exp": now + 300, "access": _push_all()}
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims)}."


def _tampered_signature(auth: AuthServer) -> str:
    token = auth.token("alice", "repository:team-a/tampered-signature:pull,push")
    head, body, signature = token.split(".")
    flipped = ("A" if signature[5] != "A" else "B").join((signature[:5], signature[6:]))
    return f"{head}.{body}.{flipped}"


def _upgraded_claims(auth: AuthServer) -> str:
    """bob's pull-only token with ``push`` written into its claims, signature kept."""
    token = auth.token("bob", "repository:team-a/upgraded-claims:pull,push")
    head, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert claims["access"] == [{"type": "repository", "name": "team-a/upgraded-claims", "actions": ["pull"]}]
    claims["access"][0]["actions"] = ["pull", "push"]
    return f"{head}.{b64url(claims)}.{signature}"


def _forged(**claims: object) -> Callable[[AuthServer], str]:
    def make(auth: AuthServer) -> str:
        now = int(time.time())
        base: dict[str, object] = {"sub": "alice", "access": _push_all(), "nbf": now - 1, "exp": now + 300}
        return auth.forge(base | {k: (now + v if isinstance(v, int) and k in ("exp", "nbf") else v)
                                  for k, v in claims.items()})  # fmt: skip

    return make


def _refresh_token_as_access(auth: AuthServer) -> str:
    with auth.client("alice") as client:
        response = client.get("/token", params={"service": "ocikit", "offline_token": "true"})
    return str(response.json()["refresh_token"])


@dataclass(frozen=True)
class Case:
    name: str
    repository: str  # "team-a" etc.: the case's own repository is <team>/<name>
    attempt: Attempt
    status: int
    code: str


def _as(user: str | None, password: str | None = None) -> Attempt:
    """Basic credentials: the user's own password unless another is given."""
    if password is None:
        return with_client(lambda auth: auth.client(user))
    return with_client(lambda auth: auth.client(headers=basic(str(user), password)))


def _token_of(user: str, scope: str) -> Attempt:
    return with_token(lambda auth: auth.token(user, scope))


def _header(value: str) -> Attempt:
    return with_client(lambda auth: auth.client(headers={"authorization": value}))


UNAUTHORIZED, DENIED = (401, "UNAUTHORIZED"), (403, "DENIED")
INSUFFICIENT_SCOPE = DENIED  # with a challenge for the missing scope (RFC 6750)
CASES = [
    Case("no-credentials", "team-a", _as(None), *UNAUTHORIZED),
    Case("wrong-password", "team-a", _as("alice", "nope"), *UNAUTHORIZED),
    Case("unknown-user", "team-a", _as("mallory", "x"), *UNAUTHORIZED),
    Case("policy-refuses-basic-push", "team-a", _as("bob"), *DENIED),
    Case("explicit-deny-beats-later-allow", "secret", _as("alice"), *DENIED),
    Case(
        "token-for-another-repo",
        "team-a",
        _token_of("alice", "repository:team-a/x:pull,push"),
        *INSUFFICIENT_SCOPE,
    ),
    Case(
        "pull-only-token",
        "team-a",
        _token_of("bob", "repository:team-a/pull-only-token:pull,push"),
        *INSUFFICIENT_SCOPE,
    ),
    Case("expired-token", "team-a", with_token(_forged(exp=-3600, nbf=-7200)), *UNAUTHORIZED),
    Case("not-yet-valid-token", "team-a", with_token(_forged(nbf=3600, exp=7200)), *UNAUTHORIZED),
    Case("wrong-audience", "team-a", with_token(_forged(aud="another-registry")), *UNAUTHORIZED),
    Case("wrong-issuer", "team-a", with_token(_forged(iss="someone-else")), *UNAUTHORIZED),
    Case("alg-none", "team-a", with_token(_alg_none), *UNAUTHORIZED),
    Case("hs256-with-public-key", "team-a", with_token(_hs256_with_public_key), *UNAUTHORIZED),
    Case("tampered-signature", "team-a", with_token(_tampered_signature), *UNAUTHORIZED),
    Case("upgraded-claims", "team-a", with_token(_upgraded_claims), *UNAUTHORIZED),
    Case("refresh-token-as-access", "team-a", with_token(_refresh_token_as_access), *UNAUTHORIZED),
    Case("garbage-bearer", "team-a", _header("Bearer x.y.z"), *UNAUTHORIZED),
    Case("garbage-basic", "team-a", _header("Basic !!!"), *UNAUTHORIZED),
    Case("unknown-scheme", "team-a", _header("Negotiate abc"), *UNAUTHORIZED),
]
CASE_NAMES = [case.name for case in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_NAMES)
def test_refused_writes_store_nothing(auth: AuthServer, case: Case) -> None:
    repo = f"{case.repository}/{case.name}"
    data = f"{case.name} {uuid.uuid4()}".encode()
    response = case.attempt(auth, repo, data)
    assert response.status_code == case.status, response.text
    assert error_codes(response) == [case.code]
    if case.status == 401 or case.name in ("token-for-another-repo", "pull-only-token"):
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith(f'Bearer realm="{auth.url}/token",service="ocikit"')
        assert f'scope="repository:{repo}:pull,push"' in challenge
    assert not stored_anywhere(auth, data)
    with auth.client("admin") as admin:
        assert admin.head(f"/v2/{repo}/blobs/{digest(data)}").status_code == 404
        assert repo not in admin.get("/v2/_catalog").json()["repositories"]


def test_the_same_write_succeeds_with_the_right_token(auth: AuthServer) -> None:
    """The control for the table above: the refusals are about the credentials."""
    repo, data = "team-a/control", b"control " + os.urandom(8)
    with auth.bearer(auth.token("alice", f"repository:{repo}:pull,push")) as client:
        assert upload(client, repo, data).status_code == 201
        assert client.get(f"/v2/{repo}/blobs/{digest(data)}").content == data


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/team-a/../secret/hidden/tags/list", 400),
        ("/v2/team-a/%2e%2e/secret/hidden/tags/list", 400),
        ("/v2/team-a%2F..%2Fsecret%2Fhidden/tags/list", 400),
        ("/v2/team-a//secret/hidden/tags/list", 400),
        ("/v2/SECRET/hidden/tags/list", 400),
        ("/v2/secret/hidden/tags/list/", 404),
        ("/v2/secret/hidden/./tags/list", 400),
    ],
)
def test_path_tricks_do_not_reach_another_repository(
    auth: AuthServer, hidden: tuple[str, str], path: str, status: int
) -> None:
    assert raw_request(auth, "GET", path, basic("alice", USERS["alice"])) == status


def test_another_users_upload_cannot_be_continued(auth: AuthServer) -> None:
    repo = "team-a/upload-hijack"
    with auth.client("alice") as alice, auth.client("bob") as bob:
        location = alice.post(f"/v2/{repo}/blobs/uploads/").headers["location"]
        upload_id = location.rsplit("/", 1)[-1]
        # bob may pull team-a but not push: his PATCH to alice's session is refused...
        assert bob.patch(location, content=b"bob was here").status_code == 403
        # ...and through a repository he may push to, the session is not found.
        response = bob.patch(f"/v2/team-b/hijack/blobs/uploads/{upload_id}", content=b"bob was here")
        assert response.status_code == 404
        assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]
        assert bob.delete(location).status_code == 403
        status = alice.get(location)
        assert status.status_code == 204
        assert status.headers["range"] == "0-0"  # nothing was appended


def test_mount_from_a_repository_one_may_not_pull_falls_back_to_an_upload(
    auth: AuthServer, hidden: tuple[str, str]
) -> None:
    _, blob = hidden
    with auth.client("bob") as bob, auth.client("admin") as admin:
        for params in ({"mount": blob, "from": "secret/hidden"}, {"mount": blob}):
            response = bob.post("/v2/team-b/mounter/blobs/uploads/", params=params)
            assert response.status_code == 202, response.text  # an upload session, no mount
            assert admin.head(f"/v2/team-b/mounter/blobs/{blob}").status_code == 404


def test_hidden_repositories_are_not_listed_or_readable(auth: AuthServer, hidden: tuple[str, str]) -> None:
    manifest, _ = hidden
    with auth.client("alice") as alice:
        push_image(alice, "team-a/listed", "v1")
    with auth.client("bob") as bob:
        repositories = bob.get("/v2/_catalog").json()["repositories"]
        assert "team-a/listed" in repositories
        assert not [r for r in repositories if r.startswith("secret/")]
        assert bob.get("/v2/secret/hidden/tags/list").status_code == 403
        assert bob.get(f"/v2/secret/hidden/referrers/{manifest}").status_code == 403
        assert bob.get(f"/v2/secret/hidden/manifests/{manifest}").status_code == 403
    token = auth.token("bob", "registry:catalog:*", "repository:secret/hidden:pull")
    with auth.bearer(token) as client:
        repositories = client.get("/v2/_catalog").json()["repositories"]
        assert "team-a/listed" in repositories
        assert "secret/hidden" not in repositories
        assert client.get("/v2/secret/hidden/tags/list").status_code == 403
    with auth.client("admin") as admin:
        assert "secret/hidden" in admin.get("/v2/_catalog").json()["repositories"]


def test_catalog_pages_skip_hidden_repositories_without_gaps(auth: AuthServer) -> None:
    with auth.client("admin") as admin:
        for name in ("public/page-a", "secret/page-b", "public/page-c", "secret/page-d", "public/page-e"):
            push_blob(admin, name, name.encode())
    anonymous_token = auth.token(None, "registry:catalog:*")
    with auth.bearer(anonymous_token) as client:
        seen, url = [], "/v2/_catalog?n=2"
        while url:
            response = client.get(url)
            page = response.json()["repositories"]
            assert len(page) <= 2
            seen += page
            url = response.links.get("next", {}).get("url", "")
        assert [r for r in seen if r.startswith("public/page-")] == [
            "public/page-a",
            "public/page-c",
            "public/page-e",
        ]
        assert all(r.startswith("public/") for r in seen)


def test_anonymous_pull_of_a_public_repository(auth: AuthServer) -> None:
    with auth.client("admin") as admin:
        _manifest, body = push_image(admin, "public/app", "latest")
    with auth.client() as anonymous:
        assert anonymous.get("/v2/").status_code == 401  # clients learn the realm here
        response = anonymous.get("/v2/public/app/manifests/latest", headers={"accept": "*/*"})
        assert response.status_code == 200
        assert response.content == body
        assert anonymous.get("/v2/team-a/listed/tags/list").status_code == 401


def test_a_10_mb_authorization_header_is_refused(auth: AuthServer) -> None:
    header = "Basic " + "A" * (10 * 1024 * 1024)
    status = raw_request(auth, "GET", "/v2/team-a/x/tags/list", {"authorization": header})
    assert status == 0  # Granian drops the connection: the header never reaches the registry
    status = raw_request(auth, "GET", "/v2/team-a/x/tags/list", {"authorization": "Bearer " + "A" * 20000})
    assert status == 401
    assert raw_request(auth, "GET", "/v2/", basic("alice", USERS["alice"])) == 200  # still serving


# ------------------------------------------------------------------ the token endpoint


def claims_of(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


def test_token_claims_follow_the_token_specification(auth: AuthServer) -> None:
    token = auth.token("alice", "repository:team-a/app:pull,push,delete", "repository:secret/x:pull")
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["kid"]
    claims = claims_of(token)
    assert claims["iss"] == "ocikit"
    assert claims["aud"] == "ocikit"
    assert claims["sub"] == "alice"
    assert int(claims["nbf"]) <= time.time() < int(claims["exp"]) <= time.time() + 301  # type: ignore[call-overload]
    assert claims["access"] == [
        {"type": "repository", "name": "team-a/app", "actions": ["pull", "push", "delete"]}
    ]


def test_anonymous_tokens_carry_what_anonymous_users_may_do(auth: AuthServer) -> None:
    token = auth.token(None, "repository:public/app:pull,push", "repository:team-a/app:pull")
    assert claims_of(token)["access"] == [{"type": "repository", "name": "public/app", "actions": ["pull"]}]
    assert claims_of(token)["sub"] == ""


def test_oauth2_password_and_refresh_grants(auth: AuthServer) -> None:
    form = {
        "grant_type": "password",
        "username": "alice",
        "password": USERS["alice"],
        "service": "ocikit",
        "scope": "repository:team-a/oauth:pull,push",
        "client_id": "test",
        "access_type": "offline",
    }
    with auth.client() as client:
        response = client.post("/token", data=form)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["scope"] == "repository:team-a/oauth:pull,push"
        assert answer["expires_in"] == 300
        refreshed = client.post(
            "/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": answer["refresh_token"],
                "service": "ocikit",
                "scope": "repository:team-a/oauth:pull",
            },
        )
        assert refreshed.status_code == 200, refreshed.text
        assert claims_of(refreshed.json()["access_token"])["sub"] == "alice"
        wrong = client.post("/token", data=form | {"password": "nope"})
        assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
        forged = client.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": answer["access_token"]}
        )
        assert (forged.status_code, forged.json()["error"]) == (400, "invalid_grant")
        unknown = client.post("/token", data={"grant_type": "client_credentials"})
        assert (unknown.status_code, unknown.json()["error"]) == (400, "unsupported_grant_type")


def test_a_password_change_ends_the_refresh_tokens_issued_before(auth: AuthServer) -> None:
    """A stolen refresh token would otherwise renew itself for as long as the user exists."""
    form = {"grant_type": "password", "username": "carol", "password": USERS["carol"], "service": "ocikit"}
    original = auth.htpasswd.read_text()
    with auth.client() as client:
        stolen = client.post("/token", data=form | {"access_type": "offline"}).json()["refresh_token"]

        def refresh() -> httpx.Response:
            data = {"grant_type": "refresh_token", "refresh_token": stolen, "service": "ocikit"}
            return client.post("/token", data=data)

        assert refresh().status_code == 200
        try:
            others = "".join(
                line for line in original.splitlines(keepends=True) if not line.startswith("carol:")
            )
            changed = htpasswd_file(auth.htpasswd.with_name("carol"), {"carol": "new-pw"}).read_text()
            _rewrite(auth.htpasswd, others + changed)
            _eventually(lambda: refresh().status_code == 400)
            assert refresh().json() == {
                "error": "invalid_grant",
                "error_description": "the password changed since this refresh token",
            }
            fresh = client.post("/token", data=form | {"password": "new-pw", "access_type": "offline"})
            renewed = {"grant_type": "refresh_token", "refresh_token": fresh.json()["refresh_token"]}
            assert client.post("/token", data=renewed | {"service": "ocikit"}).status_code == 200
        finally:
            _rewrite(auth.htpasswd, original)


def test_token_for_another_service_is_refused(auth: AuthServer) -> None:
    with auth.client("alice") as client:
        response = client.get("/token", params={"service": "elsewhere", "scope": "repository:team-a/x:pull"})
    assert response.status_code == 403


# ------------------------------------------------------------------ hot reload, audit


def _rewrite(path: Path, text: str) -> None:
    temporary = path.with_suffix(".new")
    temporary.write_text(text)
    os.replace(temporary, path)


def _eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the change was not picked up"
        time.sleep(0.2)


def test_htpasswd_and_policy_changes_apply_without_a_restart(auth: AuthServer) -> None:
    original_users, original_policy = auth.htpasswd.read_text(), auth.policy.read_text()
    dave = {"authorization": basic("dave", "dave-pw")["authorization"]}
    try:
        extra = htpasswd_file(auth.htpasswd.with_name("dave"), {"dave": "dave-pw"}).read_text()
        _rewrite(auth.htpasswd, original_users + extra)
        with auth.client(headers=dave) as client:
            _eventually(lambda: client.get("/v2/").status_code == 200)
            assert upload(client, "team-d/app", b"daves").status_code == 403
            rule = '\n[[rule]]\nusers = ["dave"]\nrepositories = ["team-d/*"]\nactions = ["pull", "push"]\n'
            _rewrite(auth.policy, original_policy + rule)
            _eventually(lambda: upload(client, "team-d/app", b"daves").status_code == 201)
            _rewrite(auth.policy, original_policy + "[[rule]]\nbroken = true\n")  # an invalid edit
            time.sleep(1.5)
            assert client.head(f"/v2/team-d/app/blobs/{digest(b'daves')}").status_code == 200
            _rewrite(auth.htpasswd, original_users)
            _eventually(lambda: client.get("/v2/").status_code == 401)
    finally:
        _rewrite(auth.htpasswd, original_users)
        _rewrite(auth.policy, original_policy)
    assert "keeping the previous" in auth.server.log.read_text()


def test_audit_log_names_user_address_and_digest_but_no_secret(auth: AuthServer) -> None:
    token = auth.token("alice", "repository:team-a/audited:pull,push")
    with auth.bearer(token) as client:
        manifest, _ = push_image(client, "team-a/audited", "v1")
    time.sleep(0.5)
    log = auth.server.log.read_text()
    lines = [
        json.loads(line.split(" INFO ", 1)[1]) for line in log.splitlines() if "ocikit.registry.audit" in line
    ]
    pushed = [e for e in lines if e.get("repository") == "team-a/audited" and e["kind"] == "tag"]
    assert pushed == [{"action": "push", "kind": "tag", "repository": "team-a/audited", "digest": manifest,
                       "tag": "v1", "user": "alice", "address": "127.0.0.1"}]  # fmt: skip
    assert token not in log
    for password in USERS.values():
        assert password not in log


# ------------------------------------------------------------------ limits


def test_brute_force_and_request_rates_are_limited(tmp_path: Path) -> None:
    server = start_auth_server(
        # one worker: the buckets are per worker (docs/security.md)
        tmp_path,
        tls=False,
        extra=["--workers", "1", "--rate-limit-user", "1", "--rate-limit-burst", "5"],
    )
    try:
        token = server.token("bob", "repository:team-b/x:pull")
        with server.client(headers=basic("alice", "guess")) as attacker:
            statuses = [attacker.get("/v2/").status_code for _ in range(12)]
        assert statuses[:10] == [401] * 10
        assert statuses[-1] == 429
        with server.client("alice") as alice:  # even the right password waits now
            refused = alice.get("/v2/")
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert error_codes(refused) == ["TOOMANYREQUESTS"]
        with server.bearer(token) as bob:  # tokens are not logins; bob's own rate applies
            statuses = [bob.get("/v2/team-b/x/tags/list").status_code for _ in range(8)]
        assert statuses[:4] == [404] * 4
        assert statuses[-1] == 429
    finally:
        server.stop()


def test_parallel_guesses_are_throttled_like_serial_ones(tmp_path: Path) -> None:
    """An attacker does not wait for one answer before sending the next guess: 60 at once
    from one address get at most the 10 bcrypt checks that 60 in a row would get."""
    server = start_auth_server(tmp_path, tls=False, extra=["--workers", "1"])

    async def guesses() -> list[int]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(base_url=server.server.url, limits=limits, timeout=60) as client:
            answers = await asyncio.gather(
                *(client.get("/v2/", headers=basic("alice", f"guess-{i}")) for i in range(60))
            )
        return [answer.status_code for answer in answers]

    try:
        statuses = asyncio.run(guesses())
        assert statuses.count(401) <= 10, statuses
        assert statuses.count(429) >= 50
    finally:
        server.stop()


def test_requests_per_address_are_limited_everywhere(tmp_path: Path) -> None:
    server = start_auth_server(
        tmp_path, tls=False, extra=["--rate-limit-address", "2", "--rate-limit-burst", "4"]
    )
    try:
        time.sleep(2.5)  # the start-up probes took tokens: let the bucket fill up again
        with server.client() as client:
            statuses = [client.get("/v2/").status_code for _ in range(3)]
            statuses.append(client.get("/token").status_code)  # the token endpoint counts too
            statuses += [client.get("/v2/public/x/tags/list").status_code for _ in range(3)]
        assert statuses[:4] == [401, 401, 401, 200]
        assert statuses[-1] == 429
    finally:
        server.stop()


# ------------------------------------------------------------------ external token server


@pytest.mark.parametrize("trust", ["certs", "jwks"])
def test_tokens_from_an_external_token_server(tmp_path: Path, trust: str) -> None:
    key, cert = make_certificate(tmp_path, "token-signer")
    service = TokenService(key, cert, {"erin": "erin-pw", "mallory": "mallory-pw"}).start()
    if trust == "certs":
        trusted = ["--token-certs", str(cert)]
    else:
        from cryptography import x509

        public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps({"keys": [RSAAlgorithm.to_jwk(public, as_dict=True)]}))
        trusted = ["--token-jwks", str(jwks)]
    args = [
        "--token-realm",
        service.realm,
        "--token-issuer",
        service.issuer,
        "--token-service",
        service.service,
    ]
    server = start_registry(tmp_path / "data", extra=[*args, *trusted])
    try:
        with server.client() as client:
            challenge = client.get("/v2/").headers["www-authenticate"]
            assert challenge == f'Bearer realm="{service.realm}",service="{service.service}"'
            assert client.get("/token").status_code == 404  # no token endpoint of its own
            params = {"service": service.service, "scope": "repository:ext/app:pull,push"}
            token = httpx.get(service.realm, params=params, auth=("erin", "erin-pw")).json()["token"]
            with server.client(headers={"authorization": f"Bearer {token}"}) as erin:
                assert upload(erin, "ext/app", b"ext").status_code == 201
            # A token for her own repository only: the token server's grants are the limit, so
            # Mallory cannot mount erin's blob into it and read it from there.
            own = {"service": service.service, "scope": "repository:mallory/x:pull,push"}
            token = httpx.get(service.realm, params=own, auth=("mallory", "mallory-pw")).json()["token"]
            with server.client(headers={"authorization": f"Bearer {token}"}) as mallory:
                for mount in ({"mount": digest(b"ext"), "from": "ext/app"}, {"mount": digest(b"ext")}):
                    response = mallory.post("/v2/mallory/x/blobs/uploads/", params=mount)
                    assert response.status_code == 202, (mount, response.text)
                    assert mallory.get(f"/v2/mallory/x/blobs/{digest(b'ext')}").status_code == 404
            anonymous = httpx.get(service.realm, params=params).json()["token"]
            with server.client(headers={"authorization": f"Bearer {anonymous}"}) as nobody:
                assert upload(nobody, "ext/app", b"anonymous").status_code == 403
            # The same claims from a token server whose key is not trusted.
            rogue_key, rogue_cert = make_certificate(tmp_path, "rogue-signer")
            rogue = TokenService(rogue_key, rogue_cert, {"erin": "erin-pw"}, issuer=service.issuer).start()
            try:
                forged = httpx.get(rogue.realm, params=params, auth=("erin", "erin-pw")).json()["token"]
            finally:
                rogue.stop()
            with server.client(headers={"authorization": f"Bearer {forged}"}) as mallory:
                refused = upload(mallory, "ext/app", b"rogue")
                assert refused.status_code == 401
                assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    finally:
        server.stop()
        service.stop()


def test_bad_access_settings_stop_the_server_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "htpasswd"
    bad.write_text("alice:$apr1$weak$hash\n")
    with pytest.raises(RuntimeError, match="not bcrypt"):
        start_registry(tmp_path / "data", extra=["--htpasswd", str(bad)])
    symmetric = tmp_path / "jwks.json"  # a shared secret: anyone holding it could sign tokens
    symmetric.write_text(
        json.dumps({"keys": [{"kty": "oct", "kid": "shared", "alg": "HS256", "k": "c2VjcmV0"}]})
    )
    external = [
        "--token-realm",
        "https://auth.example/token",
        "--token-issuer",
        "auth",
        "--token-service",
        "r",
    ]
    with pytest.raises(RuntimeError, match="key shared: unsupported key type"):
        start_registry(tmp_path / "data2", extra=[*external, "--token-jwks", str(symmetric)])


def test_processes_starting_together_share_one_generated_key(tmp_path: Path) -> None:
    path = tmp_path / "data" / "token-key.pem"
    code = (
        "import sys; from pathlib import Path;"
        "from ocikit.registry.auth.keys import key_id, load_or_create_key;"
        "print(key_id(load_or_create_key(Path(sys.argv[1])).public_key()))"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    key_ids = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert len(key_ids) == 1
    assert "" not in key_ids
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["token-key.pem"]  # no temporary files left


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"tls_cert": "CERT"}, "tls_cert and tls_key go together"),
        ({"tls_client_ca": "CERT"}, "tls_client_ca needs tls_cert"),
        ({"token_certs": "CERT"}, "needs token_realm, token_issuer and token_service"),
        ({"token_certs": "CERT", "token_jwks": "CERT"}, "not both"),
        ({"htpasswd": "/nonexistent/htpasswd"}, "is not a readable file"),
        ({"token_lifetime": "59"}, "at least 60 seconds"),
        ({"rate_limit_user": "-1"}, "must not be negative"),
    ],
)
def test_inconsistent_access_settings_are_refused(
    tmp_path: Path, flags: dict[str, str], message: str
) -> None:
    from ocikit.registry.settings import SettingsError, load_settings

    cert = tmp_path / "cert.pem"
    cert.write_text("not read at this stage")
    values = {name: str(cert) if value == "CERT" else value for name, value in flags.items()}
    with pytest.raises(SettingsError, match=message):
        load_settings(values, environ={})


def test_relative_access_files_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ocikit.registry.settings import load_settings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "users").write_text("")
    settings = load_settings({"htpasswd": "users"}, environ={})
    assert settings.htpasswd == str(tmp_path / "users")


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("team-a/*", ["team-a/app", "team-a/x.y"], ["team-a", "team-a/app/sub", "team-ab/app"]),
        ("base/**", ["base", "base/a", "base/a/b/c"], ["based/a", "other/base/a"]),
        ("**/cache", ["cache", "a/cache", "a/b/cache"], ["a/cache/x", "a/mycache"]),
        ("a.b/*-dev", ["a.b/x-dev"], ["axb/x-dev", "a.b/x/y-dev"]),
        ("**", ["a", "a/b/c"], []),
    ],
)
def test_policy_globs(pattern: str, matches: list[str], misses: list[str]) -> None:
    from ocikit.registry.auth.policy import compile_glob

    glob = compile_glob(pattern)
    assert [name for name in matches if glob.match(name)] == matches
    assert [name for name in misses if glob.match(name)] == []


def test_policy_users_groups_and_anonymous() -> None:
    from ocikit.registry.auth import parse_policy

    policy = parse_policy(
        b'[groups]\nops = ["olga"]\n'
        b'[[rule]]\nusers = ["group:ops"]\nrepositories = ["**"]\nactions = ["delete"]\n'
        b'[[rule]]\nusers = ["*"]\nrepositories = ["**"]\nactions = ["pull"]\n'
    )
    assert policy.permits("olga", "any/repo", "delete")
    assert not policy.permits("bob", "any/repo", "delete")
    assert policy.permits("bob", "any/repo", "pull")
    assert not policy.permits(None, "any/repo", "pull")  # "*" is any signed-in user, not anonymous
    # Subjects an external token server may issue that spell a policy keyword match nothing by it.
    assert not policy.permits("group:ops", "any/repo", "delete")
    assert policy.permits("group:ops", "any/repo", "pull")  # still a signed-in user
    anonymous_pushes = parse_policy(
        b'[[rule]]\nusers = ["anonymous"]\nrepositories = ["**"]\nactions = ["push"]\n'
    )
    assert not anonymous_pushes.permits("anonymous", "any/repo", "push")
    assert anonymous_pushes.permits(None, "any/repo", "push")
    for broken in (b'[[rule]]\nusers = ["group:nope"]\nrepositories = ["*"]\nactions = ["pull"]\n',
                   b'[[rule]]\nusers = ["a"]\nrepositories = ["*"]\nactions = ["fly"]\n',
                   b'[[rule]]\nusers = []\nrepositories = ["*"]\nactions = ["pull"]\n',
                   b'[rules]\n'):  # fmt: skip
        with pytest.raises(ValueError, match=r"rule|unknown"):
            parse_policy(broken)


def test_the_security_page_shows_valid_policies_and_flags() -> None:
    """docs/security.md: its TOML policy parses, and its ``ocikit serve`` lines use only
    flags that exist (the Python examples run in test_docs)."""
    import re

    from conftest import DOCS
    from ocikit.registry.auth import parse_policy
    from ocikit.registry.settings import SETTINGS

    page = (DOCS / "security.md").read_text()
    policies = re.findall(r"```toml\n(.*?)```", page, re.S)
    assert policies
    for policy in policies:
        assert parse_policy(policy.encode()).rules
    commands = re.findall(r"ocikit serve((?:[^\n]*\\\n)*[^\n]*)", page)
    used = {flag for command in commands for flag in re.findall(r"(--[a-z][a-z-]+)", command)}
    assert {"--htpasswd", "--policy", "--token-certs", "--tls-client-ca", "--client-cert-header"} <= used
    assert used <= {info.flag for info in SETTINGS}
