"""Image config -> runtime ``config.json``, following image-spec conversion.md.

The "default generated runtime configuration" is made from the image config alone; then
:class:`Overrides` (the caller's explicit inputs, which conversion.md treats as edits of the
image config) are applied; ocikit's own defaults (:mod:`.defaults`) only ever *add*: a PATH
when the image has none, TERM for a terminal, the Linux sandbox.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from ..spec.models import ContainerConfig, ImageConfig
from ..spec.runtime import RUNTIME_SPEC_VERSION, Mount, Process, Root, RuntimeConfig
from . import defaults
from .errors import BundleError
from .users import resolve_user

__all__ = [
    "ANNOTATION_PREFIX",
    "Overrides",
    "VolumeMode",
    "annotations_for",
    "check_convertible",
    "runtime_config",
]

ANNOTATION_PREFIX: Final = "org.opencontainers.image."

VolumeMode = Literal["bind", "tmpfs", "none"]


@dataclass(frozen=True, slots=True)
class Overrides:
    """What the caller changes of the image config, and choices conversion leaves open.

    ``entrypoint`` replaces Entrypoint and, like ``docker run --entrypoint``, drops the
    image's Cmd (its arguments were meant for the old entrypoint); ``args`` replaces Cmd.
    ``env`` entries ``NAME=value`` replace the image's NAME or are appended.
    """

    entrypoint: Sequence[str] | None = None
    args: Sequence[str] | None = None
    env: Sequence[str] = ()
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    hostname: str = "ocikit"
    annotations: Mapping[str, str] = field(default_factory=dict)
    readonly_rootfs: bool = False
    volumes: VolumeMode = "bind"


def _env_name(entry: str) -> str:
    return entry.partition("=")[0]


def _merge_env(image_env: Sequence[str], overrides: Overrides) -> list[str]:
    env = list(image_env)
    for entry in overrides.env:
        name = _env_name(entry)
        if not name or "=" not in entry:
            raise BundleError(f"invalid environment override {entry!r}: expected NAME=value")
        positions = [i for i, existing in enumerate(env) if _env_name(existing) == name]
        if positions:
            env[positions[0]] = entry
            for i in reversed(positions[1:]):
                del env[i]
        else:
            env.append(entry)
    names = {_env_name(entry) for entry in env}
    if "PATH" not in names:
        env.append(defaults.DEFAULT_PATH)
    if overrides.tty and "TERM" not in names:
        env.append("TERM=xterm")
    return env


def _args(config: ContainerConfig, overrides: Overrides) -> list[str]:
    if overrides.entrypoint is not None:
        entrypoint = list(overrides.entrypoint)
        cmd = list(overrides.args or [])
    else:
        entrypoint = list(config.entrypoint or [])
        cmd = list(overrides.args if overrides.args is not None else config.cmd or [])
    args = entrypoint + cmd
    if not args:
        raise BundleError("the image has neither Entrypoint nor Cmd: give the command to run")
    return args


def _cwd(config: ContainerConfig, overrides: Overrides) -> str:
    cwd = overrides.workdir if overrides.workdir is not None else config.working_dir or "/"
    if not cwd.startswith("/"):
        raise BundleError(f"working directory {cwd!r} must be an absolute path")
    return cwd


def annotations_for(image: ImageConfig, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The implicit annotations, then Config.Labels over them (conversion.md's precedence),
    then the caller's ``extra`` over both."""
    config = image.config or ContainerConfig()
    implicit: dict[str, str | None] = {
        "os": image.os,
        "architecture": image.architecture,
        "variant": image.variant,
        "os.version": image.os_version,
        # A list in the image config, a string in an annotation: comma-separated like exposedPorts.
        "os.features": ",".join(image.os_features) if image.os_features else None,
        "author": image.author,
        "created": image.created,
        "stopSignal": config.stop_signal,
        "exposedPorts": ",".join(config.exposed_ports) if config.exposed_ports else None,
    }
    result = {ANNOTATION_PREFIX + key: value for key, value in implicit.items() if value is not None}
    result.update(config.labels or {})
    result.update(extra or {})
    return result


def _volume_destinations(config: ContainerConfig) -> list[str]:
    destinations = []
    for path in config.volumes or {}:
        if not path.startswith("/") or "\0" in path:
            raise BundleError(f"volume {path!r} must be an absolute path")
        normal = posixpath.normpath(path)
        if normal == "/" or normal.startswith("//"):
            raise BundleError(f"volume {path!r} would cover the whole root filesystem")
        destinations.append(normal)
    return sorted(set(destinations))


_HOSTNAME_BAD = re.compile(r"[^a-z0-9-]+")


def hostname_for(name: str) -> str:
    """A valid host name (RFC 1123 label) made from a bundle's directory name."""
    label = _HOSTNAME_BAD.sub("-", name.lower()).strip("-")[:63].strip("-")
    return label or "ocikit"


def check_convertible(image: ImageConfig, overrides: Overrides | None = None) -> None:
    """Raise the :class:`BundleError` that :func:`runtime_config` would raise for reasons the
    root filesystem has no part in (the OS, no command, a bad override or volume), so that a
    caller can refuse before unpacking gigabytes of layers."""
    overrides = overrides or Overrides()
    _check_os(image)
    config = image.config or ContainerConfig()
    _args(config, overrides)
    _merge_env(config.env or [], overrides)
    _cwd(config, overrides)
    _volume_destinations(config)


def _check_os(image: ImageConfig) -> None:
    if image.os != "linux":
        raise BundleError(f"the image is for {image.os!r}; ocikit makes bundles for linux only")


def runtime_config(
    image: ImageConfig,
    root_fd: int,
    overrides: Overrides | None = None,
    *,
    volume_mounts: Sequence[Mount] = (),
) -> RuntimeConfig:
    """The runtime config for ``image`` whose root filesystem is open at ``root_fd``
    (read for ``/etc/passwd`` and ``/etc/group`` only); ``volume_mounts`` are the mounts
    chosen for ``Config.Volumes`` (see :mod:`.volumes`)."""
    overrides = overrides or Overrides()
    _check_os(image)
    config = image.config or ContainerConfig()
    user = resolve_user(overrides.user if overrides.user is not None else config.user, root_fd)
    process = Process(
        terminal=overrides.tty,
        user=user,
        args=_args(config, overrides),
        env=_merge_env(config.env or [], overrides),
        cwd=_cwd(config, overrides),
        capabilities=defaults.capabilities(root=user.uid == 0),
        rlimits=defaults.rlimits(),
        no_new_privileges=True,
    )
    return RuntimeConfig(
        oci_version=RUNTIME_SPEC_VERSION,
        process=process,
        root=Root(path="rootfs", readonly=overrides.readonly_rootfs),
        hostname=overrides.hostname,
        mounts=[*defaults.mounts(), *volume_mounts],
        annotations=annotations_for(image, overrides.annotations),
        linux=defaults.linux(),
    )


def volume_destinations(image: ImageConfig) -> list[str]:
    """The normalised, validated, sorted destinations of ``Config.Volumes``."""
    return _volume_destinations(image.config or ContainerConfig())
