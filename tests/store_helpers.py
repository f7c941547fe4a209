"""Small but real images for the store and copy tests, built without ocikit's own writer.

Layers are real gzip-compressed tar files of different files; configs carry the diffIDs of
those tars; a two-platform index sits above two manifests that share their base layer. The
layout is written by hand (plain ``json``/``hashlib``), so that a bug in ocikit's layout
writer cannot hide a bug in its reader.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(value: object) -> bytes:
    """Indented JSON: deliberately not the compact form ocikit writes, so a re-serialisation
    anywhere along a copy would change a digest and be caught."""
    return json.dumps(value, indent=3).encode()


def layer_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of regular files (with their parent directories)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        seen: set[str] = set()
        for name, content in sorted(files.items()):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                directory = "/".join(parts[:i])
                if directory not in seen:
                    seen.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@dataclass
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


@dataclass
class BuiltImage:
    """What was written: the top document and every blob by digest."""

    top: Blob
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)  # platform "os/arch" -> manifest digest


def _manifest(arch: str, layers: list[bytes], created: str) -> tuple[Blob, list[Blob]]:
    compressed = [Blob(OCI_LAYER_GZIP, gzip.compress(tar, mtime=0)) for tar in layers]
    config = Blob(
        OCI_CONFIG,
        dumps(
            {
                "created": created,
                "architecture": arch,
                "os": "linux",
                "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": [sha256(tar) for tar in layers]},
                "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
            }
        ),
    )
    manifest = Blob(
        OCI_MANIFEST,
        dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor() for layer in compressed],
            }
        ),
    )
    return manifest, [config, *compressed]


def build_image(
    name: str = "demo", platforms: tuple[str, ...] = ("amd64", "arm64"), payload: int = 0
) -> BuiltImage:
    """A multi-layer image; with more than one platform, an index of one manifest each.

    The base layer is shared by all platforms, the others differ, so blob sharing and
    de-duplication are exercised.
    """
    base = layer_tar({"etc/os-release": b"NAME=demo\n", "bin/sh": b"#!fake shell\n" * 50})
    blobs: dict[str, bytes] = {}
    children: list[tuple[str, Blob]] = []
    for arch in platforms:
        files = {f"opt/{name}/{arch}/app": f"{name} for {arch}\n".encode() * 200}
        if payload:
            files[f"opt/{name}/{arch}/payload"] = os.urandom(payload)
        app = layer_tar(files)
        extra = layer_tar({f"usr/share/{name}/{arch}.txt": hashlib.sha512(arch.encode()).digest() * 40})
        manifest, parts = _manifest(arch, [base, app, extra], "2024-01-02T03:04:05Z")
        for blob in [manifest, *parts]:
            blobs[blob.digest] = blob.data
        children.append((arch, manifest))
    built = BuiltImage(top=children[0][1], blobs=blobs)
    built.manifests = {f"linux/{arch}": manifest.digest for arch, manifest in children}
    if len(platforms) > 1:
        index = Blob(
            OCI_INDEX,
            dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": [
                        manifest.descriptor(platform={"architecture": arch, "os": "linux"})
                        for arch, manifest in children
                    ],
                }
            ),
        )
        blobs[index.digest] = index.data
        built.top = index
    return built


def write_layout(
    path: Path, images: dict[str, BuiltImage], extra: list[dict[str, object]] | None = None
) -> None:
    """A layout holding ``images`` under their ref names, written without ocikit."""
    (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entries = []
    for tag, image in images.items():
        for digest, data in image.blobs.items():
            (path / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        entries.append(image.top.descriptor(annotations={REF_NAME: tag}))
    entries.extend(extra or [])
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))


def add_blob(path: Path, blob: Blob) -> None:
    (path / "blobs" / "sha256" / blob.digest.split(":")[1]).write_bytes(blob.data)


def referrer(subject: Blob, artifact_type: str, payload: bytes) -> tuple[Blob, list[Blob]]:
    """An artifact manifest (a 'signature') whose subject is ``subject``."""
    empty = Blob("application/vnd.oci.empty.v1+json", b"{}")
    layer = Blob("application/octet-stream", payload)
    manifest = Blob(
        OCI_MANIFEST,
        dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": empty.descriptor(),
                "layers": [layer.descriptor()],
                "subject": subject.descriptor(),
                "annotations": {"org.example.kind": "signature"},
            }
        ),
    )
    return manifest, [empty, layer]


def layout_files(path: Path) -> dict[str, bytes]:
    """Every blob of a layout by digest."""
    return {
        f"{algorithm.name}:{blob.name}": blob.read_bytes()
        for algorithm in (path / "blobs").iterdir()
        for blob in algorithm.iterdir()
    }


def tagged(path: Path, tag: str) -> dict[str, object]:
    found = [
        d
        for d in json.loads((path / "index.json").read_text())["manifests"]
        if d.get("annotations", {}).get(REF_NAME) == tag
    ]
    assert len(found) == 1, f"{path} has {len(found)} entries tagged {tag!r}"
    return found[0]


def run(*args: str | Path, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if ok:
        assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stderr}{result.stdout}"
    return result
