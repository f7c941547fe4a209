"""The client's address behind a load balancer (``X-Forwarded-For``).

Behind HAProxy every request arrives from the balancer, so rate limits, upload caps, failed
logins and the audit log would all see one address. With ``trusted_proxies`` set, the
registry takes the client's address from ``X-Forwarded-For`` instead — and the ASGI scope's
``client`` then names it, so that every consumer agrees on one address.

Security decision: the header is believed only when the connection comes from a trusted
proxy, and only its rightmost address that is not itself a trusted proxy is taken. Entries
further left were written by the client and can be forged; the rightmost were appended by
proxies we trust.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from .http import PEER_SCOPE_KEY, Scope

__all__ = ["ForwardedFor"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForwardedFor:
    """Resolves the client's address of requests that trusted proxies forward."""

    def __init__(self, proxies: Sequence[str]) -> None:
        self._networks: list[_Network] = [ipaddress.ip_network(p, strict=False) for p in proxies]

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def apply(self, scope: Scope) -> None:
        """Name the forwarded client in ``scope["client"]``; the peer stays under
        :data:`~ocikit.registry.http.PEER_SCOPE_KEY`."""
        peer = scope.get("client")
        if not peer or not self._trusted(peer[0]):
            return
        hops = [
            hop.strip()
            for name, value in scope["headers"]
            if name.lower() == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
        ]
        client = self._client(hops)
        if client is not None:
            scope[PEER_SCOPE_KEY] = peer
            scope["client"] = (client, 0)

    def _client(self, hops: list[str]) -> str | None:
        """The rightmost hop that is no trusted proxy; the last valid one when all are."""
        chosen = None
        for hop in reversed(hops):
            try:
                chosen = str(ipaddress.ip_address(hop))
            except ValueError:
                break  # a hop that is no address: what lies left of it cannot be trusted
            if not self._trusted(chosen):
                break
        return chosen
