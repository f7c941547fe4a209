"""The token endpoint (``/token``): distribution's token protocol, both forms clients use.

* ``GET /token?service=…&scope=…`` with optional Basic credentials (and ``offline_token=true``
  for a refresh token), as Docker's token specification describes;
* ``POST /token`` with an ``application/x-www-form-urlencoded`` body: ``grant_type=password``
  (username, password) or ``grant_type=refresh_token``, as its OAuth2 specification does.

A caller without credentials gets a token for what the policy allows anonymous users, so
anonymous pulls of public repositories work in every client. A scope the caller may not use
is not an error: it is left out of the token, and the registry refuses the request later.
"""

from __future__ import annotations

import hmac
import time
from typing import Any, Final
from urllib.parse import parse_qs

from ...spec.reference import is_valid_repository
from ..errors import RegistryError
from ..hooks import Action
from ..http import BodyTooLarge, Request, Response
from .access import (
    MAX_AUTHORIZATION_LENGTH,
    AccessControl,
    AuthenticationFailed,
    CredentialAuthenticator,
    basic_credentials,
    too_many_requests,
)
from .tokens import InvalidToken, TokenIssuer

__all__ = ["TokenEndpoint"]

_REPOSITORY_ACTIONS: Final[tuple[Action, ...]] = ("pull", "push", "delete")
_MAX_FORM: Final = 64 * 1024
_MAX_SCOPES: Final = 32


def _oauth_error(error: str, description: str, status: int = 400) -> Response:
    return Response.json({"error": error, "error_description": description}, status=status)


class TokenEndpoint:
    """Issues tokens for the registry's own users, as the policy allows them."""

    def __init__(
        self, issuer: TokenIssuer, authenticator: CredentialAuthenticator, access: AccessControl
    ) -> None:
        self.issuer = issuer
        self.authenticator = authenticator
        self.access = access

    async def __call__(self, request: Request) -> Response:
        if self.access.address_limits is not None:
            wait = self.access.address_limits.take(request.client_key)
            if wait:
                raise too_many_requests(wait, "too many requests from this address")
        if request.method == "GET":
            return await self._get(request)
        if request.method == "POST":
            return await self._post(request)
        raise RegistryError("UNSUPPORTED", f"{request.method} is not allowed on /token")

    def _check_service(self, service: str | None) -> None:
        if service is not None and service != self.issuer.service:
            raise RegistryError("DENIED", f"this token service issues tokens for {self.issuer.service!r}")

    async def _get(self, request: Request) -> Response:
        self._check_service(request.param("service"))
        user = None
        header = request.headers.get("authorization")
        if header is not None:
            user = await self._basic_login(request, header)
        scopes = [s for value in request.query.get("scope", []) for s in value.split(" ") if s]
        offline = request.param("offline_token") == "true" and user is not None
        return self._answer(user, scopes, refresh=offline)

    async def _basic_login(self, request: Request, header: str) -> str:
        scheme, _, value = header.strip().partition(" ")
        try:
            if scheme.lower() != "basic" or len(header) > MAX_AUTHORIZATION_LENGTH:
                raise AuthenticationFailed("the token endpoint takes Basic credentials")
            user, password = basic_credentials(value)
            await self.authenticator.login(user, password, request.client_key)
        except AuthenticationFailed as exc:
            raise RegistryError("UNAUTHORIZED", str(exc), headers=[self._basic_challenge()]) from None
        return user

    def _basic_challenge(self) -> tuple[str, str]:
        return ("www-authenticate", f'Basic realm="{self.issuer.service}"')

    async def _post(self, request: Request) -> Response:
        try:
            form = parse_qs((await request.body(_MAX_FORM)).decode("utf-8"), keep_blank_values=True)
        except (BodyTooLarge, UnicodeDecodeError):
            return _oauth_error("invalid_request", "the form is not readable or too large")
        field = {name: values[0] for name, values in form.items()}
        self._check_service(field.get("service"))
        grant = field.get("grant_type")
        if grant == "password":
            user, password = field.get("username", ""), field.get("password", "")
            if not user:
                return _oauth_error("invalid_request", "username is missing")
            try:
                await self.authenticator.login(user, password, request.client_key)
            except AuthenticationFailed as exc:
                return _oauth_error("invalid_grant", str(exc))
        elif grant == "refresh_token":
            try:
                user, credential = self.issuer.verifier.refresh_subject(field.get("refresh_token", ""))
            except InvalidToken as exc:
                return _oauth_error("invalid_grant", f"refresh token refused: {exc}")
            current = self._credential(user)
            if current is None:
                return _oauth_error("invalid_grant", "the refresh token's user no longer exists")
            if not hmac.compare_digest(current, credential):
                return _oauth_error("invalid_grant", "the password changed since this refresh token")
        else:
            return _oauth_error("unsupported_grant_type", "grant_type must be password or refresh_token")
        scopes = field.get("scope", "").split()
        return self._answer(
            user, scopes, refresh=field.get("access_type") == "offline" or grant == "refresh_token"
        )

    def _answer(self, user: str | None, scopes: list[str], *, refresh: bool) -> Response:
        access = self._grant(user, scopes[:_MAX_SCOPES])
        token = self.issuer.access_token(user, access)
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": self.issuer.lifetime,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "scope": " ".join(f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access),
        }
        if refresh and user is not None and (credential := self._credential(user)) is not None:
            body["refresh_token"] = self.issuer.refresh_token(user, credential)
        return Response.json(body, headers=[("cache-control", "no-store"), ("pragma", "no-cache")])

    def _credential(self, user: str) -> str | None:
        htpasswd = self.authenticator.htpasswd
        return None if htpasswd is None else htpasswd.fingerprint(user)

    def _grant(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        granted: dict[tuple[str, str], list[str]] = {}
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            kind = kind.partition("(")[0]  # "repository(plugin)" is a repository too
            wanted = actions.split(",")
            if kind == "registry" and name == "catalog" and "*" in wanted:
                granted[("registry", "catalog")] = ["*"]
            elif kind == "repository" and is_valid_repository(name):
                have = granted.setdefault(("repository", name), [])
                for action in _REPOSITORY_ACTIONS:
                    if (
                        (action in wanted or "*" in wanted)
                        and action not in have
                        and self.access.permits(user, name, action)
                    ):
                        have.append(action)
        return [{"type": k, "name": n, "actions": a} for (k, n), a in granted.items() if a]
