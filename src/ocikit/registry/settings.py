"""Registry settings: command-line flags, then ``OCIKIT_*`` environment variables, then a TOML
file, then defaults — the first that sets a value wins.

Every setting is declared once in :data:`SETTINGS`, from which the flags, the environment
variable names and ``ocikit serve --help`` are all derived, so they cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from ..spec.numbers import decimal
from ..store.paths import data_dir

__all__ = ["SETTINGS", "Settings", "SettingsError", "default_root", "default_workers", "load_settings"]


class SettingsError(ValueError):
    """A setting has a value of the wrong form."""


def default_workers(storage: str) -> int:
    """One worker per CPU the process may use; one on S3 object storage. There a deployment
    grows by replicas, each a process of its own behind the load balancer, and each worker
    holds an S3 client and its libraries (about 80 MB): a replica of one worker stays under
    150 MB while uploading, and three such replicas on two CPUs served manifest GETs as fast
    as three of two workers (docs/benchmarks.md)."""
    return 1 if storage.startswith("s3://") else available_cpus()


def default_root() -> str:
    """The user's data folder: ``$XDG_DATA_HOME/ocikit/registry`` (``~/.local/share/...``)."""
    return str(data_dir("registry"))


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and ``taskset``
    narrow), not the machine's count: one worker per CPU the process can actually use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """Everything the registry can be told. Durations are in seconds, sizes in bytes."""

    listen: str = "127.0.0.1:5000"
    root: str = field(default_factory=default_root)
    storage: str = ""
    metadata: str = ""
    s3_endpoint: str = ""
    s3_region: str = ""
    blob_redirect: bool = True
    workers: int = field(default_factory=available_cpus)
    log_format: str = "text"
    access_log: bool = True
    delete_blobs: bool = True
    delete_manifests: bool = True
    delete_tags: bool = True
    delete_referenced: bool = False
    max_manifest_size: int = 4 * 1024 * 1024
    chunk_min_length: int = 0
    sparse_manifests: bool = False
    upload_expiry: float = 3600
    repository_upload_limit: int = 5000
    client_upload_limit: int = 1000
    gc_interval: float = 0
    gc_grace: float = 3600
    page_size: int = 1000
    warnings: tuple[str, ...] = ()
    header_timeout: float = 30
    body_timeout: float = 60
    max_connections: int = 10000
    htpasswd: str = ""
    policy: str = ""
    token_key: str = ""
    token_realm: str = ""
    token_issuer: str = ""
    token_service: str = ""
    token_certs: str = ""
    token_jwks: str = ""
    token_lifetime: int = 300
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    client_cert_header: str = ""
    client_cert_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    trusted_proxies: tuple[str, ...] = ()
    rate_limit_user: float = 0
    rate_limit_address: float = 0
    rate_limit_burst: int = 100
    audit_log: bool = True

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]


