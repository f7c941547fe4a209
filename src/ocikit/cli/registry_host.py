"""The registry host named on a command line, checked and normalised for login and logout."""

from __future__ import annotations

import re
from typing import Final

from ..spec.reference import ReferenceError

_HOST: Final = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?"
)
_DOCKER_HUB: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def registry_host(text: str) -> str:
    """``ghcr.io``, ``localhost:5000`` or ``https://host/v1/`` to the host a reference carries;
    Docker Hub's names all become ``docker.io``."""
    host = text.strip()
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0]
    if not _HOST.fullmatch(host):
        raise ReferenceError(f"{text!r} is not a registry host[:port]")
    return "docker.io" if host.lower() in _DOCKER_HUB else host
