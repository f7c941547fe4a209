"""Remembered blob locations and cross-repository mounts (``ocikit.client.locations``), against
``ocikit serve`` and CNCF distribution, the latter also behind token auth that keeps one
repository from one user.

Which requests a push sends is read off a pass-through proxy in front of the registry, so the
tests see what went over the wire, not what the client believes it sent.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from client_servers import CuttingProxy, TokenSetup, start_token_distribution
from conftest import OCIKIT
from ocikit.client import ClientOptions
from ocikit.client.locations import BlobLocations, default_path
from ocikit.client.transports import copy_between
from ocikit.spec import VerificationError
from ocikit.store.copy import CopyResult
from store_helpers import build_image, write_layout
from test_client_registry import distribution  # noqa: F401  (a fixture)

T = TypeVar("T")
ALICE, BOB = ("alice", "alice-secret"), ("bob", "bob-secret")


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


def repo(prefix: str = "mounts") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["ocikit", "distribution"])
def proxied(request: pytest.FixtureRequest) -> Iterator[CuttingProxy]:
    """``ocikit serve`` or CNCF distribution behind a proxy that never cuts: it only records
    each request's head."""
    server = request.getfixturevalue("registry" if request.param == "ocikit" else "distribution")
    host, _, port = server.host.rpartition(":")
    proxy = CuttingProxy((host, int(port)), after=1 << 62).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, int]:
    """A one-platform image in a layout (``oci:PATH:demo``) and its number of blobs."""
    image = build_image("mounts", platforms=("amd64",), payload=300_000)
    write_layout(tmp_path / "layout", {"demo": image})
    return tmp_path / "layout", len(image.blobs) - 1  # blobs minus the manifest


def requests(proxy: CuttingProxy, since: int = 0) -> list[str]:
    """``METHOD TARGET`` of each request the proxy saw."""
    return [" ".join(head.split(b"\r\n", 1)[0].decode().split(" ")[:2]) for head in proxy.heads[since:]]


def blob_uploads(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("PUT", "PATCH")) and "/blobs/uploads/" in line]


def copy(source: str, destination: str, options: ClientOptions | None = None) -> CopyResult:
    return run(copy_between(source, destination, client_options=options))


# ---------------------------------------------------------------- the record itself


def test_record_keeps_the_newest_entries_and_forgets(tmp_path: Path) -> None:
    record = BlobLocations(tmp_path / "cache" / "locations.sqlite", limit=5)
    for number in range(8):
        record.note("r.example", f"repo{number}", "sha256:" + "a" * 64)
    record.flush()
    assert record.candidates("r.example", "sha256:" + "a" * 64) == ["repo7", "repo6", "repo5"]
    with sqlite3.connect(record.path) as db:
        assert db.execute("SELECT count(*) FROM locations").fetchone()[0] == 5
    record.forget("r.example", "repo7", "sha256:" + "a" * 64)
    assert "repo7" not in record.candidates("r.example", "sha256:" + "a" * 64)  # before flushing
    record.flush()
    fresh = BlobLocations(record.path)
    assert fresh.candidates("r.example", "sha256:" + "a" * 64, exclude="repo6") == ["repo5", "repo4", "repo3"]
    assert fresh.candidates("other.example", "sha256:" + "a" * 64) == []


_WRITER = """
import sys
from pathlib import Path
from ocikit.client.locations import BlobLocations
record = BlobLocations(Path(sys.argv[1]))
for batch in range(20):
    for item in range(10):
        record.note("r.example", f"w{sys.argv[2]}", f"sha256:{batch:032d}{item:032d}")
    record.flush()
"""


def test_record_is_safe_under_concurrent_processes(tmp_path: Path) -> None:
    path = tmp_path / "locations.sqlite"
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(n)]) for n in range(4)]
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0, 0, 0]
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT repository, count(*) FROM locations GROUP BY repository").fetchall()
    assert sorted(rows) == [(f"w{n}", 200) for n in range(4)]


