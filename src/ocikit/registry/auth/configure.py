"""Access control assembled from the registry's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..hooks import Action
from ..settings import Settings
from .access import AccessControl, CertificateHeader, CredentialAuthenticator, Permits
from .htpasswd import HtpasswdFile
from .limits import TokenBuckets
from .policy import PolicyFile

if TYPE_CHECKING:
    from .endpoint import TokenEndpoint
    from .tokens import TokenIssuer, TokenVerifier

__all__ = ["Configured", "access_from_settings", "signed_in_users_only"]

#: The key the registry signs its tokens with unless ``--token-key`` names one.
KEY_FILE: Final = "token-key.pem"
_REFRESH_LIFETIME: Final = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Configured:
    access: AccessControl
    token_endpoint: TokenEndpoint | None


def signed_in_users_only(user: str | None, repository: str, action: Action) -> bool:
    """The decision without a policy file: signed-in users may do everything, anonymous
    callers nothing."""
    return user is not None


def _everyone(user: str | None, repository: str, action: Action) -> bool:
    return True


def access_from_settings(settings: Settings) -> Configured | None:
    """None when the settings ask for no access control at all (the open registry)."""
    external = bool(settings.token_certs or settings.token_jwks)
    htpasswd = HtpasswdFile(settings.htpasswd) if settings.htpasswd else None
    certificate = (
        CertificateHeader(settings.client_cert_header, settings.client_cert_proxies)
        if settings.client_cert_header
        else None
    )
    signs_in = external or htpasswd is not None or certificate is not None
    limited = settings.rate_limit_user > 0 or settings.rate_limit_address > 0
    if not (signs_in or settings.policy or limited):
        return None
    service = settings.token_service or "ocikit"
    issuer, verifier = _tokens(settings, service, external=external, issues=htpasswd is not None)
    permits: Permits = (
        PolicyFile(settings.policy) if settings.policy else signed_in_users_only if signs_in else _everyone
    )
    authenticator = CredentialAuthenticator(htpasswd=htpasswd, verifier=verifier, certificate=certificate)
    burst = settings.rate_limit_burst
    access = AccessControl(
        authenticate=authenticator,
        permits=permits,
        service=service,
        realm=settings.token_realm or None,
        open_base=not signs_in,
        user_limits=TokenBuckets(settings.rate_limit_user, burst) if settings.rate_limit_user else None,
        address_limits=TokenBuckets(settings.rate_limit_address, burst)
        if settings.rate_limit_address
        else None,
    )
    if issuer is None:
        return Configured(access, None)
    from .endpoint import TokenEndpoint

    return Configured(access, TokenEndpoint(issuer, authenticator, access))


def _tokens(
    settings: Settings, service: str, *, external: bool, issues: bool
) -> tuple[TokenIssuer | None, TokenVerifier | None]:
    """The token issuer (tokens signed here for htpasswd users) and the verifier (of tokens
    signed here or by an external token server), if any. PyJWT and cryptography are imported
    only here: a registry without tokens never loads them (about 10 MB per worker)."""
    if not (external or issues):
        return None, None
    from .keys import load_or_create_key, load_signing_key
    from .tokens import TokenIssuer, TokenVerifier, certificate_keys, jwks_keys

    if external:
        certs, jwks = settings.token_certs, settings.token_jwks
        keys = certificate_keys(certs) if certs else jwks_keys(jwks)
        return None, TokenVerifier(keys, issuer=settings.token_issuer, service=service)
    key_path = settings.token_key or str(Path(settings.root) / KEY_FILE)
    key = load_signing_key(key_path) if settings.token_key else load_or_create_key(Path(key_path))
    issuer = TokenIssuer(
        key,
        issuer=settings.token_issuer or "ocikit",
        service=service,
        lifetime=settings.token_lifetime,
        refresh_lifetime=_REFRESH_LIFETIME,
    )
    return issuer, issuer.verifier
