"""Signing keys: loaded from a PEM file, or generated once into the data folder.

Several worker processes start at the same moment and each may find no key: each writes a
fresh key to a private temporary file and hard-links it into place; ``link`` fails if the
name exists, so exactly one key wins and every worker then reads that one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

__all__ = ["SigningKey", "algorithm_for", "key_id", "load_or_create_key", "load_signing_key"]

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


_EC_ALGORITHMS: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def algorithm_for(key: PublicKeyTypes | PrivateKeyTypes) -> str:
    """The one JWS algorithm a key may sign or verify with (never chosen by the token)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise ValueError(f"unsupported elliptic curve {key.curve.name}")
        return algorithm
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError("RSA keys shorter than 2048 bits are refused")
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError(f"unsupported key type {type(key).__name__}")


def _public_jwk(key: PublicKeyTypes) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(key, as_dict=True)
    if isinstance(key, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(key, as_dict=True)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return OKPAlgorithm.to_jwk(key, as_dict=True)
    raise ValueError(f"unsupported key type {type(key).__name__}")


def key_id(key: PublicKeyTypes) -> str:
    """The RFC 7638 thumbprint of the public key: stable, and the same on every worker."""
    jwk = _public_jwk(key)
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def public_jwks(key: SigningKey) -> dict[str, Any]:
    """The verification key as a JWK Set, for a verifier elsewhere (``--token-jwks``)."""
    public = key.public_key()
    jwk = _public_jwk(public) | {"kid": key_id(public), "alg": algorithm_for(public), "use": "sig"}
    return {"keys": [jwk]}


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, SigningKey):
        raise ValueError(f"{path}: not an EC, RSA or Ed25519 private key")
    algorithm_for(key)
    return key


def load_or_create_key(path: Path) -> SigningKey:
    """The key at ``path``, made (ES256, P-256) by whichever process gets there first."""
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as sink:
                sink.write(pem)
                sink.flush()
                os.fsync(sink.fileno())
            with contextlib.suppress(FileExistsError):  # another worker's key won
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return load_signing_key(path)
