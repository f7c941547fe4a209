"""Registry authentication against CNCF distribution (Debian's ``docker-registry``): the bearer
token flow through a real token service, htpasswd Basic auth, TLS, every credential source,
and ``ocikit login`` / ``ocikit logout``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import stat
import subprocess
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from client_servers import (
    Distribution,
    RevokingRegistry,
    TokenSetup,
    htpasswd_file,
    make_certificate,
    start_distribution,
    start_token_distribution,
)
from conftest import OCIKIT
from ocikit.cli.registry_host import registry_host
from ocikit.client import (
    AuthenticationError,
    ClientOptions,
    RegistryClient,
    RegistryDestination,
    RegistrySource,
    add_client_arguments,
    client_options_from_args,
)
from ocikit.client.auth import parse_challenges
from ocikit.client.credentials import find_credentials
from ocikit.client.http import ConnectionFailed
from ocikit.client.options import OptionsError, is_loopback
from ocikit.spec import parse_reference
from test_client_registry import feed, layer_descriptor, push_image, read_all

T = TypeVar("T")
USER, PASSWORD = "alice", "wonder land:42"


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


def repo() -> str:
    return f"auth/{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenSetup]:
    setup = start_token_distribution(tmp_path_factory.mktemp("token-auth"), {USER: PASSWORD})
    yield setup
    setup.stop()


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    workdir = tmp_path_factory.mktemp("basic-auth")
    passwords = htpasswd_file(workdir / "htpasswd", {USER: PASSWORD})
    registry = start_distribution(
        workdir, auth=f"  htpasswd:\n    realm: ocikit-test\n    path: {passwords}\n"
    )
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Distribution, Path]]:
    workdir = tmp_path_factory.mktemp("tls")
    key, cert = make_certificate(workdir, "registry")
    registry = start_distribution(workdir, tls=(key, cert))
    yield registry, cert
    registry.stop()


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of its own: no credentials from the machine leak into a test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return home


CREDS = ClientOptions(credentials=(USER, PASSWORD))


# ---------------------------------------------------------------- bearer tokens


def test_token_flow_push_with_credentials_then_anonymous_pull(
    token_registry: TokenSetup, clean_env: Path
) -> None:
    host, tokens = token_registry.registry.host, token_registry.tokens
    name = repo()
    layers = [os.urandom(1000), os.urandom(5 << 20)]

    async def scenario() -> None:
        destination = RegistryDestination(parse_reference(f"{host}/{name}:v1"), CREDS)
        _descriptor, raw = await push_image(destination, layers, ["v1"])
        assert destination.client.auth.token_requests == 1, "one token serves the whole push"
        await destination.close()

        source = RegistrySource(parse_reference(f"{host}/{name}:v1"))
        try:
            resolved = await source.resolve(None)
            assert await source.fetch_manifest(resolved) == raw
            for layer in layers:
                assert await read_all(source, layer_descriptor(layer)) == layer
            assert source.client.auth.token_requests == 1, "one anonymous token serves the whole pull"
        finally:
            await source.close()

    before = len(tokens.requests)
    run(scenario())
    made = tokens.requests[before:]
    assert [r["user"] for r in made] == [USER, None]
    assert made[0]["scopes"] == [f"repository:{name}:pull,push"]
    assert made[1]["scopes"] == [f"repository:{name}:pull"]
    assert all(r["service"] == tokens.service for r in made)


def test_anonymous_push_is_denied_with_a_clear_message(token_registry: TokenSetup, clean_env: Path) -> None:
    host = token_registry.registry.host

    async def scenario() -> None:
        destination = RegistryDestination(parse_reference(f"{host}/{repo()}:v1"))
        try:
            with pytest.raises(AuthenticationError, match=r"HTTP 401.*UNAUTHORIZED.*ocikit login"):
                await destination.put_blob(layer_descriptor(b"x" * 10), feed(b"x" * 10))
        finally:
            await destination.close()

    run(scenario())


def test_wrong_password_at_the_token_service(token_registry: TokenSetup, clean_env: Path) -> None:
    host = token_registry.registry.host

    async def scenario() -> None:
        source = RegistrySource(
            parse_reference(f"{host}/{repo()}:v1"), ClientOptions(credentials=(USER, "nope"))
        )
        try:
            with pytest.raises(AuthenticationError, match=f"token request as {USER}.*HTTP 401"):
                await source.resolve(None)
        finally:
            await source.close()

    run(scenario())


def test_mount_asks_for_pull_on_the_source_repository(token_registry: TokenSetup, clean_env: Path) -> None:
    host, tokens = token_registry.registry.host, token_registry.tokens
    first, second = repo(), repo()
    data = os.urandom(2000)
    descriptor = layer_descriptor(data)

    async def scenario() -> None:
        destination = RegistryDestination(parse_reference(f"{host}/{first}:x"), CREDS)
        await destination.put_blob(descriptor, feed(data))
        await destination.close()
        other = RegistryDestination(parse_reference(f"{host}/{second}:x"), CREDS)
        try:
            assert await other.mount_from(descriptor, first)
            assert await other.has_blob(descriptor)
        finally:
            await other.close()

    before = len(tokens.requests)
    run(scenario())
    scopes = [sorted(r["scopes"]) for r in tokens.requests[before:]]
    assert sorted([f"repository:{first}:pull", f"repository:{second}:pull,push"]) in scopes


# ---------------------------------------------------------------- Basic auth and credential sources


def _pull_ok(host: str, name: str, options: ClientOptions | None = None) -> bool:
    """Whether an existing image can be pulled (raises on anything but a refusal)."""

    async def scenario() -> bool:
        source = RegistrySource(parse_reference(f"{host}/{name}:v1"), options)
        try:
            await source.resolve(None)
            return True
        except AuthenticationError:
            return False
        finally:
            await source.close()

    return run(scenario())


@pytest.fixture(scope="module")
def basic_image(basic_registry: Distribution) -> str:
    name = repo()

    async def push() -> None:
        destination = RegistryDestination(parse_reference(f"{basic_registry.host}/{name}:v1"), CREDS)
        await push_image(destination, [os.urandom(4000)], ["v1"])
        await destination.close()

    run(push())
    return name


def test_basic_auth_needs_credentials(
    basic_registry: Distribution, basic_image: str, clean_env: Path
) -> None:
    assert _pull_ok(basic_registry.host, basic_image, CREDS)
    assert not _pull_ok(basic_registry.host, basic_image, ClientOptions(credentials=(USER, "wrong")))

    async def anonymous() -> None:
        source = RegistrySource(parse_reference(f"{basic_registry.host}/{basic_image}:v1"))
        try:
            await source.resolve(None)
        finally:
            await source.close()

    with pytest.raises(AuthenticationError, match="requires credentials"):
        run(anonymous())


def _auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def _write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_credentials_from_docker_config(
    basic_registry: Distribution, basic_image: str, clean_env: Path
) -> None:
    host = basic_registry.host
    _write(
        clean_env / ".docker" / "config.json", {"auths": {f"http://{host}/v1/": _auth_entry(USER, PASSWORD)}}
    )
    assert _pull_ok(host, basic_image)


def test_auth_file_order(
    basic_registry: Distribution, basic_image: str, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = basic_registry.host
    _write(clean_env / ".docker" / "config.json", {"auths": {host: _auth_entry(USER, "stale")}})
    assert not _pull_ok(host, basic_image)
    _write(clean_env / ".config" / "containers" / "auth.json", {"auths": {host: _auth_entry(USER, PASSWORD)}})
    assert _pull_ok(host, basic_image), "containers auth.json comes before docker's config"
    runtime = clean_env / "run"
    _write(runtime / "containers" / "auth.json", {"auths": {host: _auth_entry(USER, "stale")}})
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert not _pull_ok(host, basic_image), "$XDG_RUNTIME_DIR/containers/auth.json comes first"
    explicit = _write(clean_env / "explicit.json", {"auths": {host: _auth_entry(USER, PASSWORD)}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(explicit))
    assert _pull_ok(host, basic_image), "$REGISTRY_AUTH_FILE comes before all"
    assert not _pull_ok(host, basic_image, ClientOptions(authfile=str(runtime / "containers" / "auth.json")))


def test_repository_scoped_entries_win(
    basic_registry: Distribution, basic_image: str, clean_env: Path
) -> None:
    host = basic_registry.host
    namespace = basic_image.split("/")[0]
    auths = {host: _auth_entry(USER, "stale"), f"{host}/{namespace}": _auth_entry(USER, PASSWORD)}
    _write(clean_env / ".config" / "containers" / "auth.json", {"auths": auths})
    assert _pull_ok(host, basic_image)


def _helper(directory: Path, host: str, password: str) -> Path:
    """``docker-credential-test``: answers ``get`` for ``host`` and keeps ``store``/``erase``."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "docker-credential-test"
    store = directory / "store.json"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"store_path = {str(store)!r}\n"
        "try:\n    store = json.load(open(store_path))\nexcept FileNotFoundError:\n"
        f"    store = {{{host!r}: [{USER!r}, {password!r}]}}\n"
        "action, data = sys.argv[1], sys.stdin.read().strip()\n"
        "if action == 'get':\n"
        "    if data not in store:\n        print('credentials not found in native keychain'); sys.exit(1)\n"
        "    print(json.dumps({'ServerURL': data, 'Username': store[data][0], 'Secret': store[data][1]}))\n"
        "elif action == 'store':\n"
        "    entry = json.loads(data); store[entry['ServerURL']] = [entry['Username'], entry['Secret']]\n"
        "elif action == 'erase':\n"
        "    store.pop(data, None)\n"
        "json.dump(store, open(store_path, 'w'))\n"
    )
    script.chmod(0o755)
    return script


