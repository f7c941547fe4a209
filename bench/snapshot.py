#!/usr/bin/env python3
"""Benchmark the snapshotters against the tools one would otherwise use.

a) ``dir`` prepare over a committed tree of N files (default 10 000, ~110 MB, like /usr of a
   small Debian) -- a full, durable copy -- against ``cp -a --reflink=auto`` followed by
   ``sync -f`` of the same tree (equal durability), median of several runs;
b) ``overlay`` prepare plus mount and unmount of that tree, against ``mount -t overlay`` /
   ``umount`` of hand-made directories (the floor: what the kernel costs);
c) ``overlay`` prepare plus mount of a 150-layer chain.

Run as root from the repository root::

    .venv/bin/python bench/snapshot.py [--files N] [--runs R] [--json] [--tmpdir DIR]
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ocikit.snapshot import Snapshotter, mount, open_snapshotter, unmount


def make_tree(root: Path, files: int) -> None:
    rnd = random.Random(1)
    sizes = [0, 100, 2000, 8000, 40000]
    for index in range(files):
        directory = root / f"d{index % 20}" / f"sub{index // 25}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{index}").write_bytes(rnd.randbytes(rnd.choice(sizes)))


def median_time(action: Callable[[int], None], runs: int) -> float:
    times = []
    for run in range(runs):
        start = time.perf_counter()
        action(run)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def committed(snap: Snapshotter, work: Path, files: int) -> str:
    snap.prepare("load")
    target = work / f"load-{snap.name}"
    target.mkdir()
    mount(snap.mounts("load"), target)
    try:
        make_tree(target, files)
    finally:
        unmount(target)
    snap.commit("base", "load")
    return "base"


def bench(work: Path, files: int, runs: int) -> dict[str, float]:
    results: dict[str, float] = {}
    dir_snap = open_snapshotter("dir", work / "dir")
    base = committed(dir_snap, work, files)
    source = dir_snap.path_of(base)  # type: ignore[attr-defined]

    def prepare(run: int) -> None:
        dir_snap.prepare(f"c{run}", base)

    results["dir_prepare_s"] = median_time(prepare, runs)

    def cp(run: int) -> None:
        target = work / f"cp{run}"
        subprocess.run(["cp", "-a", "--reflink=auto", f"{source}/.", str(target)], check=True)
        subprocess.run(["sync", "-f", str(target)], check=True)

    for run in range(runs):
        (work / f"cp{run}").mkdir()
    results["cp_a_sync_s"] = median_time(cp, runs)
    results["dir_vs_cp_ratio"] = results["dir_prepare_s"] / results["cp_a_sync_s"]

    overlay = open_snapshotter("overlay", work / "overlay")
    obase = committed(overlay, work, files)
    target = work / "ovl-mnt"
    target.mkdir()

    def ocikit_overlay(run: int) -> None:
        mount(overlay.prepare(f"o{run}", obase), target)
        unmount(target)

    results["overlay_prepare_mount_s"] = median_time(ocikit_overlay, runs)
    lower = overlay.path_of(obase)  # type: ignore[attr-defined]

    def kernel_overlay(run: int) -> None:
        upper, workdir = work / f"u{run}", work / f"w{run}"
        upper.mkdir()
        workdir.mkdir()
        options = f"lowerdir={lower},upperdir={upper},workdir={workdir},index=off"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(target)], check=True)
        subprocess.run(["umount", str(target)], check=True)

    results["mount_command_s"] = median_time(kernel_overlay, runs)
    results["overlay_vs_mount_ratio"] = results["overlay_prepare_mount_s"] / results["mount_command_s"]

    parent = None
    for layer in range(150):
        overlay.prepare(f"l{layer}", parent)
        (overlay.path_of(f"l{layer}") / f"f{layer}").write_text("x")  # type: ignore[attr-defined]
        overlay.commit(f"chain{layer}", f"l{layer}")
        parent = f"chain{layer}"
    assert parent is not None

    def deep(run: int) -> None:
        mount(overlay.prepare(f"deep{run}", parent), target)
        unmount(target)

    results["overlay_150_layers_prepare_mount_s"] = median_time(deep, runs)
    dir_snap.close()
    overlay.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--tmpdir", default="/var/tmp", help="on a real disk, not tmpfs, for the copy figures"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/snapshot.py needs root (overlay mounts)")
    work = Path(tempfile.mkdtemp(prefix="ocikit-bench-snapshot-", dir=args.tmpdir))
    try:
        results = bench(work, args.files, args.runs)
    finally:
        subprocess.run(["umount", "-R", str(work / "ovl-mnt")], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    report = {"files": args.files, "runs": args.runs, **{k: round(v, 4) for k, v in results.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:40} {value}")


if __name__ == "__main__":
    main()
