#!/usr/bin/env python3
"""Benchmark ``ocikit create``: the first and the second container of the same image on each
snapshotter, wall time and peak memory, side by side with ``umoci unpack``.

The image is bench/unpack.py's real Debian image (debootstrap + umoci, three layers, ~145 MB
of gzip), built once per machine into its cache. Each round starts from an empty image store
and empty snapshotters in a fresh directory of ``--tmpdir`` (on disk), then times, each in
its own process as a user would run them:

* ``first``: ``ocikit create --snapshotter S oci:LAYOUT:bench BUNDLE1 /bin/true``: copying
  the image into the store, applying every layer into committed snapshots (made durable by
  the snapshotter), the bundle;
* ``second``: the same command into BUNDLE2: every layer is cached, so this is Python's
  start-up, the metadata look-ups and one ``prepare`` (``dir``: a copy of the tree);
* ``umoci``: ``umoci unpack`` of the same image then ``sync -f`` (ocikit's first create is
  durable, so umoci's result is made durable too), the reference for the first create.

Python's start-up counts (a user runs the command), with ocikit's bytecode compiled first as
an installation has it. Peak memory is the maximum resident set size of that process
(``wait4``'s rusage), Python interpreter included. The median of ``--rounds`` rounds is
reported with the ratios and the targets of issue 6: a cached image in under 0.3 s with
``overlay`` or ``zfs``, under 60 MB.

Run as root (overlay mounts and ``umoci unpack`` need it), from the repository root::

    .venv/bin/python bench/create.py                 # 3 rounds, dir and overlay
    .venv/bin/python bench/create.py --json
    .venv/bin/python bench/create.py --zfs-dataset tank/ocikit   # zfs as well
    .venv/bin/python bench/create.py --quick         # smoke run on a small synthetic image
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from unpack import DEFAULT_CACHE, DEFAULT_MIRROR, TAG, build_debian, build_synthetic

REPO = Path(__file__).resolve().parent.parent
SECOND_TARGET_S = 0.3
RSS_TARGET_MB = 60.0
FAST_SNAPSHOTTERS = ("overlay", "zfs")


@dataclass
class Sample:
    seconds: float
    max_rss_mb: float


def timed(command: list[str], env: dict[str, str] | None = None) -> Sample:
    """Run ``command``; its wall time and its own peak RSS (not its parent's, not earlier children's)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stderr.close()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{errors.decode()[-3000:]}")
    return Sample(elapsed, usage.ru_maxrss / 1024)  # Linux: kilobytes


def ocikit_env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "OCIKIT_STORE": str(work / "store"),
        "OCIKIT_SNAPSHOTS": str(work / "snapshots"),
    }


def ocikit(*args: str) -> list[str]:
    return [sys.executable, "-m", "ocikit.cli.main", *args]


def create_pair(snapshotter: str, layout: Path, work: Path, zfs_dataset: str | None) -> tuple[Sample, Sample]:
    """First and second create into a fresh store and snapshot directory; both removed after."""
    env = ocikit_env(work)
    options = ["--snapshotter", snapshotter]
    fresh_dataset = None
    if snapshotter == "zfs" and zfs_dataset:
        # A dataset of its own per round: zfs keeps its layers in the pool, not in ``work``,
        # and a first create must not find the last round's layers.
        fresh_dataset = f"{zfs_dataset}/round-{uuid.uuid4().hex[:8]}"
        options += ["--zfs-dataset", fresh_dataset]
    image = f"oci:{layout}:{TAG}"
    bundles = [work / "bundle1", work / "bundle2"]
    try:
        first = timed(ocikit("create", *options, image, str(bundles[0]), "/bin/true"), env)
        second = timed(ocikit("create", *options, image, str(bundles[1]), "/bin/true"), env)
    finally:
        existing = [str(b) for b in bundles if b.exists()]
        if existing:
            subprocess.run(ocikit("rm", *existing), env=env, check=True, stdout=subprocess.DEVNULL)
        if fresh_dataset is not None:
            _destroy(fresh_dataset)
    return first, second


