#!/usr/bin/env python3
"""Benchmark ocikit's layer application against ``umoci unpack`` and GNU ``tar -xzf``.

The image is a real Debian system, built once into a cache directory with Debian's own tools:
``debootstrap --variant=minbase bookworm`` gives the base layer; ``umoci repack`` writes it, a
second layer (a copy of ``/usr`` under ``/opt``: thousands of files) and a third with deletions
(whiteouts of the apt caches and of part of the copy) and a few changed files. About 140 MB of
gzip layers, ~11k entries.

Each round unpacks the whole image, fresh, with each tool in turn (the order rotates between
rounds), and the median of the rounds is reported:

* ``ocikit``: ``ocikit.layers.apply_layer`` of every layer in order, digest and diffID
  verified, in a fresh Python process (its start-up is counted);
* ``umoci``: ``umoci unpack`` of the image (a runtime bundle; umoci verifies digests too);
* ``tar``: ``tar --numeric-owner -xzf`` of each layer blob in order (no verification, and
  whiteouts land as plain files: the floor of what unpacking can cost).

in two settings: ``tmpfs`` (a tmpfs mounted for the run: the CPU work) and ``disk`` (a
directory on the disk of ``--tmpdir``, with ``sync -f`` inside the timing: a durable result).

Run as root (umoci unpack and the tmpfs mount need it), from the repository root::

    .venv/bin/python bench/unpack.py             # build the image once (minutes), 5 rounds
    .venv/bin/python bench/unpack.py --json      # machine-readable
    .venv/bin/python bench/unpack.py --quick     # smoke run on a small synthetic image

Needs debootstrap, umoci and GNU tar (Debian packages) and network access to a Debian mirror
the first time (``--mirror``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TAG = "bench"
#: Where the Debian image is built once per machine (bench/create.py and the tests share it).
DEFAULT_CACHE = Path("/var/tmp/ocikit-bench-unpack")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
TOOLS = ("ocikit", "umoci", "tar")
TARGETS = {"tmpfs": {"tar": 1.3, "umoci": 1.0}, "disk": {"tar": 1.1}}


def run(command: list[str], **kwargs: Any) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)


# --- building the image ----------------------------------------------------------------------


def build_debian(cache: Path = DEFAULT_CACHE, mirror: str = DEFAULT_MIRROR) -> Path:
    """The OCI layout holding the Debian image as ``TAG``, built the first time (minutes)."""
    layout = cache / "layout"
    if (cache / "ready").exists():
        return layout
    base = cache / "base-rootfs"
    if not base.exists():
        partial = cache / "base-rootfs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        print(f"debootstrap --variant=minbase bookworm into {partial} ...", file=sys.stderr)
        run(["debootstrap", "--variant=minbase", "bookworm", str(partial), mirror])
        partial.rename(base)
    _build_layers(
        cache,
        layout,
        base,
        remove=["var/cache/apt/archives", "var/lib/apt/lists", "opt/usr-copy/share/doc", "opt/usr-copy/lib"],
        change={"etc/motd": b"built by bench/unpack.py\n", "etc/hostname": b"bench\n"},
    )
    (cache / "ready").write_text("ok\n")
    return layout


def build_synthetic(cache: Path) -> Path:
    """A small three-layer image with the same shape, for smoke runs."""
    layout = cache / "layout-synthetic"
    if (cache / "ready-synthetic").exists():
        return layout
    generator = random.Random(7)
    base = cache / "synthetic-rootfs"
    shutil.rmtree(base, ignore_errors=True)
    words = [bytes(generator.choice(b"abcdefghij \n") for _ in range(40)) for _ in range(200)]
    for index in range(1500):
        path = base / f"usr/share/pkg{index % 40}/file{index}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(generator.choice(words) for _ in range(generator.randint(1, 200))))
    (base / "etc").mkdir()
    (base / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    os.symlink("usr/share", base / "share")
    remove = ["usr/share/pkg1", "opt/usr-copy/share/pkg2"]
    _build_layers(cache, layout, base, remove=remove, change={"etc/motd": b"hi\n"})
    (cache / "ready-synthetic").write_text("ok\n")
    return layout


def _build_layers(cache: Path, layout: Path, base: Path, remove: list[str], change: dict[str, bytes]) -> None:
    """Three layers written by ``umoci repack``: the base system, a copy of its /usr under
    /opt (additions), then deletions and changes (whiteouts). ``umoci insert`` is avoided: the
    umoci of Debian bookworm ends its layers without the last padding, which GNU tar refuses."""
    shutil.rmtree(layout, ignore_errors=True)
    image = f"{layout}:{TAG}"
    bundle = cache / "build-bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", image])
    run(["umoci", "unpack", "--image", image, str(bundle)])
    rootfs = bundle / "rootfs"
    run(["cp", "-a", f"{base}/.", str(rootfs)])
    run(["umoci", "repack", "--refresh-bundle", "--image", image, str(bundle)])
    (rootfs / "opt").mkdir(exist_ok=True)
    run(["cp", "-a", str(base / "usr"), str(rootfs / "opt/usr-copy")])
    run(["umoci", "repack", "--refresh-bundle", "--image", image, str(bundle)])
    for relative in remove:
        shutil.rmtree(rootfs / relative)
    for relative, data in change.items():
        (rootfs / relative).write_bytes(data)
    run(["umoci", "repack", "--refresh-bundle", "--image", image, str(bundle)])
    shutil.rmtree(bundle)
    run(["umoci", "gc", "--layout", str(layout)])


def image_layers(layout: Path) -> list[tuple[Path, str, str, str]]:
    """(blob path, media type, digest, diffID) of each layer of the tagged image."""

    def blob(digest: str) -> Path:
        return layout / "blobs" / digest.replace(":", "/")

    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG
    ]
    manifest = json.loads(blob(descriptor["digest"]).read_bytes())
    config = json.loads(blob(manifest["config"]["digest"]).read_bytes())
    return [
        (blob(layer["digest"]), layer["mediaType"], layer["digest"], diff_id)
        for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)
    ]


# --- the tools -------------------------------------------------------------------------------


def worker(destination: Path, layout: Path) -> None:
    """The ocikit side, run in its own process by the benchmark."""
    sys.path.insert(0, str(REPO / "src"))
    from ocikit.layers import apply_layer

    for path, media_type, digest, diff_id in image_layers(layout):
        apply_layer(destination, path, media_type, digest, diff_id)


def unpack(tool: str, destination: Path, layout: Path) -> None:
    if tool == "ocikit":
        destination.mkdir()
        run([sys.executable, __file__, "--worker", str(destination), str(layout)])
    elif tool == "umoci":
        run(["umoci", "unpack", "--image", f"{layout}:{TAG}", str(destination)])
    else:
        destination.mkdir()
        for path, _, _, _ in image_layers(layout):
            run(["tar", "--numeric-owner", "-xzf", str(path), "-C", str(destination)])


@contextlib.contextmanager
def setting_directory(setting: str, tmpdir: Path) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=f"ocikit-bench-unpack-{setting}-", dir=tmpdir))
    mounted = False
    try:
        if setting == "tmpfs":
            if os.geteuid() == 0:
                run(["mount", "-t", "tmpfs", "-o", "size=8g,mode=0755", "tmpfs", str(work)])
                mounted = True
            else:
                work.rmdir()
                work = Path(tempfile.mkdtemp(prefix="ocikit-bench-unpack-", dir="/dev/shm"))
        yield work
    finally:
        if mounted:
            run(["umount", str(work)])
        shutil.rmtree(work, ignore_errors=True)


def measure(setting: str, layout: Path, rounds: int, tmpdir: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {tool: [] for tool in TOOLS}
    with setting_directory(setting, tmpdir) as work:
        for round_number in range(rounds):
            order = TOOLS[round_number % 3 :] + TOOLS[: round_number % 3]
            for tool in order:
                destination = work / f"{tool}-{round_number}"
                if setting == "disk":
                    run(["sync", "-f", str(work)])
                started = time.perf_counter()
                unpack(tool, destination, layout)
                if setting == "disk":
                    run(["sync", "-f", str(destination)])
                times[tool].append(time.perf_counter() - started)
                shutil.rmtree(destination)
    return times


def summarise(times: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for setting, by_tool in times.items():
        medians = {tool: statistics.median(values) for tool, values in by_tool.items()}
        row: dict[str, Any] = {f"{tool}_s": round(value, 3) for tool, value in medians.items()}
        for reference in ("tar", "umoci"):
            ratio = medians["ocikit"] / medians[reference]
            row[f"ocikit/{reference}"] = round(ratio, 3)
            bound = TARGETS[setting].get(reference)
            if bound is not None:
                row[f"ocikit/{reference}_target"] = f"<= {bound}"
                row[f"ocikit/{reference}_met"] = ratio <= bound
        summary[setting] = row
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--tmpdir", type=Path, default=Path("/var/tmp"), help="where the disk setting unpacks"
    )
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settings", default="tmpfs,disk")
    parser.add_argument("--quick", action="store_true", help="small synthetic image, one round")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("DEST", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]))
        return 0
    for tool in ("umoci", "tar") + (() if args.quick else ("debootstrap",)):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (scripts/install-system-deps.sh installs it as root)")
    args.cache.mkdir(parents=True, exist_ok=True)
    layout = build_synthetic(args.cache) if args.quick else build_debian(args.cache, args.mirror)
    rounds = 1 if args.quick else args.rounds
    layers = image_layers(layout)
    times = {
        setting: measure(setting, layout, rounds, args.tmpdir)
        for setting in args.settings.split(",")
        if setting
    }
    report = {
        "mode": "quick" if args.quick else "full",
        "rounds": rounds,
        "image": {
            "layers": len(layers),
            "compressed_bytes": sum(path.stat().st_size for path, _, _, _ in layers),
        },
        "seconds": {
            setting: {tool: [round(v, 3) for v in values] for tool, values in by.items()}
            for setting, by in times.items()
        },
        "summary": summarise(times),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"image: {len(layers)} layers, {report['image']['compressed_bytes'] / 1e6:.1f} MB compressed; "
            f"median of {rounds} round(s)"
        )
        for setting, row in report["summary"].items():
            figures = "  ".join(f"{tool} {row[f'{tool}_s']:.2f}s" for tool in TOOLS)
            ratios = f"ocikit/tar {row['ocikit/tar']:.2f}  ocikit/umoci {row['ocikit/umoci']:.2f}"
            print(f"{setting:6} {figures}  {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
