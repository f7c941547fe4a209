"""``pwrite_all``: the bytes of every chunk land in order at the position asked, whatever the
chunks' sizes against the 64 KiB write piece."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ocikit.store.files import pwrite_all, run_to_completion, write_batched


def test_pwrite_all_writes_every_chunk_in_order_at_the_position(tmp_path: Path) -> None:
    piece = 64 << 10
    sizes = [0, 1, piece - 1, piece, piece + 1, 5 * piece + 7, 0, 3]
    chunks = [os.urandom(size) for size in sizes]
    path = tmp_path / "file"
    path.write_bytes(b"head-" + b"x" * 10)
    fd = os.open(path, os.O_WRONLY)
    try:
        assert pwrite_all(fd, chunks, 5) == sum(sizes)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"head-" + b"".join(chunks)


def test_pwrite_all_of_nothing_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"kept")
    fd = os.open(path, os.O_WRONLY)
    try:
        assert pwrite_all(fd, [], 2) == 0
    finally:
        os.close(fd)
    assert path.read_bytes() == b"kept"


@pytest.mark.parametrize(
    ("batches", "size"), [(1, 1 << 20), (3, 4 << 20)], ids=["short-last-batch", "full-batches"]
)
def test_a_cancelled_batched_write_has_finished_before_the_caller_hears_of_it(
    batches: int, size: int
) -> None:
    """A copy cancelled while a batch is being written (a sibling blob failed) closes its file
    as soon as the cancellation reaches it: no write may still be running then."""
    running = threading.Event()
    finished: list[int] = []

    def slow_write(batch: list[bytes], offset: int) -> None:
        running.set()
        time.sleep(0.3)
        finished.append(offset)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(batches):
            yield b"x" * size

    async def scenario() -> list[int]:
        task = asyncio.create_task(write_batched(chunks(), slow_write))
        while not running.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return list(finished)  # what had been written when the cancellation arrived

    assert asyncio.run(scenario()) != []


def test_a_cancelled_run_to_completion_waits_for_its_thread() -> None:
    """A blob's commit (fsync, rename) cancelled halfway must end before the caller aborts
    the writer and closes its file."""
    running, finished = threading.Event(), threading.Event()

    def commit() -> None:
        running.set()
        time.sleep(0.3)
        finished.set()

    async def scenario() -> bool:
        task = asyncio.create_task(run_to_completion(commit))
        while not running.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return finished.is_set()

    assert asyncio.run(scenario())
