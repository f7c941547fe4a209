"""Stored registry credentials: docker's ``config.json``, the containers ``auth.json`` files and
``docker-credential-*`` helpers, read the way docker, podman and skopeo read them.

Where credentials are looked for, first match wins (see docs/registry-client.md):

1. ``--authfile FILE`` when given, and nothing else;
2. ``$REGISTRY_AUTH_FILE``;
3. ``$XDG_RUNTIME_DIR/containers/auth.json``;
4. ``~/.config/containers/auth.json``;
5. ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``).

Inside one file: a ``credHelpers`` entry for the host, then an ``auths`` entry (the most specific
``host/repository`` key first, as containers-auth.json allows), then the file's ``credsStore``.
``ocikit login`` writes where podman does: ``--authfile``, else ``$REGISTRY_AUTH_FILE``, else
``$XDG_RUNTIME_DIR/containers/auth.json``, else ``~/.config/containers/auth.json``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Final

import msgspec

__all__ = [
    "CredentialError",
    "Credentials",
    "auth_file_candidates",
    "find_credentials",
    "login_auth_file",
    "remove_credentials",
    "store_credentials",
]

#: The key docker itself uses for Docker Hub in config.json and with credential helpers.
DOCKER_HUB_KEY: Final = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES: Final = ("docker.io", "index.docker.io", "registry-1.docker.io", DOCKER_HUB_KEY)
_HELPER_TIMEOUT: Final = 60


class CredentialError(Exception):
    """Stored credentials cannot be read or written; the message is meant for the user."""


class Credentials(msgspec.Struct, frozen=True):
    """A user name and password, or an identity (refresh) token for OAuth2 token services."""

    username: str
    password: str
    identity_token: str | None = None
    source: str = ""

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Credentials(username={self.username!r}, source={self.source!r})"


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def _docker_config() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else _home() / ".docker" / "config.json"


def login_auth_file(authfile: str | None = None) -> Path:
    """Where ``ocikit login`` stores credentials (podman's choice, so podman and skopeo see them)."""
    if authfile:
        return Path(authfile)
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return Path(os.environ["REGISTRY_AUTH_FILE"])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "containers" / "auth.json"
    return _home() / ".config" / "containers" / "auth.json"


def auth_file_candidates(authfile: str | None = None) -> list[Path]:
    """The files searched for credentials, in order."""
    if authfile:
        return [Path(authfile)]
    found: list[Path] = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        found.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        found.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    found += [_home() / ".config" / "containers" / "auth.json", _docker_config()]
    return list(dict.fromkeys(found))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialError(f"cannot read {path}: {exc.strerror}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CredentialError(f"{path} must hold a JSON object")
    return data


def _normalise_key(key: str) -> str:
    """``https://host/v1/`` and ``host`` both name ``host``; ``host/repo`` keys keep their path."""
    if "://" in key:
        key = key.split("://", 1)[1]
        key = key.split("/", 1)[0]  # URL-form keys are docker's: the path is the API version
    key = key.rstrip("/")
    return "docker.io" if key in _DOCKER_HUB_ALIASES else key


def _lookup_keys(registry: str, repository: str | None) -> list[str]:
    """Most specific first: ``host/a/b``, ``host/a``, ``host``."""
    keys = []
    if repository:
        parts = repository.split("/")
        keys += [f"{registry}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)]
    keys.append(registry)
    return keys


def _helper_server(registry: str) -> str:
    return DOCKER_HUB_KEY if registry == "docker.io" else registry


def run_helper(name: str, action: str, payload: str) -> str:
    """Run ``docker-credential-NAME ACTION`` with ``payload`` on stdin; its stdout."""
    program = shutil.which(f"docker-credential-{name}")
    if program is None:
        raise CredentialError(f"credential helper docker-credential-{name} is not on PATH")
    try:
        done = subprocess.run(
            [program, action],
            input=payload,
            capture_output=True,
            text=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CredentialError(
            f"docker-credential-{name} {action} did not finish in {_HELPER_TIMEOUT}s"
        ) from None
    except OSError as exc:
        raise CredentialError(f"cannot run docker-credential-{name}: {exc.strerror}") from None
    if done.returncode != 0:
        message = (done.stdout.strip() or done.stderr.strip() or f"exit status {done.returncode}")[:300]
        if "credentials not found" in message.lower():
            raise _NotFoundInHelper
        raise CredentialError(f"docker-credential-{name} {action} failed: {message}")
    return done.stdout


class _NotFoundInHelper(Exception):
    pass


def _from_helper(name: str, registry: str, source: str) -> Credentials | None:
    try:
        output = run_helper(name, "get", _helper_server(registry))
    except _NotFoundInHelper:
        return None
    try:
        data = json.loads(output)
        username, secret = data["Username"], data["Secret"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CredentialError(f"docker-credential-{name} get: the answer is not the expected JSON") from None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise CredentialError(f"docker-credential-{name} get: Username and Secret must be strings")
    if username == "<token>":
        return Credentials("", "", identity_token=secret, source=source)
    return Credentials(username, secret, source=source)


def _from_entry(entry: Any, path: Path, key: str) -> Credentials | None:
    if not isinstance(entry, dict):
        raise CredentialError(f"{path}: auths[{key!r}] must be an object")
    token = entry.get("identitytoken")
    encoded = entry.get("auth")
    if encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialError(f"{path}: auths[{key!r}].auth is not base64 of USER:PASSWORD") from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise CredentialError(f"{path}: auths[{key!r}].auth is not base64 of USER:PASSWORD")
        return Credentials(username, password, identity_token=token or None, source=str(path))
    if token:
        return Credentials("", "", identity_token=token, source=str(path))
    return None  # docker writes empty entries when a credsStore holds the secret


def _from_file(path: Path, registry: str, repository: str | None) -> Credentials | None:
    data = _read_json(path)
    if data is None:
        return None
    helpers = data.get("credHelpers") or {}
    for key, helper in helpers.items() if isinstance(helpers, dict) else ():
        if _normalise_key(key) == registry and isinstance(helper, str) and helper:
            return _from_helper(helper, registry, f"docker-credential-{helper} (from {path})")
    auths = data.get("auths") or {}
    if isinstance(auths, dict):
        by_key = {_normalise_key(key): (key, entry) for key, entry in auths.items()}
        for wanted in _lookup_keys(registry, repository):
            if wanted in by_key:
                key, entry = by_key[wanted]
                found = _from_entry(entry, path, key)
                if found is not None:
                    return found
    store = data.get("credsStore")
    if isinstance(store, str) and store:
        return _from_helper(store, registry, f"docker-credential-{store} (from {path})")
    return None


def find_credentials(
    registry: str, repository: str | None = None, authfile: str | None = None
) -> Credentials | None:
    """Stored credentials for ``registry`` (as in a reference: ``docker.io``, ``host:port``).

    Blocking (files, helper processes): call it through ``asyncio.to_thread``.
    """
    registry = _normalise_key(registry)
    for path in auth_file_candidates(authfile):
        found = _from_file(path, registry, repository)
        if found is not None:
            return found
    return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically, readable by the owner only: the file holds secrets."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(prefix=".auth-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent="\t")
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _helper_for(data: dict[str, Any], registry: str) -> str | None:
    helpers = data.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if _normalise_key(key) == registry and isinstance(helper, str) and helper:
                return helper
    return None


def store_credentials(path: Path, registry: str, username: str, password: str) -> str:
    """Save credentials for ``registry`` in ``path`` (or in the helper it names for the host);
    says where they went."""
    registry = _normalise_key(registry)
    data = _read_json(path) or {}
    helper = _helper_for(data, registry)
    if helper is not None:
        payload = json.dumps(
            {"ServerURL": _helper_server(registry), "Username": username, "Secret": password}
        )
        run_helper(helper, "store", payload)
        return f"docker-credential-{helper}"
    auths = data.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise CredentialError(f"{path}: 'auths' must be an object")
    for key in [key for key in auths if _normalise_key(key) == registry]:
        del auths[key]
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    auths[registry] = {"auth": token}
    _write_json(path, data)
    return str(path)


def remove_credentials(path: Path, registry: str) -> bool:
    """Forget ``registry``'s credentials in ``path`` (or its helper); False when there were none."""
    registry = _normalise_key(registry)
    data = _read_json(path)
    if data is None:
        return False
    helper = _helper_for(data, registry)
    if helper is not None:
        try:
            run_helper(helper, "erase", _helper_server(registry))
        except _NotFoundInHelper:
            return False
        return True
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return False
    keys = [key for key in auths if _normalise_key(key) == registry]
    for key in keys:
        del auths[key]
    if keys:
        _write_json(path, data)
    return bool(keys)
