"""Access control as the registry's :data:`~ocikit.registry.hooks.Authorizer`: who is calling
(an :data:`Authenticator`), whether they may (a :data:`Permits` decision), how fast (token
buckets), and the ``WWW-Authenticate`` challenge that sends clients to the token endpoint.

Both halves can be replaced by an application mounting the registry: an authenticator is any
``async (request) -> Identity``, a decision is any ``(user, repository, action) -> bool``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final

from ..errors import RegistryError
from ..hooks import Action
from ..http import Request
from ..scope import USER_SCOPE_KEY
from .htpasswd import HtpasswdFile
from .identity import ANONYMOUS_IDENTITY, Identity
from .limits import LoginThrottle, TokenBuckets

if TYPE_CHECKING:  # tokens import PyJWT and cryptography: only registries that use tokens load them
    from .tokens import TokenVerifier

__all__ = [
    "USER_SCOPE_KEY",
    "AccessControl",
    "AuthenticationFailed",
    "Authenticator",
    "CertificateHeader",
    "CredentialAuthenticator",
    "Permits",
    "too_many_requests",
]

_IDENTITY_KEY: Final = "ocikit.identity"
#: Credentials longer than this are refused unread: no client needs more, and an attacker
#: must not make the registry decode or hash megabytes.
MAX_AUTHORIZATION_LENGTH: Final = 16 * 1024
_SAFE_HOST: Final = re.compile(r"[A-Za-z0-9.\-:\[\]]{1,255}")
_CERTIFICATE_USER: Final = re.compile(r"[\w.@+-][\w.@+ -]{0,254}")


class AuthenticationFailed(Exception):
    """The credentials offered are wrong (the message is safe to show; it holds no secret)."""


Authenticator = Callable[[Request], Awaitable[Identity]]
Permits = Callable[[str | None, str, Action], bool]


def too_many_requests(retry_after: float, what: str) -> RegistryError:
    seconds = max(1, int(retry_after + 0.999))
    return RegistryError("TOOMANYREQUESTS", what, headers=[("retry-after", str(seconds))])


def basic_credentials(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthenticationFailed("malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise AuthenticationFailed("malformed Basic credentials")
    return user, password


class CertificateHeader:
    """The user a TLS-terminating proxy names: the CN of the client certificate it verified,
    in a header it sets. Believed only from the proxies' own addresses, since any client can
    send any header; the proxy must overwrite the header, never pass a client's through."""

    def __init__(self, name: str, proxies: Sequence[str]) -> None:
        self.name = name.lower()
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in proxies]

    def user(self, request: Request) -> str | None:
        value = request.headers.get(self.name)
        if value is None:
            return None
        try:
            sender = ipaddress.ip_address(request.peer_address)
        except ValueError:
            sender = None
        if sender is None or not any(sender in network for network in self._proxies):
            raise AuthenticationFailed(f"{self.name} is accepted only from the TLS proxy")
        user = value.strip()
        if not _CERTIFICATE_USER.fullmatch(user):
            raise AuthenticationFailed("the certificate names no usable user")
        return user


class CredentialAuthenticator:
    """Basic credentials checked against an htpasswd file, bearer tokens checked by a
    :class:`TokenVerifier`, and (without an ``Authorization`` header) the client certificate
    a TLS proxy verified; none of these is an anonymous caller."""

    def __init__(
        self,
        *,
        htpasswd: HtpasswdFile | None,
        verifier: TokenVerifier | None,
        throttle: LoginThrottle | None = None,
        certificate: CertificateHeader | None = None,
    ) -> None:
        self.htpasswd = htpasswd
        self.verifier = verifier
        self.throttle = throttle or LoginThrottle()
        self.certificate = certificate

    async def __call__(self, request: Request) -> Identity:
        header = request.headers.get("authorization")
        if header is None:
            user = self.certificate.user(request) if self.certificate is not None else None
            return Identity(user=user, via="certificate") if user else ANONYMOUS_IDENTITY
        if len(header) > MAX_AUTHORIZATION_LENGTH:
            raise AuthenticationFailed("the Authorization header is too long")
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.verifier is not None:
            from .tokens import InvalidToken  # loaded with the verifier

            try:
                return self.verifier.identify(value.strip())
            except InvalidToken as exc:
                raise AuthenticationFailed(f"invalid token: {exc}") from None
        if scheme == "basic" and self.htpasswd is not None:
            user, password = basic_credentials(value)
            await self.login(user, password, request.client_key)
            return Identity(user=user, via="basic")
        raise AuthenticationFailed(f"{scheme or 'empty'} credentials are not accepted here")

    async def login(self, user: str, password: str, address: str) -> None:
        """Check a password, slowing down an address that keeps failing."""
        if self.htpasswd is None:
            raise AuthenticationFailed("this registry has no users of its own")
        wait = self.throttle.attempt(address)
        if wait:
            raise too_many_requests(wait, "too many failed logins from this address")
        if not await self.htpasswd.check(user, password):
            raise AuthenticationFailed("wrong user name or password")
        self.throttle.succeeded(address)


