"""Image references in the grammar of the distribution project:
``[host[:port]/]path[:tag][@digest]``.

Names without a registry are resolved the way Docker does (``busybox`` is
``docker.io/library/busybox``) so that references typed by users mean what they expect.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from .digest import Digest, DigestError

__all__ = [
    "DEFAULT_REGISTRY",
    "Reference",
    "ReferenceError",
    "is_valid_repository",
    "is_valid_tag",
    "parse_reference",
    "referrers_tag",
]

DEFAULT_REGISTRY: Final = "docker.io"
_LEGACY_REGISTRIES: Final = frozenset({"index.docker.io", "registry-1.docker.io"})
_MAX_NAME_LENGTH: Final = 255

_PATH_COMPONENT: Final = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE: Final = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_NOT_IN_TAGS: Final = re.compile(r"[^A-Za-z0-9_.-]")
_DOMAIN_COMPONENT: Final = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST_RE: Final = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?"
)


class ReferenceError(ValueError):
    """A string is not a valid image reference."""


def is_valid_repository(name: str) -> bool:
    """A repository name as the distribution-spec's ``<name>`` allows it."""
    return len(name) <= _MAX_NAME_LENGTH and _REPOSITORY_RE.fullmatch(name) is not None


def is_valid_tag(tag: str) -> bool:
    return _TAG_RE.fullmatch(tag) is not None


def referrers_tag(digest: str) -> str:
    """The tag under which clients without the referrers API keep a subject's referrers
    (distribution-spec, "Referrers Tag Schema"): the algorithm truncated to 32 characters, a
    ``-``, the encoded part truncated to 64, and every character a tag cannot hold as ``-``.
    A digest's algorithm starts with a letter or digit, so the result is always a valid tag."""
    algorithm, _, encoded = digest.partition(":")
    return _NOT_IN_TAGS.sub("-", f"{algorithm[:32]}-{encoded[:64]}")


class Reference(msgspec.Struct, frozen=True):
    """A parsed reference. ``tag`` and ``digest`` may both be set; the digest then wins."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What to ask the registry for: the digest when known, else the tag (default ``latest``)."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def familiar(self) -> str:
        """The short form people type: ``busybox:latest`` rather than ``docker.io/library/busybox``."""
        name = self.name
        if self.registry == DEFAULT_REGISTRY:
            name = self.repository.removeprefix("library/")
        suffix = (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return name + suffix


def _split_registry(name: str, default_registry: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    looks_like_host = "." in first or ":" in first or first == "localhost" or first != first.lower()
    if not slash or not looks_like_host:
        return default_registry, name
    if not _HOST_RE.fullmatch(first):
        raise ReferenceError(f"invalid registry host {first!r}")
    return first, rest


def parse_reference(text: str, *, default_registry: str = DEFAULT_REGISTRY) -> Reference:
    """Parse and normalise a reference, with an error that says which part is wrong."""
    if not text:
        raise ReferenceError("the reference is empty")
    remainder, at, digest_text = text.partition("@")
    digest = None
    if at:
        try:
            digest = Digest(digest_text)
        except DigestError as exc:
            raise ReferenceError(f"{text!r}: {exc}") from None
    # A ':' after the last '/' starts the tag; one before it belongs to a host:port.
    tag = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not is_valid_tag(tag):
            raise ReferenceError(
                f"{text!r}: invalid tag {tag!r} (allowed: [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})"
            )
    registry, repository = _split_registry(remainder, default_registry)
    if registry in _LEGACY_REGISTRIES:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    if repository != repository.lower():
        raise ReferenceError(f"{text!r}: repository names must be lower case")
    if not is_valid_repository(repository):
        raise ReferenceError(
            f"{text!r}: invalid repository {repository!r} (lower-case [a-z0-9] components "
            "joined by '.', '_', '__' or dashes, separated by '/')"
        )
    if len(registry) + 1 + len(repository) > _MAX_NAME_LENGTH:
        raise ReferenceError(f"{text!r}: the name is longer than {_MAX_NAME_LENGTH} characters")
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)
