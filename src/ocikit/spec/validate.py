"""Validation of image-spec documents against every MUST of the specification.

Documents are walked as plain decoded JSON, not as typed models, so that a single pass
reports *every* violation with its JSON path (``$.layers[2].digest``) and the rule it breaks,
and so that a field of the wrong JSON type is reported rather than crashing a decoder.

What is accepted on purpose, because the spec requires it: unknown fields, unknown media
types, unknown annotation keys, digests of unregistered but well-formed algorithms.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import re
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from . import mediatype as mt
from .digest import SUPPORTED_ALGORITHMS, digest_error

__all__ = [
    "DOCUMENT_TYPES",
    "ValidationFailed",
    "Violation",
    "check",
    "infer_type",
    "parse_json",
    "validate",
    "validate_config",
    "validate_descriptor",
    "validate_document",
    "validate_index",
    "validate_layout_header",
    "validate_manifest",
]


class Violation(msgspec.Struct, frozen=True):
    """One broken rule: where (a JSON path, or a file for layouts) and what."""

    path: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}: {self.rule}"


class ValidationFailed(ValueError):
    """Raised by :func:`check` with every violation found."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__("; ".join(str(v) for v in violations))


_INT64_MAX: Final = 2**63 - 1
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))"
)
_URI_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_URI_FORBIDDEN: Final = frozenset(' "<>\\^`{|}')
_PORT_PROTO: Final = re.compile(r"\d{1,5}(?:/(?:tcp|udp|sctp))?")


