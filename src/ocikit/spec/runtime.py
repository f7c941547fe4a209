"""The runtime-spec ``config.json`` of a container bundle, as msgspec Structs.

The runtime-spec asks readers to ignore properties they do not know, and ocikit writes
bundles that other tools (runc, crun, youki) read and may have extended. So a config that
passes through :func:`load_runtime_config` and :func:`dump_runtime_config` keeps every key
the models do not name: each object's unknown keys are captured in its ``extensions`` and
written back beside the known ones. Optional fields default to None rather than to the
spec's defaults, so that an explicit ``"terminal": false`` survives a round trip as well.

Sections whose shape is large and platform-specific (``linux.resources``, ``linux.seccomp``,
``linux.intelRdt``, other platforms than Linux) are kept as plain JSON objects.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

import msgspec
import msgspec.inspect as mi

__all__ = [
    "RUNTIME_SPEC_VERSION",
    "Capabilities",
    "ConsoleSize",
    "Hook",
    "Hooks",
    "Linux",
    "LinuxDevice",
    "LinuxIDMapping",
    "LinuxNamespace",
    "Mount",
    "POSIXRlimit",
    "Process",
    "Root",
    "RuntimeConfig",
    "RuntimeConfigError",
    "RuntimeObject",
    "User",
    "dump_runtime_config",
    "load_runtime_config",
]

#: The runtime-spec version that the bundles ocikit writes declare (``ociVersion``).
RUNTIME_SPEC_VERSION: Final = "1.2.0"


class RuntimeConfigError(ValueError):
    """A ``config.json`` is not JSON, or a known field has the wrong shape (the message has its path)."""


class RuntimeObject(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every object of the runtime config: holds the keys its subclass does not model.

    ``extensions`` is never written as a key of its own; its entries are merged into the
    object when encoding, and a model field always wins over an extension of the same name.
    """

    extensions: dict[str, Any] = msgspec.field(default_factory=dict)


class ConsoleSize(RuntimeObject):
    height: int
    width: int


class User(RuntimeObject):
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    additional_gids: list[int] | None = msgspec.field(default=None, name="additionalGids")
    username: str | None = None


class Capabilities(RuntimeObject):
    bounding: list[str] | None = None
    effective: list[str] | None = None
    inheritable: list[str] | None = None
    permitted: list[str] | None = None
    ambient: list[str] | None = None


class POSIXRlimit(RuntimeObject):
    type: str
    hard: int
    soft: int


class Process(RuntimeObject):
    cwd: str
    terminal: bool | None = None
    console_size: ConsoleSize | None = msgspec.field(default=None, name="consoleSize")
    user: User | None = None
    args: list[str] | None = None
    command_line: str | None = msgspec.field(default=None, name="commandLine")
    env: list[str] | None = None
    capabilities: Capabilities | None = None
    rlimits: list[POSIXRlimit] | None = None
    no_new_privileges: bool | None = msgspec.field(default=None, name="noNewPrivileges")
    apparmor_profile: str | None = msgspec.field(default=None, name="apparmorProfile")
    oom_score_adj: int | None = msgspec.field(default=None, name="oomScoreAdj")
    selinux_label: str | None = msgspec.field(default=None, name="selinuxLabel")


class Root(RuntimeObject):
    path: str
    readonly: bool | None = None


class LinuxIDMapping(RuntimeObject):
    container_id: int = msgspec.field(name="containerID")
    host_id: int = msgspec.field(name="hostID")
    size: int


class Mount(RuntimeObject):
    destination: str
    source: str | None = None
    type: str | None = None
    options: list[str] | None = None
    uid_mappings: list[LinuxIDMapping] | None = msgspec.field(default=None, name="uidMappings")
    gid_mappings: list[LinuxIDMapping] | None = msgspec.field(default=None, name="gidMappings")


class Hook(RuntimeObject):
    path: str
    args: list[str] | None = None
    env: list[str] | None = None
    timeout: int | None = None


class Hooks(RuntimeObject):
    prestart: list[Hook] | None = None
    create_runtime: list[Hook] | None = msgspec.field(default=None, name="createRuntime")
    create_container: list[Hook] | None = msgspec.field(default=None, name="createContainer")
    start_container: list[Hook] | None = msgspec.field(default=None, name="startContainer")
    poststart: list[Hook] | None = None
    poststop: list[Hook] | None = None


class LinuxNamespace(RuntimeObject):
    type: str
    path: str | None = None


class LinuxDevice(RuntimeObject):
    type: str
    path: str
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = msgspec.field(default=None, name="fileMode")
    uid: int | None = None
    gid: int | None = None


