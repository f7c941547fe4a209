"""An image as an LXC container: ``DIR/rootfs`` (a snapshot, as for a bundle) and ``DIR/config``.

The conversion is the bundle's (:func:`ocikit.bundle.config.runtime_config`): the same
arguments, environment, working directory, user and volumes, written as LXC keys instead of
``config.json``. ``DIR`` is an LXC container directory: ``lxc-execute -n NAME -P PARENT``
(or ``lxc-start -F``) with ``DIR = PARENT/NAME`` runs it, ``ocikit rm DIR`` removes it.

LXC's configuration format is line based and its parsers are simple, so everything that
cannot be said faithfully is refused rather than written approximately:

* ``lxc.execute.cmd`` (what ``lxc-execute`` runs) is split on whitespace; a word may be
  wrapped in single or double quotes and then holds anything but that quote. There is no
  escape character, so an argument holding both kinds of quote (or a newline) is refused.
* ``lxc.init.cmd`` (what ``lxc-start`` runs) is split on spaces with no quoting at all, so
  it cannot pass an empty argument or one with whitespace. For such a command it names
  :data:`UNPASSABLE` instead, a program that does not exist: ``lxc-start`` then fails
  saying so, rather than starting something the image did not ask for.
* a value runs to the end of its line with surrounding whitespace trimmed: an environment
  value with leading or trailing whitespace, or any value with a newline, would change.
* ``lxc.environment = NAME`` without ``=`` *inherits* the host's variable: an image entry
  without ``=`` is refused instead of leaking the host's environment into the container.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from ..snapshot import Snapshotter
from ..spec.models import ContainerConfig, ImageConfig
from ..spec.numbers import decimal
from ..spec.runtime import Mount, RuntimeConfig
from .config import Overrides, runtime_config
from .create import make_container_dir, write_atomic
from .errors import BundleError
from .rootfs import read_in_root
from .users import parse_passwd
from .volumes import volume_mounts

__all__ = [
    "COMMON_CONFIGS",
    "CONFIG_FILE",
    "UNPASSABLE",
    "create_lxc",
    "init_command",
    "lxc_config",
    "quote_command",
    "stop_signal",
]

CONFIG_FILE: Final = "config"
#: ``lxc.init.cmd`` when lxc-start cannot be given the image's arguments (see above).
UNPASSABLE: Final = "/lxc-start-cannot-pass-these-arguments:use-lxc-execute"

#: The distribution's shared container defaults (seccomp policy, device allow-list, dropped
#: capabilities, console and tty set-up), included when present, as LXC's own templates do.
COMMON_CONFIGS: Final = (
    "/usr/share/lxc/config/common.conf",
    "/usr/local/share/lxc/config/common.conf",
)

_SPACE: Final = " \t\n\v\f\r"  # C isspace() in the "C" locale, which LXC splits on


def _check_line(value: str, what: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise BundleError(f"{what} {value!r} contains a line break or NUL, which LXC's config cannot hold")
    return value


def quote_word(word: str) -> str:
    """One argument as LXC's ``lxc.init.cmd`` splitter reads it back unchanged."""
    _check_line(word, "argument")
    if word and not any(c in _SPACE for c in word) and word[0] not in "'\"":
        return word
    if "'" not in word:
        return f"'{word}'"
    if '"' not in word:
        return f'"{word}"'
    raise BundleError(f"argument {word!r} holds both quote characters, which LXC's command line cannot pass")


def quote_command(args: Sequence[str]) -> str:
    return " ".join(quote_word(arg) for arg in args)


def init_command(args: Sequence[str]) -> str:
    """``lxc.init.cmd``: the words as they are, or :data:`UNPASSABLE` if splitting at spaces
    would not give them back."""
    if all(arg and not any(c in _SPACE for c in arg) for arg in args):
        return " ".join(args)
    return UNPASSABLE


_SIGNAMES: Final = {s.name for s in signal.Signals}
_RT: Final = re.compile(r"SIGRT(MIN|MAX)([+-]\d+)?")


def stop_signal(value: str | None) -> str | None:
    """``StopSignal`` as ``lxc.signal.halt`` takes it: ``SIGTERM``, ``SIGRTMIN+3`` or a number.
    ``TERM`` is accepted and written ``SIGTERM``; anything else is refused."""
    if not value:
        return None
    text = value.strip().upper()
    if text.isascii() and text.isdigit():
        number = decimal(text)
        if number is None or not 1 <= number <= 64:
            raise BundleError(f"StopSignal {value[:24]!r} is not a signal number (1-64)")
        return str(number)
    if not text.startswith("SIG"):
        text = "SIG" + text
    if text in _SIGNAMES or _RT.fullmatch(text):
        return text
    raise BundleError(f"StopSignal {value!r} is not a signal LXC knows")


