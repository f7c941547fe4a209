"""Edits of an image's execution parameters (the ``config`` object of config.md).

Commands are given as Docker's Dockerfile forms: a JSON array is the exec form, kept as it is;
anything else is the shell form and runs under ``/bin/sh -c``. ``Env`` keeps its order: a
variable that is set again keeps its place with the new value. An edit that leaves a field
empty removes it rather than writing ``[]`` or ``{}``, as a fresh image would not carry one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

from .transport import TransportError

__all__ = ["ConfigEdits", "apply_edits", "parse_command"]

_PORT: Final = re.compile(r"\d{1,5}(/(tcp|udp|sctp))?")


def parse_command(text: str) -> list[str]:
    """``["a","b"]`` as it is, anything else as ``/bin/sh -c TEXT``."""
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TransportError(f"{text!r} starts like a JSON array but is not one: {exc}") from None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise TransportError(f"{text!r}: a command array holds strings only")
        return value
    return ["/bin/sh", "-c", text]


def _pair(text: str, what: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise TransportError(f"{what} {text!r} is not KEY=VALUE")
    return key, value


@dataclass
class ConfigEdits:
    """What ``ocikit config`` was asked to change; ``None``/empty means "leave as it is"."""

    entrypoint: list[str] | None = None
    clear_entrypoint: bool = False
    cmd: list[str] | None = None
    clear_cmd: bool = False
    env: list[str] = field(default_factory=list)
    env_rm: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    labels: list[str] = field(default_factory=list)
    label_rm: list[str] = field(default_factory=list)
    stop_signal: str | None = None
    volumes: list[str] = field(default_factory=list)
    volume_rm: list[str] = field(default_factory=list)
    expose: list[str] = field(default_factory=list)
    expose_rm: list[str] = field(default_factory=list)


def _set_or_drop(container: dict[str, Any], key: str, value: Any) -> None:
    if value in (None, "", [], {}):
        container.pop(key, None)
    else:
        container[key] = value


def _env(container: dict[str, Any], edits: ConfigEdits) -> None:
    current: list[str] = list(container.get("Env") or [])
    for text in edits.env:
        key, _ = _pair(text, "the variable")
        places = [i for i, item in enumerate(current) if item.partition("=")[0] == key]
        if places:
            current[places[0]] = text
            for extra in reversed(places[1:]):
                del current[extra]
        else:
            current.append(text)
    removed = set(edits.env_rm)
    _set_or_drop(container, "Env", [item for item in current if item.partition("=")[0] not in removed])


def _mapping(container: dict[str, Any], key: str, add: dict[str, Any], remove: list[str]) -> None:
    current = dict(container.get(key) or {})
    current.update(add)
    for name in remove:
        current.pop(name, None)
    _set_or_drop(container, key, current)


def _port(text: str) -> str:
    if not _PORT.fullmatch(text):
        raise TransportError(f"the port {text!r} is not PORT or PORT/tcp|udp|sctp")
    return text if "/" in text else f"{text}/tcp"


def apply_edits(config: dict[str, Any], edits: ConfigEdits) -> list[str]:
    """Change ``config`` (the whole image config) in place; what changed, for the history."""
    container: dict[str, Any] = dict(config.get("config") or {})
    said: list[str] = []
    if edits.clear_entrypoint or edits.entrypoint is not None:
        _set_or_drop(container, "Entrypoint", None if edits.clear_entrypoint else edits.entrypoint)
        said.append(f"ENTRYPOINT {json.dumps(container.get('Entrypoint', []))}")
    if edits.clear_cmd or edits.cmd is not None:
        _set_or_drop(container, "Cmd", None if edits.clear_cmd else edits.cmd)
        said.append(f"CMD {json.dumps(container.get('Cmd', []))}")
    if edits.env or edits.env_rm:
        _env(container, edits)
        said.extend([f"ENV {item}" for item in edits.env] + [f"ENV -{key}" for key in edits.env_rm])
    for key, value, word in (
        ("WorkingDir", edits.workdir, "WORKDIR"),
        ("User", edits.user, "USER"),
        ("StopSignal", edits.stop_signal, "STOPSIGNAL"),
    ):
        if value is not None:
            _set_or_drop(container, key, value)
            said.append(f"{word} {value}")
    if edits.labels or edits.label_rm:
        labels = dict(_pair(text, "the label") for text in edits.labels)
        _mapping(container, "Labels", labels, edits.label_rm)
        said.extend([f"LABEL {item}" for item in edits.labels] + [f"LABEL -{key}" for key in edits.label_rm])
    if edits.volumes or edits.volume_rm:
        for path in [*edits.volumes, *edits.volume_rm]:
            if not path.startswith("/"):
                raise TransportError(f"the volume {path!r} is not an absolute path")
        _mapping(container, "Volumes", {path: {} for path in edits.volumes}, edits.volume_rm)
        said.extend([f"VOLUME {p}" for p in edits.volumes] + [f"VOLUME -{p}" for p in edits.volume_rm])
    if edits.expose or edits.expose_rm:
        ports: dict[str, Any] = {_port(text): {} for text in edits.expose}
        _mapping(container, "ExposedPorts", ports, [_port(text) for text in edits.expose_rm])
        said.extend([f"EXPOSE {p}" for p in ports] + [f"EXPOSE -{p}" for p in edits.expose_rm])
    config["config"] = container
    return said
