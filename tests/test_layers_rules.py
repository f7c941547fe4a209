"""The changeset rules of image-spec layer.md, one by one, with both path resolvers."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from layer_helpers import Layer, gzip_bytes, sha256, snapshot, tree_of, zstd_bytes
from ocikit.layers import (
    ApplyOptions,
    ApplyReport,
    DiffIDMismatch,
    LayerError,
    UnsafePath,
    UnsupportedMediaType,
    apply_layer,
)
from ocikit.spec import mediatype as mt

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="ownership and devices need root")


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def apply(
    root: Path, layer: Layer | bytes, resolver: str = "auto", compress: str = "gzip", **options: object
) -> ApplyReport:
    tar = layer.tar() if isinstance(layer, Layer) else layer
    blob = {"gzip": gzip_bytes, "zstd": zstd_bytes, "": bytes}[compress](tar)
    media = {"gzip": mt.OCI_LAYER_GZIP, "zstd": mt.OCI_LAYER_ZSTD, "": mt.OCI_LAYER}[compress]
    opts = ApplyOptions(resolver=resolver, **options)  # type: ignore[arg-type]
    return apply_layer(root, io.BytesIO(blob), media, sha256(blob), sha256(tar), opts)


# --- regular files, modes, owners, times -----------------------------------------------------


@needs_root
def test_file_content_owner_mode_setuid_and_mtime(root: Path, resolver: str) -> None:
    layer = Layer().file("bin/tool", b"x" * 100_000, mode=0o6755, uid=1000, gid=1001, mtime=1_500_000_000)
    layer.file("tmp-ish", b"", mode=0o1777)
    report = apply(root, layer, resolver)
    info = (root / "bin/tool").lstat()
    assert (root / "bin/tool").read_bytes() == b"x" * 100_000
    assert stat.S_IMODE(info.st_mode) == 0o6755, "setuid/setgid survive because the mode follows the chown"
    assert (info.st_uid, info.st_gid) == (1000, 1001)
    assert info.st_mtime_ns == 1_500_000_000 * 10**9
    assert stat.S_IMODE((root / "tmp-ish").lstat().st_mode) == 0o1777
    assert report.entries == 2
    assert report.resolver == resolver


def test_missing_parent_directories_are_created(root: Path, resolver: str) -> None:
    apply(root, Layer().file("a/b/c/file", b"deep"), resolver)
    assert (root / "a/b/c/file").read_bytes() == b"deep"
    assert stat.S_IMODE((root / "a/b").stat().st_mode) == 0o755


def test_directory_mtime_is_set_after_its_contents(root: Path, resolver: str) -> None:
    layer = Layer().dir("d", mtime=1_234_567_890).file("d/one", b"1").dir("d/sub", mtime=1_000_000_000)
    layer.file("d/sub/two", b"2")
    apply(root, layer, resolver)
    assert (root / "d").stat().st_mtime_ns == 1_234_567_890 * 10**9
    assert (root / "d/sub").stat().st_mtime_ns == 1_000_000_000 * 10**9


def test_read_only_directory_mode_does_not_stop_the_layer(root: Path, resolver: str) -> None:
    apply(root, Layer().dir("ro", mode=0o555).file("ro/inside", b"ok"), resolver)
    assert (root / "ro/inside").read_bytes() == b"ok"
    assert stat.S_IMODE((root / "ro").stat().st_mode) == 0o555


def test_root_entry_sets_the_roots_attributes(root: Path, resolver: str) -> None:
    apply(root, Layer().dir("./", mode=0o700, mtime=1_111_111_111).file("f"), resolver)
    info = root.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_mtime_ns == 1_111_111_111 * 10**9


# --- changeset over existing files -----------------------------------------------------------


@needs_root
def test_directory_over_directory_keeps_children_and_replaces_attributes(root: Path, resolver: str) -> None:
    apply(root, Layer().dir("d", mode=0o700, xattrs={"user.old": b"1"}).file("d/lower", b"l"), resolver)
    apply(
        root, Layer().dir("d", mode=0o751, uid=5, gid=6, xattrs={"user.new": b"2"}).file("d/upper"), resolver
    )
    info = (root / "d").lstat()
    assert stat.S_IMODE(info.st_mode) == 0o751
    assert (info.st_uid, info.st_gid) == (5, 6)
    assert sorted(os.listdir(root / "d")) == ["lower", "upper"]
    assert os.listxattr(root / "d") == ["user.new"], "a replaced directory keeps only the entry's xattrs"


def test_file_is_recreated_never_written_through_a_lower_hardlink(root: Path, resolver: str) -> None:
    apply(root, Layer().file("a", b"lower").hardlink("b", "a"), resolver)
    inode = (root / "a").lstat().st_ino
    apply(root, Layer().file("a", b"upper"), resolver)
    assert (root / "a").read_bytes() == b"upper"
    assert (root / "a").lstat().st_ino != inode
    assert (root / "b").read_bytes() == b"lower", "the other name of the old inode must keep its content"


@pytest.mark.parametrize(
    ("lower", "upper", "expected"),
    [
        (Layer().dir("p").file("p/child"), Layer().file("p", b"now a file"), stat.S_IFREG),
        (Layer().file("p"), Layer().dir("p"), stat.S_IFDIR),
        (Layer().dir("p").file("p/child"), Layer().symlink("p", "elsewhere"), stat.S_IFLNK),
        (Layer().symlink("p", "target").dir("target").file("target/keep"), Layer().dir("p"), stat.S_IFDIR),
        (Layer().file("p"), Layer().fifo("p"), stat.S_IFIFO),
    ],
    ids=["dir->file", "file->dir", "dir->symlink", "symlink->dir", "file->fifo"],
)
def test_type_changes_unlink_then_create(
    root: Path, resolver: str, lower: Layer, upper: Layer, expected: int
) -> None:
    apply(root, lower, resolver)
    apply(root, upper, resolver)
    assert stat.S_IFMT((root / "p").lstat().st_mode) == expected
    assert not (root / "p/child").exists()
    if (root / "target").exists():
        assert (root / "target/keep").exists(), "replacing a symlink never touches what it pointed at"


def test_duplicate_paths_last_one_wins(root: Path, resolver: str) -> None:
    layer = Layer().file("f", b"first").file("f", b"second").file("x", b"file").dir("x")
    layer.dir("d", mode=0o700).dir("d", mode=0o750)
    apply(root, layer, resolver)
    assert (root / "f").read_bytes() == b"second"
    assert (root / "x").is_dir()
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o750


# --- links and special files -----------------------------------------------------------------


@needs_root
def test_symlink_is_stored_verbatim_with_its_own_owner(root: Path, resolver: str) -> None:
    apply(root, Layer().symlink("abs", "/etc/shadow", uid=7, gid=8).symlink("rel", "../../x"), resolver)
    assert os.readlink(root / "abs") == "/etc/shadow"
    assert os.readlink(root / "rel") == "../../x"
    info = (root / "abs").lstat()
    assert (info.st_uid, info.st_gid) == (7, 8)


def test_hardlinks_share_the_inode_and_may_point_at_lower_layers(root: Path, resolver: str) -> None:
    apply(root, Layer().file("lower", b"data"), resolver)
    apply(root, Layer().file("f", b"x").hardlink("g", "f").hardlink("h", "./lower"), resolver)
    assert (root / "f").lstat().st_ino == (root / "g").lstat().st_ino
    assert (root / "h").lstat().st_ino == (root / "lower").lstat().st_ino
    assert (root / "f").lstat().st_nlink == 2


def test_hardlink_to_a_symlink_links_the_symlink_itself(root: Path, resolver: str) -> None:
    apply(root, Layer().file("real", b"r").symlink("link", "real").hardlink("hard", "link"), resolver)
    assert (root / "hard").is_symlink()
    assert (root / "hard").lstat().st_ino == (root / "link").lstat().st_ino


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (Layer().hardlink("h", "missing"), "does not exist"),
        (Layer().dir("d").hardlink("h", "d"), "cannot be linked"),
    ],
)
def test_bad_hardlinks_fail_clearly(root: Path, resolver: str, layer: Layer, message: str) -> None:
    with pytest.raises(LayerError, match=message):
        apply(root, layer, resolver)


@needs_root
def test_devices_and_fifos_as_root(root: Path, resolver: str) -> None:
    apply(
        root, Layer().chardev("dev/null", 1, 3, mode=0o666).blockdev("dev/loop9", 7, 9).fifo("pipe"), resolver
    )
    null = (root / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode)
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_ISBLK((root / "dev/loop9").lstat().st_mode)
    assert stat.S_ISFIFO((root / "pipe").lstat().st_mode)


def test_rootless_option_skips_devices_and_ownership(root: Path, resolver: str) -> None:
    warnings: list[str] = []
    layer = Layer().chardev("dev/null", 1, 3).fifo("pipe").file("owned", b"o", uid=1234, gid=1234)
    report = apply(root, layer, resolver, rootless=True, on_warning=warnings.append)
    assert not (root / "dev/null").exists()
    assert stat.S_ISFIFO((root / "pipe").lstat().st_mode)
    assert (root / "owned").lstat().st_uid == os.geteuid()
    assert report.rootless
    assert any("character device skipped" in w for w in report.warnings)
    assert warnings == report.warnings


def _as_nobody(request: pytest.FixtureRequest, layers: list[bytes]) -> tuple[Path, str]:
    """Apply ``layers`` (tars) in a forked child running as uid/gid 65534 into a fresh
    directory it owns; the target and what the child said (rootless flag, warning count)."""
    # pytest's own temporary directories are private to root: use a traversable one.
    holder = Path(tempfile.mkdtemp(prefix="ocikit-rootless-"))
    holder.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(holder))
    target = holder / "rootless"
    target.mkdir()
    os.chown(target, 65534, 65534)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            said = []
            for tar in layers:
                blob = gzip_bytes(tar)
                report = apply_layer(target, io.BytesIO(blob), mt.OCI_LAYER_GZIP, sha256(blob), sha256(tar))
                said.append(f"{report.rootless} {len(report.warnings)}")
            os.write(write_end, ",".join(said).encode())
            status = 0
        except BaseException as error:
            os.write(write_end, repr(error).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, said
    return target, said


@needs_root
def test_really_unprivileged_process_applies_a_layer(request: pytest.FixtureRequest) -> None:
    """A process that is not root: auto rootless, owners mapped to the caller, devices skipped."""
    tar = Layer().dir("etc", uid=0).file("etc/f", b"hi", uid=0, mode=0o4755).chardev("null", 1, 3).tar()
    target, said = _as_nobody(request, [tar])
    assert said == "True 1"
    info = (target / "etc/f").lstat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (65534, 0o4755)
    assert not (target / "null").exists()


@needs_root
def test_rootless_changes_inside_read_only_lower_directories(request: pytest.FixtureRequest) -> None:
    """Rootless, a read-only directory of a lower layer is opened up for the layer, then restored."""
    lower = Layer().dir("ro", mode=0o555).file("ro/a").dir("tree", mode=0o555).dir("tree/sub", mode=0o500)
    lower.file("tree/sub/x")
    upper = Layer().whiteout("ro", "a").file("ro/b", b"new").whiteout("", "tree")
    target, said = _as_nobody(request, [lower.tar(), upper.tar()])
    assert said == "True 0,True 0"
    assert sorted(os.listdir(target / "ro")) == ["b"]
    assert stat.S_IMODE((target / "ro").stat().st_mode) == 0o555
    assert not (target / "tree").exists()


# --- extended attributes ---------------------------------------------------------------------


@needs_root
def test_xattrs_including_file_capabilities_survive_the_chown(root: Path, resolver: str) -> None:
    # VFS_CAP_REVISION_2 granting cap_net_bind_service (bit 10), permitted + effective.
    capability = bytes.fromhex("01000002" + "00040000" + "00000000" + "00000000" + "00000000")
    layer = Layer().file("ping", b"elf", uid=0, gid=0, mode=0o755, xattrs={"security.capability": capability})
    layer.file("plain", b"", xattrs={"user.comment": b"\x00binary\xff"})
    apply(root, layer, resolver)
    assert os.getxattr(root / "ping", "security.capability") == capability
    assert os.getxattr(root / "plain", "user.comment") == b"\x00binary\xff"


def test_overlay_xattrs_from_the_image_are_refused(root: Path, resolver: str) -> None:
    layer = Layer().dir("d", xattrs={"trusted.overlay.opaque": b"y", "user.overlay.redirect": b"/etc"})
    report = apply(root, layer, resolver)
    names = os.listxattr(root / "d")
    assert not any("overlay" in name for name in names)
    assert sum("overlayfs metadata" in w for w in report.warnings) == 2


# --- whiteouts -------------------------------------------------------------------------------


def test_explicit_whiteouts_remove_files_and_whole_directories(root: Path, resolver: str) -> None:
    apply(root, Layer().file("file1").file("a/file2").dir("b").file("b/deep/x").file("c/file3"), resolver)
    report = apply(
        root, Layer().whiteout("", "file1").whiteout("a", "file2").whiteout("", "b").file("file4"), resolver
    )
    assert tree_of(root) == {"a", "c", "c/file3", "file4"}
    assert report.whiteouts == 3


def test_whiteout_of_something_absent_is_harmless(root: Path, resolver: str) -> None:
    apply(root, Layer().whiteout("", "nothing").whiteout("no/such/dir", "x"), resolver)
    assert tree_of(root) == set()


@pytest.mark.parametrize("opaque_first", [True, False])
def test_opaque_whiteout_hides_lower_children_wherever_it_sits(
    root: Path, resolver: str, opaque_first: bool
) -> None:
    apply(root, Layer().file("a/b/c/bar").file("a/keep-not").file("other/stays"), resolver)
    upper = Layer().dir("a")
    if opaque_first:
        upper.opaque("a")
    upper.dir("a/b").dir("a/b/c").file("a/b/c/foo")
    if not opaque_first:
        upper.opaque("a")
    apply(root, upper, resolver)
    assert tree_of(root) == {"a", "a/b", "a/b/c", "a/b/c/foo", "other", "other/stays"}


def test_opaque_whiteout_of_the_root(root: Path, resolver: str) -> None:
    apply(root, Layer().file("old").dir("olddir"), resolver)
    apply(root, Layer().file("new").opaque(""), resolver)
    assert tree_of(root) == {"new"}


def test_a_whiteout_does_not_hide_entries_of_its_own_layer(root: Path, resolver: str) -> None:
    apply(root, Layer().file("d/lower").file("f", b"lower"), resolver)
    apply(
        root,
        Layer().file("f", b"same layer").whiteout("", "f").dir("d").file("d/mine").whiteout("", "d"),
        resolver,
    )
    assert (root / "f").read_bytes() == b"same layer"
    assert tree_of(root) == {"f", "d", "d/mine"}, "the whiteout of d hides only the lower d/lower"


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "dir/.wh.", "dir/.wh.."])
def test_invalid_whiteout_names_are_refused(root: Path, resolver: str, name: str) -> None:
    with pytest.raises(UnsafePath, match="whiteout"):
        apply(root, Layer().file("dir/x").file(name), resolver)


def test_aufs_metadata_is_skipped_with_a_warning(root: Path) -> None:
    report = apply(root, Layer().file(".wh..wh.aufs").dir(".wh..wh.plnk").file(".wh..wh.plnk/1.2"))
    assert tree_of(root) == set()
    assert len(report.warnings) == 3


# --- tar formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("gnu", [False, True], ids=["pax", "gnu"])
def test_long_names_and_long_link_targets(root: Path, resolver: str, gnu: bool) -> None:
    long_dir = "/".join(["directory-with-a-long-name"] * 8)
    long_target = "t" * 200
    layer = Layer(gnu=gnu).file(f"{long_dir}/file", b"deep").symlink(f"{long_dir}/sym", long_target)
    layer.hardlink(f"{long_dir}/hard", f"{long_dir}/file")
    apply(root, layer, resolver)
    assert (root / long_dir / "file").read_bytes() == b"deep"
    assert os.readlink(root / long_dir / "sym") == long_target
    assert (root / long_dir / "hard").lstat().st_nlink == 2


def test_python_tarfile_written_pax_and_gnu_archives(root: Path) -> None:
    """Archives from an independent writer (the standard library's tarfile)."""
    import tarfile

    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
            long_name = "/".join(["n" * 60] * (1 if fmt == tarfile.USTAR_FORMAT else 5))
            info = tarfile.TarInfo(f"dir/{long_name}")
            info.size = 5
            info.mtime = 1_700_000_000
            archive.addfile(info, io.BytesIO(b"hello"))
        target = root / str(fmt)
        target.mkdir()
        apply(target, buffer.getvalue())
        written = target / "dir" / long_name
        assert written.read_bytes() == b"hello"
        assert written.stat().st_mtime_ns == 1_700_000_000 * 10**9


def test_pax_fractional_mtime_and_large_ids(root: Path) -> None:
    layer = Layer().file("f", b"", pax={b"mtime": b"1700000000.123456789", b"uid": b"3000000"})
    apply(root, layer)
    info = (root / "f").lstat()
    assert info.st_mtime_ns == 1_700_000_000_123_456_789
    if IS_ROOT:
        assert info.st_uid == 3_000_000


# --- media types, compression, digests -------------------------------------------------------


@pytest.mark.parametrize("media_type", sorted(mt.LAYER_TYPES))
def test_every_layer_media_type(root: Path, media_type: str) -> None:
    tar = Layer().file("f", b"content").tar()
    compression = mt.layer_compression(media_type)
    blob = {"gzip": gzip_bytes, "zstd": zstd_bytes, "": bytes}[compression or ""](tar)
    report = apply_layer(root, io.BytesIO(blob), media_type, sha256(blob), sha256(tar))
    assert (root / "f").read_bytes() == b"content"
    assert (report.digest, report.diff_id) == (sha256(blob), sha256(tar))


def test_unknown_media_type_is_refused(root: Path) -> None:
    with pytest.raises(UnsupportedMediaType, match="not a layer media type"):
        apply_layer(root, io.BytesIO(b""), "application/x-rar", None, None)


def test_blob_given_as_a_path_and_digests_computed_when_not_given(root: Path, tmp_path: Path) -> None:
    tar = Layer().file("f", b"x").tar()
    blob = tmp_path / "blob"
    blob.write_bytes(zstd_bytes(tar))
    report = apply_layer(root, blob, mt.DOCKER_LAYER_ZSTD, None, None)
    assert report.digest == sha256(blob.read_bytes())
    assert report.diff_id == sha256(tar)
    assert report.compressed_size == blob.stat().st_size
    assert report.uncompressed_size == len(tar)


def test_concatenated_gzip_members_and_zstd_frames(root: Path) -> None:
    first = Layer().file("a", b"1").tar(end=False)
    second = Layer().file("b", b"2").tar()
    tar = first + second
    for blob, media in (
        (gzip_bytes(first) + gzip_bytes(second), mt.OCI_LAYER_GZIP),
        (zstd_bytes(first) + zstd_bytes(second), mt.OCI_LAYER_ZSTD),
    ):
        report = apply_layer(root, io.BytesIO(blob), media, sha256(blob), sha256(tar))
        assert tree_of(root) == {"a", "b"}
        assert report.uncompressed_size == len(tar)


def test_zero_padding_after_the_end_marker_is_hashed(root: Path) -> None:
    tar = Layer().file("f", b"x").tar(trailing=bytes(10240 - 2048))
    report = apply(root, tar)
    assert report.diff_id == sha256(tar)
    assert report.uncompressed_size == len(tar)


def test_missing_end_marker_is_accepted_with_a_warning(root: Path) -> None:
    report = apply(root, Layer().file("f", b"x").tar(end=False))
    assert (root / "f").exists()
    assert any("end-of-archive" in w for w in report.warnings)


def test_diff_id_checked_even_when_the_digest_matches(root: Path) -> None:
    tar = Layer().file("f").tar()
    blob = gzip_bytes(tar)
    with pytest.raises(DiffIDMismatch, match="diffID"):
        apply_layer(root, io.BytesIO(blob), mt.OCI_LAYER_GZIP, sha256(blob), sha256(b"other"))


# --- properties ------------------------------------------------------------------------------

_segment = st.text(alphabet="abcdefghij-_.0123", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..") and not s.startswith(".wh.")
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.dictionaries(
        st.lists(_segment, min_size=1, max_size=4).map("/".join), st.binary(max_size=3000), max_size=25
    )
)
def test_any_tree_applies_the_same_with_both_resolvers(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]
) -> None:
    # A file that a later name uses as a directory is an error (ENOTDIR), as with tar.
    assume(not any(other.startswith(name + "/") for name in files for other in files))
    layer = Layer()
    for name, data in files.items():
        layer.file(name, data)
    results = []
    for resolver in ("openat2", "walk"):
        target = tmp_path_factory.mktemp(resolver)
        apply(target, layer, resolver)
        for name, data in files.items():
            assert (target / name).read_bytes() == data
        results.append(snapshot(target, with_times=False))
    assert results[0] == results[1]
