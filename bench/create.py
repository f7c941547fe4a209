#!/usr/bin/env python3
"""Benchmark ``ocikit create``: the first and the second container of the same image on each
snapshotter, wall time and peak memory, side by side with ``umoci unpack`` and GNU ``tar``.

The image is bench/unpack.py's real Debian image (debootstrap + umoci, three layers, ~145 MB
of gzip), built once per machine into its cache. Each round starts from an empty image store
and empty snapshotters in a fresh directory, then times, each in its own process as a user
would run them, the tools taking turns (the order rotates between rounds):

* ``first``: ``ocikit create --snapshotter S oci:LAYOUT:bench BUNDLE1 /bin/true``: copying
  the image into the store, applying every layer into committed snapshots, the bundle;
* ``second``: the same command into BUNDLE2: every layer is cached, so this is Python's
  start-up, the metadata look-ups and one ``prepare`` (``dir``: a copy of the tree);
* ``umoci``: ``umoci unpack`` of the same image (a runtime bundle, digests verified);
* ``tar``: ``tar --numeric-owner -xzf`` of each layer blob in order (no verification, whiteouts
  land as plain files: the floor of what unpacking can cost).

in two settings: ``disk``, a directory of ``--tmpdir`` where every timing ends with
``sync -f`` (a durable result: what is still in the page cache counts), and ``tmpfs``, a tmpfs
mounted for the run (the CPU work; ocikit's store, snapshots and bundles are on it too).

Python's start-up counts (a user runs the command), with ocikit's bytecode compiled first as
an installation has it. Peak memory is the maximum resident set size of that process
(``wait4``'s rusage), Python interpreter included. The median of ``--rounds`` rounds is
reported with the ratios and the targets (issues 6 and 14): a first create on disk within
1.0x umoci's time and 1.1x tar's, on tmpfs within tar's; a cached image in under 0.3 s with
``overlay`` or ``zfs``; under 60 MB.

Run as root (overlay mounts, tmpfs and ``umoci unpack`` need it), from the repository root::

    .venv/bin/python bench/create.py                 # 3 rounds, overlay, disk and tmpfs
    .venv/bin/python bench/create.py --snapshotters dir,overlay --settings disk --json
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

from unpack import (
    DEFAULT_CACHE,
    DEFAULT_MIRROR,
    TAG,
    build_debian,
    build_synthetic,
    image_layers,
    setting_directory,
)

REPO = Path(__file__).resolve().parent.parent
SECOND_TARGET_S = 0.3
RSS_TARGET_MB = 60.0
FAST_SNAPSHOTTERS = ("overlay", "zfs")
SETTINGS = ("disk", "tmpfs")
REFERENCES = ("umoci", "tar")
#: The first create's time over each reference's, at most.
TARGETS = {"disk": {"umoci": 1.0, "tar": 1.1}, "tmpfs": {"tar": 1.0}}


@dataclass
class Sample:
    seconds: float
    max_rss_mb: float


def timed(command: list[str], env: dict[str, str] | None = None, durable: Path | None = None) -> Sample:
    """Run ``command``; its wall time and its own peak RSS (not its parent's, not earlier
    children's). With ``durable``, the timing ends after ``sync -f`` of that directory."""
    if durable is not None:
        command = ["sh", "-c", '"$@" && sync -f "$0"', str(durable), *command]
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


def create_pair(
    snapshotter: str, layout: Path, work: Path, zfs_dataset: str | None, durable: bool
) -> tuple[Sample, Sample]:
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
        first = timed(
            ocikit("create", *options, image, str(bundles[0]), "/bin/true"), env, work if durable else None
        )
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


def reference(tool: str, layout: Path, work: Path, durable: bool) -> Sample:
    """``umoci unpack`` of the image, or ``tar -xzf`` of each layer in order, into ``work``."""
    bundle = work / f"{tool}-bundle"
    if tool == "umoci":
        command = ["umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle)]
    else:
        bundle.mkdir()
        script = 'for blob; do tar --numeric-owner -xzf "$blob" -C "$0" || exit 1; done'
        command = ["sh", "-c", script, str(bundle), *[str(path) for path, _, _, _ in image_layers(layout)]]
    sample = timed(command, durable=work if durable else None)
    shutil.rmtree(bundle)
    return sample


Samples = dict[str, dict[str, dict[str, list[Sample]]]]  # setting -> tool -> first/second -> samples


def measure(
    settings: list[str], snapshotters: list[str], layout: Path, rounds: int, tmpdir: Path, zfs: str | None
) -> Samples:
    samples: Samples = {}
    names = [*snapshotters, *REFERENCES]
    for setting in settings:
        by_name: dict[str, dict[str, list[Sample]]] = {name: {"first": [], "second": []} for name in names}
        durable = setting == "disk"
        with setting_directory(setting, tmpdir) as base:
            for round_number in range(rounds):
                shift = round_number % len(names)
                for name in names[shift:] + names[:shift]:  # nobody always goes first
                    work = Path(tempfile.mkdtemp(prefix=f"ocikit-bench-create-{name}-", dir=base))
                    try:
                        subprocess.run(["sync", "-f", str(work)], check=True)
                        if name in REFERENCES:
                            by_name[name]["first"].append(reference(name, layout, work, durable))
                        else:
                            first, second = create_pair(name, layout, work, zfs, durable)
                            by_name[name]["first"].append(first)
                            by_name[name]["second"].append(second)
                    finally:
                        shutil.rmtree(work, ignore_errors=True)
        samples[setting] = {name: {k: v for k, v in kinds.items() if v} for name, kinds in by_name.items()}
    return samples


def _median(values: list[Sample], field: str) -> float:
    return statistics.median(getattr(sample, field) for sample in values)


def summarise(samples: Samples) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for setting, by_name in samples.items():
        rows: dict[str, Any] = {}
        references = {tool: _median(by_name[tool]["first"], "seconds") for tool in REFERENCES}
        for tool in REFERENCES:
            rows[tool] = {
                "first_s": round(references[tool], 3),
                "first_max_rss_mb": round(_median(by_name[tool]["first"], "max_rss_mb"), 1),
            }
        for name, by_kind in by_name.items():
            if name in REFERENCES:
                continue
            row: dict[str, Any] = {}
            for kind, values in by_kind.items():
                row[f"{kind}_s"] = round(_median(values, "seconds"), 3)
                row[f"{kind}_max_rss_mb"] = round(_median(values, "max_rss_mb"), 1)
            for tool in REFERENCES:
                ratio = row["first_s"] / references[tool]
                row[f"first/{tool}"] = round(ratio, 3)
                bound = TARGETS[setting].get(tool)
                if bound is not None:
                    row[f"first/{tool}_target"] = f"<= {bound}"
                    row[f"first/{tool}_met"] = ratio <= bound
            peak = max(row["first_max_rss_mb"], row["second_max_rss_mb"])
            row["max_rss_target_mb"] = f"<= {RSS_TARGET_MB:g}"
            row["max_rss_met"] = peak <= RSS_TARGET_MB
            if name in FAST_SNAPSHOTTERS:
                row["second_target_s"] = f"<= {SECOND_TARGET_S}"
                row["second_met"] = row["second_s"] <= SECOND_TARGET_S
            rows[name] = row
        summary[setting] = rows
    return summary


def _met(row: dict[str, Any], key: str) -> str:
    return "" if f"{key}_met" not in row else (" met" if row[f"{key}_met"] else " MISSED")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="bench/unpack.py's image cache")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    parser.add_argument("--tmpdir", type=Path, default=Path("/var/tmp"), help="where stores and bundles go")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--snapshotters", default="overlay", help="comma-separated (overlay: the default of create)"
    )
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: disk, tmpfs")
    parser.add_argument("--zfs-dataset", metavar="POOL/PATH", help="also benchmark the zfs snapshotter there")
    parser.add_argument("--quick", action="store_true", help="small synthetic image, one round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: overlay mounts, tmpfs and umoci unpack need it")
    for tool in ("umoci", "tar", "sync") + (() if args.quick else ("debootstrap",)):
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
    settings = [name for name in args.settings.split(",") if name]
    samples = measure(settings, snapshotters, layout, rounds, args.tmpdir, args.zfs_dataset)
    report = {
        "mode": "quick" if args.quick else "full",
        "rounds": rounds,
        "image": str(layout),
        "samples": {
            setting: {
                name: {
                    kind: [[round(x.seconds, 3), round(x.max_rss_mb, 1)] for x in values]
                    for kind, values in by.items()
                }
                for name, by in by_name.items()
            }
            for setting, by_name in samples.items()
        },
        "summary": summarise(samples),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"median of {rounds} round(s), the tools taking turns")
    for setting, rows in report["summary"].items():
        references = "  ".join(f"{tool} {rows[tool]['first_s']:.2f}s" for tool in REFERENCES)
        print(f"{setting}{' (each timing ends with sync -f)' if setting == 'disk' else ''}: {references}")
        for name in snapshotters:
            row = rows[name]
            ratios = "  ".join(
                f"/{tool} {row[f'first/{tool}']:.2f}{_met(row, f'first/{tool}')}" for tool in REFERENCES
            )
            print(
                f"  {name:8} first {row['first_s']:.2f}s {row['first_max_rss_mb']:.0f} MB ({ratios})  "
                f"second {row['second_s']:.3f}s{_met(row, 'second')}  "
                f"peak <= {RSS_TARGET_MB:g} MB:{_met(row, 'max_rss')}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
