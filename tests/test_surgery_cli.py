"""Bad input to the surgery commands: one clear line and exit status 1 (2 for usage), no
traceback, and nothing named in the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layer_helpers import Layer, write_layout
from surgery_helpers import ocikit


@pytest.fixture
def store(tmp_path: Path) -> Path:
    layout = tmp_path / "layout"
    write_layout(layout, [Layer().file("a", b"a").tar(), Layer().file("b", b"b").tar()])
    store = tmp_path / "store"
    ocikit("copy", f"oci:{layout}:latest", "localhost/cli/base:1", "--store", str(store), "-q")
    return store


def fails(*args: str, status: int = 1) -> str:
    result = ocikit(*args, check=False)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_bad_input(store: Path, tmp_path: Path) -> None:
    s = ["--store", str(store)]
    assert "nothing to change" in fails("config", "localhost/cli/base:1", "x:1", *s)
    assert "not KEY=VALUE" in fails("config", "localhost/cli/base:1", "x:1", "--env", "NOEQUALS", *s)
    assert "holds strings only" in fails(
        "config", "localhost/cli/base:1", "x:1", "--cmd", "[1]", *s, status=2
    )
    assert "not PORT" in fails("config", "localhost/cli/base:1", "x:1", "--expose", "web", *s)
    assert "with a tag" in fails("config", "localhost/cli/base:1", "sha256:" + "0" * 64, "--user", "1", *s)
    assert "no image" in fails("config", "localhost/cli/nothing:1", "x:1", "--user", "1", *s)
    snapshots = ["--snapshots", str(tmp_path / "snapshots"), "--snapshotter", "dir"]
    assert "has layers 0 to 1" in fails(
        "squash", "localhost/cli/base:1", "x:1", "--from", "2", *s, *snapshots
    )
    assert "not a bundle made by ocikit" in fails("commit", str(tmp_path), "x:1", *s)
    assert "not a bundle made by ocikit" in fails("diff", str(tmp_path))
    names = ocikit("images", *s, "--format", "json").stdout
    assert "x:1" not in names


def test_a_bundle_without_its_image_cannot_be_committed(store: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    snapshots = ["--snapshots", str(tmp_path / "snapshots"), "--snapshotter", "dir"]
    ocikit("create", "--store", str(store), *snapshots, "localhost/cli/base:1", str(bundle), "/a")
    try:
        state_file = bundle / "ocikit-bundle.json"
        state = json.loads(state_file.read_text())
        assert state["image"] == "localhost/cli/base:1"
        assert state["manifest"]["digest"].startswith("sha256:")
        del state["manifest"]
        state_file.write_text(json.dumps(state))
        assert "does not record the image" in fails("commit", str(bundle), "x:1", "--store", str(store))
    finally:
        ocikit("rm", str(bundle), check=False)
