"""Interop with skopeo, a real registry client nobody here wrote.

Images are built as OCI image layouts by umoci (three layers of different files per image,
plus a two-platform index written beside them), pushed to ``ocikit serve`` with skopeo,
copied between repositories and pulled back; every blob and manifest must come back
byte for byte. Digests are preserved and nothing is recompressed, so any difference is the
registry's doing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cluster import Cluster
from conftest import ServerProcess, require_tool, start_registry

# Every test here pushes with skopeo, whose first request for each blob is a HEAD that the
# registry must answer 404; it answers 500 instead (see test_interop_bugs.py), and skopeo
# gives up. With that bug fixed (checked with a patched copy of the registry) all four pass.
pytestmark = [pytest.mark.timeout(120)]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
PLATFORMS = ("amd64", "arm64")


def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool; with ``ok`` it must succeed, and its stderr is shown when it does not."""
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=90, check=False)
    if ok:
        assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stderr}{result.stdout}"
    return result


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layout:
    """An OCI image layout on disk, read the way the image-layout spec lays it out."""

    path: Path

    def blob(self, digest: str) -> bytes:
        algorithm, encoded = digest.split(":")
        return (self.path / "blobs" / algorithm / encoded).read_bytes()

    def json(self, digest: str) -> dict:
        return json.loads(self.blob(digest))

    def index(self) -> dict:
        return json.loads((self.path / "index.json").read_text())

    def tagged(self, tag: str) -> dict:
        """The descriptor index.json holds for a tag."""
        found = [
            d
            for d in self.index()["manifests"]
            if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
        ]
        assert len(found) == 1, f"{self.path} has {len(found)} entries tagged {tag!r}"
        return found[0]

    def reachable(self, digest: str) -> set[str]:
        """Every blob a manifest or index needs, itself included."""
        node = self.json(digest)
        found = {digest}
        for child in node.get("manifests", []):
            found |= self.reachable(child["digest"])
        if "config" in node:
            found.add(node["config"]["digest"])
        found |= {layer["digest"] for layer in node.get("layers", [])}
        return found

    def blob_digests(self) -> set[str]:
        root = self.path / "blobs"
        return {
            f"{algorithm.name}:{blob.name}" for algorithm in root.iterdir() for blob in algorithm.iterdir()
        }


@dataclass
class Images:
    """The layout every test starts from: one image per platform and an index of both."""

    layout: Layout
    files: dict[str, dict[str, bytes]]  # platform -> path in the image -> content

    @property
    def path(self) -> Path:
        return self.layout.path


def _build_image(umoci: str, path: Path, work: Path, platform: str) -> dict[str, bytes]:
    image = f"{path}:{platform}"
    run(umoci, "new", "--image", image)
    run(umoci, "config", "--image", image, "--architecture", platform, "--os", "linux")
    files: dict[str, bytes] = {}
    for number in range(1, 4):  # three layers, each adding a directory of different files
        source = work / f"{platform}-layer{number}"
        source.mkdir()
        contents = {
            "data.bin": os.urandom(4096 * number),
            "note.txt": f"{platform} layer {number}\n".encode(),
        }
        for name, content in contents.items():
            (source / name).write_bytes(content)
            files[f"layer{number}/{name}"] = content
        run(umoci, "insert", "--image", image, source, f"/layer{number}")
    return files


