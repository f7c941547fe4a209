"""Real clients through the whole sign-in flow against ``ocikit serve`` over TLS with a test
CA: skopeo (``--creds`` and ``skopeo login``), oras (the ORAS Python SDK: no ORAS command-line
build is packaged for Debian, PyPI or npm), ``ocikit login`` and curl; and CNCF distribution
(Debian's ``docker-registry``) as a pull-through cache of the authenticated registry."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auth_helpers import USERS, AuthServer, issue_certificate, make_ca, start_auth_server
from client_servers import start_distribution, wait_for_port
from conftest import OCIKIT, REQUIRE_ALL, free_port, require_tool
from registry_helpers import push_image

pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    server = start_auth_server(tmp_path_factory.mktemp("interop-auth"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def source(auth: AuthServer) -> tuple[str, bytes]:
    """``team-a/src:v1``, pushed by alice: (manifest digest, manifest bytes)."""
    with auth.client("alice") as alice:
        return push_image(alice, "team-a/src", "v1")


@pytest.fixture(scope="module")
def cert_dir(auth: AuthServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the test CA as ``ca.crt``, as skopeo's ``--cert-dir`` reads it."""
    directory = tmp_path_factory.mktemp("certs")
    shutil.copy(auth.ca, directory / "ca.crt")
    return directory