@dataclass(frozen=True)
class SettingInfo:
    name: str
    help: str
    metavar: str = ""  # what the flag takes, when the name's last word does not say

    @property
    def env(self) -> str:
        return f"OCIKIT_{self.name.upper()}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: Final = (
    SettingInfo("listen", "HOST:PORT to listen on"),
    SettingInfo("root", "directory holding blobs/, uploads/ and metadata.db"),
    SettingInfo("storage", "where blobs go: file:///PATH or s3://BUCKET[/PREFIX]; empty: files under root"),
    SettingInfo(
        "metadata", "metadata database: sqlite:///PATH or postgresql://...; empty: SQLite under root"
    ),
    SettingInfo("s3_endpoint", "S3 endpoint URL of s3:// storage; empty: AWS"),
    SettingInfo("s3_region", "S3 region of s3:// storage; empty: the AWS default"),
    SettingInfo("blob_redirect", "answer blob GETs with a redirect to the object store when it has URLs"),
    SettingInfo("workers", "worker processes (default: the CPUs available to the process; 1 on S3 storage)"),
    SettingInfo("log_format", "request log lines as 'text' or 'json'"),
    SettingInfo("access_log", "log one line per request (true/false)"),
    SettingInfo("delete_blobs", "allow DELETE of blobs (405 when false)"),
    SettingInfo("delete_manifests", "allow DELETE of manifests by digest (405 when false)"),
    SettingInfo("delete_tags", "allow DELETE of tags (405 when false)"),
    SettingInfo(
        "delete_referenced",
        "allow DELETE of a blob that a manifest of the repository uses, or of a manifest that one of "
        "its indexes lists (default: 409 DENIED, naming what references it)",
    ),
    SettingInfo("max_manifest_size", "largest manifest accepted, in bytes (413 above it)"),
    SettingInfo("chunk_min_length", "OCI-Chunk-Min-Length announced to clients, in bytes (0: none)"),
    SettingInfo(
        "sparse_manifests",
        "accept manifests whose blobs or child manifests are absent (default: MANIFEST_BLOB_UNKNOWN)",
    ),
    SettingInfo("upload_expiry", "seconds after its last activity that an upload is purged"),
    SettingInfo(
        "repository_upload_limit", "most open upload sessions in one repository (0: no cap; 429 above)"
    ),
    SettingInfo(
        "client_upload_limit", "most open upload sessions of one client address (0: no cap; 429 above)"
    ),
    SettingInfo("gc_interval", "seconds between online garbage collections (0: off)"),
    SettingInfo("gc_grace", "seconds a new blob or untagged manifest is safe from garbage collection"),
    SettingInfo("page_size", "most tags, repositories or referrers in one response"),
    SettingInfo("warnings", "Warning headers to send on every response (comma-separated in the env)"),
    SettingInfo("header_timeout", "seconds a client has to send a request's headers"),
    SettingInfo("body_timeout", "seconds a request body may pause between two reads before a 408"),
    SettingInfo("max_connections", "requests a worker serves at once; above it, a fast 503"),
    SettingInfo(
        "htpasswd",
        "bcrypt htpasswd file of users: turns authentication and the /token endpoint on",
        metavar="FILE",
    ),
    SettingInfo(
        "policy",
        "TOML access policy (first matching rule decides; default: signed-in users all)",
        metavar="FILE",
    ),
    SettingInfo(
        "token_key",
        "PEM private key (EC or RSA) signing tokens (default: generated in the root)",
        metavar="FILE",
    ),
    SettingInfo(
        "token_realm",
        "token endpoint URL named in challenges (default: this registry's /token)",
        metavar="URL",
    ),
    SettingInfo(
        "token_issuer",
        "issuer (iss) of tokens issued here (default ocikit) or accepted from outside",
        metavar="NAME",
    ),
    SettingInfo("token_service", "service name and token audience (aud) (default: ocikit)", metavar="NAME"),
    SettingInfo(
        "token_certs",
        "PEM certificates of an external token server whose tokens are accepted",
        metavar="FILE",
    ),
    SettingInfo(
        "token_jwks", "JWK Set file of an external token server whose tokens are accepted", metavar="FILE"
    ),
    SettingInfo("token_lifetime", "seconds an issued access token is valid", metavar="SECONDS"),
    SettingInfo("tls_cert", "PEM certificate (chain) to serve HTTPS with", metavar="FILE"),
    SettingInfo("tls_key", "PEM private key of --tls-cert", metavar="FILE"),
    SettingInfo(
        "tls_client_ca", "require client certificates issued by this CA (mutual TLS)", metavar="FILE"
    ),
    SettingInfo(
        "client_cert_header",
        "header in which a TLS-terminating proxy passes the verified client certificate's CN (the user)",
    ),
    SettingInfo(
        "client_cert_proxies",
        "addresses or networks of the proxies whose client_cert_header is believed",
        metavar="ADDRESSES",
    ),
    SettingInfo(
        "trusted_proxies",
        "addresses or networks of load balancers whose X-Forwarded-For names the client "
        "(for rate limits, upload caps and logs; default: none, the header is ignored)",
        metavar="ADDRESSES",
    ),
    SettingInfo(
        "rate_limit_user",
        "requests per second per signed-in user, per worker (0: no limit)",
        metavar="PER_SECOND",
    ),
    SettingInfo(
        "rate_limit_address",
        "requests per second per client address, per worker (0: no limit)",
        metavar="PER_SECOND",
    ),
    SettingInfo(
        "rate_limit_burst", "requests a user or address may make at once above the rate", metavar="REQUESTS"
    ),
    SettingInfo("audit_log", "log every push, mount, tag move and delete with user and address"),
)

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    number = decimal(port)
    if not sep or number is None or not 0 < number < 65536:
        raise SettingsError(f"listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", number


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Convert a string (env, flag) or TOML value to the declared type, or explain why not."""
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError("expected true or false")
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError("expected a whole number")
            number = int(value)
            if number < 0:
                raise ValueError("must not be negative")
            return number
        if kind == "float":
            seconds = float(value)
            if seconds < 0:
                raise ValueError("must not be negative")
            return seconds
        if kind == "tuple[str, ...]":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(item).strip() for item in items if str(item).strip())
        return str(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name}: {value!r} is not valid: {exc}") from None


#: The settings that say where a registry's data lives: ``ocikit gc`` and ``ocikit fsck`` work
#: on the registry, not the local image store, when one of them is given.
LOCATION_SETTINGS: Final = ("root", "storage", "metadata")


def registry_selected(
    flags: Mapping[str, Any],
    config_file: str | None,
    *,
    local_store_flag: bool = False,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Whether a maintenance command addresses a registry rather than the local image store:
    its flags (``--root``/``--storage``/``--metadata``/``--config``) first, then an explicit
    local-store flag (``--store``), then the environment (``OCIKIT_ROOT``, ``OCIKIT_STORAGE``,
    ``OCIKIT_METADATA``, ``OCIKIT_CONFIG``), as ``ocikit serve`` reads it."""
    environ = os.environ if environ is None else environ
    if config_file or any(flags.get(name) for name in LOCATION_SETTINGS):
        return True
    if local_store_flag:
        return False
    names = [f"OCIKIT_{name.upper()}" for name in (*LOCATION_SETTINGS, "config")]
    return any(environ.get(name) for name in names)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Merge the three sources. ``config_file`` defaults to ``$OCIKIT_CONFIG`` when set."""
    environ = os.environ if environ is None else environ
    flags = flags or {}
    file_values: dict[str, Any] = {}
    config_path = config_file or environ.get("OCIKIT_CONFIG")
    if config_path:
        try:
            file_values = tomllib.loads(Path(config_path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read settings file {config_path}: {exc}") from None
        file_values = file_values.get("registry", file_values)
        unknown = set(file_values) - {f.name for f in fields(Settings)}
        if unknown:
            raise SettingsError(f"unknown settings in {config_path}: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for info in SETTINGS:
        kind = Settings.__dataclass_fields__[info.name].type
        for source in (flags.get(info.name), environ.get(info.env), file_values.get(info.name)):
            if source is not None:
                values[info.name] = _coerce(info.name, source, kind)
                break
    if "workers" not in values:
        values["workers"] = default_workers(values.get("storage", ""))
    settings = Settings(**values)
    _split_listen(settings.listen)
    if settings.log_format not in ("text", "json"):
        raise SettingsError(f"log_format must be 'text' or 'json', got {settings.log_format!r}")
    if min(settings.workers, settings.page_size, settings.max_connections) < 1:
        raise SettingsError("workers, page_size and max_connections must be at least 1")
    if min(settings.header_timeout, settings.body_timeout) <= 0:
        raise SettingsError("header_timeout and body_timeout must be more than 0 seconds")
    for text in settings.warnings:  # header values: a character outside them would fail every response
        if not (text.isascii() and text.isprintable()):
            raise SettingsError(f"warnings must be printable ASCII, got {text!r}")
    _check_url("storage", settings.storage, ("file", "s3"))
    _check_url("metadata", settings.metadata, ("sqlite", "postgresql", "postgres"))
    return _check_access_settings(settings)


_FILE_SETTINGS: Final = (
    "htpasswd",
    "policy",
    "token_key",
    "token_certs",
    "token_jwks",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
)


def _check_access_settings(settings: Settings) -> Settings:
    """Consistent access settings, their files made absolute (workers may start elsewhere)."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SettingsError("tls_cert and tls_key go together")
    if settings.tls_client_ca and not settings.tls_cert:
        raise SettingsError("tls_client_ca needs tls_cert and tls_key")
    if settings.token_certs and settings.token_jwks:
        raise SettingsError("give token_certs or token_jwks, not both")
    if (settings.token_certs or settings.token_jwks) and not (
        settings.token_realm and settings.token_issuer and settings.token_service
    ):
        raise SettingsError("an external token server needs token_realm, token_issuer and token_service")
    for name in ("client_cert_proxies", "trusted_proxies"):
        try:
            for proxy in getattr(settings, name):
                ipaddress.ip_network(proxy, strict=False)
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}") from None
    if settings.token_lifetime < 60:  # Docker's token specification: clients count on a minute
        raise SettingsError("token_lifetime must be at least 60 seconds")
    files: dict[str, Any] = {}
    for name in _FILE_SETTINGS:
        path = getattr(settings, name)
        if path and not os.path.isfile(path):
            raise SettingsError(f"{name}: {path} is not a readable file")
        files[name] = os.path.abspath(path) if path else ""
    return replace(settings, **files)


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    scheme, sep, rest = url.partition("://")
    if url and (not sep or scheme not in schemes or not rest.strip("/")):
        wanted = " or ".join(f"{s}://..." for s in schemes)
        raise SettingsError(f"{name} must be a URL such as {wanted}, got {url!r}")
