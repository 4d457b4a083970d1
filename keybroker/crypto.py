"""Symmetric primitives of the broker: sealing under the KEK, the wrapped-key format, JOSE helpers."""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwe
from joserfc.jwk import ECKey, RSAKey, import_key

from wire.canonical import canonical_json, sha256_hex
from wire.keywrap import UnwrapError, unwrap_key, wrap_key, wrapped_version

__all__ = ["UnwrapError", "b64decode_any", "b64url", "canonical_json", "decrypt_from", "encrypt_to", "public_jwk",
           "seal", "sha256_hex", "unseal", "unwrap_key", "wrap_key", "wrapped_version"]

NONCE_LEN = 12
# Key-management algorithms a TEE (or admin) public key may ask for; enc is always A256GCM.
JWE_ALGS = {"EC": "ECDH-ES+A256KW", "RSA": "RSA-OAEP-256"}
JWE_ALLOWED = ["ECDH-ES+A256KW", "RSA-OAEP-256", "A256GCM"]


def b64url(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64decode_any(text: str) -> bytes:
    """Decode standard or url-safe base64, padded or not."""
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))


def seal(kek: bytes, plaintext: bytes, label: str) -> bytes:
    """Encrypt a secret for storage at rest; `label` (purpose + id) is bound as AAD."""
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(kek).encrypt(nonce, plaintext, label.encode())


def unseal(kek: bytes, sealed: bytes, label: str) -> bytes:
    """Reverse of `seal`; raises InvalidTag if the KEK or label is wrong."""
    return AESGCM(kek).decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], label.encode())


def public_jwk(jwk: dict[str, Any]) -> ECKey | RSAKey:
    """Import a public JWK a client sent; only EC P-256/P-384 and RSA >= 2048 bits are accepted."""
    if not isinstance(jwk, dict) or jwk.get("kty") not in JWE_ALGS:
        kty = jwk.get("kty") if isinstance(jwk, dict) else type(jwk).__name__
        raise ValueError(f"expected an EC or RSA public JWK, got kty={kty!r}")
    public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
    key = import_key(public)
    if isinstance(key, ECKey) and key.curve_name not in ("P-256", "P-384"):
        raise ValueError(f"EC curve {key.curve_name} not accepted (P-256 or P-384)")
    if isinstance(key, RSAKey) and key.raw_value.key_size < 2048:
        raise ValueError("RSA keys shorter than 2048 bits are not accepted")
    return key  # type: ignore[return-value]


def encrypt_to(jwk: dict[str, Any], plaintext: bytes) -> str:
    """Compact JWE (ECDH-ES+A256KW or RSA-OAEP-256, enc A256GCM) of `plaintext` to a public JWK."""
    key = public_jwk(jwk)
    header = {"alg": JWE_ALGS[jwk["kty"]], "enc": "A256GCM"}
    return jwe.encrypt_compact(header, plaintext, key, algorithms=JWE_ALLOWED)


def decrypt_from(private_key: ECKey | RSAKey, token: str) -> bytes:
    """Decrypt a compact JWE with one of the accepted algorithms."""
    return jwe.decrypt_compact(token, private_key, algorithms=JWE_ALLOWED).plaintext or b""
