#!/usr/bin/env python3
"""Benchmark the snapshotters against the tools one would otherwise use.

a) ``dir`` prepare over a committed tree of N files (default 10 000, ~110 MB, like /usr of a
   small Debian) -- a full, durable copy -- against ``cp -a --reflink=auto`` followed by
   ``sync -f`` of the same tree (equal durability), median of several runs;
b) ``overlay`` prepare plus mount and unmount of that tree, against ``mount -t overlay`` /
   ``umount`` of hand-made directories (the floor: what the kernel costs);
c) ``overlay`` prepare plus mount of a 150-layer chain;
d) ``zfs`` prepare of a further container over the committed tree (a ``zfs clone``), alone and
   with mount and unmount, against the bare ``zfs clone`` command of the same snapshot (the
   floor), on ``--zfs-dataset POOL/PATH`` or else on a temporary pool over a sparse file (a
   zfs-fuse daemon is started for it when no ZFS is running).

Run as root from the repository root::

    .venv/bin/python bench/snapshot.py [--files N] [--runs R] [--json] [--tmpdir DIR]
        [--zfs-dataset POOL/PATH | --no-zfs]
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
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ocikit.snapshot import Snapshotter, ZfsSnapshotter, mount, open_snapshotter, unmount


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


def prepare_mount_time(snap: Snapshotter, parent: str, target: Path, runs: int) -> float:
    """Median time of a container's prepare plus mount and unmount of its root at ``target``."""

    def prepare_mount(run: int) -> None:
        mount(snap.prepare(f"container-{run}", parent), target)
        unmount(target)

    return median_time(prepare_mount, runs)


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

    results["overlay_prepare_mount_s"] = prepare_mount_time(overlay, obase, target, runs)
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


def _zfs_answers() -> bool:
    return (
        shutil.which("zpool") is not None
        and subprocess.run(["zpool", "list"], capture_output=True).returncode == 0
    )


@contextmanager
def temporary_pool(work: Path) -> Iterator[str]:
    """A pool over a sparse 4 GiB file for the run (and a zfs-fuse daemon if none answers)."""
    daemon = None
    if not _zfs_answers():
        daemon = subprocess.Popen(
            ["zfs-fuse", "--no-daemon", "--no-kstat-mount", "-p", str(work / "zfs-fuse.pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not _zfs_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                sys.exit("zfs-fuse did not start")
            time.sleep(0.2)
    pool = f"ocikitbench{uuid.uuid4().hex[:6]}"
    vdev = work / "zfs-vdev"
    with open(vdev, "wb") as sparse:
        sparse.truncate(4 << 30)
    subprocess.run(
        ["zpool", "create", "-o", "cachefile=none", "-m", str(work / "zfs-mnt"), pool, str(vdev)], check=True
    )
    try:
        yield pool
    finally:
        for _ in range(40):  # zfs-fuse calls a pool busy for a moment after unmounts
            if subprocess.run(["zpool", "destroy", "-f", pool], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=30)


def bench_zfs(work: Path, parent: str, files: int, runs: int) -> dict[str, float]:
    """Everything in a dataset of its own below ``parent``, destroyed at the end."""
    dataset = f"{parent}/bench{uuid.uuid4().hex[:8]}"
    try:
        return _bench_zfs(work, dataset, files, runs)
    finally:
        for name in [dataset, *(f"{dataset}-bare{run}" for run in range(runs))]:
            subprocess.run(["zfs", "destroy", "-R", "-f", name], capture_output=True, check=False)


def _bench_zfs(work: Path, dataset: str, files: int, runs: int) -> dict[str, float]:
    results: dict[str, float] = {}
    subprocess.run(["zfs", "create", "-p", dataset], check=True)
    snap = open_snapshotter("zfs", work / "zfs-state", zfs_dataset=dataset)
    assert isinstance(snap, ZfsSnapshotter)
    base = committed(snap, work, files)
    snap.prepare("first", base)  # the image is cached: what follows is a second container

    def prepare(run: int) -> None:
        snap.prepare(f"z{run}", base)

    results["zfs_prepare_s"] = median_time(prepare, runs)
    target = work / "zfs-rootfs"
    target.mkdir()
    results["zfs_prepare_mount_s"] = prepare_mount_time(snap, base, target, runs)
    layer = next(
        line
        for line in subprocess.run(
            ["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if line.endswith("@committed")
    )

    def bare_clone(run: int) -> None:
        subprocess.run(["zfs", "clone", layer, f"{dataset}-bare{run}"], check=True)

    results["zfs_clone_command_s"] = median_time(bare_clone, runs)
    results["zfs_vs_clone_command_ratio"] = results["zfs_prepare_s"] / results["zfs_clone_command_s"]
    snap.close()
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
    parser.add_argument("--zfs-dataset", help="parent dataset for the zfs case (default: a temporary pool)")
    parser.add_argument("--no-zfs", action="store_true", help="skip the zfs case")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/snapshot.py needs root (overlay mounts)")
    work = Path(tempfile.mkdtemp(prefix="ocikit-bench-snapshot-", dir=args.tmpdir))
    try:
        results = bench(work, args.files, args.runs)
        if not args.no_zfs:
            if args.zfs_dataset:
                results |= bench_zfs(work, args.zfs_dataset, args.files, args.runs)
            else:
                with temporary_pool(work) as dataset:
                    results |= bench_zfs(work, dataset, args.files, args.runs)
            results["zfs_vs_dir_ratio"] = results["zfs_prepare_s"] / results["dir_prepare_s"]
            results["zfs_vs_overlay_ratio"] = (
                results["zfs_prepare_mount_s"] / results["overlay_prepare_mount_s"]
            )
    finally:
        for mounted in ("ovl-mnt", "zfs-rootfs"):
            subprocess.run(["umount", "-R", str(work / mounted)], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    report = {"files": args.files, "runs": args.runs, **{k: round(v, 4) for k, v in results.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:40} {value}")


if __name__ == "__main__":
    main()
