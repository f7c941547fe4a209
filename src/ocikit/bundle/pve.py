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
from typing import BinaryIO, Final

import zstandard

from ..snapshot import Snapshotter
from ..spec import mediatype as mt
from ..store.images import StoredImage
from .errors import BundleError
from .unpack import mounted_snapshot

__all__ = [
    "EXPORT_LABEL",
    "TemplateReport",
    "export_pve_template",
    "pve_archive_problems",
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


def pve_archive_problems(image: StoredImage) -> list[str]:
    """Why Proxmox VE would refuse ``image`` as an OCI archive (empty: it imports it). Its
    importer knows the OCI media types only: Docker's manifest, config or layer types make
    it fail, and a copy must keep the manifest's bytes, so they cannot be rewritten here."""
    problems = []
    if image.descriptor.media_type != mt.OCI_MANIFEST:
        problems.append(f"the manifest is {image.descriptor.media_type}, not {mt.OCI_MANIFEST}")
    config = image.manifest.value.config.media_type
    if config != mt.OCI_CONFIG:
        problems.append(f"the config is {config}, not {mt.OCI_CONFIG}")
    for layer in image.layers:
        if layer.descriptor.media_type not in _PVE_LAYER_TYPES:
            problems.append(f"layer {layer.descriptor.digest} is {layer.descriptor.media_type}")
    return problems
