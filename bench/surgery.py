#!/usr/bin/env python3
"""Benchmark image surgery: ``ocikit commit`` against ``umoci repack``, ``ocikit squash``
against unpacking with umoci and re-packing the tree with GNU tar + gzip.

The image is the Debian image of ``bench/unpack.py`` (three layers, ~11k entries, built once
into its cache; ``--quick`` uses its small synthetic image). Each round, in a fresh directory:

* **commit**: the image is unpacked by each tool (``umoci unpack``; ``ocikit create`` on the
  ``dir`` and ``overlay`` snapshotters), the same changes are made in each rootfs (a thousand
  files appended to, a directory tree deleted, permissions changed, a 32 MiB file added), and
  only the commit is timed: ``umoci repack`` vs ``ocikit commit``. Both write a gzip layer and a
  new image; umoci's diff walks both trees with its mtree manifest, ocikit's as
  ``docs/surgery.md`` says.
* **squash**: all layers into one. ``ocikit squash`` (applies the layers into a scratch snapshot
  and writes its tree as one layer) vs the standard tools' way: ``umoci unpack`` then
  ``tar --numeric-owner --xattrs -c | gzip -1``-equivalent (``tar -I 'gzip -1'``).

The median of the rounds is reported, with each tool's peak RSS (GNU ``time``). Run as root
(mounts, umoci unpack) from the repository root::

    .venv/bin/python bench/surgery.py            # 3 rounds on the Debian image
    .venv/bin/python bench/surgery.py --quick    # 1 round on the synthetic image
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from unpack import TAG, build_debian, build_synthetic  # noqa: E402

OCIKIT = [sys.executable, "-m", "ocikit.cli.main"]


def timed(command: list[str], **kwargs: Any) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command, which must succeed. The RSS comes from
    GNU time: ``wait4`` of a child spawned by this (larger) process reports this process's
    RSS when the child's is smaller, since the kernel carries it over the exec."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        result = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", report.name, *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            check=False,
            **kwargs,
        )
        elapsed = time.perf_counter() - start
        if result.returncode:
            raise SystemExit(f"{' '.join(command)} failed: {result.stderr.decode()}")
        return elapsed, int(report.read().split()[-1])


def quiet(command: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def change(rootfs: Path, seed: int) -> None:
    """The same changes in every rootfs: appends, a deleted tree, chmods, one large new file."""
    generator = random.Random(seed)
    files = sorted(
        Path(directory, name)
        for directory, _, names in os.walk(rootfs / "usr")
        for name in names
        if not os.path.islink(Path(directory, name))
    )
    for path in generator.sample(files, min(1000, len(files) // 2)):
        with open(path, "ab") as handle:
            handle.write(b"changed by bench/surgery.py\n")
    for path in generator.sample(files, min(500, len(files) // 4)):
        if path.exists():
            os.chmod(path, 0o600)
    for victim in ("opt/usr-copy/share", "usr/share/doc"):
        shutil.rmtree(rootfs / victim, ignore_errors=True)
    (rootfs / "opt/new").mkdir(parents=True, exist_ok=True)
    (rootfs / "opt/new/blob").write_bytes(random.Random(seed).randbytes(32 << 20))


def commit_round(layout: Path, work: Path, seed: int) -> dict[str, tuple[float, int]]:
    results: dict[str, tuple[float, int]] = {}
    umoci_bundle = work / "umoci-bundle"
    layout_copy = work / "layout"
    shutil.copytree(layout, layout_copy)
    quiet(["umoci", "unpack", "--image", f"{layout_copy}:{TAG}", str(umoci_bundle)])
    change(umoci_bundle / "rootfs", seed)
    results["umoci repack"] = timed(
        ["umoci", "repack", "--image", f"{layout_copy}:committed", str(umoci_bundle)]
    )
    store = work / "store"
    quiet([*OCIKIT, "copy", f"oci:{layout}:{TAG}", "bench:1", "--store", str(store), "-q"])
    for snapshotter in ("dir", "overlay"):
        bundle = work / f"bundle-{snapshotter}"
        snapshots = ["--snapshotter", snapshotter, "--snapshots", str(work / "snapshots")]
        quiet([*OCIKIT, "create", "--store", str(store), *snapshots, "bench:1", str(bundle), "/bin/true"])
        try:
            change(bundle / "rootfs", seed)
            results[f"ocikit commit ({snapshotter})"] = timed(
                [*OCIKIT, "commit", str(bundle), f"bench:{snapshotter}", "--store", str(store)]
            )
        finally:
            quiet([*OCIKIT, "rm", str(bundle)])
    return results


def squash_round(layout: Path, work: Path) -> dict[str, tuple[float, int]]:
    results: dict[str, tuple[float, int]] = {}
    store = work / "store"
    quiet([*OCIKIT, "copy", f"oci:{layout}:{TAG}", "bench:1", "--store", str(store), "-q"])
    for snapshotter in ("dir", "overlay"):
        snapshots = ["--snapshotter", snapshotter, "--snapshots", str(work / f"snapshots-{snapshotter}")]
        results[f"ocikit squash ({snapshotter})"] = timed(
            [*OCIKIT, "squash", "bench:1", f"bench:flat-{snapshotter}", "--store", str(store), *snapshots]
        )
    start = time.perf_counter()
    _, unpack_rss = timed(["umoci", "unpack", "--image", f"{layout}:{TAG}", str(work / "umoci")])
    _, pack_rss = timed(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "-I",
            "gzip -1",
            "-C",
            str(work / "umoci/rootfs"),
            "-cf",
            str(work / "flat.tgz"),
            ".",
        ]
    )
    results["umoci unpack + tar|gzip -1"] = (time.perf_counter() - start, max(unpack_rss, pack_rss))
    return results


def summarise(rounds: list[dict[str, tuple[float, int]]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for name in rounds[0]:
        seconds = [r[name][0] for r in rounds]
        summary[name] = {
            "median_s": round(statistics.median(seconds), 3),
            "peak_rss_mib": round(max(r[name][1] for r in rounds) / 1024, 1),
        }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round on the small synthetic image")
    parser.add_argument("--cache", type=Path, default=Path("/var/tmp/ocikit-bench-unpack"))
    parser.add_argument("--mirror", default="http://deb.debian.org/debian")
    parser.add_argument("--tmpdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: ocikit create mounts snapshots, umoci unpack keeps owners")
    args.cache.mkdir(parents=True, exist_ok=True)
    layout = build_synthetic(args.cache) if args.quick else build_debian(args.cache, args.mirror)
    rounds = 1 if args.quick else args.rounds
    commits, squashes = [], []
    for index in range(rounds):
        with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="ocikit-bench-surgery-") as directory:
            commits.append(commit_round(layout, Path(directory), seed=index))
        with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="ocikit-bench-surgery-") as directory:
            squashes.append(squash_round(layout, Path(directory)))
    result = {
        "image": str(layout),
        "rounds": rounds,
        "commit": summarise(commits),
        "squash": summarise(squashes),
    }
    for part in ("commit", "squash"):
        reference = "umoci repack" if part == "commit" else "umoci unpack + tar|gzip -1"
        base = result[part][reference]["median_s"]  # type: ignore[index]
        for figures in result[part].values():  # type: ignore[attr-defined]
            figures["ratio_to_reference"] = round(figures["median_s"] / base, 2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for part in ("commit", "squash"):
            print(f"{part}:")
            for name, figures in result[part].items():  # type: ignore[attr-defined]
                print(
                    f"  {name:32} {figures['median_s']:8.3f} s  x{figures['ratio_to_reference']:<5} "
                    f"peak {figures['peak_rss_mib']:7.1f} MiB"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