def test_an_unusable_record_is_an_empty_one(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    for path in (garbage, blocked / "locations.sqlite"):
        record = BlobLocations(path)
        record.note("r.example", "repo", "sha256:" + "b" * 64)
        record.flush()
        assert record.candidates("r.example", "sha256:" + "c" * 64) == []
    assert garbage.read_bytes() == b"this is not a database" * 100


def test_a_malformed_record_is_replaced_by_an_empty_one(tmp_path: Path) -> None:
    """What a system crash can leave of a record that is never synced: its pages garbled behind
    a valid header. The next use starts a new record instead of going without one for good."""
    path = tmp_path / "locations.sqlite"
    record = BlobLocations(path)
    for number in range(300):
        record.note("r.example", f"repo{number}", f"sha256:{number:064d}")
    record.flush()
    del record
    gc.collect()  # the connection closes, checkpointing the WAL into the file
    data = bytearray(path.read_bytes())
    assert len(data) > 8192
    data[4096:] = b"\xff" * (len(data) - 4096)
    path.write_bytes(bytes(data))
    check = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        check.execute("SELECT count(*) FROM locations").fetchone()
    check.close()
    fresh = BlobLocations(path)
    assert fresh.candidates("r.example", f"sha256:{5:064d}") == []
    fresh.note("r.example", "again", "sha256:" + "d" * 64)
    fresh.flush()
    assert BlobLocations(path).candidates("r.example", "sha256:" + "d" * 64) == ["again"]


def test_the_record_lives_in_the_users_cache_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_path() == tmp_path / "ocikit" / "blob-locations.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".cache" / "ocikit" / "blob-locations.sqlite"


# ---------------------------------------------------------------- mounts on push


def test_a_second_push_to_a_new_repository_mounts_every_blob(
    proxied: CuttingProxy, layout: tuple[Path, int], tmp_path: Path
) -> None:
    """Two processes, as a user runs them: the record survives between them."""
    path, blobs = layout
    first, second = f"docker://{proxied.host}/{repo()}:v1", f"docker://{proxied.host}/{repo()}:v1"
    summaries = []
    for target in (first, second):
        done = subprocess.run(
            [*OCIKIT, "copy", "--format", "json", f"oci:{path}:demo", target],
            capture_output=True,
            text=True,
            check=True,
        )
        summaries.append(json.loads(done.stdout.splitlines()[-1]))
    assert summaries[0]["blobsCopied"] == blobs
    assert summaries[1]["blobsCopied"] == 0
    assert summaries[1]["bytesCopied"] == 0
    lines = requests(proxied)
    second_push = lines[next(i for i, line in enumerate(lines) if second.split("/", 3)[3][:-3] in line) :]
    assert blob_uploads(second_push) == []
    assert sum("?mount=" in line for line in second_push) == blobs
    assert not any(line.startswith("HEAD") and "/blobs/" in line for line in second_push)
    # One tag: one PUT, by that tag, on a registry without the tag parameter too.
    manifest_puts = [line for line in second_push if line.startswith("PUT") and "/manifests/" in line]
    assert manifest_puts == [f"PUT /v2/{second.split('/', 3)[3][:-3]}/manifests/v1"]
    back = copy(second, f"oci:{tmp_path / 'back'}:demo")
    assert back.blobs_copied == blobs


def test_a_push_by_mounts_never_reads_the_layout_blobs(
    proxied: CuttingProxy, layout: tuple[Path, int], tmp_path: Path
) -> None:
    """A mount needs the digest and size the manifest gives, not the bytes: after the first
    push the layout's blobs can be gone and a second push still succeeds, by mounts. A blob
    that has to be uploaded is still read and verified: without the record it fails."""
    path, blobs = layout
    copy(f"oci:{path}:demo", f"docker://{proxied.host}/{repo()}:v1")
    index = json.loads((path / "index.json").read_text())
    manifest = index["manifests"][0]["digest"].removeprefix("sha256:")
    for blob in (path / "blobs" / "sha256").iterdir():
        if blob.name != manifest:
            blob.write_bytes(b"not the blob")  # unreadable as the blob: wrong size, wrong digest
    again = copy(f"oci:{path}:demo", f"docker://{proxied.host}/{repo()}:v1")
    assert (again.blobs_copied, again.blobs_skipped, again.bytes_copied) == (0, blobs, 0)
    forgetful = ClientOptions(remember_blobs=False)
    with pytest.raises(VerificationError):
        copy(f"oci:{path}:demo", f"docker://{proxied.host}/{repo()}:v1", forgetful)


def test_push_of_a_pulled_image_mounts_from_where_it_was_pulled(
    proxied: CuttingProxy, layout: tuple[Path, int], tmp_path: Path
) -> None:
    """``ocikit pull`` notes where the blobs came from; ``ocikit push`` of the stored image to
    another repository of that registry mounts them from there."""
    path, blobs = layout
    first, second = f"{proxied.host}/{repo()}:v1", f"{proxied.host}/{repo()}:v1"
    copy(f"oci:{path}:demo", f"docker://{first}", ClientOptions(remember_blobs=False))
    store = ["--store", str(tmp_path / "store")]
    subprocess.run([*OCIKIT, "pull", "-q", *store, first], check=True, capture_output=True)
    before = len(proxied.heads)
    done = subprocess.run(
        [*OCIKIT, "push", "--format", "json", *store, first, f"docker://{second}"],
        check=True,
        capture_output=True,
        text=True,
    )
    summary = json.loads(done.stdout.splitlines()[-1])
    assert (summary["blobsCopied"], summary["bytesCopied"]) == (0, 0)
    lines = requests(proxied, before)
    assert sum("?mount=" in line for line in lines) == blobs
    assert blob_uploads(lines) == []


def test_copy_between_repositories_mounts_and_never_downloads(
    proxied: CuttingProxy, layout: tuple[Path, int]
) -> None:
    path, blobs = layout
    forgetful = ClientOptions(remember_blobs=False)  # the source alone says where to mount from
    first, second = f"docker://{proxied.host}/{repo()}:v1", f"docker://{proxied.host}/{repo()}:v1"
    copy(f"oci:{path}:demo", first, forgetful)
    before = len(proxied.heads)
    result = copy(first, second, forgetful)
    lines = requests(proxied, before)
    assert (result.blobs_copied, result.blobs_skipped, result.bytes_copied) == (0, blobs, 0)
    assert not any(line.startswith("GET") and "/blobs/" in line for line in lines)
    assert blob_uploads(lines) == []


def test_a_stale_record_costs_one_request_and_the_push_succeeds(
    proxied: CuttingProxy, tmp_path: Path
) -> None:
    """Every blob's remembered repository never had it. The upload each refused mount started
    carries the blob, in one PUT or (above 4 MiB) in chunks."""
    image = build_image("stale", platforms=("amd64",), payload=(4 << 20) + 65536)
    path, blobs = tmp_path / "layout", len(image.blobs) - 1
    write_layout(path, {"demo": image})
    record = BlobLocations(default_path())
    manifest = json.loads((path / "index.json").read_text())["manifests"][0]["digest"]
    digests = [p.name for p in (path / "blobs" / "sha256").iterdir() if f"sha256:{p.name}" != manifest]
    gone = repo("never-pushed")
    for digest in digests:
        record.note(proxied.host, gone, f"sha256:{digest}")
    record.flush()
    target = f"docker://{proxied.host}/{repo()}:v1"
    result = copy(f"oci:{path}:demo", target)
    stale = requests(proxied)
    assert result.blobs_copied == blobs
    assert sum(f"from={gone.replace('/', '%2F')}" in line for line in stale) == blobs

    before = len(proxied.heads)
    copy(f"oci:{path}:demo", f"docker://{proxied.host}/{repo()}:v1", ClientOptions(remember_blobs=False))
    plain = requests(proxied, before)
    # The upload the refused mount started carries the blob: no more requests than without it.
    assert len(stale) == len(plain)
    remembered = BlobLocations(default_path()).candidates(proxied.host, f"sha256:{digests[0]}")
    assert remembered == [target.split("/", 3)[3][:-3]]  # the stale entry gone, the push noted
    assert copy(target, f"oci:{tmp_path / 'back'}:demo").blobs_copied == blobs


# ---------------------------------------------------------------- credentials


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenSetup]:
    setup = start_token_distribution(tmp_path_factory.mktemp("token-mounts"), dict([ALICE, BOB]))
    yield setup
    setup.stop()


