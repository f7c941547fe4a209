"""``ocikit validate``: check a document or an image layout against the image-spec."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..spec.validate import DOCUMENT_TYPES, ValidationFailed, Violation, infer_type, parse_json, validate
from ..store.layout_check import validate_layout

EXIT_VALID, EXIT_INVALID, EXIT_USAGE = 0, 1, 2

#: What a success means, said on success: a silent exit 0 leaves users guessing what was looked at.
_CHECKED = {
    "manifest": "a valid OCI image manifest (fields, media types and descriptors; "
    "the blobs it references are not read)",
    "index": "a valid OCI image index (fields, media types and descriptors; "
    "the manifests it lists are not read)",
    "config": "a valid OCI image config (fields and their types)",
    "descriptor": "a valid OCI descriptor (media type, digest, size and embedded data)",
    "layout": "a valid OCI image layout header (oci-layout)",
    "whole layout": "a valid OCI image layout (oci-layout, index.json, every manifest, index, "
    "config and layer they reach, verified against its digest and size, and the blob names)",
}


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "validate",
        help="validate a manifest, index, config, descriptor or image layout",
        description=(
            "Check PATH against the OCI image-spec. Exit 0 when valid (saying what was checked), "
            "1 when invalid (one violation per line), 2 for usage errors. Without --type the type "
            "comes from the document's mediaType."
        ),
    )
    parser.add_argument("--type", choices=DOCUMENT_TYPES, help="what PATH holds")
    parser.add_argument(
        "path", metavar="PATH", help="a JSON file, or an image-layout directory for --type layout"
    )
    parser.set_defaults(run=run)


def _usage_error(message: str) -> int:
    print(f"ocikit validate: {message}", file=sys.stderr)
    return EXIT_USAGE


def _report(violations: list[Violation], path: Path, kind: str) -> int:
    if violations:
        return _invalid(violations)
    print(f"{path}: {_CHECKED[kind]}")
    return EXIT_VALID


def _invalid(violations: list[Violation]) -> int:
    for violation in violations:
        print(violation)
    return EXIT_INVALID


def _validate_layout(path: Path) -> int:
    try:
        return _report(validate_layout(path), path, "whole layout")
    except FileNotFoundError as exc:
        return _usage_error(str(exc))


def _is_whole_layout(path: Path, kind: str | None) -> bool:
    """A directory, or an ``oci-layout`` file beside an ``index.json``, means the whole layout;
    a lone header file is checked as a document."""
    if kind not in (None, "layout"):
        return False
    return path.is_dir() or (path.name == "oci-layout" and (path.parent / "index.json").exists())


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if _is_whole_layout(path, args.type):
        return _validate_layout(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        return _usage_error(f"{path} is a directory; use --type layout for an image layout")
    except OSError as exc:
        return _usage_error(f"cannot read {path}: {exc.strerror}")
    try:
        node = parse_json(raw)
    except ValidationFailed as exc:
        return _invalid(exc.violations)
    kind = args.type or infer_type(node)
    if kind is None:
        return _usage_error(f"cannot tell what {path} is: it has no known mediaType; give --type")
    return _report(validate(node, kind), path, kind)
