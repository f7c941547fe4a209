"""The ``overlay`` snapshotter: kernel overlayfs, one directory per layer.

A committed snapshot is the directory ``snapshots/<id>/fs`` holding only what its layer
changed, in overlayfs's own format (deletions are whiteout devices, replaced directories
carry the opaque xattr), which is exactly what the kernel wrote there while the layer was
applied through the overlay mount. An active snapshot is a fresh upper directory over the
parent chain as lower directories, topmost first; with no parent it is a plain bind mount of
an empty directory. Preparing costs two ``mkdir`` whatever the image size.

Root only: mounting overlayfs and creating whiteout devices need ``CAP_SYS_ADMIN`` and
``CAP_MKNOD``. Many layers are handled by :mod:`ocikit.snapshot.mounting`; the kernel itself
stacks at most 500 lower directories.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._common import Record, SnapshotterBase
from .base import Kind, Mount, SnapshotError
from .trees import syncfs

__all__ = ["MAX_LAYERS", "OverlaySnapshotter", "overlay_supported"]

#: overlayfs's own limit on stacked lower directories (OVL_MAX_STACK).
MAX_LAYERS = 500
_PARAMS = Path("/sys/module/overlay/parameters")
_SELF_CONTAINED = ("index", "redirect_dir", "metacopy")


def overlay_supported() -> str | None:
    """None when overlay snapshots can work here, else why not."""
    if os.geteuid() != 0:
        return "the overlay snapshotter needs root (mounting overlayfs); use the dir snapshotter"
    try:
        with open("/proc/filesystems") as fh:
            if not any(line.split()[-1:] == ["overlay"] for line in fh):
                return "this kernel has no overlayfs (modprobe overlay)"
    except OSError as exc:
        return f"cannot read /proc/filesystems: {exc}"
    return None


class OverlaySnapshotter(SnapshotterBase):
    name = "overlay"

    def _check_root(self, root: Path) -> None:
        reason = overlay_supported()
        if reason:
            raise SnapshotError(reason)
        if any(c in str(root) for c in ",:\\"):
            # Overlay mount options are split on ',' and ':'; escaping is not portable.
            raise SnapshotError(f"the overlay snapshotter's root {root} must not contain ',', ':' or '\\'")

    def _populate(self, kind: Kind, target: Path, chain: list[Record]) -> None:
        if len(chain) > MAX_LAYERS:
            raise SnapshotError(f"{len(chain)} layers: overlayfs stacks at most {MAX_LAYERS}")
        (target / "fs").mkdir(mode=0o755)
        if kind is Kind.ACTIVE:
            (target / "work").mkdir(mode=0o700)

    def _mounts(self, record: Record, chain: list[Record]) -> list[Mount]:
        lowers = [str(parent.path / "fs") for parent in chain]
        own = str(record.path / "fs")
        if record.kind is Kind.VIEW:
            if len(lowers) <= 1:
                return [Mount("bind", lowers[0] if lowers else own, ("rbind", "ro"))]
            return [Mount("overlay", "overlay", ("ro", "lowerdir=" + ":".join(lowers), *self._extra()))]
        if not lowers:
            return [Mount("bind", own, ("rbind", "rw"))]
        return [
            Mount(
                "overlay",
                "overlay",
                (
                    "lowerdir=" + ":".join(lowers),
                    f"upperdir={own}",
                    f"workdir={record.path / 'work'}",
                    *self._extra(),
                ),
            )
        ]

    @staticmethod
    def _extra() -> tuple[str, ...]:
        """Options that keep every upper directory a self-contained layer diff.

        With the inode index on, overlayfs ties an upper directory to the exact lower
        directories it was first mounted with, but a committed layer is reused under other
        stacks. Redirected directories and metadata-only copy-ups would leave a diff that
        points into its lower layers instead of holding the change. Each is switched off
        explicitly where the kernel knows the option, whatever its build defaults.
        """
        return tuple(f"{name}=off" for name in _SELF_CONTAINED if (_PARAMS / name).exists())

    def _before_commit(self, record: Record) -> None:
        syncfs(record.path)