def _fstab_escape(path: str) -> str:
    """``lxc.mount.entry`` is an fstab line: whitespace and backslashes in paths are octal."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def _mount_entry(mnt: Mount, directory: Path) -> str:
    target = _fstab_escape(mnt.destination.lstrip("/"))
    if mnt.type == "bind":
        source = _fstab_escape(str(directory / (mnt.source or "")))
        return f"{source} {target} none rbind,create=dir 0 0"
    options = ",".join([*(mnt.options or []), "create=dir"])
    return f"{mnt.source or mnt.type} {target} {mnt.type} {options} 0 0"


def _environment(env: Iterable[str]) -> list[str]:
    lines = []
    for entry in env:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise BundleError(
                f"environment entry {entry!r} has no NAME=: LXC would copy the host's variable instead"
            )
        if value != value.strip(_SPACE):
            raise BundleError(f"environment entry {entry!r}: LXC trims the whitespace around a value")
        lines.append(f"lxc.environment = {_check_line(entry, 'environment entry')}")
    return lines


def _add_home(config: RuntimeConfig, root_fd: int) -> None:
    """HOME from the image's passwd entry of the user (``/`` without one) when the image sets
    none: runc does this at start, LXC does not, and programs rely on it."""
    process = config.process
    if process is None or process.user is None or process.env is None:
        return
    if any(entry.partition("=")[0] == "HOME" for entry in process.env):
        return
    try:
        raw = read_in_root(root_fd, "/etc/passwd")
    except OSError:
        raw = None
    uid = process.user.uid
    home = next((entry.home for entry in parse_passwd(raw or b"") if entry.uid == uid and entry.home), "/")
    process.env.append(f"HOME={home}")


def _common_include() -> str | None:
    return next((path for path in COMMON_CONFIGS if os.path.isfile(path)), None)


def lxc_config(
    image: ImageConfig,
    config: RuntimeConfig,
    directory: Path,
    *,
    include: str | None = None,
) -> str:
    """The text of ``DIR/config`` for ``image`` converted to ``config`` (see
    :func:`runtime_config`) in the container directory ``directory``."""
    process = config.process
    if process is None or process.user is None:
        raise BundleError("the runtime config has no process to run")
    user = process.user
    halt = stop_signal((image.config or ContainerConfig()).stop_signal)
    root = _check_line(str(directory / "rootfs"), "directory")
    lines = [
        "# Written by ocikit create --format lxc; run with:",
        f"#   lxc-execute -n {directory.name} -P {directory.parent}",
    ]
    if include:
        lines.append(f"lxc.include = {include}")
    command = quote_command(process.args or [])
    lines += [
        f"lxc.rootfs.path = dir:{root}",
        f"lxc.uts.name = {_check_line(config.hostname or directory.name, 'hostname')}",
        # No network but loopback, like the runtime bundle.
        "lxc.net.0.type = empty",
        "lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed",
        "lxc.mount.entry = shm dev/shm tmpfs nosuid,nodev,noexec,mode=1777,create=dir 0 0",
        f"lxc.init.cmd = {init_command(process.args or [])}",
        f"lxc.execute.cmd = {command}",
        f"lxc.init.cwd = {_check_line(process.cwd, 'working directory')}",
        f"lxc.init.uid = {user.uid}",
        f"lxc.init.gid = {user.gid}",
    ]
    if user.additional_gids:
        lines.append(f"lxc.init.groups = {','.join(map(str, user.additional_gids))}")
    lines += _environment(process.env or [])
    if halt:
        lines.append(f"lxc.signal.halt = {halt}")
    if process.no_new_privileges:
        lines.append("lxc.no_new_privs = 1")
    for limit in process.rlimits or []:
        name = limit.type.removeprefix("RLIMIT_").lower()
        lines.append(f"lxc.prlimit.{name} = {limit.soft}:{limit.hard}")
    if config.root is not None and config.root.readonly:
        lines.append("lxc.rootfs.options = ro")
    default_destinations = {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"}
    for mnt in config.mounts or []:
        if mnt.destination not in default_destinations:
            lines.append(f"lxc.mount.entry = {_mount_entry(mnt, directory)}")
    return "\n".join(lines) + "\n"


def create_lxc(
    directory: str | os.PathLike[str],
    image: ImageConfig,
    snapshotter: Snapshotter,
    chain_key: str | None,
    overrides: Overrides | None = None,
    *,
    key: str | None = None,
    include: str | None = "auto",
) -> str:
    """Make the LXC container directory: ``rootfs`` as :func:`create_bundle` makes it, and
    ``config`` converted from ``image``. ``include`` is a config to ``lxc.include`` first:
    ``"auto"`` for the distribution's ``common.conf`` when installed, None for none.
    Returns the config's text. On failure nothing is left behind."""
    chosen = overrides or Overrides()
    common = _common_include() if include == "auto" else include

    def configure(path: Path, root_fd: int) -> str:
        volumes = volume_mounts(image, chosen.volumes, path, root_fd)
        config = runtime_config(image, root_fd, chosen, volume_mounts=volumes)
        _add_home(config, root_fd)
        text = lxc_config(image, config, path, include=common)
        write_atomic(path, CONFIG_FILE, text.encode())
        return text

    return make_container_dir(directory, snapshotter, chain_key, configure, key=key, container_format="lxc")
