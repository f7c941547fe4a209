"""An OCI image layout directory (image-spec image-layout.md), read and written safely.

Writes follow three rules:

- A blob is streamed into a staging file inside the layout (``.ocikit/incoming/``, on the same
  filesystem so the final rename is atomic), hashed as it arrives, ``fsync``ed, verified
  against its descriptor and only then renamed to ``blobs/<alg>/<encoded>``. A wrong blob
  raises ``VerificationError`` and leaves nothing behind; a crash leaves at most a staging
  file, which garbage collection purges.
- ``index.json`` is replaced atomically (temp file, ``fsync``, rename, ``fsync`` of the
  directory) while holding an ``flock`` on ``.ocikit/index.lock``, and every update re-reads
  the current index under that lock, so concurrent writers never lose each other's refs.
- Nothing is opened through a symlink inside the layout (see :mod:`ocikit.store.files`).

The ``.ocikit`` directory is an extra file that the image-layout spec allows and other tools
ignore; readers never create it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import msgspec

from ..spec import Descriptor, VerificationError
from ..spec.digest import SUPPORTED_ALGORITHMS, Digest, Digester, DigestError, digest_error
from ..spec.validate import Violation
from . import refs
from .files import (
    BlobFile,
    copy_range,
    digest_span,
    exclusive_lock,
    fsync_dir,
    open_dir,
    open_regular,
    pwrite_all,
    replace_file,
    run_to_completion,
    write_batched,
)
from .layout_check import validate_layout
from .source import IndexedSource
from .transport import TransportError

__all__ = ["LAYOUT_VERSION", "BlobWriter", "LayoutDestination", "OCILayout"]

LAYOUT_VERSION: Final = "1.0.0"
_PRIVATE: Final = ".ocikit"
_INCOMING: Final = "incoming"
_LOCK: Final = "index.lock"


class OCILayout:
    """One image layout directory. Use :meth:`open`; close it (or use ``with``) when done."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = False) -> OCILayout:
        """Open the layout at ``path``. With ``create`` a missing or empty directory becomes a
        new layout; a non-empty directory that is not a layout is refused either way, so that
        nothing is ever written into an unrelated folder."""
        root = Path(path)
        if create:
            root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TransportError(f"{root}: no image layout here") from None
        except NotADirectoryError:
            raise TransportError(f"{root}: an image layout is a directory") from None
        layout = cls(root, fd)
        try:
            layout._check_or_create(create)
        except BaseException:
            layout.close()
            raise
        return layout

    def _check_or_create(self, create: bool) -> None:
        if self._has_header():
            if create and not self._exists("index.json"):
                with self.index_lock():
                    self._create_index()
            return
        if not create:
            raise TransportError(f"{self.path}: not an image layout (no oci-layout file)")
        self._refuse_foreign_directory()  # before the lock, which would create .ocikit there
        # Under the lock, so that two processes creating the same layout do not trip over
        # each other: the second finds the header the first wrote.
        with self.index_lock():
            if not self._has_header():
                self._refuse_foreign_directory()
                incoming = self._incoming()
                try:
                    header = f'{{"imageLayoutVersion":"{LAYOUT_VERSION}"}}'.encode()
                    self._replace("oci-layout", header, incoming)
                finally:
                    os.close(incoming)
            os.close(self._algorithm_dir("sha256"))
            self._create_index()

    def _refuse_foreign_directory(self) -> None:
        if any(name != _PRIVATE for name in os.listdir(self._fd)):
            raise TransportError(f"{self.path}: not empty and not an image layout; refusing to write there")

    def _has_header(self) -> bool:
        try:
            os.close(open_regular("oci-layout", self._fd))
        except FileNotFoundError:
            return False
        except OSError:
            raise TransportError(f"{self.path}: oci-layout is not a regular file") from None
        return True

    def _create_index(self) -> None:
        """An empty index.json unless there is one (called with the lock held)."""
        if self._exists("index.json"):
            return
        incoming = self._incoming()
        try:
            self._replace("index.json", refs.encode_index(refs.empty_index()), incoming)
        finally:
            os.close(incoming)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> OCILayout:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OCILayout({str(self.path)!r})"

    # -- reading -----------------------------------------------------------------------------

    def read_index(self) -> dict[str, Any]:
        try:
            fd = open_regular("index.json", self._fd)
        except FileNotFoundError:
            raise TransportError(f"{self.path}: index.json is missing") from None
        except OSError:
            raise TransportError(f"{self.path}: index.json is not a regular file") from None
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(refs.MAX_INDEX + 1)
        if len(raw) > refs.MAX_INDEX:
            raise TransportError(f"{self.path}: index.json is larger than {refs.MAX_INDEX} bytes")
        return refs.decode_index(raw, str(self.path))

    def locate(self, digest: str) -> BlobFile | None:
        """The blob as an open file, or None when absent (or not a regular file)."""
        if digest_error(digest) is not None:
            return None
        algorithm, _, encoded = digest.partition(":")
        try:
            blobs = open_dir("blobs", self._fd)
        except OSError:
            return None
        try:
            algorithm_fd = open_dir(algorithm, blobs)
        except OSError:
            return None
        finally:
            os.close(blobs)
        try:
            fd = open_regular(encoded, algorithm_fd)
        except OSError:
            return None
        finally:
            os.close(algorithm_fd)
        return BlobFile(fd, 0, os.fstat(fd).st_size)

    def has_blob(self, descriptor: Descriptor, *, touch: bool = False) -> bool:
        """Present with the right size. ``touch`` refreshes its mtime, which tells garbage
        collection's grace period that a writer is about to reference it."""
        blob = self.locate(descriptor.digest)
        if blob is None:
            return False
        with blob:
            if blob.size != descriptor.size:
                return False
            if touch:
                with contextlib.suppress(OSError):
                    os.utime(blob.fd)
        return True

    def blob_path(self, digest: str) -> Path:
        """Where a blob lives; for display and for consumers that trust this layout (the
        local store). Untrusted layouts are read through :meth:`locate`."""
        algorithm, _, encoded = Digest(digest).partition(":")
        return self.path / "blobs" / algorithm / encoded

    def source(self, *, owned: bool = False) -> IndexedSource:
        """An ImageSource over this layout; ``owned`` closes the layout with the source."""
        return IndexedSource(str(self.path), self.read_index, self.locate, self.close if owned else None)

    def destination(self, *, touch_existing: bool = False, owned: bool = False) -> LayoutDestination:
        """An ImageDestination into this layout; ``owned`` closes the layout with it."""
        return LayoutDestination(self, touch_existing=touch_existing, owned=owned)

    def validate(self) -> list[Violation]:
        return validate_layout(self.path)

    # -- writing -----------------------------------------------------------------------------

    def update_index(
        self, mutate: Callable[[dict[str, Any]], None], *, lock_held: bool = False
    ) -> dict[str, Any]:
        """Apply ``mutate`` to the current index and write it back, atomically and under the
        lock: the read-modify-write of one writer never interleaves with another's.
        ``lock_held``: the caller is inside :meth:`index_lock` already."""
        if lock_held:
            return self._rewrite_index(mutate)
        with self.index_lock():
            return self._rewrite_index(mutate)

    def _rewrite_index(self, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        incoming = self._incoming()
        try:
            index = self.read_index()
            mutate(index)
            self._replace("index.json", refs.encode_index(index), incoming)
            return index
        finally:
            os.close(incoming)

    @contextlib.contextmanager
    def index_lock(self) -> Iterator[None]:
        """Hold the lock writers of ``index.json`` take, so that garbage collection sees no
        new reference appear between its mark and its sweep."""
        private = self._private()
        try:
            with exclusive_lock(private, _LOCK):
                yield
        finally:
            os.close(private)

    def remove_blob(self, digest: str, *, modified_before: float | None = None) -> bool:
        """Unlink a blob, unless it was modified at or after ``modified_before`` (a writer
        reused it meanwhile). True when it was removed."""
        algorithm, _, encoded = Digest(digest).partition(":")
        try:
            blobs = open_dir("blobs", self._fd)
            try:
                directory = open_dir(algorithm, blobs)
            finally:
                os.close(blobs)
        except FileNotFoundError:
            return False
        try:
            if modified_before is not None:
                info = os.stat(encoded, dir_fd=directory, follow_symlinks=False)
                if info.st_mtime >= modified_before:
                    return False
            os.unlink(encoded, dir_fd=directory)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(directory)

    def incoming_dir(self) -> int:
        """An fd of the staging directory (for purging files of crashed writes)."""
        return self._incoming()

    def publish_staged(self, incoming: int, name: str, digest: Digest) -> None:
        """Rename the staging file ``name`` of :meth:`incoming_dir` to the blob ``digest``.

        The caller computed ``digest`` over exactly what it wrote and ``fsync``ed the file:
        a :class:`BlobWriter` checking a descriptor, or a writer producing new content whose
        digest is only known at its end (a layer ocikit makes). The rename is atomic.
        """
        algorithm_fd = self._algorithm_dir(digest.algorithm)
        try:
            os.rename(name, digest.encoded, src_dir_fd=incoming, dst_dir_fd=algorithm_fd)
            fsync_dir(algorithm_fd)
        finally:
            os.close(algorithm_fd)

    def blob_writer(self, descriptor: Descriptor) -> BlobWriter:
        return BlobWriter(self, descriptor)

    def put_bytes(self, descriptor: Descriptor, data: bytes) -> None:
        writer = self.blob_writer(descriptor)
        try:
            writer.write(data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def put_file(self, descriptor: Descriptor, blob: BlobFile) -> None:
        """Copy a file span in, in the kernel, then verify what landed before publishing it."""
        writer = self.blob_writer(descriptor)
        try:
            if blob.size != descriptor.size:
                raise VerificationError(
                    f"size mismatch for {descriptor.digest}: expected {descriptor.size} bytes, "
                    f"the source has {blob.size}"
                )
            copy_range(blob, writer.fd)
            writer.commit(verify_file=True)
        except BaseException:
            writer.abort()
            raise

    def _exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self._fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _replace(self, name: str, data: bytes, incoming: int) -> None:
        replace_file(self._fd, name, data, incoming, _temp_name(name))

    def _private(self) -> int:
        return open_dir(_PRIVATE, self._fd, create=True)

    def _incoming(self) -> int:
        private = self._private()
        try:
            return open_dir(_INCOMING, private, create=True)
        finally:
            os.close(private)

    def _blobs_dir(self, *, create: bool = False) -> int:
        return open_dir("blobs", self._fd, create=create)

    def _algorithm_dir(self, algorithm: str) -> int:
        blobs = self._blobs_dir(create=True)
        try:
            return open_dir(algorithm, blobs, create=True)
        finally:
            os.close(blobs)


def _temp_name(name: str) -> str:
    return f"{name[:16]}.{os.getpid()}.{secrets.token_hex(6)}.tmp"


class BlobWriter:
    """One blob on its way in: staged, hashed as written, published by :meth:`commit`."""

    def __init__(self, layout: OCILayout, descriptor: Descriptor) -> None:
        try:
            self._digest = Digest(descriptor.digest)
        except DigestError as exc:
            raise TransportError(str(exc)) from None
        if self._digest.algorithm not in SUPPORTED_ALGORITHMS:
            raise TransportError(f"cannot verify {descriptor.digest}: unsupported digest algorithm")
        self._layout = layout
        self._descriptor = descriptor
        self._digester = Digester(self._digest.algorithm)
        self._incoming = layout._incoming()
        self._name = _temp_name(self._digest.encoded)
        self.fd = os.open(
            self._name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=self._incoming
        )
        self._done = False

    def write(self, chunk: bytes) -> None:
        self.write_many([chunk])

    def write_many(self, chunks: list[bytes], offset: int | None = None) -> None:
        """Hash and append ``chunks`` (in small writes: see ``pwrite_all``); safe to run in a
        worker thread, where hashing and writing overlap the network (both release the GIL).
        ``offset`` is where they start (default: after what was written so far)."""
        start = self._digester.size if offset is None else offset
        for chunk in chunks:
            self._digester.update(chunk)
        if self._digester.size > self._descriptor.size:
            raise VerificationError(
                f"size mismatch for {self._descriptor.digest}: expected {self._descriptor.size} bytes, "
                "got more"
            )
        pwrite_all(self.fd, chunks, start)

    def commit(self, *, verify_file: bool = False) -> None:
        """Verify (the hash of what was written, or with ``verify_file`` of the staged file
        itself), fsync and rename into place."""
        size = os.fstat(self.fd).st_size if verify_file else self._digester.size
        if size != self._descriptor.size:
            raise VerificationError(
                f"size mismatch for {self._descriptor.digest}: expected {self._descriptor.size} bytes, "
                f"got {size}"
            )
        if verify_file:
            actual = digest_span(self.fd, 0, size, self._digest.algorithm)
        else:
            actual = self._digester.digest()
        if actual != self._digest:
            raise VerificationError(f"digest mismatch: expected {self._digest}, got {actual}")
        os.fsync(self.fd)
        self._layout.publish_staged(self._incoming, self._name, self._digest)
        self._done = True
        self._release()

    def abort(self) -> None:
        if not self._done:
            with contextlib.suppress(OSError):
                os.unlink(self._name, dir_fd=self._incoming)
        self._release()

    def _release(self) -> None:
        for fd in (self.fd, self._incoming):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fd = self._incoming = -1


class LayoutDestination:
    """An :class:`ImageDestination` writing into a layout; also takes file spans
    (``BlobFileDestination``) and records untagged images (``UntaggedRoots``).

    ``touch_existing`` (the local store) refreshes the mtime of blobs found present, so a
    concurrent garbage collection keeps them until the image that reuses them is tagged.
    """

    def __init__(self, layout: OCILayout, *, touch_existing: bool = False, owned: bool = False) -> None:
        self.layout = layout
        self._touch = touch_existing
        self._owned = owned

    async def has_blob(self, descriptor: Descriptor) -> bool:
        return self.layout.has_blob(descriptor, touch=self._touch)

    async def put_blob(self, descriptor: Descriptor, chunks: AsyncIterator[bytes]) -> None:
        """Chunks are hashed and written by a worker thread while the next ones arrive."""
        writer = self.layout.blob_writer(descriptor)
        try:
            await write_batched(chunks, writer.write_many)
            await run_to_completion(writer.commit)
        except BaseException:
            writer.abort()
            raise

    async def put_blob_from_file(self, descriptor: Descriptor, blob: BlobFile) -> None:
        await asyncio.to_thread(self.layout.put_file, descriptor, blob)

    async def put_manifest(self, descriptor: Descriptor, raw: bytes, tags: list[str]) -> None:
        """The document becomes a blob; each tag an ``index.json`` entry. A manifest with a
        ``subject`` (a referrer) is also listed untagged, since a layout has no other place
        where its referrers can be found."""
        self.layout.put_bytes(descriptor, raw)
        plain = Descriptor(media_type=descriptor.media_type, digest=descriptor.digest, size=descriptor.size)
        is_referrer = b'"subject"' in raw and _has_subject(raw)

        def record(index: dict[str, Any]) -> None:
            for tag in tags:
                refs.set_ref(index, tag, plain)
            if is_referrer and not tags:
                refs.add_untagged(index, plain)

        if tags or is_referrer:
            self.layout.update_index(record)

    async def add_root(self, descriptor: Descriptor) -> None:
        plain = Descriptor(media_type=descriptor.media_type, digest=descriptor.digest, size=descriptor.size)
        self.layout.update_index(lambda index: refs.add_untagged(index, plain))

    async def commit(self) -> None:
        """Nothing to do: every blob and index update was durable when it returned."""

    async def close(self) -> None:
        if self._owned:
            self.layout.close()


def _has_subject(raw: bytes) -> bool:
    try:
        node = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return False
    return isinstance(node, dict) and isinstance(node.get("subject"), dict)