def test_credential_helpers(
    basic_registry: Distribution, basic_image: str, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = basic_registry.host
    bin_dir = clean_env / "bin"
    _helper(bin_dir, host, PASSWORD)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = clean_env / ".docker" / "config.json"
    _write(config, {"credHelpers": {host: "test"}, "auths": {host: _auth_entry(USER, "stale")}})
    assert _pull_ok(host, basic_image), "credHelpers come before auths"
    _write(config, {"credsStore": "test", "auths": {host: {}}})
    assert _pull_ok(host, basic_image), "credsStore for hosts without an auths entry"
    _write(config, {"credHelpers": {host: "missing"}})
    with pytest.raises(Exception, match="docker-credential-missing is not on PATH"):
        _pull_ok(host, basic_image)


# ---------------------------------------------------------------- ocikit login / logout


def _ocikit(*args: str, stdin: str = "", env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OCIKIT, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_login_and_logout(kind: str, request: pytest.FixtureRequest, clean_env: Path, tmp_path: Path) -> None:
    if kind == "basic":
        host = request.getfixturevalue("basic_registry").host
    else:
        host = request.getfixturevalue("token_registry").registry.host
    runtime = tmp_path / "run"
    env = {**os.environ, "HOME": str(clean_env), "XDG_RUNTIME_DIR": str(runtime)}
    auth_file = runtime / "containers" / "auth.json"

    bad = _ocikit("login", host, "-u", USER, "--password-stdin", stdin="wrong\n", env=env)
    assert bad.returncode == 1
    assert "401" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not auth_file.exists(), "rejected credentials are not stored"

    good = _ocikit("login", host, "-u", USER, "--password-stdin", stdin=PASSWORD + "\n", env=env)
    assert good.returncode == 0, good.stderr
    assert "Login Succeeded" in good.stdout
    stored = json.loads(auth_file.read_text())
    assert base64.b64decode(stored["auths"][host]["auth"]).decode() == f"{USER}:{PASSWORD}"
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600

    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        name = repo()

        async def push() -> None:
            destination = RegistryDestination(parse_reference(f"{host}/{name}:v1"))
            await push_image(destination, [b"layer"], ["v1"])
            await destination.close()

        run(push())  # with the stored credentials only
    finally:
        del os.environ["XDG_RUNTIME_DIR"]

    out = _ocikit("logout", host, env=env)
    assert out.returncode == 0, out.stderr
    assert host not in json.loads(auth_file.read_text())["auths"]
    again = _ocikit("logout", host, env=env)
    assert again.returncode == 1
    assert "not logged in" in again.stderr


def test_login_usage_errors(clean_env: Path) -> None:
    env = {**os.environ, "HOME": str(clean_env)}
    no_user = _ocikit("login", "127.0.0.1:1", "--password-stdin", stdin="x", env=env)
    assert no_user.returncode == 2
    assert "-u USER" in no_user.stderr
    bad_host = _ocikit("login", "bad host!", "-u", "a", "--password-stdin", stdin="x", env=env)
    assert bad_host.returncode == 2
    refused = _ocikit("login", "127.0.0.1:1", "-u", "a", "--password-stdin", stdin="x", env=env)
    assert refused.returncode == 1
    assert "connection refused" in refused.stderr
    assert "Traceback" not in refused.stderr + no_user.stderr + bad_host.stderr


def test_login_stores_through_a_credential_helper(
    basic_registry: Distribution, clean_env: Path, tmp_path: Path
) -> None:
    host = basic_registry.host
    bin_dir = tmp_path / "bin"
    _helper(bin_dir, "elsewhere", "x")
    authfile = _write(tmp_path / "auth.json", {"credHelpers": {host: "test"}})
    env = {**os.environ, "HOME": str(clean_env), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = _ocikit(
        "login", host, "-u", USER, "--password-stdin", "--authfile", str(authfile), stdin=PASSWORD, env=env
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((bin_dir / "store.json").read_text())[host] == [USER, PASSWORD]
    assert "auths" not in json.loads(authfile.read_text()), "the secret stays in the helper"
    assert _ocikit("logout", host, "--authfile", str(authfile), env=env).returncode == 0
    assert host not in json.loads((bin_dir / "store.json").read_text())


# ---------------------------------------------------------------- TLS and plain HTTP


def test_tls_needs_a_trusted_certificate(
    tls_registry: tuple[Distribution, Path], clean_env: Path, tmp_path: Path
) -> None:
    registry, cert = tls_registry

    async def ping(options: ClientOptions) -> list[str]:
        source = RegistrySource(parse_reference(f"{registry.host}/{repo()}:v1"), options)
        try:
            return await source.tags()
        except Exception as exc:
            if "NAME_UNKNOWN" in str(exc):
                return []
            raise
        finally:
            await source.close()

    with pytest.raises(ConnectionFailed, match=r"certificate not trusted.*--ca-file"):
        run(ping(ClientOptions(plain_http=False)))
    assert run(ping(ClientOptions(plain_http=False, ca_file=str(cert)))) == []
    assert run(ping(ClientOptions(plain_http=False, tls_verify=False))) == []
    cert_dir = tmp_path / "certs.d" / registry.host
    cert_dir.mkdir(parents=True)
    (cert_dir / "ca.crt").write_bytes(cert.read_bytes())
    assert run(ping(ClientOptions(plain_http=False, cert_dir=str(cert_dir)))) == []
    (cert_dir / "client.cert").write_bytes(cert.read_bytes())
    with pytest.raises(OptionsError, match=r"client\.cert has no matching client\.key"):
        run(ping(ClientOptions(plain_http=False, cert_dir=str(cert_dir))))


def test_login_over_tls_with_flags(
    tls_registry: tuple[Distribution, Path], clean_env: Path, tmp_path: Path
) -> None:
    registry, cert = tls_registry
    env = {**os.environ, "HOME": str(clean_env)}
    authfile = str(tmp_path / "auth.json")
    common = [
        "login",
        registry.host,
        "-u",
        USER,
        "--password-stdin",
        "--authfile",
        authfile,
        "--no-plain-http",
    ]
    untrusted = _ocikit(*common, stdin=PASSWORD, env=env)
    assert untrusted.returncode == 1
    assert "certificate not trusted" in untrusted.stderr
    trusted = _ocikit(*common, "--ca-file", str(cert), stdin=PASSWORD, env=env)
    assert trusted.returncode == 0, trusted.stderr
    assert "did not ask for credentials" in trusted.stderr


def test_plain_http_rules() -> None:
    for host in ("127.0.0.1:5000", "127.3.4.5", "localhost:80", "LOCALHOST", "[::1]:5000", "::1"):
        assert is_loopback(host), host
        assert not ClientOptions().use_tls(host)
        assert ClientOptions(plain_http=False).use_tls(host)
    for host in ("ghcr.io", "10.0.0.1:5000", "example.com:443", "[2001:db8::1]:5000", "localhost.example"):
        assert not is_loopback(host), host
        assert ClientOptions().use_tls(host)
        assert not ClientOptions(plain_http=True).use_tls(host)


def test_command_line_flags() -> None:
    parser = argparse.ArgumentParser()
    add_client_arguments(parser)
    add_client_arguments(parser, prefix="src-", side="source")
    args = parser.parse_args(
        ["--plain-http", "--tls-verify=false", "--ca-file", "ca.pem", "--creds", "u:p:w", "--src-insecure"]
    )
    options = client_options_from_args(args)
    assert options.plain_http is True
    assert options.tls_verify is False
    assert options.ca_file == "ca.pem"
    assert options.credentials == ("u", "p:w")
    source = client_options_from_args(args, prefix="src-")
    assert source.tls_verify is False
    assert source.plain_http is None
    assert client_options_from_args(parser.parse_args(["--no-plain-http"])).plain_http is False
    assert client_options_from_args(parser.parse_args(["--tls-verify"])).tls_verify is True
    with pytest.raises(OptionsError):
        client_options_from_args(parser.parse_args(["--creds", "nocolon"]))


def test_www_authenticate_parsing() -> None:
    challenges = parse_challenges(
        [
            'Bearer realm="https://auth.example/token",service="registry.example",'
            'scope="repository:a/b:pull,push repository:c:pull", Basic realm="x\\"y"',
            "Negotiate",
        ]
    )
    assert [c.scheme for c in challenges] == ["bearer", "basic", "negotiate"]
    assert challenges[0].params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push repository:c:pull",
    }
    assert challenges[1].params == {"realm": 'x"y'}


def test_a_token_the_registry_stops_accepting_is_replaced() -> None:
    registry = RevokingRegistry().start()
    try:

        async def scenario() -> None:
            source = RegistrySource(parse_reference(f"{registry.host}/r/x:v1"))
            try:
                assert await source.tags() == ["v1"]
                assert await source.tags() == ["v1"]
                assert len(registry.issued) == 1, "a valid token is reused"
                registry.revoked.add(registry.issued[0])
                assert await source.tags() == ["v1"]
                assert len(registry.issued) == 2, "a refused token is replaced once"
            finally:
                await source.close()

        run(scenario())
    finally:
        registry.stop()


def test_docker_hub_names(clean_env: Path) -> None:
    client = RegistryClient("docker.io")
    assert client.base_url == "https://registry-1.docker.io"
    run(client.aclose())
    _write(
        clean_env / ".docker" / "config.json",
        {"auths": {"https://index.docker.io/v1/": _auth_entry("hub", "pw")}},
    )
    found = find_credentials("docker.io", "library/busybox")
    assert found is not None
    assert (found.username, found.password) == ("hub", "pw")
    assert "pw" not in repr(found), "secrets stay out of reprs and logs"
    assert registry_host("https://index.docker.io/v1/") == "docker.io"
    assert registry_host("localhost:5000") == "localhost:5000"


def test_concurrent_first_requests_share_one_token(token_registry: TokenSetup, clean_env: Path) -> None:
    host = token_registry.registry.host

    async def scenario() -> int:
        destination = RegistryDestination(parse_reference(f"{host}/{repo()}:x"), CREDS)
        try:
            blobs = [layer_descriptor(os.urandom(100)) for _ in range(8)]
            assert await asyncio.gather(*(destination.has_blob(blob) for blob in blobs)) == [False] * 8
            return destination.client.auth.token_requests
        finally:
            await destination.close()

    assert run(scenario()) == 1


def test_concurrent_first_requests_with_basic_auth(basic_registry: Distribution, basic_image: str) -> None:
    async def scenario() -> list[bool]:
        destination = RegistryDestination(parse_reference(f"{basic_registry.host}/{basic_image}:x"), CREDS)
        try:
            blobs = [layer_descriptor(os.urandom(100)) for _ in range(8)]
            return list(await asyncio.gather(*(destination.has_blob(blob) for blob in blobs)))
        finally:
            await destination.close()

    assert run(scenario()) == [False] * 8
