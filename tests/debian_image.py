"""The Debian image of the acceptance tests and benchmarks: ``debootstrap --variant=minbase
bookworm`` in three layers written by umoci, built once per machine by bench/unpack.py
(minutes, from a Debian mirror) and cached under /var/tmp."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from conftest import REQUIRE_ALL, require_tool

BENCH = Path(__file__).resolve().parent.parent / "bench"
#: The tag of the image in the layout.
DEBIAN_TAG = "bench"


def bench_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"ocikit_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _skip_or_fail(message: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(message)
    pytest.skip(message)


def debian_layout() -> Path:
    """bench/unpack.py's cached Debian image, built now if this machine has none yet."""
    unpack = bench_module("unpack")
    cache: Path = unpack.DEFAULT_CACHE
    if not (cache / "ready").exists():
        require_tool("debootstrap", "it builds the Debian image")
        require_tool("umoci", "it writes the Debian image's layers")
        try:
            httpx.head(f"{unpack.DEFAULT_MIRROR}/dists/bookworm/Release", timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            _skip_or_fail(f"the Debian mirror {unpack.DEFAULT_MIRROR} is unreachable: {exc}")
        cache.mkdir(parents=True, exist_ok=True)
    layout: Path = unpack.build_debian(cache)
    return layout