class _Walk:
    """Collects violations while walking one document."""

    def __init__(self, *, allow_empty_layers: bool = False) -> None:
        self.violations: list[Violation] = []
        self.allow_empty_layers = allow_empty_layers

    def fail(self, path: str, rule: str) -> None:
        self.violations.append(Violation(path, rule))

    def object(self, node: Any, path: str) -> dict[str, Any] | None:
        if isinstance(node, dict):
            return node
        self.fail(path, f"must be a JSON object, got {_json_type(node)}")
        return None

    def required(self, node: dict[str, Any], key: str, path: str) -> bool:
        if key in node:
            return True
        self.fail(f"{path}.{key}", "is required but missing")
        return False

    def string(self, node: dict[str, Any], key: str, path: str, *, required: bool = False) -> str | None:
        if key not in node:
            if required:
                self.fail(_join(path, key), "is required but missing")
            return None
        value = node[key]
        if isinstance(value, str):
            return value
        self.fail(_join(path, key), f"must be a string, got {_json_type(value)}")
        return None

    def string_list(self, node: dict[str, Any], key: str, path: str) -> list[str] | None:
        if key not in node:
            return None
        value = node[key]
        if value is None:
            return None  # Docker writes null for empty lists; null is the absence of a value.
        if not isinstance(value, list):
            self.fail(_join(path, key), f"must be an array of strings, got {_json_type(value)}")
            return None
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{_join(path, key)}[{i}]", f"must be a string, got {_json_type(item)}")
        return value

    def boolean(self, node: dict[str, Any], key: str, path: str) -> None:
        if key in node and not isinstance(node[key], bool):
            self.fail(_join(path, key), f"must be a boolean, got {_json_type(node[key])}")

    def media_type(self, node: dict[str, Any], key: str, path: str, *, required: bool = False) -> str | None:
        value = self.string(node, key, path, required=required)
        if value is not None and (problem := mt.media_type_error(value)) is not None:
            self.fail(_join(path, key), f"invalid media type: {problem} (RFC 6838)")
            return None
        return value

    def string_map(self, node: dict[str, Any], key: str, path: str) -> None:
        """Annotation rules: an object whose keys and values are all strings."""
        if key not in node:
            return
        value = node[key]
        if value is None and key == "Labels":
            return
        where = _join(path, key)
        if not isinstance(value, dict):
            self.fail(where, f"must be an object of string values, got {_json_type(value)}")
            return
        for name, item in value.items():
            if not isinstance(item, str):
                self.fail(f"{where}[{name!r}]", f"value must be a string, got {_json_type(item)}")

    def object_map(
        self, node: dict[str, Any], key: str, path: str, key_rule: Callable[[str], str | None]
    ) -> None:
        if key not in node or node[key] is None:
            return
        value, where = node[key], _join(path, key)
        if not isinstance(value, dict):
            self.fail(where, f"must be an object, got {_json_type(value)}")
            return
        for name, item in value.items():
            if (problem := key_rule(name)) is not None:
                self.fail(f"{where}[{name!r}]", problem)
            if not isinstance(item, dict):
                self.fail(f"{where}[{name!r}]", f"value must be an object, got {_json_type(item)}")

    def schema_version(self, node: dict[str, Any], path: str) -> None:
        if not self.required(node, "schemaVersion", path):
            return
        value = node["schemaVersion"]
        if not _is_int(value):
            self.fail(f"{path}.schemaVersion", f"must be an integer, got {_json_type(value)}")
        elif value != 2:
            self.fail(f"{path}.schemaVersion", f"must be 2, got {value}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f"{path}[{key!r}]"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _uri_error(value: str) -> str | None:
    """RFC 3986 absolute URI: a scheme, then no characters the grammar never allows."""
    scheme, colon, _ = value.partition(":")
    if not colon or not _URI_SCHEME.fullmatch(scheme):
        return f"{value!r} is not an absolute URI (RFC 3986: scheme ':' hier-part)"
    if any(c in _URI_FORBIDDEN or ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        return f"{value!r} has characters RFC 3986 does not allow unescaped"
    try:
        urlsplit(value)
    except ValueError as exc:
        return f"{value!r} is not a valid URI: {exc}"
    return None


def _is_rfc3339(value: str) -> bool:
    match = _RFC3339.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    offset_hour, offset_minute = (int(g or 0) for g in match.groups()[6:])
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    # second 60 is a leap second, which RFC 3339 allows.
    return hour < 24 and minute < 60 and second <= 60 and offset_hour < 24 and offset_minute < 60


def _port_error(name: str) -> str | None:
    if not _PORT_PROTO.fullmatch(name) or not 0 < int(name.split("/")[0]) < 65536:
        return "must be 'port', 'port/tcp', 'port/udp' or 'port/sctp'"
    return None


def _no_rule(_: str) -> None:
    return None


# ---------------------------------------------------------------- descriptors


def _digest(w: _Walk, node: dict[str, Any], key: str, path: str, *, required: bool = True) -> str | None:
    value = w.string(node, key, path, required=required)
    if value is not None and (problem := digest_error(value)) is not None:
        w.fail(_join(path, key), f"invalid digest: {problem}")
        return None
    return value


def _size(w: _Walk, node: dict[str, Any], path: str) -> int | None:
    if not w.required(node, "size", path):
        return None
    value = node["size"]
    if not _is_int(value):
        w.fail(f"{path}.size", f"must be an integer, got {_json_type(value)}")
        return None
    if not 0 <= value <= _INT64_MAX:
        w.fail(f"{path}.size", f"must be between 0 and 2^63-1, got {value}")
        return None
    return int(value)


def _embedded_data(w: _Walk, node: dict[str, Any], path: str, digest: str | None, size: int | None) -> None:
    value = w.string(node, "data", path)
    if value is None:
        return
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        w.fail(f"{path}.data", "must be base64 (RFC 4648 section 4, with padding)")
        return
    if size is not None and len(data) != size:
        w.fail(f"{path}.data", f"decodes to {len(data)} bytes but size is {size}")
    if digest is not None:
        algorithm, _, encoded = digest.partition(":")
        if algorithm in SUPPORTED_ALGORITHMS and hashlib.new(algorithm, data).hexdigest() != encoded:
            w.fail(f"{path}.data", "does not match the descriptor's digest")


def _platform(w: _Walk, node: Any, path: str) -> None:
    platform = w.object(node, path)
    if platform is None:
        return
    w.string(platform, "architecture", path, required=True)
    w.string(platform, "os", path, required=True)
    w.string(platform, "os.version", path)
    w.string_list(platform, "os.features", path)
    w.string(platform, "variant", path)
    w.string_list(platform, "features", path)


def _descriptor(w: _Walk, node: Any, path: str) -> dict[str, Any] | None:
    descriptor = w.object(node, path)
    if descriptor is None:
        return None
    w.media_type(descriptor, "mediaType", path, required=True)
    digest = _digest(w, descriptor, "digest", path)
    size = _size(w, descriptor, path)
    if "urls" in descriptor:
        urls = descriptor["urls"]
        if not isinstance(urls, list):
            w.fail(f"{path}.urls", f"must be an array of URIs, got {_json_type(urls)}")
        else:
            for i, url in enumerate(urls):
                problem = (
                    _uri_error(url) if isinstance(url, str) else f"must be a string, got {_json_type(url)}"
                )
                if problem:
                    w.fail(f"{path}.urls[{i}]", problem)
    w.string_map(descriptor, "annotations", path)
    _embedded_data(w, descriptor, path, digest, size)
    w.media_type(descriptor, "artifactType", path)
    if "platform" in descriptor:
        _platform(w, descriptor["platform"], f"{path}.platform")
    return descriptor


def _descriptor_list(w: _Walk, node: dict[str, Any], key: str, path: str) -> list[dict[str, Any]]:
    where = f"{path}.{key}"
    if not w.required(node, key, path):
        return []
    items = node[key]
    if not isinstance(items, list):
        w.fail(where, f"must be an array of descriptors, got {_json_type(items)}")
        return []
    result = []
    for i, item in enumerate(items):
        descriptor = _descriptor(w, item, f"{where}[{i}]")
        if descriptor is not None:
            result.append(descriptor)
    return result


# ---------------------------------------------------------------- documents


def _document_media_type(w: _Walk, node: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    value = w.media_type(node, "mediaType", "$")
    if value is not None and value not in allowed:
        w.fail("$.mediaType", f"a {what} must have mediaType {' or '.join(sorted(allowed))}, got {value!r}")


def _manifest(w: _Walk, node: Any) -> None:
    manifest = w.object(node, "$")
    if manifest is None:
        return
    w.schema_version(manifest, "$")
    _document_media_type(w, manifest, mt.MANIFEST_TYPES, "manifest")
    artifact_type = w.media_type(manifest, "artifactType", "$")
    config = None
    if w.required(manifest, "config", "$"):
        config = _descriptor(w, manifest["config"], "$.config")
    layers = _descriptor_list(w, manifest, "layers", "$")
    if manifest.get("layers") == [] and not w.allow_empty_layers:
        w.fail("$.layers", "must have at least one entry (the empty descriptor stands in for none)")
    if "subject" in manifest:
        _descriptor(w, manifest["subject"], "$.subject")
    w.string_map(manifest, "annotations", "$")
    if config is not None and config.get("mediaType") == mt.OCI_EMPTY and artifact_type is None:
        w.fail("$.artifactType", "is required when config.mediaType is the empty type " + mt.OCI_EMPTY)
    for i, layer in enumerate(layers):
        if layer.get("mediaType") in mt.IMAGE_DOCUMENT_TYPES:
            w.fail(f"$.layers[{i}].mediaType", "a layer cannot be a manifest or an index")


def _index(w: _Walk, node: Any) -> None:
    index = w.object(node, "$")
    if index is None:
        return
    w.schema_version(index, "$")
    _document_media_type(w, index, mt.INDEX_TYPES, "index")
    w.media_type(index, "artifactType", "$")
    _descriptor_list(w, index, "manifests", "$")
    if "subject" in index:
        _descriptor(w, index["subject"], "$.subject")
    w.string_map(index, "annotations", "$")


def _container_config(w: _Walk, node: Any, path: str) -> None:
    if node is None:
        return
    config = w.object(node, path)
    if config is None:
        return
    w.string(config, "User", path)
    w.object_map(config, "ExposedPorts", path, _port_error)
    env = w.string_list(config, "Env", path)
    for i, entry in enumerate(env or ()):
        if isinstance(entry, str) and entry.find("=") < 1:
            w.fail(f"{path}.Env[{i}]", f"{entry!r} must be in the form VARNAME=VARVALUE")
    w.string_list(config, "Entrypoint", path)
    w.string_list(config, "Cmd", path)
    w.object_map(config, "Volumes", path, _no_rule)
    w.string(config, "WorkingDir", path)
    w.string_map(config, "Labels", path)
    w.string(config, "StopSignal", path)
    w.boolean(config, "ArgsEscaped", path)


def _timestamp(w: _Walk, node: dict[str, Any], key: str, path: str) -> None:
    value = w.string(node, key, path)
    if value is not None and not _is_rfc3339(value):
        w.fail(_join(path, key), f"{value!r} is not an RFC 3339 date-time")


def _rootfs(w: _Walk, node: dict[str, Any]) -> None:
    if not w.required(node, "rootfs", "$"):
        return
    rootfs = w.object(node["rootfs"], "$.rootfs")
    if rootfs is None:
        return
    kind = w.string(rootfs, "type", "$.rootfs", required=True)
    if kind is not None and kind != "layers":
        w.fail("$.rootfs.type", f"must be 'layers', got {kind!r}")
    if not w.required(rootfs, "diff_ids", "$.rootfs"):
        return
    diff_ids = rootfs["diff_ids"]
    if not isinstance(diff_ids, list):
        w.fail("$.rootfs.diff_ids", f"must be an array of digests, got {_json_type(diff_ids)}")
        return
    for i, item in enumerate(diff_ids):
        problem = digest_error(item) if isinstance(item, str) else f"must be a string, got {_json_type(item)}"
        if problem:
            w.fail(f"$.rootfs.diff_ids[{i}]", f"invalid digest: {problem}")


def _history(w: _Walk, node: dict[str, Any]) -> None:
    if "history" not in node or node["history"] is None:
        return
    history = node["history"]
    if not isinstance(history, list):
        w.fail("$.history", f"must be an array, got {_json_type(history)}")
        return
    for i, entry in enumerate(history):
        where = f"$.history[{i}]"
        item = w.object(entry, where)
        if item is None:
            continue
        _timestamp(w, item, "created", where)
        for key in ("author", "created_by", "comment"):
            w.string(item, key, where)
        w.boolean(item, "empty_layer", where)


def _config(w: _Walk, node: Any) -> None:
    config = w.object(node, "$")
    if config is None:
        return
    _timestamp(w, config, "created", "$")
    w.string(config, "author", "$")
    w.string(config, "architecture", "$", required=True)
    w.string(config, "os", "$", required=True)
    w.string(config, "os.version", "$")
    w.string_list(config, "os.features", "$")
    w.string(config, "variant", "$")
    if "config" in config:
        _container_config(w, config["config"], "$.config")
    _rootfs(w, config)
    _history(w, config)


def _layout_header(w: _Walk, node: Any) -> None:
    header = w.object(node, "$")
    if header is None:
        return
    version = w.string(header, "imageLayoutVersion", "$", required=True)
    if version is not None and version != "1.0.0":
        w.fail("$.imageLayoutVersion", f"must be '1.0.0', got {version!r}")


def _standalone_descriptor(w: _Walk, node: Any) -> None:
    _descriptor(w, node, "$")


_WALKERS: Final[dict[str, Callable[[_Walk, Any], None]]] = {
    "manifest": _manifest,
    "index": _index,
    "config": _config,
    "descriptor": _standalone_descriptor,
    "layout": _layout_header,
}
#: The document kinds :func:`validate` knows, as ``ocikit validate --type`` names them.
DOCUMENT_TYPES: Final = tuple(_WALKERS)


def parse_json(raw: bytes) -> Any:
    """Decode JSON, turning every way untrusted bytes can fail to decode into a violation.

    Nesting deep enough to exhaust the decoder's recursion limit is refused the same way:
    no image-spec document nests more than a few levels.
    """
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValidationFailed([Violation("$", f"not valid JSON: {exc}")]) from None
    except UnicodeDecodeError as exc:
        # msgspec checks UTF-8 inside strings lazily and raises this rather than a DecodeError.
        raise ValidationFailed([Violation("$", f"not valid JSON: not UTF-8 ({exc.reason})")]) from None
    except RecursionError:
        raise ValidationFailed([Violation("$", "JSON nested too deeply to be a document")]) from None


def validate(node: Any, kind: str, *, allow_empty_layers: bool = False) -> list[Violation]:
    """Every violation of the rules for ``kind`` (one of :data:`DOCUMENT_TYPES`) in decoded JSON.

    The image-spec says a manifest SHOULD have a layer and its schema requires one;
    ``allow_empty_layers`` relaxes that for registries, which must store such artifacts.
    """
    walker = _WALKERS.get(kind)
    if walker is None:
        raise ValueError(f"unknown document type {kind!r}; choose from {', '.join(DOCUMENT_TYPES)}")
    walk = _Walk(allow_empty_layers=allow_empty_layers)
    walker(walk, node)
    return walk.violations


def validate_document(raw: bytes, kind: str) -> list[Violation]:
    """Like :func:`validate` but from bytes; invalid JSON is itself a violation."""
    try:
        node = parse_json(raw)
    except ValidationFailed as exc:
        return exc.violations
    return validate(node, kind)


def validate_manifest(raw: bytes) -> list[Violation]:
    return validate_document(raw, "manifest")


def validate_index(raw: bytes) -> list[Violation]:
    return validate_document(raw, "index")


def validate_config(raw: bytes) -> list[Violation]:
    return validate_document(raw, "config")


def validate_descriptor(raw: bytes) -> list[Violation]:
    return validate_document(raw, "descriptor")


def validate_layout_header(raw: bytes) -> list[Violation]:
    return validate_document(raw, "layout")


def check(raw: bytes, kind: str) -> Any:
    """Decode and validate, raising :class:`ValidationFailed`; returns the decoded JSON."""
    node = parse_json(raw)
    violations = validate(node, kind)
    if violations:
        raise ValidationFailed(violations)
    return node


_MEDIA_TYPE_KINDS: Final[dict[str, str]] = {
    mt.OCI_MANIFEST: "manifest",
    mt.DOCKER_MANIFEST: "manifest",
    mt.OCI_INDEX: "index",
    mt.DOCKER_MANIFEST_LIST: "index",
    mt.OCI_CONFIG: "config",
    mt.DOCKER_CONFIG: "config",
    mt.OCI_LAYOUT_HEADER: "layout",
    mt.OCI_DESCRIPTOR: "descriptor",
}


def kind_of_media_type(media_type: str) -> str | None:
    """The document kind a media type names, or None for anything else."""
    return _MEDIA_TYPE_KINDS.get(media_type)


def infer_type(node: Any) -> str | None:
    """Guess a document's kind from its content: ``mediaType`` first, then its shape."""
    if not isinstance(node, dict):
        return None
    media_type = node.get("mediaType")
    if isinstance(media_type, str) and media_type in _MEDIA_TYPE_KINDS:
        kind = _MEDIA_TYPE_KINDS[media_type]
        # A descriptor *of* a manifest also carries the manifest's mediaType.
        if "digest" in node and "size" in node and "schemaVersion" not in node:
            return "descriptor"
        return kind
    if "imageLayoutVersion" in node:
        return "layout"
    if "manifests" in node:
        return "index"
    if "layers" in node or ("config" in node and "schemaVersion" in node):
        return "manifest"
    if "rootfs" in node or ("architecture" in node and "os" in node):
        return "config"
    if "digest" in node and "size" in node:
        return "descriptor"
    return None
