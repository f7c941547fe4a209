"""Validating a runtime ``config.json`` against the runtime-spec's own JSON schema
(``../shared/specs/runtime-spec/schema``), with the ``jsonschema`` package."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "specs" / "runtime-spec" / "schema"


@cache
def _validator() -> Any:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is a test dependency (pip install -e .[test])"
    )
    referencing = pytest.importorskip("referencing")
    from referencing.jsonschema import DRAFT4

    if not SCHEMA_DIR.is_dir():
        pytest.skip(f"the runtime-spec schema is not at {SCHEMA_DIR}")
    resources = []
    for path in SCHEMA_DIR.glob("*.json"):
        contents = json.loads(path.read_text())
        contents["id"] = path.as_uri()  # draft 4: relative $refs resolve against "id"
        resources.append(
            (path.as_uri(), referencing.Resource.from_contents(contents, default_specification=DRAFT4))
        )
    registry = referencing.Registry().with_resources(resources)
    root = registry[(SCHEMA_DIR / "config-schema.json").as_uri()].contents
    return jsonschema.Draft4Validator(root, registry=registry)


def schema_errors(document: Any) -> list[str]:
    """Every violation, as 'json.path: message'."""
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in _validator().iter_errors(document)
    ]
