"""``pwrite_all``: the bytes of every chunk land in order at the position asked, whatever the
chunks' sizes against the 64 KiB write piece."""

from __future__ import annotations

import os
from pathlib import Path

from ocikit.store.files import pwrite_all


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
