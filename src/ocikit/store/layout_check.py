"""Whole-layout validation of an OCI image layout directory (image-spec image-layout.md).

Every file is opened relative to the layout's own directory and never through a symlink out
of it, because layouts arrive from untrusted sources (unpacked archives, shared folders).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec

from ..spec import mediatype as mt
from ..spec.digest import SUPPORTED_ALGORITHMS, Digester, digest_error
from ..spec.validate import ValidationFailed, Violation, kind_of_media_type, parse_json, validate
from .files import open_dir, open_regular

__all__ = ["validate_layout"]

_MAX_DOCUMENT: Final = 4 * 1024 * 1024  # manifests larger than this are refused by registries too
_CHUNK: Final = 1 << 20


class _LayoutCheck(msgspec.Struct):
    root: Path
    violations: list[Violation] = msgspec.field(default_factory=list)
    _verified: dict[str, bool] = msgspec.field(default_factory=dict)
    _visited: set[str] = msgspec.field(default_factory=set)

    def fail(self, where: str, rule: str) -> None:
        self.violations.append(Violation(where, rule))

    def blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        return self.root / "blobs" / algorithm / encoded

    def _open_blob(self, digest: str) -> int | None:
        """An fd for the blob, refusing symlinks and non-regular files."""
        algorithm, _, encoded = digest.partition(":")
        try:
            root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            blobs = open_dir("blobs", root)
            try:
                directory = open_dir(algorithm, blobs)
            finally:
                os.close(blobs)
            try:
                return open_regular(encoded, directory)
            finally:
                os.close(directory)
        except OSError:
            return None
        finally:
            os.close(root)

    def verify_blob(self, digest: str, size: int | None, where: str) -> bool:
        """Check a blob's presence, size and digest once; later calls reuse the verdict."""
        key = f"{digest}/{size}"
        if key in self._verified:
            return self._verified[key]
        ok = self._verify_blob_uncached(digest, size, where)
        self._verified[key] = ok
        return ok

    def _verify_blob_uncached(self, digest: str, size: int | None, where: str) -> bool:
        name = f"blobs/{digest.replace(':', '/', 1)}"
        fd = self._open_blob(digest)
        if fd is None:
            self.fail(where, f"the blob {name} is missing (or not a regular file)")
            return False
        with os.fdopen(fd, "rb") as handle:
            actual_size = os.fstat(handle.fileno()).st_size
            if size is not None and actual_size != size:
                self.fail(where, f"the blob {name} has {actual_size} bytes, the descriptor says {size}")
                return False
            algorithm = digest.partition(":")[0]
            if algorithm not in SUPPORTED_ALGORITHMS:
                return True  # well-formed but not computable here: accepted, as the spec asks
            digester = Digester(algorithm)
            while chunk := handle.read(_CHUNK):
                digester.update(chunk)
        if digester.digest() != digest:
            self.fail(where, f"the content of {name} does not match its digest")
            return False
        return True

    def read_document(self, digest: str, size: int) -> bytes | None:
        if size > _MAX_DOCUMENT:
            return None
        fd = self._open_blob(digest)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as handle:
            return handle.read(_MAX_DOCUMENT + 1)


def _descriptors(node: Any, key: str) -> Iterator[tuple[int, dict[str, Any]]]:
    items = node.get(key) if isinstance(node, dict) else None
    if isinstance(items, list):
        for i, item in enumerate(items):
            if (
                isinstance(item, dict)
                and isinstance(item.get("digest"), str)
                and not digest_error(item["digest"])
            ):
                yield i, item


def _descriptor_size(descriptor: dict[str, Any]) -> int | None:
    size = descriptor.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def _may_be_absent(descriptor: dict[str, Any]) -> bool:
    """Non-distributable layers and layers with ``urls`` need not be in a layout."""
    return descriptor.get("mediaType") in mt.NONDISTRIBUTABLE_LAYER_TYPES or bool(descriptor.get("urls"))


_Reference = tuple[dict[str, Any], str]  # a descriptor, and where it was found


def _check_document(check: _LayoutCheck, descriptor: dict[str, Any], where: str) -> None:
    """Verify a referenced blob and everything it references, depth first. A loop rather
    than recursion: a chain of a thousand indexes is a layout to report on, not a crash."""
    pending: list[_Reference] = [(descriptor, where)]
    while pending:
        current, at = pending.pop()
        pending.extend(reversed(_check_one(check, current, at)))


