"""New images derived from a stored one (commit, squash, config edits), written into the store.

The config and the manifest are edited as JSON values, not through the typed models, so that
every field ocikit does not know (``container_config``, ``docker_version``, annotations,
vendor extensions) survives the edit. What is written is checked against the image-spec
first: an edit never stores a document that ``ocikit validate`` would refuse.

History (config.md) stays in step with the layers: one entry without ``empty_layer`` per
layer, in order. An image without history gets an empty entry per existing layer, so that an
appended entry still describes the right layer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from ..spec import Descriptor
from ..spec import mediatype as mt
from ..spec.digest import digest_of
from ..spec.validate import validate
from . import refs
from .images import ImageStore, StoredImage, normalize_name
from .transport import TransportError

__all__ = ["Draft", "now"]


def now() -> str:
    """The current time as config.md writes it (RFC 3339, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_empty(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("empty_layer") is True


class Draft:
    """The config and manifest of a new image, started as copies of ``image``'s."""

    def __init__(self, image: StoredImage) -> None:
        self.config: dict[str, Any] = msgspec.json.decode(image.config.raw)
        self.manifest: dict[str, Any] = msgspec.json.decode(image.manifest.raw)
        self.media_type = image.descriptor.media_type
        layers = len(self.manifest.get("layers", []))
        history = self.config.get("history")
        if not isinstance(history, list) or sum(not _is_empty(e) for e in history) != layers:
            # Missing, or not describing the layers: what each layer was is unknown.
            history = [{} for _ in range(layers)]
        self.config["history"] = history

    @property
    def docker(self) -> bool:
        return self.media_type == mt.DOCKER_MANIFEST

    def layer_media_type(self, compression: str) -> str:
        """The layer media type of this manifest's family for ``gzip``, ``zstd`` or ``none``."""
        table = {
            "gzip": (mt.OCI_LAYER_GZIP, mt.DOCKER_LAYER_GZIP),
            "zstd": (mt.OCI_LAYER_ZSTD, mt.DOCKER_LAYER_ZSTD),
            "none": (mt.OCI_LAYER, mt.DOCKER_LAYER),
        }
        return table[compression][self.docker]

    def touch(self, entry: dict[str, Any]) -> None:
        """Record a change: ``created`` of the image and a history entry (stamped now)."""
        stamp = now()
        self.config["created"] = stamp
        self.config["history"].append({"created": stamp, **entry})

    def append_layer(self, descriptor: Descriptor, diff_id: str, entry: dict[str, Any]) -> None:
        self.manifest["layers"].append(msgspec.to_builtins(descriptor))
        self.config["rootfs"]["diff_ids"].append(str(diff_id))
        self.touch(entry)

    def _position(self, layer: int) -> int:
        """The index of layer ``layer``'s history entry (the length when there is none)."""
        seen = 0
        for index, item in enumerate(self.config["history"]):
            if not _is_empty(item):
                if seen == layer:
                    return index
                seen += 1
        return len(self.config["history"])

    def history_from(self, layer: int) -> list[dict[str, Any]]:
        """The history entries of layers ``layer``.. (without the ``empty_layer`` ones)."""
        rest = self.config["history"][self._position(layer) :]
        return [item for item in rest if isinstance(item, dict) and not _is_empty(item)]

    def replace_layers(self, start: int, descriptor: Descriptor, diff_id: str, entry: dict[str, Any]) -> None:
        """Layers ``start``.. become the one layer ``descriptor``, described by ``entry``; the
        ``empty_layer`` entries among or after them (config changes) are kept, after it."""
        position = self._position(start)
        rest = self.config["history"][position:]
        self.manifest["layers"] = self.manifest["layers"][:start]
        self.config["rootfs"]["diff_ids"] = self.config["rootfs"]["diff_ids"][:start]
        self.config["history"] = self.config["history"][:position]
        self.append_layer(descriptor, diff_id, entry)
        self.config["history"].extend(item for item in rest if _is_empty(item))

    def _check(self, node: dict[str, Any], kind: str) -> None:
        violations = validate(node, kind)
        if violations:
            listed = "; ".join(map(str, violations[:5]))
            raise TransportError(f"the new {kind} would not be valid: {listed}")

    def save(self, store: ImageStore, name: str | None) -> Descriptor:
        """Write config and manifest into the store (named ``name`` if given); the manifest's
        descriptor. The layers must be in the store already."""
        self._check(self.config, "config")
        config_raw = msgspec.json.encode(self.config)
        self.manifest["config"] = {
            **self.manifest["config"],
            "digest": str(digest_of(config_raw)),
            "size": len(config_raw),
        }
        self._check(self.manifest, "manifest")
        manifest_raw = msgspec.json.encode(self.manifest)
        config = Descriptor(
            media_type=self.manifest["config"]["mediaType"],
            digest=digest_of(config_raw),
            size=len(config_raw),
        )
        manifest = Descriptor(
            media_type=self.media_type, digest=digest_of(manifest_raw), size=len(manifest_raw)
        )
        store.layout.put_bytes(config, config_raw)
        store.layout.put_bytes(manifest, manifest_raw)
        if name is not None:
            target = normalize_name(name)
            if refs.is_digest(target) or "@" in target:
                raise TransportError(f"{name}: a new image needs a name with a tag, not a digest")
            store.layout.update_index(lambda index: refs.set_ref(index, target, manifest))
        return manifest
