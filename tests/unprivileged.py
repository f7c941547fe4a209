"""Running ocikit as an unprivileged user (uid 65534) from a test run as root.

The checkout may live where only root can read it (a clone in a ``mktemp -d`` folder, or under
``/root`` on a fresh machine), and the virtualenv with it. The unprivileged side therefore
runs the interpreter behind the virtualenv on a world-readable copy of ``src/`` and of the
virtualenv's ``site-packages`` (hard links where the filesystem allows, so nothing is copied
twice); a test that used the checkout's own paths would fail with "No module named 'ocikit'".
"""

from __future__ import annotations

import os
import shutil
import site
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import require_tool

__all__ = ["NOBODY", "Unprivileged", "unprivileged_fixture"]

NOBODY = 65534
SRC = Path(__file__).resolve().parent.parent / "src"


@dataclass(frozen=True)
class Unprivileged:
    """How to run Python, and ocikit in it, as ``NOBODY``."""

    setpriv: str
    python: str
    pythonpath: str

    @property
    def prefix(self) -> tuple[str, ...]:
        return (self.setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": self.pythonpath, **extra}


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem, or links refused: a real copy
        shutil.copy2(source, destination)


def _readable_copy(base: Path) -> list[Path]:
    """The import path of a world-readable copy of ocikit and of what it imports."""
    paths = [base / "src"]
    shutil.copytree(SRC / "ocikit", paths[0] / "ocikit", ignore=shutil.ignore_patterns("__pycache__"))
    if sys.prefix != sys.base_prefix:  # a virtualenv: its packages live in the checkout too
        for index, directory in enumerate(site.getsitepackages()):
            if Path(directory).is_dir():
                paths.append(base / f"site-{index}")
                shutil.copytree(directory, paths[-1], copy_function=_link_or_copy, symlinks=True)
    return paths


@pytest.fixture(scope="session", name="unprivileged")
def unprivileged_fixture() -> Iterator[Unprivileged]:
    if os.geteuid() != 0:
        pytest.skip("the test drops from root to uid 65534 with setpriv")
    setpriv = require_tool("setpriv", "drops from root to an unprivileged user (util-linux)")
    base = Path(tempfile.mkdtemp(prefix="ocikit-unprivileged-"))
    try:
        base.chmod(0o755)
        paths = _readable_copy(base)
        yield Unprivileged(setpriv, os.path.realpath(sys.executable), os.pathsep.join(map(str, paths)))
    finally:
        shutil.rmtree(base)
