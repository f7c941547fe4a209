#!/usr/bin/env python3
"""The metadata store's hot paths, in-process: CPU time of the two reads behind a manifest
GET by tag (``tag_target`` + ``manifest``) and wall time of one blob link (a write
transaction, durable), on SQLite and, with ``--postgres URL``, on PostgreSQL.

Reads are timed as the CPU time of the calling thread (best of 30 blocks of 2000): SQLite
reads run inline on the event loop, so that is what a manifest GET pays, and CPU time holds
on a machine shared with other work. Run it against another checkout by putting that
checkout's ``src`` first on ``PYTHONPATH``::

    .venv/bin/python bench/metadata.py
    .venv/bin/python bench/metadata.py --postgres postgresql://ocikit:…@127.0.0.1:5432/bench
    PYTHONPATH=/path/to/other/src .venv/bin/python bench/metadata.py    # compare with it
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ocikit.registry.storage.base import ManifestRecord
from ocikit.spec.digest import Digest, digest_of


async def _link(store: Any, digest: Digest) -> None:
    """Link a blob as a push does, under an announcement."""
    assert await store.publish_begin(digest, "bench", 30)
    assert await store.link_blob("bench/app", digest, 1, announced_by="bench")
    await store.publish_end(digest, "bench")


async def _measure(store: Any, blocks: int, per_block: int, links: int) -> dict[str, float]:
    await store.open()
    try:
        record = ManifestRecord(digest_of(b"m"), "application/vnd.oci.image.manifest.v1+json", b"m")
        await _link(store, digest_of(b"b"))
        await store.put_manifest("bench/app", record, blobs=[digest_of(b"b")], children=[], tags=["latest"])
        best = float("inf")
        for _ in range(blocks):
            started = time.thread_time()
            for _ in range(per_block):
                target = await store.tag_target("bench/app", "latest")
                await store.manifest("bench/app", target)
            best = min(best, time.thread_time() - started)
        writes = []
        for i in range(links):
            digest = digest_of(str(i).encode())
            assert await store.publish_begin(digest, "bench", 30)
            started = time.perf_counter()
            assert await store.link_blob("bench/app", digest, 1, announced_by="bench")
            writes.append(time.perf_counter() - started)
            await store.publish_end(digest, "bench")
        return {"read_cpu_us": best / per_block * 1e6, "link_ms": statistics.median(writes) * 1e3}
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL", help="also measure this (empty) PostgreSQL database")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    blocks, per_block, links = (3, 200, 20) if args.quick else (30, 2000, 200)
    from ocikit.registry.storage.sqlite import SQLiteMetadataStore

    results = {}
    with tempfile.TemporaryDirectory() as directory:
        store = SQLiteMetadataStore(Path(directory) / "metadata.db")
        results["sqlite"] = asyncio.run(_measure(store, blocks, per_block, links))
    if args.postgres:
        from ocikit.registry.storage.postgres import PostgresMetadataStore

        results["postgresql"] = asyncio.run(
            _measure(PostgresMetadataStore(args.postgres), blocks, per_block, links)
        )
    if args.json:
        print(json.dumps({"results": results}))
        return
    print(f"{'store':<12} {'manifest GET reads, CPU us':>27} {'link_blob, ms':>14}")
    for name, row in results.items():
        print(f"{name:<12} {row['read_cpu_us']:>27.2f} {row['link_ms']:>14.2f}")


if __name__ == "__main__":
    main()
