"""``Config.Volumes`` as mounts, so that what the application writes there stays out of the
container's root filesystem (conversion.md, optional fields).

Three modes:

* ``bind`` (default): each volume is a directory of the bundle, ``volumes/<n>-<path>``,
  seeded with what the image has at that path (owner, mode, content), bind-mounted at the
  path. Data survives container restarts and goes away with ``ocikit rm``, like an anonymous
  Docker volume.
* ``tmpfs``: a fresh tmpfs with the owner and mode of the image's directory; nothing
  survives the container.
* ``none``: no mounts; the volume paths are plain directories of the rootfs.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..snapshot.trees import copy_tree
from ..spec.models import ImageConfig
from ..spec.runtime import Mount
from .config import VolumeMode, volume_destinations
from .errors import BundleError
from .rootfs import open_in_root

__all__ = ["VOLUMES_DIR", "volume_mounts"]

VOLUMES_DIR = "volumes"


def _open_image_dir(root_fd: int, destination: str) -> int | None:
    try:
        return open_in_root(root_fd, destination, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise BundleError(f"volume {destination!r} is not a directory in the image") from None
        raise BundleError(f"cannot open volume {destination!r} in the image: {exc.strerror}") from None


def _dir_name(index: int, destination: str) -> str:
    return f"{index}-{destination.strip('/').replace('/', '-')}"[:200]


def volume_mounts(image: ImageConfig, mode: VolumeMode, bundle: Path, root_fd: int) -> list[Mount]:
    """The mounts for the image's volumes, creating (and seeding) bundle directories for ``bind``."""
    if mode not in ("bind", "tmpfs", "none"):
        raise BundleError(f"unknown volume mode {mode!r}: bind, tmpfs or none")
    destinations = volume_destinations(image)
    if mode == "none" or not destinations:
        return []
    mounts = []
    for index, destination in enumerate(destinations):
        fd = _open_image_dir(root_fd, destination)
        try:
            st = os.fstat(fd) if fd is not None else None
            if mode == "tmpfs":
                mode_bits, uid, gid = (
                    (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) if st else (0o755, 0, 0)
                )
                options = ["nosuid", "nodev", f"mode={mode_bits:o}", f"uid={uid}", f"gid={gid}"]
                mounts.append(Mount(destination=destination, type="tmpfs", source="tmpfs", options=options))
                continue
            name = _dir_name(index, destination)
            target = bundle / VOLUMES_DIR / name
            target.mkdir(parents=True, mode=0o755)
            if fd is not None:
                copy_tree(fd, target)
            # Relative to the bundle, so that the bundle can be moved as a whole.
            mounts.append(
                Mount(
                    destination=destination,
                    type="bind",
                    source=f"{VOLUMES_DIR}/{name}",
                    options=["rbind", "rw"],
                )
            )
        finally:
            if fd is not None:
                os.close(fd)
    return mounts
