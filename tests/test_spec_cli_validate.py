"""``ocikit validate`` as a user runs it: a subprocess, exit codes, one violation per line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ocikit.spec import mediatype as mt
from ocikit.spec.digest import digest_of

SRC = Path(__file__).resolve().parent.parent / "src"
DIGEST = digest_of(b"x")


def ocikit_validate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "ocikit.cli.main", "validate", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, name: str, value: Any) -> Path:
    path = tmp_path / name
    path.write_bytes(value if isinstance(value, bytes) else json.dumps(value).encode())
    return path


MANIFEST = {
    "schemaVersion": 2,
    "mediaType": mt.OCI_MANIFEST,
    "config": {"mediaType": mt.OCI_CONFIG, "size": 1, "digest": DIGEST},
    "layers": [{"mediaType": mt.OCI_LAYER, "size": 1, "digest": DIGEST}],
}


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout


def test_valid_document_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", MANIFEST)
    result = ocikit_validate("--type", "manifest", path)
    assert result.returncode == 0
    assert (
        result.stdout == f"{path}: a valid OCI image manifest (fields, media types and descriptors; "
        "the blobs it references are not read)\n"
    )


def test_invalid_document_exits_1_with_one_violation_per_line(tmp_path: Path) -> None:
    broken = {
        **MANIFEST,
        "schemaVersion": 1,
        "layers": [{"mediaType": "invalid", "size": "1", "digest": DIGEST}],
    }
    result = ocikit_validate("--type", "manifest", write(tmp_path, "m.json", broken))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert [line.split(": ", 1)[0] for line in lines] == [
        "$.schemaVersion",
        "$.layers[0].mediaType",
        "$.layers[0].size",
    ]
    assert all(len(line.split(": ", 1)[1]) > 5 for line in lines)


def test_type_is_inferred_from_the_media_type(tmp_path: Path) -> None:
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [{"mediaType": "invalid"}]}
    result = ocikit_validate(write(tmp_path, "i.json", index))
    assert result.returncode == 1
    assert result.stdout.startswith("$.manifests[0]")
    assert ocikit_validate(write(tmp_path, "m.json", MANIFEST)).returncode == 0


def test_explicit_type_overrides_inference(tmp_path: Path) -> None:
    result = ocikit_validate("--type", "config", write(tmp_path, "m.json", MANIFEST))
    assert result.returncode == 1
    assert "$.architecture" in result.stdout


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = ocikit_validate(tmp_path / "absent.json")
    assert result.returncode == 2
    assert "absent.json" in result.stderr
    assert_no_traceback(result)


def test_unknown_type_exits_2(tmp_path: Path) -> None:
    result = ocikit_validate("--type", "manifestt", write(tmp_path, "m.json", MANIFEST))
    assert result.returncode == 2
    assert_no_traceback(result)


def test_unrecognisable_document_without_type_exits_2(tmp_path: Path) -> None:
    result = ocikit_validate(write(tmp_path, "x.json", {"hello": "world"}))
    assert result.returncode == 2
    assert "--type" in result.stderr


def test_a_layout_directory(tmp_path: Path) -> None:
    (tmp_path / "blobs").mkdir()
    write(tmp_path, "oci-layout", {"imageLayoutVersion": "1.0.0"})
    write(tmp_path, "index.json", {"schemaVersion": 2, "manifests": []})
    assert ocikit_validate("--type", "layout", tmp_path).returncode == 0
    result = ocikit_validate(tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith(f"{tmp_path}: a valid OCI image layout (oci-layout, index.json, every")
    (tmp_path / "index.json").unlink()
    result = ocikit_validate(tmp_path)
    assert (result.returncode, result.stdout.strip()) == (1, "index.json: is required but missing")


def test_a_lone_layout_header_is_a_document(tmp_path: Path) -> None:
    header = ocikit_validate(write(tmp_path, "oci-layout", {"imageLayoutVersion": "1.0.0"}))
    assert (header.returncode, header.stdout) == (
        0,
        f"{tmp_path}/oci-layout: a valid OCI image layout header (oci-layout)\n",
    )
    assert ocikit_validate(write(tmp_path, "oci-layout", {"imageLayoutVersion": "1.1.0"})).returncode == 1


def test_a_directory_given_another_type_is_a_usage_error(tmp_path: Path) -> None:
    result = ocikit_validate("--type", "manifest", tmp_path)
    assert result.returncode == 2
    assert "--type layout" in result.stderr


GARBAGE = {
    "binary junk": bytes(range(256)) * 4,
    "empty file": b"",
    "huge numbers": b'{"schemaVersion": 2, "size": 1e999, "n": 123456789012345678901234567890123}',
    "huge size": json.dumps({"mediaType": "a/b", "digest": str(DIGEST), "size": 2**64}).encode(),
    "deep arrays": b"[" * 100_000 + b"]" * 100_000,
    "deep objects": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    "invalid utf-8": b'{"mediaType": "\xff\xfe"}',
    "a bare string": b'"manifest"',
    "null": b"null",
    "nested garbage in fields": json.dumps({**MANIFEST, "config": [[[{}]]], "annotations": [None]}).encode(),
}


@pytest.mark.parametrize("content", GARBAGE.values(), ids=GARBAGE.keys())
@pytest.mark.parametrize("kind", [None, "manifest", "index", "config", "descriptor", "layout"])
def test_garbage_never_causes_a_traceback(tmp_path: Path, content: bytes, kind: str | None) -> None:
    path = write(tmp_path, "garbage", content)
    result = ocikit_validate(*(["--type", kind] if kind else []), path)
    assert_no_traceback(result)
    assert result.returncode in (1, 2)


def test_a_directory_that_is_not_a_layout_is_reported_not_crashed(tmp_path: Path) -> None:
    (tmp_path / "something.txt").write_text("hi")
    result = ocikit_validate(tmp_path)
    assert_no_traceback(result)
    assert result.returncode == 1
    assert "oci-layout" in result.stdout
