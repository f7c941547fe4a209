"""The Python examples of the user docs run, and print what each page says they print."""

from __future__ import annotations

import pytest

from conftest import run_page_examples


@pytest.mark.parametrize(
    ("page", "minimum"),
    [
        ("spec-model.md", 41),
        ("client.md", 26),
        ("layerfs.md", 16),
        ("create.md", 25),
        ("snapshots.md", 12),
        ("proxmox-lxc.md", 5),
        ("registry.md", 9),
    ],
)
def test_examples_run(page: str, minimum: int) -> None:
    result = run_page_examples(page)
    assert result.attempted >= minimum, "the page lost its examples"
    assert result.failed == 0
