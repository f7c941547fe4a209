#!/usr/bin/env python3
"""What a repeat push is made of: CPython's start-up floors beside the whole repeat push.

A push whose blobs are all mounted (``bench/push_pull.py``'s "push again") sends five requests
and no blob byte; nearly all of its time is the start of a Python process and its imports. This
benchmark times, in turns, one fresh process each (median and minimum of ``--rounds``):

- ``python``: ``python -c pass``, the interpreter alone (with ``site``, as the console script);
- ``asyncio``: ``python -c "import asyncio"``;
- ``client floor``: ``import asyncio, msgspec.json, argparse, sqlite3``, the modules ocikit's
  client cannot do without (its I/O, its documents, its command line, its blob location record);
- ``sync floor``: ``import http.client, json, argparse, sqlite3, hashlib``, what a client
  without asyncio and msgspec, on the standard library alone, would import at the least;
- ``ocikit copy --help``: the console script importing the copy command and everything it uses;
- ``ocikit push again`` and ``skopeo push again``: the whole repeat push of the Debian image to a
  new repository of a CNCF distribution (Debian's ``docker-registry``), each tool with the blob
  locations its own first push left (the same wrapper and caches as ``bench/push_pull.py``);
- ``sync push floor``: ``bench/sync_push_floor.py``, the same five requests as ocikit's repeat
  push from a script on the standard library alone (``http.client``, no asyncio, no msgspec,
  nothing but the expected answers handled): what a synchronous client could reach at best.

    .venv/bin/python bench/startup.py [--rounds N] [--quick] [--json]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import push_pull  # bench/ is the script's directory, first on sys.path

HERE = Path(__file__).resolve().parent

FLOORS = {
    "python": "pass",
    "asyncio": "import asyncio",
    "client floor": "import asyncio, msgspec.json, argparse, sqlite3",
    "sync floor": "import http.client, json, argparse, sqlite3, hashlib",
}


def commands(push_pull: Any, skopeo: str, layout: Path, host: str, caches: dict[str, Path]) -> dict[str, Any]:
    """Each measured case: a function of the round's unique suffix giving its argv."""
    base = f"docker://{host}/bench"
    record = caches["ocikit"] / "ocikit" / "blob-locations.sqlite"
    cases: dict[str, Any] = {
        name: (lambda _, code=code: [sys.executable, "-c", code]) for name, code in FLOORS.items()
    }
    cases["ocikit copy --help"] = lambda _: [*push_pull.ocikit_command(), "copy", "--help"]
    for tool in ("ocikit", "skopeo"):
        cases[f"{tool} push again"] = lambda suffix, tool=tool: push_pull.with_private_cache(
            push_pull.copy_command(tool, skopeo, f"oci:{layout}:bench", f"{base}/{tool}-{suffix}:v1"),
            caches[tool],
        )
    floor = [sys.executable, str(HERE / "sync_push_floor.py"), str(layout), "bench", host]
    cases["sync push floor"] = lambda suffix: push_pull.with_private_cache(
        [*floor, f"bench/sync-{suffix}", str(record)], caches["ocikit"]
    )
    return cases


def measure(push_pull: Any, layout: Path, rounds: int, work: Path, skopeo: str) -> dict[str, list[float]]:
    registry = push_pull.load_sibling("registry")
    src = HERE.parent / "src"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed by pip, with bytecode
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], env=env, check=True)
    binary = registry.find_tool("docker-registry")
    if binary is None:
        raise SystemExit("docker-registry is not installed (scripts/install-system-deps.sh installs it)")
    Path(push_pull.SKOPEO_CACHE).mkdir(parents=True, exist_ok=True)
    caches = {
        tool: Path(tempfile.mkdtemp(dir=work, prefix=f"cache-{tool}-")) for tool in ("ocikit", "skopeo")
    }
    env_of = {
        tool: dict(env, OCIKIT_STORE=str(work / "store"), XDG_CACHE_HOME=str(caches[tool])) for tool in caches
    }
    server = registry.start_distribution(Path(tempfile.mkdtemp(dir=work)), binary, registry.DEBIAN)
    try:
        cases = commands(push_pull, skopeo, layout, f"{server.host}:{server.port}", caches)
        for tool in caches:  # the first push, which leaves each tool's record of blob locations
            push_pull.timed(cases[f"{tool} push again"]("first"), env_of[tool])
        times: dict[str, list[float]] = {name: [] for name in cases}
        for round_number in range(rounds):
            order = list(cases) if round_number % 2 == 0 else list(cases)[::-1]
            for name in order:
                tool = name.split()[0]
                argv = cases[name](uuid.uuid4().hex[:12])
                times[name].append(push_pull.timed(argv, env_of.get(tool, env_of["ocikit"])))
        return times
    finally:
        server.stop()


def main() -> int:
    args, skopeo, layout = push_pull.arguments(__doc__.split("\n\n")[0], 21, "3 rounds")
    rounds = 3 if args.quick else args.rounds
    with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="ocikit-bench-startup-") as work:
        times = measure(push_pull, layout, rounds, Path(work), skopeo)
    skopeo_push = statistics.median(times["skopeo push again"])
    summary = {
        name: {
            "median_ms": round(1000 * statistics.median(values), 1),
            "min_ms": round(1000 * min(values), 1),
            "/skopeo push again": round(statistics.median(values) / skopeo_push, 2),
        }
        for name, values in times.items()
    }
    if args.json:
        print(json.dumps({"rounds": rounds, "python": sys.version.split()[0], "summary": summary}, indent=2))
        return 0
    print(f"median (min) of {rounds} rounds, one process each; ratio to skopeo's repeat push")
    for name, row in summary.items():
        print(
            f"{name:>20}: {row['median_ms']:6.1f} ms ({row['min_ms']:.1f})  {row['/skopeo push again']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
