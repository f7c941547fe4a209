#!/usr/bin/env python3
"""What carrying a chunked upload's digest state costs: ``ResumableDigester`` (OpenSSL's
SHA256_CTX/SHA512_CTX through ctypes, state exported after every chunk as the registry does)
against ``hashlib`` hashing the same bytes in one go, in one run, reported as a ratio.

Times are the CPU time of the hashing thread (``time.thread_time``), not wall time: the
figures then hold on a machine shared with other work, which only stretches wall time.

Also times one export + restore (what each PATCH adds on top of hashing its bytes) and what
the alternative costs: re-reading and hashing the whole blob at the closing PUT.

    .venv/bin/python bench/digest.py            # 255 MiB, 5 MiB chunks, 5 rounds
    .venv/bin/python bench/digest.py --quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time

from ocikit.spec.digest import ResumableDigester

MiB = 1 << 20


def _hashlib(algorithm: str, chunks: list[bytes]) -> float:
    started = time.thread_time()
    digest = hashlib.new(algorithm)
    for chunk in chunks:
        digest.update(chunk)
    digest.hexdigest()
    return time.thread_time() - started


def _resumable(algorithm: str, chunks: list[bytes]) -> float:
    started = time.thread_time()
    state = ResumableDigester(algorithm).export()
    for chunk in chunks:  # one PATCH per chunk: restore, hash, export
        digester = ResumableDigester.restore(state)
        digester.update(chunk)
        state = digester.export()
    ResumableDigester.restore(state).digest()
    return time.thread_time() - started


def _round_trip(rounds: int = 20000) -> float:
    state = ResumableDigester().export()
    started = time.thread_time()
    for _ in range(rounds):
        state = ResumableDigester.restore(state).export()
    return (time.thread_time() - started) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 MiB, 2 rounds (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    total, rounds, chunk = (15 * MiB, 2, 5 * MiB) if args.quick else (255 * MiB, 5, 5 * MiB)
    block = os.urandom(chunk)
    chunks = [block] * (total // chunk)
    results = {}
    for algorithm in ("sha256", "sha512"):
        plain = statistics.median(_hashlib(algorithm, chunks) for _ in range(rounds))
        carried = statistics.median(_resumable(algorithm, chunks) for _ in range(rounds))
        results[algorithm] = {
            "hashlib_mb_s": total / plain / 1e6,
            "resumable_mb_s": total / carried / 1e6,
            "ratio": plain / carried,
        }
    round_trip_us = _round_trip() * 1e6
    if args.json:
        print(json.dumps({"results": results, "export_restore_us": round_trip_us, "mib": total // MiB}))
        return
    print(f"{total // MiB} MiB in {len(chunks)} chunks of {chunk // MiB} MiB, median of {rounds} rounds")
    print("MB hashed per CPU second:")
    print(f"{'algorithm':<10} {'hashlib':>13} {'resumable':>15} {'ratio':>6}")
    for algorithm, row in results.items():
        plain, carried = row["hashlib_mb_s"], row["resumable_mb_s"]
        print(f"{algorithm:<10} {plain:>13.0f} {carried:>15.0f} {row['ratio']:>6.2f}")
    print(f"export + restore of a state: {round_trip_us:.1f} us")


if __name__ == "__main__":
    main()
