"""Unpacking a stored image into committed snapshots, one per layer, keyed by ChainID.

A layer is applied only when no committed snapshot of its ChainID exists yet, so images that
share lower layers share their snapshots, and a second container of a cached image costs one
``prepare``. Each layer is applied inside an active snapshot that is committed only after
the layer's digest and diffID have been verified; any failure removes the active snapshot,
so a half-applied layer is never visible under a ChainID.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from ..layers import ApplyOptions, ApplyReport, apply_layer
from ..snapshot import (
    AlreadyExistsError,
    Kind,
    Mount,
    NotFoundError,
    Snapshotter,
    mount,
    open_snapshotter,
    unmount,
)
from ..store.files import data_dir
from ..store.images import StoredImage, StoredLayer
from .create import BundleState

__all__ = ["LAYER_LABEL", "bundle_snapshotter", "mounted_snapshot", "snapshot_root", "unpack_image"]

#: Label of a committed layer snapshot: the layer's diffID (for humans and garbage collection).
LAYER_LABEL = "ocikit.layer.diffid"

LayerCallback = Callable[[StoredLayer, ApplyReport | None], None]
LayerOpener = Callable[[StoredLayer], BinaryIO]


def _is_committed(snapshotter: Snapshotter, name: str) -> bool:
    try:
        return snapshotter.stat(name).kind == Kind.COMMITTED
    except NotFoundError:
        return False


@contextlib.contextmanager
def mounted_snapshot(snapshotter: Snapshotter, mounts: Sequence[Mount]) -> Iterator[str]:
    """A directory showing the active snapshot. A lone bind mount is used in place, which
    also lets an unprivileged caller unpack with the ``dir`` backend."""
    if len(mounts) == 1 and mounts[0].type == "bind":
        yield mounts[0].source
        return
    target = tempfile.mkdtemp(prefix=".unpack-", dir=snapshotter.root)
    try:
        mount(mounts, target)
        try:
            yield target
        finally:
            unmount(target)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(target)


def _apply_one(
    snapshotter: Snapshotter,
    layer: StoredLayer,
    parent: str | None,
    options: ApplyOptions,
    open_layer: LayerOpener,
) -> ApplyReport | None:
    """Apply ``layer`` over ``parent`` and commit it as its ChainID; None when another process
    committed the same ChainID first (its snapshot is as good as ours)."""
    name = str(layer.chain_id)
    key = f"unpack-{uuid.uuid4().hex}"
    mounts = snapshotter.prepare(key, parent)
    try:
        with mounted_snapshot(snapshotter, mounts) as target, open_layer(layer) as blob:
            report = apply_layer(
                target, blob, layer.descriptor.media_type, layer.descriptor.digest, layer.diff_id, options
            )
        snapshotter.commit(name, key, labels={LAYER_LABEL: str(layer.diff_id)})
        return report
    except AlreadyExistsError:
        snapshotter.remove(key)
        return None
    except BaseException:
        with contextlib.suppress(Exception):
            snapshotter.remove(key)
        raise


def unpack_image(
    image: StoredImage,
    snapshotter: Snapshotter,
    options: ApplyOptions | None = None,
    on_layer: LayerCallback | None = None,
    open_layer: LayerOpener = StoredLayer.open,
) -> str | None:
    """Make sure a committed snapshot exists for every layer of ``image``; the key of the
    top one (the image's ChainID), or None for an image without layers.

    ``on_layer`` hears of each layer: with the apply report, or None when it was cached.
    ``open_layer`` opens a layer's blob (default: from the store); whatever it reads, the
    layer's digest and diffID are verified before its snapshot is committed.
    """
    options = options or ApplyOptions()
    parent: str | None = None
    for layer in image.layers:
        name = str(layer.chain_id)
        cached = _is_committed(snapshotter, name)
        report = None if cached else _apply_one(snapshotter, layer, parent, options, open_layer)
        if on_layer is not None:
            on_layer(layer, report)
        parent = name
    return parent


def snapshot_root(backend: str, base: str | os.PathLike[str] | None = None) -> Path:
    """Where a backend keeps its state: ``$OCIKIT_SNAPSHOTS/<backend>``, by default under the
    user's data folder next to the image store."""
    if base is None:
        base = os.environ.get("OCIKIT_SNAPSHOTS") or data_dir("snapshots")
    return Path(base) / backend


def bundle_snapshotter(state: BundleState) -> Snapshotter:
    """The snapshotter a bundle (or LXC container directory) was made with, at the state
    directory it recorded (older bundles: the default one)."""
    return open_snapshotter(state.snapshotter, state.root or snapshot_root(state.snapshotter))
