"""Bearer tokens as distribution's token specification describes them: JWTs carrying the
issuer, subject, audience (the registry's service name), expiry, not-before and the granted
``access`` list.

A token's signature is verified once; its claims are then remembered under the token itself
until it expires, so a client reusing its token costs a dictionary lookup per request. The
verifier decides which key and algorithm apply from its own configuration, never from the
token: ``alg: none`` and HMAC algorithms are not in any list it accepts.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from .identity import Identity
from .keys import SigningKey, algorithm_for, key_id

__all__ = [
    "InvalidToken",
    "KeyResolver",
    "TokenIssuer",
    "TokenVerifier",
    "certificate_keys",
    "jwks_keys",
    "own_key",
]

#: Tokens longer than this are refused unread (an x5c chain of two certificates fits well).
MAX_TOKEN_LENGTH: Final = 16 * 1024
_MAX_CACHED: Final = 50_000
_RSA_ALGORITHMS: Final = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
_REFRESH: Final = "refresh"
#: The claim of a refresh token that binds it to the password it was issued for.
_CREDENTIAL: Final = "ocikit_credential"


class InvalidToken(Exception):
    """The token is not one this registry accepts; the message says why (never the token)."""


KeyResolver = Callable[[Mapping[str, Any]], PublicKeyTypes]
"""Given a token's unverified header, the public key that must have signed it."""


def _algorithms(key: PublicKeyTypes) -> list[str]:
    """The algorithms a token signed by ``key`` may use; a key of no usable kind (a short
    RSA key, another curve, a symmetric JWK) makes the token invalid, not the request fail."""
    try:
        algorithm = algorithm_for(key)
    except ValueError as exc:
        raise InvalidToken(str(exc)) from None
    return _RSA_ALGORITHMS if isinstance(key, rsa.RSAPublicKey) else [algorithm]


