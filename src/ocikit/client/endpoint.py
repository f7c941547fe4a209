"""What a registry source and a registry destination share: one repository of one registry,
the client that talks to it, the token scope every request of theirs asks for, and the record of
where blobs were seen (:mod:`.locations`), written when the endpoint closes."""

from __future__ import annotations

from pathlib import Path

from ..spec import Reference
from .locations import BlobLocations, shared_locations
from .options import ClientOptions
from .session import RegistryClient

__all__ = ["RepositoryEndpoint"]


class RepositoryEndpoint:
    """``client`` may be shared (then it is not closed here); otherwise one is made from
    ``options`` and closed by :meth:`close`."""

    def __init__(
        self, reference: Reference, options: ClientOptions | None, client: RegistryClient | None, scope: str
    ) -> None:
        self.reference = reference
        self.repository = reference.repository
        self.client = client or RegistryClient(reference.registry, options, repository=reference.repository)
        self._owns_client = client is None
        self._scopes = [scope]
        chosen = self.client.options
        self.locations: BlobLocations | None = None
        if chosen.remember_blobs:
            self.locations = shared_locations(Path(chosen.blob_locations) if chosen.blob_locations else None)

    def _seen(self, digest: str, repository: str | None = None) -> None:
        """Note that ``repository`` (default: this one) of this registry holds the blob."""
        if self.locations is not None:
            self.locations.note(self.client.registry, repository or self.repository, digest)

    def _name(self, identifier: str) -> str:
        """``host/repo:tag`` or ``host/repo@digest``, for messages."""
        separator = "@" if ":" in identifier else ":"
        return f"{self.reference.registry}/{self.repository}{separator}{identifier}"

    async def close(self) -> None:
        if self.locations is not None:
            self.locations.flush()  # one short transaction: not worth a thread
        if self._owns_client:
            await self.client.aclose()
