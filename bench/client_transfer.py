#!/usr/bin/env python3
"""Benchmark ocikit's registry client against ``skopeo copy`` (Go) moving one large blob.

An image with a single random layer (256 MiB; ``--quick``: 32 MiB) sits in an OCI layout. Each
client pushes it from the layout to a registry and pulls it back into a fresh layout, against
``ocikit serve`` and against CNCF distribution (Debian's ``docker-registry``) on loopback ports.
Every run is a separate process, as a user would run it, so start-up cost is included for all:

- ``skopeo``: ``skopeo copy oci:LAYOUT:v1 docker://…`` and ``skopeo copy docker://… oci:OUT:v1``;
- ``ocikit``: ocikit.client (this checkout) doing the same steps: HEAD, upload, manifest PUT;
  resolve, manifest GET, blob GET into the layout with digest verification;
- ``httpx``: the blob GET alone, streamed with httpx into a file and hashed, to show why
  ocikit does not use it.

Each push goes to a new repository with a new random layer, so no tool can skip or mount it
(skopeo's blob-info cache would otherwise mount a blob it has seen on the registry). Figures
are MB/s of blob payload (median of ``--runs``), and ratios ocikit / skopeo.

    .venv/bin/python bench/client_transfer.py [--quick] [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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

MiB = 1 << 20
HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def _registry_bench() -> Any:
    """bench/registry.py, for its way of starting both registries."""
    spec = importlib.util.spec_from_file_location("bench_registry", HERE / "registry.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_registry"] = module
    spec.loader.exec_module(module)
    return module


def make_layout(directory: Path, size: int) -> str:
    """A one-layer image layout; returns the layer digest."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    digest = hashlib.sha256()
    temporary = blobs / "layer.tmp"
    with open(temporary, "wb") as sink:
        remaining = size
        while remaining:
            chunk = os.urandom(min(4 * MiB, remaining))
            digest.update(chunk)
            sink.write(chunk)
            remaining -= len(chunk)
    layer = digest.hexdigest()
    temporary.rename(blobs / layer)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    )
    config_digest = _put(blobs, config.encode())
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": f"sha256:{layer}",
                    "size": size,
                }
            ],
        }
    ).encode()
    manifest_digest = _put(blobs, manifest)
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    return f"sha256:{layer}"


def _put(blobs: Path, data: bytes) -> str:
    hexdigest = hashlib.sha256(data).hexdigest()
    (blobs / hexdigest).write_bytes(data)
    return f"sha256:{hexdigest}"


# ---------------------------------------------------------------- the ocikit and httpx workers


async def ocikit_push(layout: Path, target: str) -> None:
    from ocikit.client import open_destination
    from ocikit.spec import Descriptor

    index = json.loads((layout / "index.json").read_text())
    top = index["manifests"][0]
    blobs = layout / "blobs" / "sha256"
    raw = (blobs / top["digest"].split(":")[1]).read_bytes()
    manifest = json.loads(raw)
    destination = open_destination(target)
    try:
        for entry in [manifest["config"], *manifest["layers"]]:
            descriptor = Descriptor(media_type=entry["mediaType"], digest=entry["digest"], size=entry["size"])
            if not await destination.has_blob(descriptor):
                await destination.put_blob(descriptor, _read_file(blobs / entry["digest"].split(":")[1]))
        descriptor = Descriptor(media_type=top["mediaType"], digest=top["digest"], size=top["size"])
        await destination.put_manifest(descriptor, raw, [target.rsplit(":", 1)[1]])
    finally:
        await destination.close()


async def _read_file(path: Path, size: int = 4 * MiB) -> Any:
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(size):
            yield chunk


async def ocikit_pull(source_name: str, out: Path) -> None:
    from ocikit.client import open_source
    from ocikit.spec import Descriptor

    source = open_source(source_name)
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    try:
        top = await source.resolve(None)
        raw = await source.fetch_manifest(top)
        (blobs / top.digest.split(":")[1]).write_bytes(raw)
        manifest = json.loads(raw)
        for entry in [manifest["config"], *manifest["layers"]]:
            descriptor = Descriptor(media_type=entry["mediaType"], digest=entry["digest"], size=entry["size"])
            temporary = blobs / (descriptor.digest.split(":")[1] + ".tmp")
            with open(temporary, "wb") as sink:
                async for chunk in source.open_blob(descriptor):  # verified before the last chunk
                    sink.write(chunk)
            temporary.rename(blobs / descriptor.digest.split(":")[1])
    finally:
        await source.close()


async def httpx_pull(url: str, digest: str, out: Path) -> None:
    import httpx

    hasher = hashlib.sha256()
    async with httpx.AsyncClient(timeout=300) as client, client.stream("GET", url) as response:
        response.raise_for_status()
        with open(out, "wb") as sink:
            async for chunk in response.aiter_raw(MiB):
                hasher.update(chunk)
                sink.write(chunk)
    if f"sha256:{hasher.hexdigest()}" != digest:
        raise SystemExit("httpx: digest mismatch")