class Linux(RuntimeObject):
    namespaces: list[LinuxNamespace] | None = None
    uid_mappings: list[LinuxIDMapping] | None = msgspec.field(default=None, name="uidMappings")
    gid_mappings: list[LinuxIDMapping] | None = msgspec.field(default=None, name="gidMappings")
    devices: list[LinuxDevice] | None = None
    cgroups_path: str | None = msgspec.field(default=None, name="cgroupsPath")
    resources: dict[str, Any] | None = None
    masked_paths: list[str] | None = msgspec.field(default=None, name="maskedPaths")
    readonly_paths: list[str] | None = msgspec.field(default=None, name="readonlyPaths")
    sysctl: dict[str, str] | None = None
    seccomp: dict[str, Any] | None = None
    rootfs_propagation: str | None = msgspec.field(default=None, name="rootfsPropagation")
    mount_label: str | None = msgspec.field(default=None, name="mountLabel")
    intel_rdt: dict[str, Any] | None = msgspec.field(default=None, name="intelRdt")


class RuntimeConfig(RuntimeObject):
    """The whole ``config.json``; decode it with :func:`load_runtime_config`, not msgspec directly."""

    oci_version: str = msgspec.field(name="ociVersion")
    process: Process | None = None
    root: Root | None = None
    hostname: str | None = None
    domainname: str | None = None
    mounts: list[Mount] | None = None
    hooks: Hooks | None = None
    annotations: dict[str, str] | None = None
    linux: Linux | None = None


# ------------------------------------------------------------ unknown-key round trip

_EXTENSIONS_FIELD: Final = "extensions"


@cache
def _modelled_fields(cls: type[RuntimeObject]) -> dict[str, mi.Type]:
    """JSON name -> type of every field of ``cls`` except ``extensions``."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return {f.encode_name: f.type for f in info.fields if f.name != _EXTENSIONS_FIELD}


@cache
def _runtime_config_type() -> mi.Type:
    return mi.type_info(RuntimeConfig)


def _capture_unknown(node: Any, kind: mi.Type) -> Any:
    """A copy of decoded JSON in which every runtime object's unknown keys are moved
    under its ``extensions`` key, ready for :func:`msgspec.convert`.

    Nodes of an unexpected JSON shape are passed through untouched so that ``convert``
    reports them with their path.
    """
    if isinstance(kind, mi.UnionType):
        for member in kind.types:
            if isinstance(member, mi.StructType | mi.ListType | mi.DictType):
                return _capture_unknown(node, member)
        return node
    if isinstance(kind, mi.ListType) and isinstance(node, list):
        return [_capture_unknown(item, kind.item_type) for item in node]
    if isinstance(kind, mi.DictType) and isinstance(node, dict):
        return {key: _capture_unknown(value, kind.value_type) for key, value in node.items()}
    if isinstance(kind, mi.StructType) and issubclass(kind.cls, RuntimeObject) and isinstance(node, dict):
        fields = _modelled_fields(kind.cls)
        known = {key: _capture_unknown(value, fields[key]) for key, value in node.items() if key in fields}
        known[_EXTENSIONS_FIELD] = {key: value for key, value in node.items() if key not in fields}
        return known
    return node


def _restore_unknown(encoded: Any, value: Any) -> Any:
    """Merge each runtime object's ``extensions`` back into its encoded form (in place)."""
    if isinstance(value, RuntimeObject) and isinstance(encoded, dict):
        encoded.pop(_EXTENSIONS_FIELD, None)
        for field in msgspec.structs.fields(value):
            if field.name != _EXTENSIONS_FIELD and field.encode_name in encoded:
                _restore_unknown(encoded[field.encode_name], getattr(value, field.name))
        for key, extra in value.extensions.items():
            encoded.setdefault(key, extra)
    elif isinstance(value, list) and isinstance(encoded, list):
        for encoded_item, item in zip(encoded, value, strict=True):
            _restore_unknown(encoded_item, item)
    elif isinstance(value, dict) and isinstance(encoded, dict):
        for key, item in value.items():
            if key in encoded:
                _restore_unknown(encoded[key], item)
    return encoded


def load_runtime_config(raw: bytes | str) -> RuntimeConfig:
    """Decode a ``config.json``, keeping the keys the models do not name in ``extensions``."""
    try:
        node = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise RuntimeConfigError(f"config.json is not valid JSON: {exc}") from None
    except RecursionError:
        raise RuntimeConfigError("config.json is nested too deeply") from None
    if not isinstance(node, dict):
        raise RuntimeConfigError("config.json must hold a JSON object")
    try:
        return msgspec.convert(_capture_unknown(node, _runtime_config_type()), RuntimeConfig)
    except msgspec.ValidationError as exc:
        raise RuntimeConfigError(f"config.json: {exc}") from None


def dump_runtime_config(config: RuntimeConfig) -> bytes:
    """Encode a config as indented JSON, with every object's ``extensions`` merged back in."""
    return msgspec.json.format(msgspec.json.encode(_restore_unknown(msgspec.to_builtins(config), config)))
