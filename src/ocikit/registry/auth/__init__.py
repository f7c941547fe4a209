"""Authentication and authorisation for the registry: users from an htpasswd file, bearer
tokens (issued here or by an external token server), a first-match policy, rate limits.

An application embedding the registry can keep the token flow and replace either half::

    from ocikit.registry import create_app
    from ocikit.registry.auth import AccessControl, CredentialAuthenticator, Identity

    async def from_my_sso(request) -> Identity: ...
    def my_rules(user, repository, action) -> bool: ...

    app = create_app(settings, authorize=AccessControl(
        authenticate=from_my_sso, permits=my_rules, service="registry.example"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..._lazy import lazy_attributes

if TYPE_CHECKING:
    from .access import (
        USER_SCOPE_KEY,
        AccessControl,
        AuthenticationFailed,
        Authenticator,
        CredentialAuthenticator,
        Permits,
    )
    from .configure import Configured, access_from_settings, signed_in_users_only
    from .endpoint import TokenEndpoint
    from .htpasswd import HtpasswdFile
    from .identity import Identity
    from .limits import LoginThrottle, TokenBuckets
    from .policy import Policy, PolicyFile, parse_policy
    from .tokens import InvalidToken, TokenIssuer, TokenVerifier, certificate_keys, jwks_keys

__all__ = [
    "USER_SCOPE_KEY",
    "AccessControl",
    "AuthenticationFailed",
    "Authenticator",
    "Configured",
    "CredentialAuthenticator",
    "HtpasswdFile",
    "Identity",
    "InvalidToken",
    "LoginThrottle",
    "Permits",
    "Policy",
    "PolicyFile",
    "TokenBuckets",
    "TokenEndpoint",
    "TokenIssuer",
    "TokenVerifier",
    "access_from_settings",
    "certificate_keys",
    "jwks_keys",
    "parse_policy",
    "signed_in_users_only",
]

#: Where each name lives; imported on first use, so that a registry without tokens never loads
#: the token modules (PyJWT, cryptography).
_HOMES = {
    "USER_SCOPE_KEY": "access",
    "AccessControl": "access",
    "AuthenticationFailed": "access",
    "Authenticator": "access",
    "CredentialAuthenticator": "access",
    "Permits": "access",
    "Configured": "configure",
    "access_from_settings": "configure",
    "signed_in_users_only": "configure",
    "TokenEndpoint": "endpoint",
    "HtpasswdFile": "htpasswd",
    "Identity": "identity",
    "LoginThrottle": "limits",
    "TokenBuckets": "limits",
    "Policy": "policy",
    "PolicyFile": "policy",
    "parse_policy": "policy",
    "InvalidToken": "tokens",
    "TokenIssuer": "tokens",
    "TokenVerifier": "tokens",
    "certificate_keys": "tokens",
    "jwks_keys": "tokens",
}


__getattr__ = lazy_attributes(__name__, _HOMES)
