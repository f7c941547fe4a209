"""What a registry source and a registry destination share: one repository of one registry,
the client that talks to it, and the token scope every request of theirs asks for."""

from __future__ import annotations

from ..spec import Reference
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

    def _name(self, identifier: str) -> str:
        """``host/repo:tag`` or ``host/repo@digest``, for messages."""
        separator = "@" if ":" in identifier else ":"
        return f"{self.reference.registry}/{self.repository}{separator}{identifier}"

    async def close(self) -> None:
        if self._owns_client:
            await self.client.aclose()
