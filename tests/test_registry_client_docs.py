"""The Python examples of docs/registry-client.md run and print what the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import ServerProcess

PAGE = Path(__file__).resolve().parent.parent / "docs" / "registry-client.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_page_has_its_examples() -> None:
    assert len(_python_blocks()) == 2


def test_flags_example() -> None:
    assert _run(_python_blocks()[0]) == "('me', 'secret') False\n"


def test_round_trip_example(registry: ServerProcess) -> None:
    code = _python_blocks()[1].replace("127.0.0.1:5000", registry.host)
    assert _run(code) == "True True True\n['latest', 'v1']\n"
