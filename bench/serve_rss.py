"""Resident memory of ``ocikit serve``'s main process (Granian's supervisor) on PostgreSQL and
S3 (SeaweedFS), two seconds after it became ready: the process lives as long as the server,
so what it imports it holds for good.

    .venv/bin/python bench/serve_rss.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import start_registry
from postgres import start_postgres, stop_postgres
from seaweedfs import start_seaweedfs


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def main() -> None:
    postgres, weed = start_postgres(), start_seaweedfs()
    if postgres is None:
        raise SystemExit("PostgreSQL is not installed")
    try:
        with tempfile.TemporaryDirectory() as directory:
            storage = ["--storage", f"s3://{weed.bucket}/rss", "--s3-endpoint", weed.endpoint]
            server = start_registry(
                Path(directory) / "data",
                extra=["--metadata", postgres.database(), *storage],
                env={**os.environ, **weed.environment()},
            )
            try:
                time.sleep(2)
                print(f"main process RSS: {_rss_kib(server.process.pid) / 1024:.1f} MiB")
            finally:
                server.stop()
    finally:
        weed.stop()
        stop_postgres(postgres)


if __name__ == "__main__":
    main()
