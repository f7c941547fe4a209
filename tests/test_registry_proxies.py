"""The client's address behind a load balancer: X-Forwarded-For, believed only from
``trusted_proxies``, decides rate limits, upload caps and what the logs name."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import start_registry
from ocikit.registry.http import PEER_SCOPE_KEY, Request
from ocikit.registry.proxies import ForwardedFor


def _resolved(proxies: list[str], peer: str, *forwarded: str) -> tuple[str, object]:
    scope = {"client": (peer, 4242), "headers": [(b"x-forwarded-for", hop.encode()) for hop in forwarded]}
    ForwardedFor(proxies).apply(scope)
    return scope["client"][0], scope.get(PEER_SCOPE_KEY)


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("127.0.0.1", ["203.0.113.5"], "203.0.113.5"),
        # the leftmost entry was written by the client: the rightmost untrusted hop counts
        ("127.0.0.1", ["198.51.100.9, 203.0.113.5"], "203.0.113.5"),
        ("127.0.0.1", ["198.51.100.9", "203.0.113.5, 10.0.0.2"], "203.0.113.5"),  # two proxies
        ("127.0.0.1", ["forged, 203.0.113.5"], "203.0.113.5"),
        ("127.0.0.1", ["203.0.113.5, not-an-address"], "127.0.0.1"),  # nothing left of junk counts
        ("127.0.0.1", [], "127.0.0.1"),
        ("192.0.2.7", ["203.0.113.5"], "192.0.2.7"),  # not a trusted proxy: the header is ignored
        ("127.0.0.1", ["2001:db8::1"], "2001:db8::1"),
    ],
)
def test_the_client_is_the_rightmost_address_no_trusted_proxy_wrote(
    peer: str, forwarded: list[str], client: str
) -> None:
    resolved, kept_peer = _resolved(["127.0.0.1", "10.0.0.0/8"], peer, *forwarded)
    assert resolved == client
    assert kept_peer == ((peer, 4242) if client != peer else None)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.5", "203.0.113.5"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.5", "203.0.113.5"),
        ("unknown", "unknown"),
    ],
)
def test_limits_count_an_ipv6_client_by_its_64(address: str, key: str) -> None:
    scope = {"type": "http", "method": "GET", "path": "/v2/", "client": (address, 4242)}
    assert Request(scope, receive=None).client_key == key  # type: ignore[arg-type]
    assert Request(scope, receive=None).client_address == address  # type: ignore[arg-type]


def _post(client: object, repository: str, address: str) -> int:
    response = client.post(  # type: ignore[attr-defined]
        f"/v2/{repository}/blobs/uploads/", headers={"x-forwarded-for": address}
    )
    return int(response.status_code)


def test_upload_caps_and_logs_follow_the_forwarded_address(tmp_path: Path) -> None:
    server = start_registry(
        tmp_path / "data", ["--trusted-proxies", "127.0.0.1", "--client-upload-limit", "2", "--workers", "1"]
    )
    try:
        with server.client() as c:
            assert [_post(c, "lb/a", "203.0.113.5") for _ in range(3)] == [202, 202, 429]
            assert _post(c, "lb/a", "203.0.113.6") == 202  # another client behind the same proxy
            assert _post(c, "lb/a", "198.51.100.1, 203.0.113.5") == 429  # a forged hop changes nothing
            # One IPv6 host has a whole /64: its addresses share one count, another /64 its own.
            sixty_four = [_post(c, "lb/a", f"2001:db8:1:2::{host}") for host in (1, 2, 3)]
            assert sixty_four == [202, 202, 429]
            assert _post(c, "lb/a", "2001:db8:1:3::1") == 202
        deadline = time.monotonic() + 5
        while "203.0.113.6 " not in server.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "203.0.113.6 - POST /v2/lb/a/blobs/uploads/ 202" in server.log.read_text()
    finally:
        server.stop()


def test_without_trusted_proxies_the_header_is_ignored(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data", ["--client-upload-limit", "2", "--workers", "1"])
    try:
        with server.client() as c:
            statuses = [_post(c, "lb/b", f"203.0.113.{n}") for n in range(3)]
        assert statuses == [202, 202, 429]
    finally:
        server.stop()