class AccessControl:
    """The registry's authorizer. ``realm`` (the token endpoint's URL) and ``service`` go into
    the challenge; with ``realm=None`` the registry's own ``/token`` on the requested host is
    named. ``open_base`` lets anonymous callers use ``/v2/`` (a registry without users)."""

    def __init__(
        self,
        *,
        authenticate: Authenticator,
        permits: Permits,
        service: str,
        realm: str | None = None,
        open_base: bool = False,
        user_limits: TokenBuckets | None = None,
        address_limits: TokenBuckets | None = None,
    ) -> None:
        self.authenticate = authenticate
        self.permits = permits
        self.service = service
        self.realm = realm
        self.open_base = open_base
        self.user_limits = user_limits
        self.address_limits = address_limits

    async def identify(
        self, request: Request, repository: str | None = None, action: Action | None = None
    ) -> Identity:
        """The caller, authenticated once per request; rate limits apply here. Refused
        credentials are answered with a challenge for ``repository`` and ``action``."""
        scope = request.scope
        known: Identity | None = scope.get(_IDENTITY_KEY)
        if known is not None:
            return known
        if self.address_limits is not None:
            wait = self.address_limits.take(request.client_key)
            if wait:
                raise too_many_requests(wait, "too many requests from this address")
        try:
            identity = await self.authenticate(request)
        except AuthenticationFailed as exc:
            raise self.challenge(
                request, repository, action, error="invalid_token", message=str(exc)
            ) from None
        if self.user_limits is not None and identity.user is not None:
            wait = self.user_limits.take(identity.user)
            if wait:
                raise too_many_requests(wait, "too many requests from this user")
        scope[_IDENTITY_KEY] = identity
        scope[USER_SCOPE_KEY] = identity.user
        return identity

    async def __call__(self, request: Request, repository: str | None, action: Action) -> None:
        identity = await self.identify(request, repository, action)
        if repository is None:
            self._check_registry(request, identity, action)
            return
        if not identity.token_allows(f"repository:{repository}", action):
            raise self.insufficient_scope(request, repository, action)
        if not self.permits(identity.user, repository, action):
            self._refuse(request, identity, repository, action)

    async def may(self, request: Request, repository: str, action: Action) -> bool:
        """Whether the token grants it and the policy permits it, without refusing: for a
        mount's source. Security decision: the token counts as for a request to the source
        itself; an external token server's grants are the only limit where no policy is set."""
        identity = await self.identify(request)
        allowed = identity.token_allows(f"repository:{repository}", action)
        return allowed and self.permits(identity.user, repository, action)

    async def lists(self, request: Request, repository: str) -> bool:
        """Whether the policy lets the caller pull ``repository``, for filtering the catalog."""
        identity = await self.identify(request)
        return self.permits(identity.user, repository, "pull")

    def _check_registry(self, request: Request, identity: Identity, action: Action) -> None:
        """``/v2/`` (any caller who authenticated somehow) and the catalog (filtered later)."""
        if identity.via == "none" and not self.open_base:
            raise self.challenge(request, None, action)
        if action == "catalog" and not identity.token_allows("registry:catalog", "*"):
            raise self.insufficient_scope(request, None, action)

    def _refuse(self, request: Request, identity: Identity, repository: str, action: Action) -> None:
        if identity.via == "none":  # perhaps allowed once signed in: tell how to sign in
            raise self.challenge(request, repository, action)
        raise RegistryError(
            "DENIED",
            f"{identity.user or 'anonymous'} may not {action} {repository}",
            detail=[{"Type": "repository", "Name": repository, "Action": action}],
        )

    def insufficient_scope(self, request: Request, repository: str | None, action: Action) -> RegistryError:
        """A valid token without the grant: 403 with a challenge naming the scope needed, as
        RFC 6750 asks, so that clients fetch a token for it (oras does so only on a 403)."""
        error = self.challenge(request, repository, action, error="insufficient_scope")
        return RegistryError("DENIED", "the token does not grant this", status=403, headers=error.headers)

    def challenge(
        self,
        request: Request,
        repository: str | None,
        action: Action | None,
        *,
        error: str | None = None,
        message: str | None = None,
    ) -> RegistryError:
        parts = [f'realm="{self.realm_for(request)}"', f'service="{self.service}"']
        if repository is not None and action is not None:
            actions = "pull,push" if action == "push" else action
            parts.append(f'scope="repository:{repository}:{actions}"')
        elif action == "catalog":
            parts.append('scope="registry:catalog:*"')
        if error:
            parts.append(f'error="{error}"')
        header = "Bearer " + ",".join(parts)
        return RegistryError("UNAUTHORIZED", message, headers=[("www-authenticate", header)])

    def realm_for(self, request: Request) -> str:
        if self.realm:
            return self.realm
        host = request.headers.get("host", "")
        if not _SAFE_HOST.fullmatch(host):
            server = request.scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        scheme = request.scope.get("scheme", "http")
        return f"{scheme}://{host}{request.scope.get('root_path', '')}/token"
