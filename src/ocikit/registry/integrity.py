"""Checking what a registry stores against itself (``ocikit fsck --root``).

The push handlers refuse inconsistent content, but a root may hold content from before
those rules, from a ``sparse_manifests`` registry whose absent blobs arrived later with
other sizes, or from a disk that lost files. Rather than serve images that no client can
pull, the check names each problem: a manifest whose bytes do not match its digest or
break the image-spec, a descriptor that disagrees with stored content (the rule of
:mod:`.descriptors`, shared with the push handler), required content that is absent, a blob
record whose bytes are gone or have another size, a tag pointing at no manifest.

It reads through the storage interfaces only, page by page, so it works on every backend and
in constant memory beside a running server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..spec import mediatype as mt
from ..spec.digest import Digest, digest_of
from ..spec.validate import ValidationFailed, parse_json, validate
from .descriptors import descriptor_findings, required_references
from .storage.base import BlobStore, ManifestRecord, MetadataStore

__all__ = ["IntegrityReport", "Problem", "check_registry"]

_PAGE = 1000
_VIOLATIONS_SHOWN = 3


@dataclass(frozen=True, slots=True)
class Problem:
    repository: str
    #: What is wrong: ``manifest sha256:…`` or ``tag latest``.
    item: str
    problem: str

    def __str__(self) -> str:
        return f"{self.repository}: {self.item}: {self.problem}"


@dataclass
class IntegrityReport:
    repositories: int = 0
    manifests: int = 0
    tags: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def _paged(fetch: Callable[[str | None], Awaitable[list[str] | None]]) -> AsyncIterator[str]:
    last = None
    while True:
        page = await fetch(last) or []
        for item in page:
            yield item
        if len(page) < _PAGE:
            return
        last = page[-1]


async def check_registry(
    metadata: MetadataStore, blobs: BlobStore, *, sparse: bool = False
) -> IntegrityReport:
    """Every problem of every repository. With ``sparse`` (the registry's ``sparse_manifests``)
    absent blobs and child manifests are allowed, as the registry allowed them when pushed."""
    report = IntegrityReport()
    async for repository in _paged(lambda last: metadata.repositories(_PAGE, last)):
        report.repositories += 1
        checker = _RepositoryCheck(metadata, blobs, repository, sparse, report)
        await checker.manifests()
        await checker.tags()
    return report


@dataclass
class _RepositoryCheck:
    metadata: MetadataStore
    blobs: BlobStore
    repository: str
    sparse: bool
    report: IntegrityReport

    def fail(self, item: str, problem: str) -> None:
        self.report.problems.append(Problem(self.repository, item, problem))

    async def manifests(self) -> None:
        async def page(last: str | None) -> list[str]:
            return list(await self.metadata.manifest_digests(self.repository, _PAGE, last))

        async for digest in _paged(page):
            record = await self.metadata.manifest(self.repository, Digest(digest))
            if record is not None:  # else deleted while we looked
                self.report.manifests += 1
                await self._manifest(record)

    async def tags(self) -> None:
        async for tag in _paged(lambda last: self.metadata.tags(self.repository, _PAGE, last)):
            self.report.tags += 1
            target = await self.metadata.tag_target(self.repository, tag)
            if target is not None and await self.metadata.manifest(self.repository, target) is None:
                self.fail(f"tag {tag}", f"points at manifest {target}, which is not stored")

    async def _manifest(self, record: ManifestRecord) -> None:
        item = f"manifest {record.digest}"
        node = self._document(record, item)
        if node is None:
            return
        async for finding in descriptor_findings(self.metadata, self.repository, node, record.media_type):
            if not finding.absent or not self.sparse:
                self.fail(item, str(finding))
        blobs, _ = required_references(node, record.media_type)
        for blob in blobs:
            await self._blob_bytes(item, blob)

    def _document(self, record: ManifestRecord, item: str) -> dict[str, Any] | None:
        """The manifest's JSON when its bytes are its digest's and follow the image-spec."""
        actual = digest_of(record.content, record.digest.algorithm)
        if actual != record.digest:
            self.fail(item, f"the stored bytes have digest {actual}")
            return None
        try:
            node = parse_json(record.content)
        except ValidationFailed as exc:
            self.fail(item, f"the stored bytes are not a JSON document: {exc}")
            return None
        kind = "index" if record.media_type in mt.INDEX_TYPES else "manifest"
        violations = validate(node, kind, allow_empty_layers=True)
        if violations:
            shown = "; ".join(map(str, violations[:_VIOLATIONS_SHOWN]))
            self.fail(item, f"breaks the image-spec ({len(violations)} violations): {shown}")
            return None
        return node if isinstance(node, dict) else None

    async def _blob_bytes(self, item: str, digest: Digest) -> None:
        recorded = await self.metadata.linked_blob_size(self.repository, digest)
        if recorded is None:
            return  # absent content is a descriptor finding
        info = await self.blobs.stat(digest)
        if info is None:
            self.fail(item, f"blob {digest} is recorded, but its bytes are missing from the blob store")
        elif info.size != recorded:
            self.fail(
                item, f"blob {digest} is recorded with {recorded} bytes, the blob store holds {info.size}"
            )