def _check_one(check: _LayoutCheck, descriptor: dict[str, Any], where: str) -> list[_Reference]:
    """Verify a referenced blob and, when it is a document we understand, its content; the
    descriptors it references, to check next."""
    digest, size = descriptor["digest"], _descriptor_size(descriptor)
    media_type = descriptor.get("mediaType")
    kind = kind_of_media_type(media_type) if isinstance(media_type, str) else None
    if kind is None or kind in ("layout", "descriptor"):
        if not (_may_be_absent(descriptor) and check._open_blob(digest) is None):
            check.verify_blob(digest, size, where)
        return []
    if not check.verify_blob(digest, size, where) or digest in check._visited:
        return []
    check._visited.add(digest)
    raw = check.read_document(digest, size or 0)
    name = f"blobs/{digest.replace(':', '/', 1)}"
    if raw is None:
        check.fail(where, f"the {kind} {name} is larger than {_MAX_DOCUMENT} bytes")
        return []
    try:
        node = parse_json(raw)
    except ValidationFailed as exc:
        check.violations.extend(Violation(f"{name}: {v.path}", v.rule) for v in exc.violations)
        return []
    check.violations.extend(Violation(f"{name}: {v.path}", v.rule) for v in validate(node, kind))
    own_type = node.get("mediaType") if isinstance(node, dict) else None
    if kind in ("manifest", "index") and own_type is not None and own_type != media_type:
        check.fail(where, f"mediaType conflict: the descriptor says {media_type!r}, {name} says {own_type!r}")
    referenced: list[_Reference] = []
    if kind == "manifest" and isinstance(node, dict):
        if isinstance(node.get("config"), dict) and isinstance(node["config"].get("digest"), str):
            config = node["config"]
            if not digest_error(config["digest"]):
                referenced.append((config, f"{name}: $.config"))
        referenced += [(layer, f"{name}: $.layers[{i}]") for i, layer in _descriptors(node, "layers")]
    elif kind == "index":
        referenced += [(child, f"{name}: $.manifests[{i}]") for i, child in _descriptors(node, "manifests")]
    return referenced


def _check_blob_names(check: _LayoutCheck) -> None:
    """Every file under blobs/ must be named by a valid digest and hold the content it names."""
    blobs = check.root / "blobs"
    if blobs.is_symlink() or not blobs.is_dir():
        check.fail("blobs", "the blobs directory must exist (it may be empty)")
        return
    for algorithm_dir in sorted(blobs.iterdir()):
        if algorithm_dir.is_symlink() or not algorithm_dir.is_dir():
            check.fail(f"blobs/{algorithm_dir.name}", "must be a directory named after a digest algorithm")
            continue
        for blob in sorted(algorithm_dir.iterdir()):
            digest = f"{algorithm_dir.name}:{blob.name}"
            where = f"blobs/{algorithm_dir.name}/{blob.name}"
            if (problem := digest_error(digest)) is not None:
                check.fail(where, f"the name is not a digest: {problem}")
            else:
                check.verify_blob(digest, None, where)


def _read_json_file(check: _LayoutCheck, name: str) -> Any:
    path = check.root / name
    if path.is_symlink() or not path.is_file():
        check.fail(name, "is required but missing")
        return None
    try:
        return parse_json(path.read_bytes())
    except ValidationFailed as exc:
        check.violations.extend(Violation(f"{name}: {v.path}", v.rule) for v in exc.violations)
        return None


def validate_layout(path: str | os.PathLike[str]) -> list[Violation]:
    """Every violation in the layout at ``path`` (the directory or its ``oci-layout`` file).

    Raises FileNotFoundError when ``path`` is neither.
    """
    root = Path(path)
    if root.name == "oci-layout" and root.is_file():
        root = root.parent
    if not root.is_dir():
        raise FileNotFoundError(f"{path}: no image layout directory here")
    check = _LayoutCheck(root)
    header = _read_json_file(check, "oci-layout")
    if header is not None:
        check.violations.extend(
            Violation(f"oci-layout: {v.path}", v.rule) for v in validate(header, "layout")
        )
    index = _read_json_file(check, "index.json")
    if index is not None:
        check.violations.extend(Violation(f"index.json: {v.path}", v.rule) for v in validate(index, "index"))
        for i, descriptor in _descriptors(index, "manifests"):
            _check_document(check, descriptor, f"index.json: $.manifests[{i}]")
    _check_blob_names(check)
    return check.violations
