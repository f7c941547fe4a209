"""Access control assembled from the registry's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..hooks import Action
from ..settings import Settings
from .access import AccessControl, CertificateHeader, CredentialAuthenticator, Permits
from .endpoint import TokenEndpoint
from .htpasswd import HtpasswdFile
from .keys import load_or_create_key, load_signing_key
from .limits import TokenBuckets
from .policy import PolicyFile
from .tokens import TokenIssuer, TokenVerifier, certificate_keys, jwks_keys

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
    issuer, verifier = None, None
    service = settings.token_service or "ocikit"
    if external:
        keys = (
            certificate_keys(settings.token_certs) if settings.token_certs else jwks_keys(settings.token_jwks)
        )
        verifier = TokenVerifier(keys, issuer=settings.token_issuer, service=service)
    elif htpasswd is not None:
        key_path = settings.token_key or str(Path(settings.root) / KEY_FILE)
        key = load_signing_key(key_path) if settings.token_key else load_or_create_key(Path(key_path))
        issuer = TokenIssuer(
            key,
            issuer=settings.token_issuer or "ocikit",
            service=service,
            lifetime=settings.token_lifetime,
            refresh_lifetime=_REFRESH_LIFETIME,
        )
        verifier = issuer.verifier
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
    endpoint = TokenEndpoint(issuer, authenticator, access) if issuer is not None else None
    return Configured(access, endpoint)
