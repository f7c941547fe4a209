"""Platforms: the ``platform`` object of an index entry, normalisation and matching.

Matching follows what containerd and the Go toolchain do: architecture aliases are folded
(``x86_64`` is ``amd64``, ``aarch64`` is ``arm64``) and a missing variant means the
architecture's default one (``arm64`` is ``arm64/v8``, ``arm`` is ``arm/v7``), so that a user
asking for ``linux/arm64`` gets an entry published as ``linux/arm64/v8`` and vice versa.
"""

from __future__ import annotations

import platform as _host
import sys
from typing import Final

import msgspec

__all__ = ["Platform", "PlatformError", "host_platform", "normalize", "parse_platform"]


class PlatformError(ValueError):
    """A platform string such as ``linux/arm64/v8`` could not be parsed."""


class Platform(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The platform a manifest's binaries run on."""

    architecture: str
    os: str
    os_version: str | None = msgspec.field(default=None, name="os.version")
    os_features: list[str] | None = msgspec.field(default=None, name="os.features")
    variant: str | None = None
    #: Docker manifest lists carry this (deprecated in OCI); kept so nothing is lost.
    features: list[str] | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    def normalized(self) -> Platform:
        return normalize(self)

    def matches(self, wanted: Platform) -> bool:
        """Whether this (offered) platform satisfies ``wanted``.

        ``os.version`` and ``os.features`` are only compared when ``wanted`` names them.
        """
        have, want = normalize(self), normalize(wanted)
        if (have.os, have.architecture, have.variant) != (want.os, want.architecture, want.variant):
            return False
        if want.os_version and have.os_version != want.os_version:
            return False
        return not want.os_features or set(want.os_features) <= set(have.os_features or ())


_ARCH_ALIASES: Final[dict[str, tuple[str, str | None]]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "amd64": ("amd64", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "x86": ("386", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "armv5l": ("arm", "v5"),
    "armv6l": ("arm", "v6"),
    "armv7l": ("arm", "v7"),
    "armv8l": ("arm", "v8"),
}
# The variant a platform has when it names none (containerd's defaults).
_DEFAULT_VARIANT: Final[dict[str, str]] = {"arm64": "v8", "arm": "v7"}
_VARIANT_ALIASES: Final[dict[tuple[str, str], str]] = {
    ("arm", "5"): "v5",
    ("arm", "6"): "v6",
    ("arm", "7"): "v7",
    ("arm", "8"): "v8",
    ("arm64", "8"): "v8",
    ("amd64", "v1"): "",  # the baseline: the same as naming no variant
}


def normalize(value: Platform) -> Platform:
    """The canonical form: lower-case os, folded architecture, the default variant explicit."""
    os_name = value.os.lower()
    if os_name == "macos":
        os_name = "darwin"
    arch_in = value.architecture.lower()
    arch, implied_variant = _ARCH_ALIASES.get(arch_in, (arch_in, None))
    variant = (value.variant or implied_variant or "").lower()
    variant = _VARIANT_ALIASES.get((arch, variant), variant)
    if not variant:
        variant = _DEFAULT_VARIANT.get(arch, "")
    return msgspec.structs.replace(value, os=os_name, architecture=arch, variant=variant or None)


def parse_platform(text: str) -> Platform:
    """Parse ``os/arch[/variant]`` (``linux/arm64/v8``); a bare ``arch`` is not accepted."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise PlatformError(f"platform {text!r} is not os/arch[/variant], e.g. linux/amd64 or linux/arm/v7")
    return Platform(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else None)


def host_platform() -> Platform:
    """The platform of the machine this runs on, normalised."""
    os_name = "linux" if sys.platform.startswith("linux") else sys.platform
    return normalize(Platform(os=os_name, architecture=_host.machine() or "amd64"))
