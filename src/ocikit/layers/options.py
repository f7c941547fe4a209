"""What :func:`~ocikit.layers.apply_layer` takes as settings and gives back as a report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from ..spec.digest import Digest

__all__ = ["ApplyOptions", "ApplyReport", "Resolver"]

GiB: Final = 1 << 30

#: How paths are resolved inside the target: ``openat2`` (RESOLVE_IN_ROOT), a
#: component-by-component ``O_NOFOLLOW`` ``walk``, or ``auto`` (openat2 when the kernel has it).
Resolver = Literal["auto", "openat2", "walk"]


@dataclass(frozen=True)
class ApplyOptions:
    """Settings of one layer application. The defaults suit real images and refuse bombs.

    ``rootless=None`` means "rootless when not running as root": files are then owned by the
    caller, device nodes are skipped with a warning, and extended attributes the kernel refuses
    to an unprivileged user are skipped with a warning, like ``umoci unpack --rootless``.
    """

    rootless: bool | None = None
    #: Tar members that create, change or remove something (extension headers excluded).
    max_entries: int = 1_000_000
    #: Bytes of one path or link target after PAX/GNU long-name processing (PATH_MAX is 4096).
    max_name_length: int = 4096
    #: Bytes of the uncompressed tar stream: a gzip or zstd bomb stops here.
    max_uncompressed_size: int = 64 * GiB
    #: Bytes of one PAX extended header (xattrs live there; the kernel caps a value at 64 KiB).
    max_pax_header: int = 1 << 20
    #: Called with each warning as it happens (they are also collected in the report).
    on_warning: Callable[[str], None] | None = None
    resolver: Resolver = "auto"
    #: Decompressed bytes the reader thread hands over at a time.
    chunk_size: int = 2 << 20


@dataclass
class ApplyReport:
    """What a successful application did. ``digest`` and ``diff_id`` are the computed values,
    equal to the expected ones whenever those were given."""

    digest: Digest
    diff_id: Digest
    compressed_size: int
    uncompressed_size: int
    entries: int = 0
    whiteouts: int = 0
    warnings: list[str] = field(default_factory=list)
    resolver: str = ""
    rootless: bool = False