def _destroy(dataset: str) -> None:
    """``zfs destroy -r``, again while zfs-fuse still calls the datasets busy after unmounting."""
    for _ in range(20):
        if subprocess.run(["zfs", "destroy", "-r", dataset], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise SystemExit(f"could not destroy {dataset}")


def umoci_unpack(layout: Path, work: Path) -> Sample:
    bundle = work / "umoci-bundle"
    sample = timed(
        ["sh", "-c", 'umoci unpack --image "$1" "$2" && sync -f "$2"', "sh", f"{layout}:{TAG}", str(bundle)]
    )
    shutil.rmtree(bundle)
    return sample


def measure(
    snapshotters: list[str], layout: Path, rounds: int, tmpdir: Path, zfs_dataset: str | None
) -> dict[str, Any]:
    samples: dict[str, dict[str, list[Sample]]] = {name: {"first": [], "second": []} for name in snapshotters}
    samples["umoci"] = {"first": []}
    for round_number in range(rounds):
        order = (
            snapshotters[round_number % len(snapshotters) :]
            + snapshotters[: round_number % len(snapshotters)]
        )
        for name in [*order, "umoci"]:
            work = Path(tempfile.mkdtemp(prefix=f"ocikit-bench-create-{name}-", dir=tmpdir))
            try:
                subprocess.run(["sync", "-f", str(work)], check=True)
                if name == "umoci":
                    samples[name]["first"].append(umoci_unpack(layout, work))
                else:
                    first, second = create_pair(name, layout, work, zfs_dataset)
                    samples[name]["first"].append(first)
                    samples[name]["second"].append(second)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return samples


def summarise(samples: dict[str, dict[str, list[Sample]]]) -> dict[str, Any]:
    umoci_s = statistics.median(s.seconds for s in samples["umoci"]["first"])
    summary: dict[str, Any] = {
        "umoci": {
            "first_s": round(umoci_s, 3),
            "first_max_rss_mb": round(statistics.median(s.max_rss_mb for s in samples["umoci"]["first"]), 1),
        }
    }
    for name, by_kind in samples.items():
        if name == "umoci":
            continue
        row: dict[str, Any] = {}
        for kind, values in by_kind.items():
            row[f"{kind}_s"] = round(statistics.median(s.seconds for s in values), 3)
            row[f"{kind}_max_rss_mb"] = round(statistics.median(s.max_rss_mb for s in values), 1)
        row["first/umoci"] = round(row["first_s"] / umoci_s, 3)
        peak = max(row["first_max_rss_mb"], row["second_max_rss_mb"])
        row["max_rss_target_mb"] = f"<= {RSS_TARGET_MB:g}"
        row["max_rss_met"] = peak <= RSS_TARGET_MB
        if name in FAST_SNAPSHOTTERS:
            row["second_target_s"] = f"<= {SECOND_TARGET_S}"
            row["second_met"] = row["second_s"] <= SECOND_TARGET_S
        summary[name] = row
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="bench/unpack.py's image cache")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    parser.add_argument("--tmpdir", type=Path, default=Path("/var/tmp"), help="where stores and bundles go")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--snapshotters", default="dir,overlay", help="comma-separated")
    parser.add_argument("--zfs-dataset", metavar="POOL/PATH", help="also benchmark the zfs snapshotter there")
    parser.add_argument("--quick", action="store_true", help="small synthetic image, one round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: overlay mounts and umoci unpack need it")
    for tool in ("umoci", "sync") + (() if args.quick else ("debootstrap",)):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (scripts/install-system-deps.sh installs it as root)")
    snapshotters = [name for name in args.snapshotters.split(",") if name]
    if args.zfs_dataset and "zfs" not in snapshotters:
        snapshotters.append("zfs")
    # Compiled as an installation would have it (pip compiles on install): with
    # PYTHONDONTWRITEBYTECODE set, every run would otherwise compile ocikit's sources again.
    compileall.compile_dir(REPO / "src" / "ocikit", quiet=1)
    args.cache.mkdir(parents=True, exist_ok=True)
    layout = build_synthetic(args.cache) if args.quick else build_debian(args.cache, args.mirror)
    rounds = 1 if args.quick else args.rounds
    samples = measure(snapshotters, layout, rounds, args.tmpdir, args.zfs_dataset)
    report = {
        "mode": "quick" if args.quick else "full",
        "rounds": rounds,
        "image": str(layout),
        "samples": {
            name: {
                kind: [[round(s.seconds, 3), round(s.max_rss_mb, 1)] for s in values]
                for kind, values in by.items()
            }
            for name, by in samples.items()
        },
        "summary": summarise(samples),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    summary = report["summary"]
    umoci = summary["umoci"]
    print(
        f"median of {rounds} round(s); umoci unpack (+sync): "
        f"{umoci['first_s']:.2f}s, {umoci['first_max_rss_mb']:.0f} MB"
    )
    for name in snapshotters:
        row = summary[name]
        second_target = (
            f" (target <= {SECOND_TARGET_S}s: {'met' if row['second_met'] else 'MISSED'})"
            if "second_met" in row
            else ""
        )
        print(
            f"{name:8} first {row['first_s']:.2f}s {row['first_max_rss_mb']:.0f} MB "
            f"(ocikit/umoci {row['first/umoci']:.2f})  "
            f"second {row['second_s']:.3f}s {row['second_max_rss_mb']:.0f} MB{second_target}  "
            f"peak <= {RSS_TARGET_MB:g} MB: {'met' if row['max_rss_met'] else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
