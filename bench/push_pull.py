#!/usr/bin/env python3
"""Benchmark ``ocikit copy`` against ``skopeo copy`` pushing and pulling a real Debian image.

The image is the one bench/unpack.py builds (``debootstrap --variant=minbase bookworm``, written
as three gzip layers by ``umoci repack``: about 145 MB compressed, 10k files, whiteouts on top),
cached under ``--cache``. ``--quick`` uses its small synthetic image instead.

Each round, for each tool in turn, as a user would run it (one process per copy, start-up
included; ocikit through its console script), each tool with an empty cache of blob locations of
its own at the start of the round (skopeo's blob-info cache is bind-mounted from a fresh
directory in a private mount namespace, ocikit's is a fresh ``$XDG_CACHE_HOME``; both tools run
under the same ``unshare`` wrapper):

- push: ``TOOL copy oci:LAYOUT:bench docker://127.0.0.1:PORT/bench/TOOL-N:v1`` into a freshly
  started CNCF distribution (Debian's ``docker-registry``), so that no tool can skip or mount a
  blob the registry already holds;
- push again: the same image to a new repository of that registry,
  ``docker://…/bench/TOOL-N-again:v1``: what each tool remembers from the first push lets it
  mount the blobs instead of sending them;
- pull: ``TOOL copy docker://…/bench/TOOL-N:v1 oci:FRESH:v1`` back into a new layout.

Figures are seconds (median of ``--rounds``) and ratios ocikit / skopeo (below 1: ocikit faster).

    .venv/bin/python bench/push_pull.py [--quick] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def load_sibling(name: str) -> Any:
    """A sibling benchmark as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"bench_{name}"] = module
    spec.loader.exec_module(module)
    return module


STEPS = ("push", "push again", "pull")
#: Where skopeo keeps its blob-info cache when run as root (containers/image).
SKOPEO_CACHE = "/var/lib/containers/cache"


def with_private_cache(argv: list[str], cache: Path) -> list[str]:
    """``argv`` in a mount namespace of its own where ``cache`` stands in for skopeo's cache
    directory, so that no run sees what another (or anything else on the machine) remembered."""
    script = f'mount --bind "$0" {SKOPEO_CACHE} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(cache), *argv]


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:5])} failed:\n{done.stderr[-2000:]}")
    return elapsed


def copy_command(tool: str, skopeo: str, source: str, destination: str) -> list[str]:
    if tool == "skopeo":
        return [
            skopeo,
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            source,
            destination,
        ]
    return [*ocikit_command(), "copy", "-q", source, destination]


def ocikit_command() -> list[str]:
    """The ``ocikit`` console script beside this interpreter, as a user runs it after ``pip
    install`` (``python -m`` would add runpy's start-up); ``PYTHONPATH`` still points it at this
    checkout. ``-m`` only where no script is installed."""
    script = Path(sys.executable).with_name("ocikit")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ocikit.cli.main"]


def measure(layout: Path, rounds: int, work: Path, skopeo: str, registry: Any) -> dict[str, list[float]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    env["OCIKIT_STORE"] = str(work / "store")
    # As installed by pip, with bytecode: a shell that forbids writing it would time compiling.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(SRC)], env=env, check=True)
    binary = registry.find_tool("docker-registry")
    if binary is None:
        raise SystemExit(
            "docker-registry is not installed (scripts/install-system-deps.sh installs it as root)"
        )
    Path(SKOPEO_CACHE).mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {f"{tool} {step}": [] for step in STEPS for tool in TOOLS}
    for round_number in range(rounds):
        tools = TOOLS if round_number % 2 == 0 else TOOLS[::-1]  # neither always goes first
        for tool in tools:
            server_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"distribution-{tool}-"))
            cache = Path(tempfile.mkdtemp(dir=work, prefix=f"cache-{tool}-"))
            server = registry.start_distribution(server_dir, binary, registry.DEBIAN)
            try:
                base = f"docker://{server.host}:{server.port}/bench/{tool}-{round_number}"
                out = work / f"pulled-{tool}-{round_number}"
                runs = {
                    "push": (f"oci:{layout}:bench", f"{base}:v1"),
                    "push again": (f"oci:{layout}:bench", f"{base}-again:v1"),
                    "pull": (f"{base}:v1", f"oci:{out}:v1"),
                }
                for step, (source, target) in runs.items():
                    argv = with_private_cache(copy_command(tool, skopeo, source, target), cache)
                    times[f"{tool} {step}"].append(timed(argv, dict(env, XDG_CACHE_HOME=str(cache))))
                shutil.rmtree(out, ignore_errors=True)
            finally:
                server.stop()
                shutil.rmtree(server_dir, ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)
    return times


TOOLS = ("ocikit", "skopeo")


def summarise(times: dict[str, list[float]], payload: int) -> dict[str, Any]:
    median = {key: statistics.median(values) for key, values in times.items()}
    summary: dict[str, Any] = {}
    for step in STEPS:
        ours, theirs = median[f"ocikit {step}"], median[f"skopeo {step}"]
        summary[step] = {
            "ocikit_s": round(ours, 3),
            "skopeo_s": round(theirs, 3),
            "ocikit_MBps": round(payload / 1e6 / ours, 1),
            "skopeo_MBps": round(payload / 1e6 / theirs, 1),
            "ocikit/skopeo": round(ours / theirs, 2),
        }
    return summary


def arguments(description: str, rounds: int, quick: str) -> tuple[argparse.Namespace, str, Path]:
    """The command line this benchmark and ``bench/startup.py`` share: the options, skopeo's
    path, and the image layout (built into ``--cache`` the first time)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cache", type=Path, default=Path("/var/tmp/ocikit-bench-unpack"))
    parser.add_argument("--mirror", default="http://deb.debian.org/debian")
    parser.add_argument("--tmpdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--quick", action="store_true", help=f"the small synthetic image, {quick}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        parser.error("skopeo is not installed (scripts/install-system-deps.sh installs it as root)")
    unpack = load_sibling("unpack")
    args.cache.mkdir(parents=True, exist_ok=True)
    layout = (
        unpack.build_synthetic(args.cache) if args.quick else unpack.build_debian(args.cache, args.mirror)
    )
    return args, skopeo, layout


def main() -> int:
    args, skopeo, layout = arguments(__doc__.split("\n\n")[0], 5, "one round")
    unpack, registry = load_sibling("unpack"), load_sibling("registry")
    layers = unpack.image_layers(layout)
    payload = sum(path.stat().st_size for path, _, _, _ in layers)
    rounds = 1 if args.quick else args.rounds
    with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="ocikit-bench-copy-") as work:
        times = measure(layout, rounds, Path(work), skopeo, registry)
    report = {
        "mode": "quick" if args.quick else "full",
        "rounds": rounds,
        "image": {"layers": len(layers), "compressed_bytes": payload},
        "seconds": {key: [round(v, 3) for v in values] for key, values in times.items()},
        "summary": summarise(times, payload),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"image: {len(layers)} layers, {payload / 1e6:.1f} MB compressed; median of {rounds} round(s)")
    print("to and from CNCF distribution (docker-registry) on loopback, one process per copy")
    for step, row in report["summary"].items():
        print(
            f"{step:>10}: ocikit {row['ocikit_s']:.2f}s ({row['ocikit_MBps']} MB/s)  "
            f"skopeo {row['skopeo_s']:.2f}s ({row['skopeo_MBps']} MB/s)  "
            f"ocikit/skopeo {row['ocikit/skopeo']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
