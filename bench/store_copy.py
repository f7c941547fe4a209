#!/usr/bin/env python3
"""Benchmark local copies, ``ocikit copy`` against ``skopeo copy``, run side by side.

A multi-layer, two-platform image (gzip layers of mixed random and text content) is written
as an OCI image layout, then copied by both tools, each run into a fresh destination, warm
page cache, as command-line runs (interpreter and binary start-up included):

a) ``oci:`` to ``oci:`` (a fresh layout);
b) ``oci:`` to ``oci-archive:``;
c) ``oci-archive:`` to ``oci:``.

Each figure is the median wall time of several runs and the ratio ocikit / skopeo (below 1:
ocikit is faster). The copies are checked to be byte-identical to the source.

    .venv/bin/python bench/store_copy.py            # full run (~120 MiB image)
    .venv/bin/python bench/store_copy.py --quick    # smoke run
    .venv/bin/python bench/store_copy.py --json

Needs ``skopeo`` (a Debian package).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20
OCIKIT = [sys.executable, "-m", "ocikit.cli.main"]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _layer_content(size: int, seed: int) -> dict[str, bytes]:
    """Half random (incompressible), half repetitive text: roughly what a rootfs layer holds."""
    text = (f"line {seed} of some configuration file\n" * (size // 64 + 1)).encode()[: size // 2]
    return {f"layer{seed}/random.bin": os.urandom(size // 2), f"layer{seed}/text.txt": text}


def build_layout(path: Path, layer_sizes: list[int]) -> int:
    """Write the image; returns the bytes of all blobs."""
    blobs: dict[str, bytes] = {}
    manifests = []
    base = [
        gzip.compress(_tar(_layer_content(size, i)), compresslevel=1) for i, size in enumerate(layer_sizes)
    ]
    for arch in ("amd64", "arm64"):
        own = gzip.compress(_tar(_layer_content(layer_sizes[-1], 100 + len(manifests))), compresslevel=1)
        layers = [*base, own]
        diff_ids = [sha256(gzip.decompress(layer)) for layer in layers]
        config = json.dumps(
            {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": sha256(layer),
                        "size": len(layer),
                    }
                    for layer in layers
                ],
            }
        ).encode()
        for data in [config, manifest, *layers]:
            blobs[sha256(data)] = data
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256(manifest),
                "size": len(manifest),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    ).encode()
    blobs[sha256(index)] = index
    (path / "blobs" / "sha256").mkdir(parents=True)
    for digest, data in blobs.items():
        (path / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entry = {
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": sha256(index),
        "size": len(index),
        "annotations": {"org.opencontainers.image.ref.name": "bench"},
    }
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return sum(len(b) for b in blobs.values())


def _blobs(layout: Path) -> dict[str, str]:
    root = layout / "blobs" / "sha256"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir()}


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr}")
    return elapsed


def _fresh(work: Path, name: str) -> Path:
    target = work / name
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    return target


def scenario(work: Path, skopeo: str, runs: int, kind: str) -> dict[str, Any]:
    source = work / "source"
    if kind == "archive-to-oci":
        archive = work / "source.tar"
        if not archive.exists():
            subprocess.run(
                [skopeo, "copy", "-q", "--all", f"oci:{source}:bench", f"oci-archive:{archive}:bench"],
                check=True,
            )
        src = f"oci-archive:{archive}:bench"
    else:
        src = f"oci:{source}:bench"
    times: dict[str, list[float]] = {"ocikit": [], "skopeo": []}
    for _ in range(runs):
        for tool in ("skopeo", "ocikit"):
            target = _fresh(work, f"{tool}-out" + (".tar" if kind == "oci-to-archive" else ""))
            dst = f"oci-archive:{target}:bench" if kind == "oci-to-archive" else f"oci:{target}:bench"
            argv = (
                [*OCIKIT, "copy", "-q", src, dst]
                if tool == "ocikit"
                else [skopeo, "copy", "-q", "--all", src, dst]
            )
            times[tool].append(_timed(argv))
            if kind != "oci-to-archive":
                assert _blobs(target) == _blobs(source), f"{tool}: the copy differs from the source"
    medians = {tool: statistics.median(values) for tool, values in times.items()}
    return {
        "ocikit_s": round(medians["ocikit"], 3),
        "skopeo_s": round(medians["skopeo"], 3),
        "ratio": round(medians["ocikit"] / medians["skopeo"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small image and fewer runs")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--tmpdir", help="where to build (default: the system's temp dir)")
    args = parser.parse_args(argv)
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        print("skopeo is not installed (apt-get install skopeo)", file=sys.stderr)
        return 2
    sizes = [4 * MiB, 2 * MiB, MiB] if args.quick else [96 * MiB, 64 * MiB, 32 * MiB, 16 * MiB, 8 * MiB]
    runs = 2 if args.quick else 5
    with tempfile.TemporaryDirectory(prefix="ocikit-bench-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        total = build_layout(work / "source", sizes)
        results = {
            kind: scenario(work, skopeo, runs, kind)
            for kind in ("oci-to-oci", "oci-to-archive", "archive-to-oci")
        }
    report = {
        "mode": "quick" if args.quick else "full",
        "image_bytes": total,
        "runs": runs,
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"image: {total / MiB:.1f} MiB in blobs, median of {runs} runs, warm cache")
        print(f"{'scenario':<16} {'ocikit':>9} {'skopeo':>9} {'ocikit/skopeo':>14}")
        for kind, figures in results.items():
            ocikit, skopeo_s, ratio = figures["ocikit_s"], figures["skopeo_s"], figures["ratio"]
            print(f"{kind:<16} {ocikit:>8.3f}s {skopeo_s:>8.3f}s {ratio:>14.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