def worker(argv: list[str]) -> None:
    kind, *rest = argv
    if kind == "ocikit-push":
        asyncio.run(ocikit_push(Path(rest[0]), rest[1]))
    elif kind == "ocikit-pull":
        asyncio.run(ocikit_pull(rest[0], Path(rest[1])))
    elif kind == "httpx-pull":
        asyncio.run(httpx_pull(rest[0], rest[1], Path(rest[2])))


# ---------------------------------------------------------------- driving the runs


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed:\n{done.stderr[-2000:]}")
    return elapsed


def measure(
    server: Any, workdir: Path, size: int, runs: int, skopeo: str, env: dict[str, str]
) -> dict[str, Any]:
    me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    host = f"{server.host}:{server.port}"
    times: dict[str, list[float]] = {
        key: [] for key in ("skopeo push", "ocikit push", "skopeo pull", "ocikit pull", "httpx pull")
    }
    for run in range(runs):
        for tool in ("skopeo", "ocikit"):
            layout = workdir / f"layout-{tool}-{run}"
            layer = make_layout(layout, size)
            target = f"{host}/bench/{tool}-{run}-{os.getpid()}:v1"
            if tool == "skopeo":
                push = [
                    skopeo,
                    "copy",
                    "-q",
                    "--dest-tls-verify=false",
                    f"oci:{layout}:v1",
                    f"docker://{target}",
                ]
            else:
                push = [*me, "ocikit-push", str(layout), target]
            times[f"{tool} push"].append(timed(push, env))
            if tool != "ocikit":
                shutil.rmtree(layout, ignore_errors=True)
                continue
            # pull what ocikit pushed (skopeo checks it that way too), each tool into a fresh layout
            for puller in ("skopeo", "ocikit", "httpx"):
                out = workdir / f"out-{puller}-{tool}-{run}"
                if puller == "skopeo":
                    argv = [
                        skopeo,
                        "copy",
                        "-q",
                        "--src-tls-verify=false",
                        f"docker://{target}",
                        f"oci:{out}:v1",
                    ]
                elif puller == "ocikit":
                    argv = [*me, "ocikit-pull", target, str(out)]
                else:
                    repository = target.split("/", 1)[1].rsplit(":", 1)[0]
                    argv = [
                        *me,
                        "httpx-pull",
                        f"http://{host}/v2/{repository}/blobs/{layer}",
                        layer,
                        str(out),
                    ]
                times[f"{puller} pull"].append(timed(argv, env))
                shutil.rmtree(out, ignore_errors=True)
                if out.exists():
                    out.unlink()
            shutil.rmtree(layout, ignore_errors=True)
    mbps = {key: size / 1e6 / statistics.median(values) for key, values in times.items() if values}
    return {
        "MB/s": {key: round(value, 1) for key, value in mbps.items()},
        "seconds": {key: [round(v, 3) for v in values] for key, values in times.items()},
        "ratio push ocikit/skopeo": round(mbps["ocikit push"] / mbps["skopeo push"], 2),
        "ratio pull ocikit/skopeo": round(mbps["ocikit pull"] / mbps["skopeo pull"], 2),
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB, 1 run: a smoke run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tmpdir", help="where layouts and registry data go (default: system temp)")
    args = parser.parse_args()
    size = (32 if args.quick else args.size_mib) * MiB
    runs = 1 if args.quick else args.runs
    bench = _registry_bench()
    skopeo, distribution = bench.find_tool("skopeo"), bench.find_tool("docker-registry")
    missing = [n for n, p in (("skopeo", skopeo), ("docker-registry", distribution)) if p is None]
    if missing:
        print(bench.missing_tools_message(missing), file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    results: dict[str, Any] = {"blob_mib": size // MiB, "runs": runs}
    with tempfile.TemporaryDirectory(prefix="ocikit-client-bench-", dir=args.tmpdir) as tmp:
        workdir = Path(tmp)
        env["HOME"] = str(workdir / "home")  # skopeo's caches and auth stay private to this run
        for name, start in (("ocikit serve", bench.start_ocikit), ("distribution", bench.start_distribution)):
            server = start(workdir, distribution) if name == "distribution" else start(workdir)
            try:
                results[name] = measure(server, workdir, size, runs, skopeo, env)
            finally:
                server.stop()
            if not args.json:
                print(f"{name}: {json.dumps(results[name]['MB/s'])}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"blob {size // MiB} MiB, median of {runs} run(s), MB/s (ratio ocikit/skopeo)")
        for name in ("ocikit serve", "distribution"):
            row = results[name]
            line = ", ".join(f"{key} {value}" for key, value in row["MB/s"].items())
            print(f"  {name:13} {line}")
            print(
                f"  {'':13} push {row['ratio push ocikit/skopeo']}x, pull {row['ratio pull ocikit/skopeo']}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
