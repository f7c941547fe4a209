"""The layer writer and the diff engine on their own: deterministic bytes that GNU tar, Python's
tarfile and our reader agree on, and changesets that turn the lower tree into the upper one
when applied (the dir way); config edits and derived history as plain data."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import msgspec
import pytest
import zstandard

from conftest import OCIKIT, require_tool
from layer_helpers import Layer, snapshot, write_layout
from ocikit.layers import LayerError, apply_layer
from ocikit.layers.diff import tree_changes, write_changes
from ocikit.layers.stream import BlobStream
from ocikit.layers.tar import DIR, LNK, REG, SYM, TarEntry, TarReader
from ocikit.layers.write import LayerWriter, WrittenLayer, tar_header
from ocikit.spec import mediatype as mt
from ocikit.spec.digest import digest_of
from ocikit.store.compose import Draft
from ocikit.store.config_edit import ConfigEdits, apply_edits, parse_command
from ocikit.store.images import ImageStore
from ocikit.store.layout import OCILayout
from ocikit.store.transport import TransportError


def entry(name: bytes, kind: int = REG, **fields: object) -> TarEntry:
    values: dict[str, object] = {
        "name": name,
        "kind": kind,
        "mode": 0o644,
        "uid": 0,
        "gid": 0,
        "size": 0,
        "mtime_ns": 1_700_000_000_000_000_000,
        "atime_ns": 0,
        "linkname": b"",
        "devmajor": 0,
        "devminor": 0,
        "xattrs": None,
    }
    values.update(fields)
    return TarEntry(**values)  # type: ignore[arg-type]


def write(
    layout: OCILayout, entries: list[tuple[TarEntry, bytes]], media_type: str = mt.OCI_LAYER_GZIP
) -> WrittenLayer:
    with LayerWriter(layout, media_type) as writer:
        for item, content in entries:
            if content:
                read, write_end = os.pipe()
                os.write(write_end, content)
                os.close(write_end)
                try:
                    writer.add(item, read)
                finally:
                    os.close(read)
            else:
                writer.add(item)
        return writer.finish()


def raw_tar(layout: OCILayout, written: WrittenLayer) -> bytes:
    data = layout.blob_path(written.descriptor.digest).read_bytes()
    if written.descriptor.media_type.endswith("gzip"):
        return gzip.decompress(data)
    if written.descriptor.media_type.endswith("zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


LONG = b"deep/" * 30 + b"name-longer-than-a-hundred-bytes"
SAMPLE = [
    (entry(b"dir", DIR, mode=0o755), b""),
    (
        entry(b"dir/file", size=5, mode=0o4755, uid=3_000_000, gid=7, mtime_ns=1_700_000_000_123_456_700),
        b"hello",
    ),
    (entry(LONG, size=4), b"long"),
    (entry(b"dir/link", SYM, mode=0o777, linkname=b"/" + b"t" * 150), b""),
    (entry(b"dir/hard", LNK, linkname=b"dir/file"), b""),
    (entry(b"dir/x", xattrs={b"user.a": b"\x00\xffbinary\n", b"security.capability": b"cap"}), b""),
]


@pytest.mark.parametrize("media_type", [mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD, mt.OCI_LAYER])
def test_writer_output_is_read_alike_by_three_readers(tmp_path: Path, media_type: str) -> None:
    layout = OCILayout.open(tmp_path / "store", create=True)
    written = write(layout, SAMPLE, media_type)
    tar = raw_tar(layout, written)
    assert written.diff_id == digest_of(tar)
    assert written.descriptor.digest == digest_of(layout.blob_path(written.descriptor.digest).read_bytes())
    assert written.entries == len(SAMPLE)

    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert members["dir/file"].uid == 3_000_000
        assert members["dir/file"].mode == 0o4755
        assert members["dir/link"].linkname == "/" + "t" * 150
        assert members["dir/hard"].islnk()
        assert "SCHILY.xattr.user.a" in members["dir/x"].pax_headers
        assert archive.extractfile(LONG.decode()).read() == b"long"  # type: ignore[union-attr]

    gnu = require_tool("tar")
    listing = subprocess.run([gnu, "-tvf", "-"], input=tar, capture_output=True, check=True).stdout.decode()
    assert LONG.decode() in listing
    assert "dir/hard link to dir/file" in listing

    stream = BlobStream(io.BytesIO(tar), "", None, None, max_uncompressed_size=1 << 30, chunk_size=1 << 20)
    try:
        reader = TarReader(stream, max_name_length=4096, max_pax_header=1 << 20)
        ours = []
        while (item := reader.next()) is not None:
            ours.append(item)
    finally:
        stream.close()
    by_name = {item.name.rstrip(b"/"): item for item in ours}
    assert by_name[b"dir/x"].xattrs == {b"user.a": b"\x00\xffbinary\n", b"security.capability": b"cap"}
    assert by_name[LONG].size == 4
    assert by_name[b"dir/file"].uid == 3_000_000
    assert by_name[b"dir/file"].mtime_ns == 1_700_000_000_123_456_700
    assert by_name[b"dir"].mtime_ns == 1_700_000_000_000_000_000


def test_writer_is_deterministic(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "store", create=True)
    first, second = write(layout, SAMPLE), write(layout, SAMPLE)
    assert first == second
    assert tar_header(SAMPLE[0][0]) == tar_header(SAMPLE[0][0])


def test_writer_refuses_a_file_that_changed_size_and_leaves_nothing(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "store", create=True)
    with pytest.raises(LayerError, match="shorter"):
        write(layout, [(entry(b"f", size=10), b"short")])
    with pytest.raises(LayerError, match="longer"):
        write(layout, [(entry(b"f", size=2), b"too long")])
    assert not os.listdir(tmp_path / "store/.ocikit/incoming")
    assert not os.listdir(tmp_path / "store/blobs/sha256")


def make_lower(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/a").write_text("a")
    (root / "etc/b").write_text("b")
    (root / "keep").write_text("keep")
    (root / "gone").write_text("gone")
    (root / "d").mkdir()
    (root / "d/x").write_text("x")
    (root / "d/y").write_text("y")
    (root / "d/sub").mkdir()
    (root / "d/sub/z").write_text("z")
    (root / "emptied").mkdir()
    (root / "emptied/one").write_text("1")
    (root / "emptied/two").write_text("2")
    (root / "linked").write_text("shared")
    os.symlink("etc/a", root / "sym")


def copy(source: Path, target: Path) -> None:
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)


def round_trip(tmp_path: Path, lower: Path, upper: Path) -> tuple[list[str], Path]:
    """Diff, write, and apply the layer onto a copy of lower: the result must equal upper."""
    report = tree_changes(upper, lower)
    layout = OCILayout.open(tmp_path / "store", create=True)
    with LayerWriter(layout) as writer:
        write_changes(upper, report.changes, writer)
        written = writer.finish()
    target = tmp_path / "applied"
    copy(lower, target)
    apply_layer(
        target,
        layout.blob_path(written.descriptor.digest),
        written.descriptor.media_type,
        None,
        written.diff_id,
    )
    assert snapshot(target) == snapshot(upper), "to the nanosecond"
    with tarfile.open(layout.blob_path(written.descriptor.digest)) as archive:
        return archive.getnames(), target


def test_generic_diff_round_trip(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    make_lower(lower)
    copy(lower, upper)
    (upper / "etc/a").write_text("changed")
    os.unlink(upper / "gone")
    shutil.rmtree(upper / "d")
    (upper / "d").mkdir()
    (upper / "d/new").write_text("new")
    os.unlink(upper / "emptied/one")
    os.unlink(upper / "emptied/two")
    os.chmod(upper / "keep", 0o600)
    os.unlink(upper / "sym")
    os.symlink("etc/b", upper / "sym")
    os.link(upper / "linked", upper / "linked-too")
    os.setxattr(upper / "etc/b", "user.k", b"v")
    (upper / "added").mkdir()
    (upper / "added/inner").write_text("in")
    names, _ = round_trip(tmp_path, lower, upper)
    assert "d/.wh..wh..opq" in names, "d was replaced wholesale"
    assert "d/.wh.x" not in names
    assert {"emptied/.wh.one", "emptied/.wh.two"} <= set(names), "an emptied directory keeps whiteouts"
    assert ".wh.gone" in names
    assert "linked" in names, "the whole link group is written, not a link to a lower path"
    assert "keep" in names
    assert "etc/a" in names
    assert "etc/.wh.a" not in names


def test_unchanged_trees_give_an_empty_layer(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    make_lower(lower)
    copy(lower, upper)
    assert tree_changes(upper, lower).changes == []


def test_type_changes_and_no_lower(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    make_lower(lower)
    copy(lower, upper)
    os.unlink(upper / "keep")
    (upper / "keep").mkdir()
    (upper / "keep/inside").write_text("dir now")
    shutil.rmtree(upper / "d/sub")
    (upper / "d/sub").write_text("file now")
    round_trip(tmp_path, lower, upper)
    full = tree_changes(upper, None)
    assert all(change.action == "A" for change in full.changes)
    assert {change.path for change in full.changes} >= {b"keep/inside", b"etc", b"d/sub"}


def test_a_socket_is_skipped_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    monkeypatch.chdir(upper)  # a socket path is limited to 108 bytes
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
        report = tree_changes(upper, None)
    assert report.changes == []
    assert "socket" in report.warnings[0]


def test_config_edits_keep_order_and_drop_empties() -> None:
    config = {"config": {"Env": ["A=1", "B=2", "A=3"], "Labels": {"x": "1"}, "Cmd": ["old"]}}
    said = apply_edits(
        config, ConfigEdits(env=["A=9", "C=4"], env_rm=["B"], label_rm=["x"], clear_cmd=True, expose=["80"])
    )
    assert config["config"] == {"Env": ["A=9", "C=4"], "ExposedPorts": {"80/tcp": {}}}
    assert said[0] == "CMD []"
    assert parse_command('["a", "b c"]') == ["a", "b c"]
    assert parse_command("echo $HOME") == ["/bin/sh", "-c", "echo $HOME"]
    for bad in ('["a", 1]', "[not json"):
        with pytest.raises(TransportError):
            parse_command(bad)
    for edits in (ConfigEdits(env=["NOEQUALS"]), ConfigEdits(expose=["http"]), ConfigEdits(volumes=["rel"])):
        with pytest.raises(TransportError):
            apply_edits({}, edits)


def test_squash_history_collapses_and_keeps_config_entries(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_layout(
        layout, [Layer().file("a", b"a").tar(), Layer().file("b", b"b").tar(), Layer().file("c").tar()]
    )
    with ImageStore(tmp_path / "store") as store:
        command = [*OCIKIT, "copy", f"oci:{layout}:latest", "x:1", "--store", str(tmp_path / "store"), "-q"]
        subprocess.run(command, check=True)
        image = store.image("x:1")
        draft = Draft(image)
        history = draft.config["history"]
        history.insert(2, {"created_by": "ENV", "empty_layer": True})
        assert [entry.get("created_by") for entry in draft.history_from(1)] == [
            "layer_helpers",
            "layer_helpers",
        ]
        layer = image.layers[0].descriptor
        draft.replace_layers(1, layer, str(image.layers[0].diff_id), {"created_by": "squashed"})
        assert [entry.get("created_by") for entry in draft.config["history"]] == [
            "layer_helpers",
            "squashed",
            "ENV",
        ]
        assert len(draft.manifest["layers"]) == len(draft.config["rootfs"]["diff_ids"]) == 2
        saved = draft.save(store, "x:squashed")
        assert msgspec.json.decode(store.document(saved))["layers"][1]["digest"] == layer.digest
        with pytest.raises(TransportError, match="tag"):
            Draft(image).save(store, "x@sha256:" + "0" * 64)