@pytest.mark.parametrize("refused", [False, True], ids=["scope-left-out", "token-refused"])
def test_never_mounts_from_a_repository_the_credentials_cannot_read(
    token_registry: TokenSetup, layout: tuple[Path, int], refused: bool
) -> None:
    """Alice pushes to a repository Bob may not read; Bob's push of the same blobs, with the
    record naming Alice's repository, asks for pull there, is turned down and uploads."""
    path, blobs = layout
    host, tokens = token_registry.registry.host, token_registry.tokens
    secret = repo("secret")
    tokens.unreadable.add((BOB[0], secret))
    tokens.refuse_unreadable = refused
    try:
        copy(f"oci:{path}:demo", f"docker://{host}/{secret}:v1", ClientOptions(credentials=ALICE))
        before = len(tokens.requests)
        target = f"docker://{host}/{repo('bob')}:v1"
        result = copy(f"oci:{path}:demo", target, ClientOptions(credentials=BOB))
    finally:
        tokens.refuse_unreadable = False
    assert (result.blobs_copied, result.bytes_copied > 0) == (blobs, True)
    asked = [scope for request in tokens.requests[before:] for scope in request["scopes"]]
    assert f"repository:{secret}:pull" in asked
    bob_copy = copy(target, f"oci:{path.parent / 'bob'}:demo", ClientOptions(credentials=BOB))
    assert bob_copy.blobs_copied == blobs


def test_mounts_from_a_readable_repository_behind_token_auth(
    token_registry: TokenSetup, layout: tuple[Path, int]
) -> None:
    path, blobs = layout
    host = token_registry.registry.host
    alice = ClientOptions(credentials=ALICE)
    copy(f"oci:{path}:demo", f"docker://{host}/{repo('alice')}:v1", alice)
    result = copy(f"oci:{path}:demo", f"docker://{host}/{repo('alice')}:v1", alice)
    assert (result.blobs_copied, result.blobs_skipped) == (0, blobs)