def _libtrust_key_id(key: PublicKeyTypes) -> str:
    """The key ID Docker's libtrust (and so docker_auth) puts in ``kid``."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii")
    return ":".join(text[i : i + 4] for i in range(0, 48, 4))


def own_key(public: PublicKeyTypes) -> KeyResolver:
    """Tokens this registry signed itself."""

    def resolve(header: Mapping[str, Any]) -> PublicKeyTypes:
        return public

    return resolve


def certificate_keys(path: str | os.PathLike[str]) -> KeyResolver:
    """Trust a PEM bundle, as distribution's ``rootcertbundle``: a token whose ``x5c`` leaf is
    one of these certificates or was issued directly by one, or whose ``kid`` names the key
    of one of them."""
    trusted = x509.load_pem_x509_certificates(Path(path).read_bytes())
    by_id: dict[str, PublicKeyTypes] = {}
    for cert in trusted:
        public = cert.public_key()
        by_id[key_id(public)] = by_id[_libtrust_key_id(public)] = public

    def resolve(header: Mapping[str, Any]) -> PublicKeyTypes:
        chain = header.get("x5c")
        if isinstance(chain, list) and chain and isinstance(chain[0], str):
            try:
                leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
            except ValueError:
                raise InvalidToken("the x5c certificate cannot be read") from None
            if _trusted_leaf(leaf, trusted):
                return leaf.public_key()
            raise InvalidToken("the x5c certificate is not trusted")
        kid = header.get("kid")
        if isinstance(kid, str) and kid in by_id:
            return by_id[kid]
        if kid is None and len(trusted) == 1:
            return trusted[0].public_key()
        raise InvalidToken("no trusted key for this token")

    return resolve


def _trusted_leaf(leaf: x509.Certificate, trusted: list[x509.Certificate]) -> bool:
    now = time.time()
    if not leaf.not_valid_before_utc.timestamp() <= now <= leaf.not_valid_after_utc.timestamp():
        return False
    for anchor in trusted:
        if leaf == anchor:
            return True
        try:
            leaf.verify_directly_issued_by(anchor)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return True
    return False


def jwks_keys(path: str | os.PathLike[str]) -> KeyResolver:
    """Trust the keys of a JWK Set file, chosen by ``kid``."""
    keys = jwt.PyJWKSet.from_json(Path(path).read_text())
    for jwk in keys.keys:  # a key no token could be checked with is the operator's mistake: say so now
        try:
            algorithm_for(jwk.key)
        except ValueError as exc:
            raise ValueError(f"{path}: key {jwk.key_id or '(without kid)'}: {exc}") from None
    by_id = {k.key_id: k.key for k in keys.keys if k.key_id}

    def resolve(header: Mapping[str, Any]) -> PublicKeyTypes:
        kid = header.get("kid")
        if isinstance(kid, str) and kid in by_id:
            return by_id[kid]  # type: ignore[no-any-return]
        if kid is None and len(keys.keys) == 1:
            return keys.keys[0].key  # type: ignore[no-any-return]
        raise InvalidToken("no key in the JWK Set matches this token")

    return resolve


def _grants(claim: Any) -> dict[str, frozenset[str]]:
    if claim is None:
        return {}
    if not isinstance(claim, list):
        raise InvalidToken("the access claim is not a list")
    grants: dict[str, set[str]] = {}
    for entry in claim:
        if not isinstance(entry, dict):
            raise InvalidToken("an access entry is not an object")
        kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
        if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise InvalidToken("an access entry lacks type, name or actions")
        grants.setdefault(f"{kind}:{name}", set()).update(a for a in actions if isinstance(a, str))
    return {resource: frozenset(actions) for resource, actions in grants.items()}


@dataclass(frozen=True, slots=True)
class _Verified:
    expires: float
    identity: Identity


class TokenVerifier:
    """Checks bearer tokens for one service (audience) from one issuer."""

    def __init__(self, keys: KeyResolver, *, issuer: str, service: str, leeway: float = 30) -> None:
        self._keys = keys
        self.issuer = issuer
        self.service = service
        self._leeway = leeway
        self._verified: dict[str, _Verified] = {}

    def identify(self, token: str) -> Identity:
        known = self._verified.get(token)
        if known is not None:
            if known.expires + self._leeway > time.time():
                return known.identity
            del self._verified[token]
        claims = self._decode(token)
        if claims.get("token_use") == _REFRESH:
            raise InvalidToken("a refresh token is not an access token")
        subject = claims.get("sub")
        identity = Identity(
            user=subject if isinstance(subject, str) and subject else None,
            grants=_grants(claims.get("access")),
            via="token",
        )
        if len(self._verified) >= _MAX_CACHED:
            self._verified.clear()
        self._verified[token] = _Verified(float(claims["exp"]), identity)
        return identity

    def _decode(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("the token is too long")
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys(header)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,  # type: ignore[arg-type]
                algorithms=_algorithms(key),
                audience=self.service,
                issuer=self.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        return claims

    def refresh_subject(self, token: str) -> tuple[str, str]:
        """The user a refresh token was issued to, and the fingerprint of the password it was
        issued for."""
        claims = self._decode(token)
        subject, credential = claims.get("sub"), claims.get(_CREDENTIAL)
        if claims.get("token_use") != _REFRESH or not isinstance(subject, str) or not subject:
            raise InvalidToken("not a refresh token")
        if not isinstance(credential, str):
            raise InvalidToken("the refresh token names no credential")
        return subject, credential


class TokenIssuer:
    """Signs access tokens (short-lived) and refresh tokens (long-lived, no grants)."""

    def __init__(
        self, key: SigningKey, *, issuer: str, service: str, lifetime: int, refresh_lifetime: int
    ) -> None:
        self._key = key
        public = key.public_key()
        self._headers = {"kid": key_id(public), "typ": "JWT"}
        self._algorithm = algorithm_for(key)
        self.issuer = issuer
        self.service = service
        self.lifetime = lifetime
        self.refresh_lifetime = refresh_lifetime
        self.verifier = TokenVerifier(own_key(public), issuer=issuer, service=service)

    def _sign(self, claims: dict[str, Any], lifetime: int) -> str:
        now = int(time.time())
        claims |= {
            "iss": self.issuer,
            "aud": self.service,
            "iat": now,
            "nbf": now - 1,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(16),
        }
        return jwt.encode(claims, self._key, algorithm=self._algorithm, headers=self._headers)

    def access_token(self, user: str | None, access: list[dict[str, Any]]) -> str:
        return self._sign({"sub": user or "", "access": access}, self.lifetime)

    def refresh_token(self, user: str, credential: str) -> str:
        """Security decision: bound to ``credential``, the fingerprint of the user's password,
        so that changing a password ends every refresh token issued before."""
        claims = {"sub": user, "token_use": _REFRESH, _CREDENTIAL: credential}
        return self._sign(claims, self.refresh_lifetime)
