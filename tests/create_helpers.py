"""What the ``ocikit create`` end-to-end tests share: images written as OCI layouts (several
platforms, any config), the CLI run as a real process against a private store and snapshot
directory, and the snapshotters those processes used, opened afterwards to inspect them.

Adding a snapshotter to every create test means adding a :class:`Backend` to
:data:`BACKENDS` (with the CLI options it needs, e.g. ``--zfs-dataset``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from layer_helpers import gzip_bytes, sha256, write_blob
from ocikit.snapshot import Info, Kind, Snapshotter, open_snapshotter
from ocikit.snapshot.overlay import overlay_supported

SRC = Path(__file__).resolve().parent.parent / "src"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


# --- snapshotters --------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A snapshotter as the CLI selects it, and how a test opens the same state afterwards."""

    name: str
    #: Why it cannot run here (None: it can); called when a test starts.
    unavailable: Callable[[], str | None] = lambda: None
    extra_options: tuple[str, ...] = ()
    #: What ``open_snapshotter`` needs besides the state directory (a zfs dataset...).
    open_options: dict[str, str] = field(default_factory=dict)

    def options(self) -> list[str]:
        return ["--snapshotter", self.name, *self.extra_options]

    def open(self, snapshots: Path) -> Snapshotter:
        return open_snapshotter(self.name, snapshots / self.name, **self.open_options)


def _needs_root() -> str | None:
    return None if os.geteuid() == 0 else "mounting snapshots and runc run need root"


BACKENDS = [
    Backend("dir", _needs_root),
    Backend("overlay", lambda: _needs_root() or overlay_supported()),
]


def backend_param(backend: Backend) -> Any:
    return pytest.param(backend, id=backend.name)


def use_backend(backend: Backend) -> Backend:
    if reason := backend.unavailable():
        pytest.skip(reason)
    return backend


def snapshots_of(backend: Backend, snapshots: Path) -> list[Info]:
    snap = backend.open(snapshots)
    try:
        return list(snap.walk())
    finally:
        snap.close()


def committed(infos: Sequence[Info]) -> dict[str, dict[str, str]]:
    return {info.key: dict(info.labels) for info in infos if info.kind is Kind.COMMITTED}


def active(infos: Sequence[Info]) -> list[Info]:
    return [info for info in infos if info.kind is Kind.ACTIVE]


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """image-spec config.md's ChainID, computed here independently of ocikit.spec.chain."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            chain.append(sha256(f"{chain[-1]} {diff_id}".encode()))
    return chain


# --- images --------------------------------------------------------------------------------


@dataclass
class Image:
    """One platform's image: uncompressed layer tars and the container config."""

    layers: list[bytes]
    config: dict[str, Any]
    architecture: str = "amd64"
    #: Replaces the computed diffIDs (to make a lying config).
    diff_ids: list[str] | None = None
    #: Replaces the blob written for layer N (its descriptor still names the honest digest).
    corrupt_blobs: dict[int, bytes] = field(default_factory=dict)

    @property
    def real_diff_ids(self) -> list[str]:
        return [sha256(tar) for tar in self.layers]


def _descriptor(media_type: str, layout: Path, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": write_blob(layout, data), "size": len(data), **extra}


def _manifest(layout: Path, image: Image) -> dict[str, Any]:
    layers = []
    for index, tar in enumerate(image.layers):
        blob = gzip_bytes(tar)
        descriptor = _descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layout, blob)
        if index in image.corrupt_blobs:
            bad = image.corrupt_blobs[index]
            path = layout / "blobs" / "sha256" / descriptor["digest"].split(":")[1]
            path.write_bytes(bad)
        layers.append(descriptor)
    config = {
        "architecture": image.architecture,
        "os": "linux",
        "config": image.config,
        "rootfs": {"type": "layers", "diff_ids": image.diff_ids or image.real_diff_ids},
        "history": [{"created_by": "create_helpers"} for _ in image.layers],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": _descriptor(
            "application/vnd.oci.image.config.v1+json", layout, json.dumps(config).encode()
        ),
        "layers": layers,
    }
    return _descriptor(
        MANIFEST,
        layout,
        json.dumps(manifest).encode(),
        platform={"architecture": image.architecture, "os": "linux"},
    )


def write_image(layout: Path, tag: str, *images: Image) -> None:
    """Add ``images`` to the OCI layout under ``tag``: one image as a manifest, several as an
    image index of per-platform manifests. Other tags already in the layout stay."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    descriptors = [_manifest(layout, image) for image in images]
    if len(descriptors) == 1:
        top = descriptors[0]
        top.pop("platform")
    else:
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": descriptors}
        top = _descriptor(INDEX, layout, json.dumps(index).encode())
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    path = layout / "index.json"
    existing = json.loads(path.read_text())["manifests"] if path.exists() else []
    index_json = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [*existing, top]}
    path.write_text(json.dumps(index_json))


def write_archive(layout: Path, archive: Path) -> None:
    """An ``oci-archive:`` file: the layout's files at the top of a tar."""
    with tarfile.open(archive, "w") as tar:
        for name in sorted(os.listdir(layout)):
            tar.add(layout / name, arcname=name)


# --- the CLI --------------------------------------------------------------------------------


@dataclass
class Cli:
    """``python -m ocikit.cli.main`` with its own store and snapshot directory."""

    store: Path
    snapshots: Path
    #: Another interpreter and import path (an unprivileged user's readable copy).
    python: str = sys.executable
    pythonpath: str = str(SRC)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": self.pythonpath,
            "OCIKIT_STORE": str(self.store),
            "OCIKIT_SNAPSHOTS": str(self.snapshots),
        }

    def __call__(
        self, *args: str, prefix: Sequence[str] = (), check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*prefix, self.python, "-m", "ocikit.cli.main", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"ocikit {' '.join(args)} failed:\n{result.stderr}"
        return result


def one_line_error(result: subprocess.CompletedProcess[str], command: str = "create") -> str:
    """The error of a failed command, checked to be exit 1 with one line and no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"ocikit {command}:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def tree_digest(root: Path) -> str:
    """One digest of everything under ``root`` that a test cares to see unchanged."""
    from layer_helpers import snapshot

    return hashlib.sha256(repr(sorted(snapshot(root).items())).encode()).hexdigest()
