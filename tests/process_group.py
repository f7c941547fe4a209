"""Stopping a server a test started as the leader of a process group of its own
(``start_new_session=True``), with everything it spawned. Only stdlib: the benchmarks import
the fixtures that use it without pytest's conftest."""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["kill_group", "stop_group"]


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole group: a crash, not a shutdown."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stop_group(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM the group and wait ``grace`` seconds for the leader, then SIGKILL it."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        kill_group(process)