@pytest.fixture(scope="session")
def registry(deployment: ServerProcess | Cluster) -> ServerProcess | Cluster:
    """Each test runs against one ``ocikit serve`` and against the three-replica deployment."""
    return deployment


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    umoci = require_tool("umoci", "builds the images the skopeo tests copy")
    work = tmp_path_factory.mktemp("skopeo-images")
    path = work / "layout"
    run(umoci, "init", "--layout", path)
    files = {platform: _build_image(umoci, path, work, platform) for platform in PLATFORMS}
    run(umoci, "gc", "--layout", path)
    layout = Layout(path)

    # umoci writes single images only: the two-platform index is written here, per image-spec.
    manifests = []
    for platform in PLATFORMS:
        descriptor = layout.tagged(platform)
        config = layout.json(layout.json(descriptor["digest"])["config"]["digest"])
        assert (config["architecture"], config["os"]) == (platform, "linux")
        manifests.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": descriptor["digest"],
                "size": descriptor["size"],
                "platform": {"architecture": platform, "os": "linux"},
            }
        )
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, indent=2).encode()
    (path / "blobs" / "sha256" / sha256(raw).split(":")[1]).write_bytes(raw)
    index = layout.index()
    index["manifests"].append(
        {
            "mediaType": OCI_INDEX,
            "digest": sha256(raw),
            "size": len(raw),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
    )
    (path / "index.json").write_text(json.dumps(index))
    return Images(layout, files)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start a registry of the test's own with extra ``ocikit serve`` flags."""
    servers: list[ServerProcess] = []

    def starter(root: Path, *flags: str) -> ServerProcess:
        servers.append(start_registry(root, extra=list(flags)))
        return servers[-1]

    yield starter
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def skopeo() -> str:
    return require_tool("skopeo")


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name of the test's own on the session registry."""
    return "interop/skopeo/" + request.node.originalname.removeprefix("test_").replace("_", "-")


def copy(skopeo: str, source: str, destination: str, *extra: str, preserve: bool = True) -> None:
    run(
        skopeo,
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        *(["--preserve-digests"] if preserve else []),
        *extra,
        source,
        destination,
    )


def assert_identical(source: Layout, tag: str, copied: Layout, copied_tag: str) -> None:
    """The copy holds exactly the blobs the source tag reaches, each byte for byte."""
    want = source.tagged(tag)
    got = copied.tagged(copied_tag)
    assert (got["digest"], got["size"], got["mediaType"]) == (want["digest"], want["size"], want["mediaType"])
    needed = source.reachable(want["digest"])
    assert copied.blob_digests() == needed
    for digest in needed:
        content = copied.blob(digest)
        assert sha256(content) == digest
        assert content == source.blob(digest), f"blob {digest} differs"


def access_log(server: ServerProcess, repository: str) -> list[str]:
    """``METHOD PATH STATUS BYTES DURATION`` of every request the registry (or each replica)
    logged for a repository."""
    marker = f" /v2/{repository}/"
    return [line for line in server.access_lines() if marker in line]


def test_push_then_pull_is_byte_identical(
    registry: ServerProcess, images: Images, skopeo: str, repo: str, tmp_path: Path
) -> None:
    remote = f"docker://{registry.host}/{repo}:v1"
    copy(skopeo, f"oci:{images.path}:amd64", remote)
    copy(skopeo, remote, f"oci:{tmp_path / 'out'}:v1")
    pulled = Layout(tmp_path / "out")
    assert_identical(images.layout, "amd64", pulled, "v1")

    # The registry serves the manifest in the bytes pushed, addressed by their digest.
    want = images.layout.tagged("amd64")
    response = httpx.get(f"{registry.url}/v2/{repo}/manifests/v1", headers={"accept": OCI_MANIFEST})
    assert response.status_code == 200
    assert response.content == images.layout.blob(want["digest"])
    assert response.headers["docker-content-digest"] == want["digest"]
    assert response.headers["content-type"] == OCI_MANIFEST

    # And the image pulled back unpacks into the files that went into its three layers.
    umoci = require_tool("umoci")
    run(umoci, "unpack", "--rootless", "--image", f"{tmp_path / 'out'}:v1", tmp_path / "bundle")
    rootfs = tmp_path / "bundle" / "rootfs"
    for name, content in images.files["amd64"].items():
        assert (rootfs / name).read_bytes() == content


def test_copy_across_repositories_mounts_and_round_trips(
    registry: ServerProcess, images: Images, skopeo: str, repo: str, tmp_path: Path
) -> None:
    first, second = f"{repo}/a", f"{repo}/b"
    copy(skopeo, f"oci:{images.path}:amd64", f"docker://{registry.host}/{first}:v1")
    copy(skopeo, f"docker://{registry.host}/{first}:v1", f"docker://{registry.host}/{second}:v2")
    copy(skopeo, f"docker://{registry.host}/{second}:v2", f"docker://{registry.host}/{first}:back")

    layers = images.layout.json(images.layout.tagged("amd64")["digest"])["layers"]
    # Every layer reached the second repository by a cross-repository mount (201 to the POST
    # that asks for one), not by uploading its bytes again; skopeo always uploads the small
    # config blob anew, so one upload session (POST 202, PUT 201) is all there may be.
    log = access_log(registry, second)
    assert sum(line.startswith(f"POST /v2/{second}/blobs/uploads/ 201 ") for line in log) == len(layers), log
    assert sum(line.startswith(f"PUT /v2/{second}/blobs/uploads/") for line in log) <= 1, log

    for repository, tag in ((second, "v2"), (first, "back")):
        out = tmp_path / repository.replace("/", "-")
        copy(skopeo, f"docker://{registry.host}/{repository}:{tag}", f"oci:{out}:{tag}")
        assert_identical(images.layout, "amd64", Layout(out), tag)


def test_list_tags_inspect_and_delete(
    registry: ServerProcess, images: Images, skopeo: str, repo: str
) -> None:
    tls = "--tls-verify=false"
    for tag in ("v1", "v2"):
        copy(skopeo, f"oci:{images.path}:amd64", f"docker://{registry.host}/{repo}:{tag}")
    copy(skopeo, f"oci:{images.path}:arm64", f"docker://{registry.host}/{repo}:other")

    listed = json.loads(run(skopeo, "list-tags", tls, f"docker://{registry.host}/{repo}").stdout)
    assert sorted(listed["Tags"]) == ["other", "v1", "v2"]

    want = images.layout.tagged("amd64")
    manifest = images.layout.json(want["digest"])
    remote = f"docker://{registry.host}/{repo}:v1"
    inspected = json.loads(run(skopeo, "inspect", tls, remote).stdout)
    assert inspected["Digest"] == want["digest"]
    assert inspected["Layers"] == [layer["digest"] for layer in manifest["layers"]]
    assert (inspected["Architecture"], inspected["Os"]) == ("amd64", "linux")
    assert sorted(inspected["RepoTags"]) == ["other", "v1", "v2"]

    assert run(skopeo, "inspect", tls, "--raw", remote).stdout.encode() == images.layout.blob(want["digest"])
    config = run(skopeo, "inspect", tls, "--raw", "--config", remote).stdout.encode()
    assert config == images.layout.blob(manifest["config"]["digest"])

    # skopeo deletes the manifest v1 points at, by digest: v1 and v2 go, "other" stays.
    run(skopeo, "delete", tls, remote)
    for tag in ("v1", "v2"):
        gone = run(skopeo, "inspect", tls, "--raw", f"docker://{registry.host}/{repo}:{tag}", ok=False)
        assert gone.returncode != 0
        assert "manifest unknown" in gone.stderr.lower(), gone.stderr
    by_digest = run(
        skopeo, "inspect", tls, "--raw", f"docker://{registry.host}/{repo}@{want['digest']}", ok=False
    )
    assert by_digest.returncode != 0
    listed = json.loads(run(skopeo, "list-tags", tls, f"docker://{registry.host}/{repo}").stdout)
    assert listed["Tags"] == ["other"]
    other = images.layout.tagged("arm64")["digest"]
    assert (
        json.loads(run(skopeo, "inspect", tls, f"docker://{registry.host}/{repo}:other").stdout)["Digest"]
        == other
    )


def test_multi_platform_index_with_all(
    registry: ServerProcess, images: Images, skopeo: str, repo: str, tmp_path: Path
) -> None:
    remote = f"docker://{registry.host}/{repo}:v1"
    copy(skopeo, f"oci:{images.path}:multi", remote, "--all")

    want = images.layout.tagged("multi")
    raw = run(skopeo, "inspect", "--tls-verify=false", "--raw", remote).stdout.encode()
    assert raw == images.layout.blob(want["digest"])
    for platform in PLATFORMS:
        inspected = json.loads(
            run(skopeo, "--override-arch", platform, "inspect", "--tls-verify=false", remote).stdout
        )
        # skopeo reports the digest of what the tag names, the index, and the platform's image.
        manifest = images.layout.json(images.layout.tagged(platform)["digest"])
        assert inspected["Digest"] == want["digest"]
        assert inspected["Layers"] == [layer["digest"] for layer in manifest["layers"]]
        assert inspected["Architecture"] == platform

    copy(skopeo, remote, f"oci:{tmp_path / 'out'}:v1", "--all")
    assert_identical(images.layout, "multi", Layout(tmp_path / "out"), "v1")

    # Each platform's manifest is also there by its digest, in the bytes pushed.
    for platform in PLATFORMS:
        digest = images.layout.tagged(platform)["digest"]
        by_digest = run(
            skopeo, "inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/{repo}@{digest}"
        )
        assert by_digest.stdout.encode() == images.layout.blob(digest)


def test_list_tags_follows_pagination(
    start: Callable[..., ServerProcess], images: Images, skopeo: str, tmp_path: Path
) -> None:
    """With two tags a page, skopeo must follow the registry's Link headers to see all five."""
    server = start(tmp_path / "data", "--page-size", "2")
    tags = ["a", "b", "c", "d", "e"]
    for tag in tags:
        copy(skopeo, f"oci:{images.path}:amd64", f"docker://{server.host}/paged:{tag}")
    page = httpx.get(f"{server.url}/v2/paged/tags/list")
    assert page.json()["tags"] == ["a", "b"]
    assert page.headers["link"] == '</v2/paged/tags/list?n=2&last=b>; rel="next"'
    listed = json.loads(
        run(skopeo, "list-tags", "--tls-verify=false", f"docker://{server.host}/paged").stdout
    )
    assert sorted(listed["Tags"]) == tags


def test_docker_schema2_conversion_keeps_layers(
    registry: ServerProcess, images: Images, skopeo: str, repo: str, tmp_path: Path
) -> None:
    """skopeo rewrites the OCI manifest as Docker schema 2 (new manifest, same layer bytes)."""
    remote = f"docker://{registry.host}/{repo}:v2s2"
    copy(skopeo, f"oci:{images.path}:amd64", remote, "--format", "v2s2", preserve=False)
    raw = run(skopeo, "inspect", "--tls-verify=false", "--raw", remote).stdout.encode()
    docker = json.loads(raw)
    assert docker["mediaType"] == DOCKER_MANIFEST
    oci = images.layout.json(images.layout.tagged("amd64")["digest"])
    assert [layer["digest"] for layer in docker["layers"]] == [layer["digest"] for layer in oci["layers"]]
    assert {layer["mediaType"] for layer in docker["layers"]} == {DOCKER_LAYER}

    response = httpx.get(f"{registry.url}/v2/{repo}/manifests/v2s2", headers={"accept": DOCKER_MANIFEST})
    assert response.status_code == 200
    assert response.headers["content-type"] == DOCKER_MANIFEST
    assert response.content == raw

    copy(skopeo, remote, f"oci:{tmp_path / 'out'}:v1", "--format", "oci", preserve=False)
    pulled = Layout(tmp_path / "out")
    for layer in oci["layers"]:
        assert pulled.blob(layer["digest"]) == images.layout.blob(layer["digest"])
