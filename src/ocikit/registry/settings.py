"""Registry settings: command-line flags, then ``OCIKIT_*`` environment variables, then a TOML
file, then defaults — the first that sets a value wins.

Every setting is declared once in :data:`SETTINGS`, from which the flags, the environment
variable names and ``ocikit serve --help`` are all derived, so they cannot drift apart.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from ..store.files import data_dir

__all__ = ["SETTINGS", "Settings", "SettingsError", "default_root", "load_settings"]


class SettingsError(ValueError):
    """A setting has a value of the wrong form."""


def default_root() -> str:
    """The user's data folder: ``$XDG_DATA_HOME/ocikit/registry`` (``~/.local/share/...``)."""
    return str(data_dir("registry"))


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
    workers: int = 1
    log_format: str = "text"
    access_log: bool = True
    delete_blobs: bool = True
    delete_manifests: bool = True
    delete_tags: bool = True
    max_manifest_size: int = 4 * 1024 * 1024
    chunk_min_length: int = 0
    sparse_manifests: bool = False
    upload_expiry: float = 24 * 3600
    gc_interval: float = 0
    gc_grace: float = 3600
    page_size: int = 1000
    warnings: tuple[str, ...] = ()

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
    SettingInfo("workers", "worker processes"),
    SettingInfo("log_format", "request log lines as 'text' or 'json'"),
    SettingInfo("access_log", "log one line per request (true/false)"),
    SettingInfo("delete_blobs", "allow DELETE of blobs (405 when false)"),
    SettingInfo("delete_manifests", "allow DELETE of manifests by digest (405 when false)"),
    SettingInfo("delete_tags", "allow DELETE of tags (405 when false)"),
    SettingInfo("max_manifest_size", "largest manifest accepted, in bytes (413 above it)"),
    SettingInfo("chunk_min_length", "OCI-Chunk-Min-Length announced to clients, in bytes (0: none)"),
    SettingInfo(
        "sparse_manifests",
        "accept manifests whose blobs or child manifests are absent (default: MANIFEST_BLOB_UNKNOWN)",
    ),
    SettingInfo("upload_expiry", "seconds after its last activity that an upload is purged"),
    SettingInfo("gc_interval", "seconds between online garbage collections (0: off)"),
    SettingInfo("gc_grace", "seconds a new blob or untagged manifest is safe from garbage collection"),
    SettingInfo("page_size", "most tags, repositories or referrers in one response"),
    SettingInfo("warnings", "Warning headers to send on every response (comma-separated in the env)"),
)

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


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
    settings = Settings(**values)
    _split_listen(settings.listen)
    if settings.log_format not in ("text", "json"):
        raise SettingsError(f"log_format must be 'text' or 'json', got {settings.log_format!r}")
    if settings.workers < 1 or settings.page_size < 1:
        raise SettingsError("workers and page_size must be at least 1")
    _check_url("storage", settings.storage, ("file", "s3"))
    _check_url("metadata", settings.metadata, ("sqlite", "postgresql", "postgres"))
    return settings


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> None:
    scheme, sep, rest = url.partition("://")
    if url and (not sep or scheme not in schemes or not rest.strip("/")):
        wanted = " or ".join(f"{s}://..." for s in schemes)
        raise SettingsError(f"{name} must be a URL such as {wanted}, got {url!r}")
