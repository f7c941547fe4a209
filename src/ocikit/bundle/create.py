"""Making and removing a runtime bundle on top of a snapshot.

A bundle is a directory::

    config.json          the runtime config (written last, atomically)
    rootfs/              the mount point of a writable snapshot over the image's chain
                         (rootless ``dir``: a symlink to it, see :func:`_in_place`)
    volumes/<n>-<path>/  bind-mounted volumes (see .volumes)
    ocikit-bundle.json   which snapshot the rootfs is, so that ``remove_bundle`` finds it

The layers themselves are not this module's business: the caller applies them into
committed snapshots (keyed by ChainID) and passes the top one as ``chain_key``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

import msgspec

from ..snapshot import Mount, NotFoundError, SnapshotError, Snapshotter, mount, unmount
from ..snapshot.trees import fsync_dir, open_dir, remove_tree
from ..spec.models import Descriptor, ImageConfig
from ..spec.runtime import RuntimeConfig, dump_runtime_config
from .config import Overrides, runtime_config
from .errors import BundleError
from .volumes import volume_mounts

__all__ = [
    "BUNDLE_LABEL",
    "STATE_FILE",
    "BundleState",
    "create_bundle",
    "make_container_dir",
    "read_state",
    "remove_bundle",
    "write_atomic",
]

T = TypeVar("T")

STATE_FILE: Final = "ocikit-bundle.json"
#: Label of a bundle's active snapshot: the bundle directory (garbage collection reads it).
BUNDLE_LABEL: Final = "ocikit.bundle"


class BundleState(msgspec.Struct, kw_only=True):
    snapshotter: str
    key: str
    parent: str | None = None
    #: The snapshotter's state directory, so that ``ocikit rm`` finds it again.
    root: str | None = None
    #: What the directory is for: ``oci`` (a runtime bundle) or ``lxc`` (an LXC container).
    format: str = "oci"
    #: The image the rootfs was made from (its store name, and its manifest even when it came
    #: from an index), so that ``ocikit commit`` can append the bundle's changes to it.
    image: str | None = None
    manifest: Descriptor | None = None


def write_atomic(directory: Path, name: str, data: bytes) -> None:
    """Write ``directory/name`` so that it is either the old file or all of ``data``."""
    tmp = directory / f".{name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def read_state(bundle: str | os.PathLike[str]) -> BundleState:
    path = Path(bundle) / STATE_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=BundleState)
    except FileNotFoundError:
        raise BundleError(f"{bundle} is not a bundle made by ocikit (no {STATE_FILE})") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BundleError(f"{path} is damaged: {exc}") from None


def _prepare_dir(bundle: Path) -> bool:
    """Create the bundle directory; True if it was created (an existing one must be empty)."""
    try:
        bundle.mkdir(mode=0o711)
        return True
    except FileExistsError:
        if bundle.is_symlink() or not bundle.is_dir() or any(bundle.iterdir()):
            raise BundleError(f"{bundle} exists and is not an empty directory") from None
        return False
    except FileNotFoundError:
        raise BundleError(f"the parent directory of {bundle} does not exist") from None


def _in_place(mounts: list[Mount]) -> str | None:
    """The directory to use as the rootfs without mounting anything, or None to mount.

    An unprivileged caller cannot mount, but the ``dir`` backend's active snapshot is a plain
    writable directory (one read-write bind mount): that directory is the rootfs as it is.
    """
    if os.geteuid() == 0 or len(mounts) != 1:
        return None
    (only,) = mounts
    return only.source if only.type == "bind" and "ro" not in only.options else None


def create_bundle(
    bundle: str | os.PathLike[str],
    image: ImageConfig,
    snapshotter: Snapshotter,
    chain_key: str | None,
    overrides: Overrides | None = None,
    *,
    key: str | None = None,
    image_name: str | None = None,
    manifest: Descriptor | None = None,
) -> RuntimeConfig:
    """Make the bundle: an active snapshot over the committed ``chain_key`` (None: an image
    without layers) mounted at ``rootfs``, and ``config.json`` converted from ``image``.

    On any failure nothing is left: the mount, the snapshot and the directory are undone.
    """
    chosen = overrides or Overrides()

    def configure(path: Path, root_fd: int) -> RuntimeConfig:
        volumes = volume_mounts(image, chosen.volumes, path, root_fd)
        config = runtime_config(image, root_fd, chosen, volume_mounts=volumes)
        rootfs = path / "rootfs"
        if rootfs.is_symlink() and config.root is not None:
            # A rootless snapshot used in place: runc refuses a root.path that is a symlink,
            # and takes an absolute one.
            config.root = msgspec.structs.replace(config.root, path=os.readlink(rootfs))
        write_atomic(path, "config.json", dump_runtime_config(config))
        return config

    return make_container_dir(
        bundle, snapshotter, chain_key, configure, key=key, image_name=image_name, manifest=manifest
    )


def make_container_dir(
    directory: str | os.PathLike[str],
    snapshotter: Snapshotter,
    chain_key: str | None,
    configure: Callable[[Path, int], T],
    *,
    key: str | None = None,
    container_format: str = "oci",
    image_name: str | None = None,
    manifest: Descriptor | None = None,
) -> T:
    """What every container directory ocikit makes shares: the directory (new, or empty),
    the state file, an active snapshot over ``chain_key`` mounted at ``rootfs``; then
    ``configure(directory, rootfs_fd)`` writes the runtime's own configuration.

    On any failure nothing is left: the mount, the snapshot and the directory are undone.
    """
    path = Path(os.path.abspath(os.fspath(directory)))
    created = _prepare_dir(path)
    key = key or f"bundle-{uuid.uuid4().hex}"
    rootfs = path / "rootfs"
    prepared = mounted = False
    try:
        # The state goes first: a bundle interrupted from here on can still be removed.
        state = BundleState(
            snapshotter=snapshotter.name,
            key=key,
            parent=chain_key,
            root=str(snapshotter.root),
            format=container_format,
            image=image_name,
            manifest=manifest,
        )
        write_atomic(path, STATE_FILE, msgspec.json.encode(state))
        mounts = snapshotter.prepare(key, chain_key, labels={BUNDLE_LABEL: str(path)})
        prepared = True
        in_place = _in_place(mounts)
        if in_place is None:
            rootfs.mkdir(mode=0o755)
            mount(mounts, rootfs)
            mounted = True
        else:
            os.symlink(in_place, rootfs)  # for people; runc is given the directory itself
        root_fd = open_dir(in_place or rootfs)
        try:
            return configure(path, root_fd)
        finally:
            os.close(root_fd)
    except BaseException as exc:
        _undo(path, rootfs, snapshotter, key, mounted=mounted, prepared=prepared, created=created)
        if isinstance(exc, SnapshotError):
            raise BundleError(f"cannot create {path}: {exc}") from None
        raise


def _undo(
    path: Path,
    rootfs: Path,
    snapshotter: Snapshotter,
    key: str,
    *,
    mounted: bool,
    prepared: bool,
    created: bool,
) -> None:
    """Best effort, step by step: a step that fails leaves the later ones to refuse safely
    (a snapshot still mounted is not removed, a directory with a mount inside is not deleted)."""
    if mounted:
        with contextlib.suppress(SnapshotError, OSError):
            unmount(rootfs, detach=True)
    if prepared:
        with contextlib.suppress(SnapshotError, OSError):
            snapshotter.remove(key)
    with contextlib.suppress(SnapshotError, OSError):
        if created:
            remove_tree(path)
        else:
            for entry in path.iterdir():
                remove_tree(entry)


def remove_bundle(bundle: str | os.PathLike[str], snapshotter: Snapshotter) -> None:
    """Unmount the rootfs, remove the bundle's snapshot and delete the directory.

    Only directories made by :func:`create_bundle` are touched (they carry the state file).
    The container must have been deleted from its runtime first (``runc delete``).
    """
    path = Path(os.path.abspath(os.fspath(bundle)))
    state = read_state(path)
    if state.snapshotter != snapshotter.name:
        raise BundleError(f"{path} was made with the {state.snapshotter} snapshotter, not {snapshotter.name}")
    try:
        unmount(path / "rootfs")
        with contextlib.suppress(NotFoundError):
            snapshotter.remove(state.key)
        remove_tree(path)
    except SnapshotError as exc:
        raise BundleError(f"cannot remove {path}: {exc}") from None
