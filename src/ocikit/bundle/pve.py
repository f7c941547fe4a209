"""An image's root filesystem as a Proxmox VE container template (``.tar.zst``).

``pct create`` extracts a template with GNU tar as root (numeric owners, extended
attributes), then detects the distribution from files such as ``/etc/os-release``. So the
template is the image's *flattened* filesystem, every layer applied and every whiteout
resolved, written as a system container template is:

* members are ``./``-relative (``./``, ``./etc``, ``./etc/passwd``…), parents before children;
* owners are numeric only (no user or group names: the host's names mean nothing here);
* modes, times, symlinks, hard links (as links to the first name), character and block
  devices and FIFOs are kept; sockets cannot be archived and are skipped;
* extended attributes travel as ``SCHILY.xattr.*`` PAX records, POSIX ACLs among them in
  their xattr form (``system.posix_acl_*``), ``security.capability`` included; overlayfs's
  private ``trusted.overlay.*`` never appear, since the tree is read through the mount;
* ``/dev``, ``/proc`` and ``/sys`` exist (LXC mounts over them), added empty if the image
  lacks them; nothing else is added or changed.

The flattening is the snapshotter's: a read-only view over the image's top ChainID, read
through its mount, so the tar shows exactly what a container would.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import msgspec
import zstandard

from ..snapshot import Snapshotter
from ..spec import Descriptor
from ..spec import mediatype as mt
from ..spec.digest import digest_of
from ..store.archive import ArchiveDestination
from ..store.copy import copy_image
from ..store.images import ImageStore, StoredImage
from .errors import BundleError
from .unpack import mounted_snapshot

__all__ = [
    "EXPORT_LABEL",
    "TemplateReport",
    "export_pve_template",
    "manifest_for_pve",
    "write_pve_archive",
    "write_rootfs_tar",
]

#: Label of the view an export reads through (garbage collection keeps its layers meanwhile).
EXPORT_LABEL: Final = "ocikit.export"
#: Directories LXC mounts over; a template without them cannot start.
_MOUNT_POINTS: Final = ("dev", "proc", "sys")
_PRIVATE_XATTRS: Final = ("trusted.overlay.",)


@dataclass
class TemplateReport:
    entries: int = 0
    #: Sockets, which a tar cannot hold.
    skipped: list[str] = field(default_factory=list)


def _xattrs(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    records = {}
    for name in sorted(names):
        if name.startswith(_PRIVATE_XATTRS):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        # tarfile writes the bytes back with surrogateescape, and marks binary values
        # (a file capability) hdrcharset=BINARY as PAX requires.
        records[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return records


def _info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    return info


def _entries(relative: str, directory: str) -> Iterator[tuple[str, str]]:
    """(member name, path) of everything under ``directory``, parents first, names sorted."""
    with os.scandir(directory) as scan:
        children = sorted(scan, key=lambda entry: entry.name)
    for entry in children:
        name = f"{relative}/{entry.name}" if relative else entry.name
        yield f"./{name}", entry.path
        if entry.is_dir(follow_symlinks=False):
            yield from _entries(name, entry.path)


def write_rootfs_tar(root: str | os.PathLike[str], out: BinaryIO) -> TemplateReport:
    """Write the tree at ``root`` to ``out`` as an uncompressed template tar (see above)."""
    base = os.fspath(root)
    report = TemplateReport()
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        top = _info("./", os.lstat(base))
        top.type = tarfile.DIRTYPE
        top.pax_headers = _xattrs(base)
        tar.addfile(top)
        present = set(os.listdir(base))
        for missing in _MOUNT_POINTS:
            if missing not in present:
                extra = _info(f"./{missing}", os.lstat(base))
                extra.type, extra.mode, extra.uid, extra.gid = tarfile.DIRTYPE, 0o755, 0, 0
                extra.pax_headers = {}
                tar.addfile(extra)
        report.entries = 1
        for name, path in _entries("", base):
            st = os.lstat(path)
            info = _info(name, st)
            info.pax_headers = _xattrs(path) if not stat.S_ISLNK(st.st_mode) else {}
            body = None
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                first = links.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
                if first is not None:
                    info.type, info.linkname = tarfile.LNKTYPE, first
                else:
                    if st.st_nlink > 1:
                        links[(st.st_dev, st.st_ino)] = name
                    info.type, info.size = tarfile.REGTYPE, st.st_size
                    body = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
            else:
                report.skipped.append(name)
                continue
            if body is None:
                tar.addfile(info)
            else:
                with body:
                    if os.fstat(body.fileno()).st_size != info.size:
                        raise BundleError(f"{name} changed while it was archived")
                    tar.addfile(info, body)
            report.entries += 1
    return report


def export_pve_template(
    snapshotter: Snapshotter,
    chain_key: str | None,
    target: str | os.PathLike[str],
    *,
    level: int = 3,
) -> TemplateReport:
    """Write the template for the committed ``chain_key`` (None: an empty image) to
    ``target``, zstd-compressed. The file appears complete or not at all."""
    path = Path(os.path.abspath(os.fspath(target)))
    if not path.parent.is_dir():
        raise BundleError(f"the directory of {path} does not exist")
    key = f"export-{uuid.uuid4().hex}"
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    mounts = snapshotter.view(key, chain_key, labels={EXPORT_LABEL: str(path)})
    try:
        with mounted_snapshot(snapshotter, mounts) as root, open(tmp, "xb") as raw:
            compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
            with compressor.stream_writer(raw, closefd=False) as packed:
                report = write_rootfs_tar(root, packed)
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(tmp, path)
        return report
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        snapshotter.remove(key)


#: What Proxmox VE's OCI import (9.1) reads: an OCI manifest and config, OCI layer types.
_PVE_LAYER_TYPES: Final = frozenset(
    {
        mt.OCI_LAYER,
        mt.OCI_LAYER_GZIP,
        mt.OCI_LAYER_ZSTD,
        mt.OCI_LAYER_NONDISTRIBUTABLE,
        mt.OCI_LAYER_NONDISTRIBUTABLE_GZIP,
        mt.OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
    }
)
#: Docker media types with an OCI twin for the very same bytes.
_OCI_TWIN: Final = {
    mt.DOCKER_MANIFEST: mt.OCI_MANIFEST,
    mt.DOCKER_CONFIG: mt.OCI_CONFIG,
    mt.DOCKER_LAYER: mt.OCI_LAYER,
    mt.DOCKER_LAYER_GZIP: mt.OCI_LAYER_GZIP,
    mt.DOCKER_LAYER_ZSTD: mt.OCI_LAYER_ZSTD,
}


def _oci_type(media_type: str, allowed: frozenset[str] | set[str], what: str) -> str:
    if media_type in allowed:
        return media_type
    twin = _OCI_TWIN.get(media_type)
    if twin is None or twin not in allowed:
        raise BundleError(f"Proxmox VE imports OCI media types only, and {what} is {media_type}")
    return twin


def manifest_for_pve(image: StoredImage) -> bytes | None:
    """None when Proxmox VE's importer takes the stored manifest as it is; otherwise the same
    manifest with Docker's media types replaced by their OCI twins (config and layer bytes
    are the same either way, so only the manifest, and its digest, change). What has no twin
    (a foreign layer, an unknown type) is refused."""
    manifest: dict[str, Any] = msgspec.json.decode(image.manifest.raw)
    converted = False
    top = _oci_type(image.descriptor.media_type, {mt.OCI_MANIFEST}, "the manifest")
    if top != image.descriptor.media_type or manifest.get("mediaType") not in (None, mt.OCI_MANIFEST):
        manifest["mediaType"] = top
        converted = True
    config = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise BundleError("the manifest has no config or no layers")
    for item, allowed, what in [(config, {mt.OCI_CONFIG}, "the config")] + [
        (layer, _PVE_LAYER_TYPES, f"layer {layer.get('digest')}") for layer in layers
    ]:
        if item.get("urls"):
            raise BundleError(
                f"{what} is a foreign layer (fetched from elsewhere); Proxmox VE cannot import it"
            )
        twin = _oci_type(str(item.get("mediaType")), allowed, what)
        if twin != item.get("mediaType"):
            item["mediaType"] = twin
            converted = True
    return msgspec.json.encode(manifest) if converted else None


async def write_pve_archive(
    store: ImageStore, image: StoredImage, target: str | os.PathLike[str]
) -> Descriptor:
    """Write ``image`` as an OCI archive Proxmox VE imports: byte for byte when its media types
    are OCI's, else with the converted manifest (:func:`manifest_for_pve`). The archive holds
    that one manifest as its only root. Returns the manifest's descriptor in the archive."""
    raw = manifest_for_pve(image)
    destination = ArchiveDestination(target)
    try:
        if raw is None:
            result = await copy_image(store.source(), destination, str(image.descriptor.digest))
            return result.descriptor
        descriptor = Descriptor(media_type=mt.OCI_MANIFEST, digest=digest_of(raw), size=len(raw))
        parts = [image.manifest.value.config, *(layer.descriptor for layer in image.layers)]
        for part in parts:
            blob = store.layout.locate(part.digest)
            if blob is None:
                raise BundleError(f"blob {part.digest} of the image is missing from the store")
            try:
                await destination.put_blob_from_file(part, blob)
            finally:
                blob.close()
        await destination.put_manifest(descriptor, raw, [])
        await destination.add_root(descriptor)
        await destination.commit()
        return descriptor
    finally:
        await destination.close()