def run(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def manifest_digest(auth: AuthServer, repository: str, tag: str) -> str:
    with auth.client("admin") as admin:
        response = admin.head(f"/v2/{repository}/manifests/{tag}", headers={"accept": "*/*"})
    assert response.status_code == 200, repository
    return response.headers["docker-content-digest"]


def test_skopeo_with_creds_and_with_login(
    auth: AuthServer, source: tuple[str, bytes], cert_dir: Path, tmp_path: Path
) -> None:
    skopeo = require_tool("skopeo", "a real registry client")
    certs = ["--src-cert-dir", cert_dir, "--dest-cert-dir", cert_dir]
    copied = run(
        skopeo, "copy", "--preserve-digests", *certs,
        "--src-creds", f"alice:{USERS['alice']}", "--dest-creds", f"alice:{USERS['alice']}",
        f"docker://{auth.host}/team-a/src:v1", f"docker://{auth.host}/team-a/by-skopeo:v1",
    )  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    assert manifest_digest(auth, "team-a/by-skopeo", "v1") == source[0]

    authfile = tmp_path / "auth.json"
    login = ["login", "--authfile", authfile, "--cert-dir", cert_dir, "--password-stdin", "-u"]
    assert run(skopeo, *login, "alice", auth.host, stdin="wrong\n").returncode != 0
    logged_in = run(skopeo, *login, "alice", auth.host, stdin=USERS["alice"] + "\n")
    assert logged_in.returncode == 0, logged_in.stderr
    assert "Login Succeeded" in logged_in.stdout
    inspected = run(
        skopeo, "inspect", "--raw", "--authfile", authfile, "--cert-dir", cert_dir,
        f"docker://{auth.host}/team-a/by-skopeo:v1",
    )  # fmt: skip
    assert inspected.returncode == 0, inspected.stderr
    assert hashlib.sha256(inspected.stdout.encode()).hexdigest() == source[0].split(":")[1]

    refused = run(
        skopeo, "copy", *certs, "--src-creds", f"bob:{USERS['bob']}", "--dest-creds", f"bob:{USERS['bob']}",
        f"docker://{auth.host}/team-a/src:v1", f"docker://{auth.host}/team-a/by-bob:v1",
    )  # fmt: skip
    assert refused.returncode != 0
    assert "unauthorized" in refused.stderr.lower() or "denied" in refused.stderr.lower()


def test_skopeo_refuses_a_registry_signed_by_an_unknown_ca(auth: AuthServer, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo", "a real registry client")
    result = run(
        skopeo, "inspect", "--raw", "--cert-dir", tmp_path, "--creds", f"alice:{USERS['alice']}",
        f"docker://{auth.host}/team-a/src:v1",
    )  # fmt: skip
    assert result.returncode != 0
    assert "certificate" in result.stderr


def test_ocikit_login_and_copy(auth: AuthServer, source: tuple[str, bytes], tmp_path: Path) -> None:
    authfile = tmp_path / "auth.json"
    tls = ["--no-plain-http", "--ca-file", str(auth.ca)]
    login = [
        *OCIKIT,
        "login",
        "--authfile",
        str(authfile),
        *tls,
        "-u",
        "alice",
        "--password-stdin",
        auth.host,
    ]
    wrong = run(*login, stdin="wrong\n")
    assert wrong.returncode != 0
    assert not authfile.exists()
    done = run(*login, stdin=USERS["alice"] + "\n")
    assert done.returncode == 0, done.stderr
    assert "Login Succeeded" in done.stdout
    copied = run(
        *OCIKIT, "copy",
        "--src-authfile", authfile, "--dest-authfile", authfile,
        "--no-src-plain-http", "--no-dest-plain-http", "--src-ca-file", auth.ca, "--dest-ca-file", auth.ca,
        f"docker://{auth.host}/team-a/src:v1", f"docker://{auth.host}/team-a/by-ocikit:v1",
    )  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    assert manifest_digest(auth, "team-a/by-ocikit", "v1") == source[0]


def _oras() -> object:
    try:
        for module in ("oras.provider", "oras.client"):
            importlib.import_module(module)
        return importlib.import_module("oras")
    except ImportError:
        if REQUIRE_ALL:
            pytest.fail("the oras SDK is not installed (pip install -e '.[test]')")
        pytest.skip("the oras SDK is not installed (pip install -e '.[test]')")


def test_oras_login_push_and_pull(auth: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = _oras()
    monkeypatch.chdir(tmp_path)  # oras refuses files outside the working directory
    config = tmp_path / "docker-config.json"
    client = sdk.provider.Registry(hostname=auth.host, tls_verify=str(auth.ca))  # type: ignore[attr-defined]
    client.login(username="alice", password=USERS["alice"], hostname=auth.host, config_path=str(config))
    assert auth.host in json.loads(config.read_text())["auths"]
    artifact = tmp_path / "notes.txt"
    artifact.write_text("pushed by oras through the token flow\n")
    target = f"{auth.host}/team-a/by-oras:v1"
    response = client.push(
        target=target, files=[str(artifact.name)], disable_path_validation=True, quiet=True
    )
    assert response.status_code == 201, response.text
    out = tmp_path / "pulled"
    files = client.pull(target=target, outdir=str(out))
    assert [Path(f).read_text() for f in files] == [artifact.read_text()]
    assert client.auth.token  # the SDK went through the token endpoint, not Basic per request

    bob = sdk.provider.Registry(hostname=auth.host, tls_verify=str(auth.ca))  # type: ignore[attr-defined]
    bob.auth.set_basic_auth("bob", USERS["bob"])
    with pytest.raises(Exception, match=r"(?i)denied|unauthorized|401|403"):
        bob.push(target=f"{auth.host}/team-a/by-bob:v1", files=[artifact.name], quiet=True)


def test_curl_through_the_token_flow(auth: AuthServer, source: tuple[str, bytes]) -> None:
    curl = require_tool("curl", "a plain HTTP client")
    base = ["--silent", "--show-error", "--cacert", str(auth.ca)]
    challenge = run(curl, *base, "--include", f"{auth.url}/v2/team-a/src/manifests/v1")
    assert "HTTP/1.1 401" in challenge.stdout or "HTTP/2 401" in challenge.stdout
    assert f'realm="{auth.url}/token"' in challenge.stdout
    answer = run(
        curl, *base, "--user", f"bob:{USERS['bob']}",
        f"{auth.url}/token?service=ocikit&scope=repository:team-a/src:pull",
    )  # fmt: skip
    token = json.loads(answer.stdout)["token"]
    manifest = run(
        curl, *base, "--header", f"Authorization: Bearer {token}",
        "--header", "Accept: application/vnd.oci.image.manifest.v1+json",
        f"{auth.url}/v2/team-a/src/manifests/v1",
    )  # fmt: skip
    assert manifest.stdout.encode() == source[1]
    unknown_ca = run(curl, "--silent", f"{auth.url}/v2/")
    assert unknown_ca.returncode == 60  # curl: the peer certificate cannot be verified


def test_distribution_as_a_pull_through_cache_of_an_authenticated_registry(
    auth: AuthServer, source: tuple[str, bytes], tmp_path: Path
) -> None:
    cache = start_distribution(tmp_path, proxy=(auth.url, "alice", USERS["alice"]), trust=auth.ca)
    try:
        with httpx.Client(base_url=cache.url, timeout=60) as client:
            response = client.get(
                "/v2/team-a/src/manifests/v1",
                headers={"accept": "application/vnd.oci.image.manifest.v1+json"},
            )
            assert response.status_code == 200, response.text + cache.log.read_text()[-2000:]
            assert response.content == source[1]
            config = json.loads(source[1])["layers"][0]["digest"]
            blob = client.get(f"/v2/team-a/src/blobs/{config}")
            assert blob.status_code == 200
            assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == config
            hidden = client.get("/v2/secret/anything/manifests/v1")
            assert hidden.status_code in (401, 404)
    finally:
        cache.stop()
    log = auth.server.log.read_text()
    assert USERS["alice"] not in log


def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(tmp_path: Path) -> None:
    """Granian checks the client certificate at the handshake; it cannot name a user (the
    certificate does not reach the application), so credentials are still needed."""
    curl = require_tool("curl", "a plain HTTP client")
    ca = make_ca(tmp_path, "client-ca")
    client_key, client_cert = issue_certificate(tmp_path, ca, "client-bob")
    server = start_auth_server(
        tmp_path / "server", extra=["--tls-client-ca", str(ca[1])], client_cert=(client_key, client_cert)
    )
    try:
        base = [
            curl,
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            "--cacert",
            server.ca,
        ]
        url = f"{server.url}/v2/"
        without = run(*base, url)
        assert without.returncode != 0  # the handshake fails
        with_certificate = [*base, "--cert", client_cert, "--key", client_key]
        assert run(*with_certificate, url).stdout == "401"
        assert run(*with_certificate, "--user", f"bob:{USERS['bob']}", url).stdout == "200"
    finally:
        server.stop()


def test_client_certificates_name_users_through_a_tls_proxy(tmp_path: Path) -> None:
    """HAProxy verifies client certificates and passes the CN in a header it overwrites; the
    registry believes that header only from the proxy's address (127.0.0.2 here)."""
    haproxy = require_tool("haproxy", "a TLS-terminating proxy that passes the client certificate's CN")
    curl = require_tool("curl", "a plain HTTP client")
    client_ca = make_ca(tmp_path, "client-ca")
    bob = issue_certificate(tmp_path, client_ca, "bob")
    mallory = issue_certificate(tmp_path, client_ca, "mallory")
    server_ca = make_ca(tmp_path, "proxy-ca")
    proxy_key, proxy_cert = issue_certificate(tmp_path, server_ca, "proxy")
    bundle = tmp_path / "proxy.pem"
    bundle.write_text(proxy_cert.read_text() + proxy_key.read_text())
    registry = start_auth_server(
        tmp_path / "registry",
        tls=False,
        extra=["--client-cert-header", "X-Client-CN", "--client-cert-proxies", "127.0.0.2"],
    )
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
        f"frontend tls\n  bind 127.0.0.1:{port} ssl crt {bundle} ca-file {client_ca[1]} verify required\n"
        "  http-request set-header X-Client-CN %[ssl_c_s_dn(cn)]\n  default_backend registry\n"
        f"backend registry\n  server ocikit {registry.host} source 127.0.0.2\n"
    )
    proxy = subprocess.Popen(
        [haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"https://127.0.0.1:{port}"
        wait_for_port(port, proxy)

        def push(certificate: tuple[Path, Path], repository: str, *extra: str) -> str:
            data = f"{certificate[1].name} {repository}"
            digest = "sha256:" + hashlib.sha256(data.encode()).hexdigest()
            return run(
                curl, "--silent", "--output", str(tmp_path / "answer"), "--write-out", "%{http_code}",
                "--cacert", server_ca[1], "--cert", certificate[1], "--key", certificate[0], *extra,
                "--data-binary", data, "--header", "Content-Type: application/octet-stream",
                f"{url}/v2/{repository}/blobs/uploads/?digest={digest}",
            ).stdout  # fmt: skip

        assert push(bob, "team-b/by-certificate") == "201", (tmp_path / "answer").read_text()
        assert push(mallory, "team-b/by-certificate") == "403"  # mallory has no rule
        assert push(mallory, "team-b/by-certificate", "--header", "X-Client-CN: bob") == "403"
        with httpx.Client(base_url=registry.url, headers={"X-Client-CN": "bob"}) as direct:
            assert direct.get("/v2/").status_code == 401  # the header from elsewhere is refused
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        registry.stop()
    audit = [line for line in registry.server.log.read_text().splitlines() if "ocikit.registry.audit" in line]
    assert any('"user":"bob"' in line and "team-b/by-certificate" in line for line in audit)
