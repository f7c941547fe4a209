"""Image surgery on snapshots: a bundle's changes committed as a layer, layers squashed into one.

Both are the same operation underneath: the difference between an active snapshot and its
committed parent, written as one layer (:mod:`ocikit.layers.diff`, :mod:`ocikit.layers.write`).
Which way the difference is found depends only on the backend:

* ``overlay``: the active snapshot's own directory *is* the difference (overlayfs wrote
  whiteouts and opaque markers there), so nothing below it is read;
* every other backend (``dir``, ``zfs``): the active tree is compared with the parent's tree,
  both complete directories (:data:`UPPER_DIR_BACKENDS` is the only switch).

**Squash applies, then diffs** rather than merging the tar streams: the layers from ``--from``
on are applied with the same engine that unpacks images into a scratch snapshot over the lower
layers (cached by ChainID, shared with ``ocikit create``), and the scratch snapshot's difference
from them is the squashed layer. A streaming merge would have to buffer every hardlink whose
target a higher layer replaced, resolve whiteouts against lower layers it must also read, and
re-implement the apply rules (opaque-anywhere, directory over directory, lower times kept) a
second time; applying gives the exact tree umoci and ocikit unpack by construction, and a
whiteout survives only where it hides something in the lower layers, because only there does
the diff find a deletion.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from ..layers import ApplyOptions, apply_layer
from ..layers.diff import Change, DiffReport, tree_changes, upper_changes, write_changes
from ..layers.write import LayerWriter, WrittenLayer
from ..snapshot import SnapshotError, Snapshotter
from ..spec import Descriptor
from ..store.compose import Draft
from ..store.images import ImageStore, StoredImage
from .create import BundleState, read_state
from .errors import BundleError
from .unpack import mounted_snapshot, unpack_image

__all__ = ["UPPER_DIR_BACKENDS", "commit_bundle", "snapshot_changes", "squash_image"]

#: Backends whose active snapshot's own directory is an overlayfs upper directory.
UPPER_DIR_BACKENDS: Final = frozenset({"overlay"})


@contextlib.contextmanager
def _parent_view(snapshotter: Snapshotter, parent: str) -> Iterator[str]:
    """The merged tree of ``parent`` (a read-only view), for telling added from changed."""
    key = f"diff-view-{uuid.uuid4().hex}"
    mounts = snapshotter.view(key, parent)
    try:
        with mounted_snapshot(snapshotter, mounts) as path:
            yield path
    finally:
        snapshotter.remove(key)


@contextlib.contextmanager
def snapshot_changes(
    snapshotter: Snapshotter, key: str, parent: str | None, *, classify: bool = False
) -> Iterator[tuple[Path, DiffReport]]:
    """The changes of the active snapshot ``key`` over its committed ``parent`` (None: over
    nothing), and the directory their content is read from while the context lasts.
    ``classify`` (``ocikit diff``): on overlay, also tell added from changed entries."""
    upper = snapshotter.path_of(key)
    if parent is None:
        yield upper, tree_changes(upper, None)
    elif snapshotter.name in UPPER_DIR_BACKENDS:
        if classify:
            with _parent_view(snapshotter, parent) as lower:
                yield upper, upper_changes(upper, lower)
        else:
            yield upper, upper_changes(upper)
    else:
        yield upper, tree_changes(upper, snapshotter.path_of(parent))


def write_snapshot_layer(
    snapshotter: Snapshotter,
    key: str,
    parent: str | None,
    store: ImageStore,
    media_type: str,
    on_change: Callable[[Change], None] | None = None,
) -> tuple[WrittenLayer, DiffReport]:
    """The changes of ``key`` over ``parent`` as a layer blob in ``store``."""
    with (
        snapshot_changes(snapshotter, key, parent) as (upper, report),
        LayerWriter(store.layout, media_type) as writer,
    ):
        write_changes(upper, report.changes, writer, on_change)
        return writer.finish(), report


def _open_bundle_image(bundle: str, state: BundleState, store: ImageStore) -> StoredImage:
    if state.manifest is None:
        raise BundleError(
            f"{bundle} does not record the image it was made from (made by an older ocikit create); "
            "it cannot be committed"
        )
    image = store.load(state.manifest, state.image)
    chain = str(image.chain_id) if image.chain_id is not None else None
    if chain != state.parent:
        raise BundleError(
            f"{bundle}: its snapshot's parent {state.parent} is not the top layer of "
            f"{image.name or image.descriptor.digest}"
        )
    return image


def commit_bundle(
    bundle: str,
    store: ImageStore,
    snapshotter: Snapshotter,
    name: str | None,
    *,
    message: str | None = None,
    author: str | None = None,
    compression: str = "gzip",
) -> tuple[Descriptor, WrittenLayer, DiffReport]:
    """Append the changes of ``bundle``'s writable snapshot to the image it was made from; the
    new manifest is written into ``store`` (named ``name`` if given)."""
    state = read_state(bundle)
    if state.snapshotter != snapshotter.name:
        raise BundleError(
            f"{bundle} was made with the {state.snapshotter} snapshotter, not {snapshotter.name}"
        )
    image = _open_bundle_image(bundle, state, store)
    draft = Draft(image)
    try:
        layer, report = write_snapshot_layer(
            snapshotter, state.key, state.parent, store, draft.layer_media_type(compression)
        )
    except SnapshotError as exc:
        raise BundleError(f"cannot read the snapshot of {bundle}: {exc}") from None
    entry: dict[str, object] = {"created_by": "ocikit commit"}
    if author:
        entry["author"] = author
        draft.config["author"] = author
    if message:
        entry["comment"] = message
    draft.append_layer(layer.descriptor, layer.diff_id, entry)
    return draft.save(store, name), layer, report


def squash_image(
    image: StoredImage,
    store: ImageStore,
    snapshotter: Snapshotter,
    name: str | None,
    *,
    start: int = 0,
    compression: str = "gzip",
    options: ApplyOptions | None = None,
) -> tuple[Descriptor, WrittenLayer, DiffReport]:
    """``image`` with its layers ``start``.. merged into one, written into ``store``."""
    count = len(image.layers)
    if not 0 <= start < count:
        raise BundleError(
            f"--from {start}: the image has layers 0 to {count - 1}" if count else "the image has no layers"
        )
    options = options or ApplyOptions()
    lower = unpack_image(dataclasses.replace(image, layers=image.layers[:start]), snapshotter, options)
    draft = Draft(image)
    key = f"squash-{uuid.uuid4().hex}"
    mounts = snapshotter.prepare(key, lower)
    applied: list[str] = []  # what the scratch snapshot could not hold (xattrs on zfs-fuse...)
    try:
        with mounted_snapshot(snapshotter, mounts) as target:
            for layer in image.layers[start:]:
                with layer.open() as blob:
                    media_type, digest = layer.descriptor.media_type, layer.descriptor.digest
                    result = apply_layer(target, blob, media_type, digest, layer.diff_id, options)
                applied.extend(result.warnings)
        written, report = write_snapshot_layer(
            snapshotter, key, lower, store, draft.layer_media_type(compression)
        )
        report.warnings[:0] = applied
    finally:
        with contextlib.suppress(SnapshotError):
            snapshotter.remove(key)
    said = [str(item.get("created_by", "")) for item in draft.history_from(start)]
    comment = f"squashed layers {start} to {count - 1}"
    if any(said):
        comment += ": " + " && ".join(text for text in said if text)
    draft.replace_layers(
        start, written.descriptor, written.diff_id, {"created_by": "ocikit squash", "comment": comment}
    )
    return draft.save(store, name), written, report
