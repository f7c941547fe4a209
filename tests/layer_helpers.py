"""Crafting layers and OCI layouts for the layer tests, self-contained on purpose.

``Layer`` writes tar members byte by byte (ustar headers, PAX records, GNU long names) so a
test can say exactly what a hostile archive holds, including what no sane writer produces.
``write_layout`` turns a list of layers into an OCI image layout that umoci can unpack.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

BLOCK = 512


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def _header(
    name: bytes,
    typeflag: bytes,
    *,
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 1_600_000_000,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
) -> bytes:
    header = bytearray(BLOCK)
    header[0 : len(name[:100])] = name[:100]
    header[100:108] = _octal(mode, 8)
    header[108:116] = _octal(uid, 8)
    header[116:124] = _octal(gid, 8)
    header[124:136] = _octal(size, 12)
    header[136:148] = _octal(mtime, 12)
    header[148:156] = b" " * 8
    header[156:157] = typeflag
    header[157 : 157 + len(linkname[:100])] = linkname[:100]
    header[257:265] = magic
    header[265:269] = b"root"
    header[297:301] = b"root"
    header[329:337] = _octal(devmajor, 8)
    header[337:345] = _octal(devminor, 8)
    header[345 : 345 + len(prefix)] = prefix
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length += 1
    return str(length).encode() + body


@dataclass
class Layer:
    """A tar stream built member by member. Names are ``str`` or raw ``bytes``."""

    members: list[bytes] = field(default_factory=list)
    gnu: bool = False  # GNU long names instead of PAX for long paths

    def _name(self, name: str | bytes) -> bytes:
        return name.encode() if isinstance(name, str) else name

    def _add(
        self,
        name: str | bytes,
        typeflag: bytes,
        data: bytes = b"",
        *,
        linkname: str | bytes = b"",
        xattrs: dict[str, bytes] | None = None,
        pax: dict[bytes, bytes] | None = None,
        **fields: int,
    ) -> Layer:
        raw_name, raw_link = self._name(name), self._name(linkname)
        records = dict(pax or {})
        for key, value in (xattrs or {}).items():
            records[b"SCHILY.xattr." + key.encode()] = value
        if self.gnu:
            if len(raw_name) > 100:
                self.members.append(
                    _header(b"././@LongLink", b"L", size=len(raw_name) + 1, magic=b"ustar  \x00")
                )
                self.members.append(_padded(raw_name + b"\x00"))
            if len(raw_link) > 100:
                self.members.append(
                    _header(b"././@LongLink", b"K", size=len(raw_link) + 1, magic=b"ustar  \x00")
                )
                self.members.append(_padded(raw_link + b"\x00"))
        else:
            if len(raw_name) > 100:
                records[b"path"] = raw_name
            if len(raw_link) > 100:
                records[b"linkpath"] = raw_link
        if records:
            body = b"".join(_pax_record(k, v) for k, v in records.items())
            self.members.append(_header(b"PaxHeader", b"x", size=len(body)))
            self.members.append(_padded(body))
        magic = b"ustar  \x00" if self.gnu else b"ustar\x0000"
        self.members.append(
            _header(raw_name, typeflag, size=len(data), linkname=raw_link, magic=magic, **fields)
        )
        if data:
            self.members.append(_padded(data))
        return self

    def file(self, name: str | bytes, data: bytes = b"", **kw: object) -> Layer:
        return self._add(name, b"0", data, **kw)  # type: ignore[arg-type]

    def dir(self, name: str | bytes, **kw: object) -> Layer:
        kw.setdefault("mode", 0o755)
        return self._add(name, b"5", **kw)  # type: ignore[arg-type]

    def symlink(self, name: str | bytes, target: str | bytes, **kw: object) -> Layer:
        kw.setdefault("mode", 0o777)
        return self._add(name, b"2", linkname=target, **kw)  # type: ignore[arg-type]

    def hardlink(self, name: str | bytes, target: str | bytes, **kw: object) -> Layer:
        return self._add(name, b"1", linkname=target, **kw)  # type: ignore[arg-type]

    def chardev(self, name: str, major: int, minor: int, **kw: object) -> Layer:
        return self._add(name, b"3", devmajor=major, devminor=minor, **kw)  # type: ignore[arg-type]

    def blockdev(self, name: str, major: int, minor: int, **kw: object) -> Layer:
        return self._add(name, b"4", devmajor=major, devminor=minor, **kw)  # type: ignore[arg-type]

    def fifo(self, name: str, **kw: object) -> Layer:
        return self._add(name, b"6", **kw)  # type: ignore[arg-type]

    def whiteout(self, directory: str, hidden: str) -> Layer:
        prefix = f"{directory.rstrip('/')}/" if directory else ""
        return self.file(f"{prefix}.wh.{hidden}")

    def opaque(self, directory: str) -> Layer:
        prefix = f"{directory.rstrip('/')}/" if directory else ""
        return self.file(f"{prefix}.wh..wh..opq")

    def raw(self, data: bytes) -> Layer:
        self.members.append(data)
        return self

    def tar(self, *, end: bool = True, trailing: bytes = b"") -> bytes:
        return b"".join(self.members) + (bytes(2 * BLOCK) if end else b"") + trailing


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


def zstd_bytes(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- inspecting results ------------------------------------------------------------------


def snapshot(root: Path, *, with_times: bool = True) -> dict[str, tuple[object, ...]]:
    """Everything observable under ``root`` (not following symlinks), keyed by relative path."""
    result: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            info = path.lstat()
            kind = stat.S_IFMT(info.st_mode)
            content: object = None
            if stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                content = (os.major(info.st_rdev), os.minor(info.st_rdev))
            try:
                names = sorted(os.listxattr(path, follow_symlinks=False))
                xattrs = tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)
            except OSError:
                xattrs = ()
            mode = None if stat.S_ISLNK(info.st_mode) else stat.S_IMODE(info.st_mode)
            mtime = info.st_mtime_ns if with_times and not stat.S_ISLNK(info.st_mode) else None
            result[str(path.relative_to(root))] = (
                kind,
                mode,
                info.st_uid,
                info.st_gid,
                content,
                xattrs,
                mtime,
            )
    return result


def tree_of(root: Path) -> set[str]:
    return set(snapshot(root, with_times=False))


# --- OCI layouts -------------------------------------------------------------------------


def write_blob(layout: Path, data: bytes) -> str:
    digest = sha256(data)
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def write_layout(
    layout: Path,
    layers: list[bytes],
    *,
    tag: str = "latest",
    compress: str = "gzip",
    container: dict[str, object] | None = None,
) -> list[str]:
    """An OCI image layout holding one image made of ``layers`` (uncompressed tars), with
    ``container`` as the config's ``config``.

    Returns the layer digests in order.
    """
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    descriptors, diff_ids = [], []
    media = {
        "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
        "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
        "": "application/vnd.oci.image.layer.v1.tar",
    }[compress]
    for tar in layers:
        blob = gzip_bytes(tar) if compress == "gzip" else zstd_bytes(tar) if compress == "zstd" else tar
        descriptors.append({"mediaType": media, "digest": write_blob(layout, blob), "size": len(blob)})
        diff_ids.append(sha256(tar))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": container or {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "layer_helpers"} for _ in layers],
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": write_blob(layout, config),
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": write_blob(layout, manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return [d["digest"] for d in descriptors]
