"""Symmetric primitives of the broker: sealing under the KEK, the wrapped-key format, JOSE helpers."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwe
from joserfc.jwk import ECKey, RSAKey, import_key

NONCE_LEN = 12
WRAP_MAGIC = b"KBW2"  # versioned wrapped-key format (master key rotated at least once)
HEADER_LEN = len(WRAP_MAGIC) + 4
VERSIONED_MIN = HEADER_LEN + NONCE_LEN + 16
# Key-management algorithms a TEE (or admin) public key may ask for; enc is always A256GCM.
JWE_ALGS = {"EC": "ECDH-ES+A256KW", "RSA": "RSA-OAEP-256"}
JWE_ALLOWED = ["ECDH-ES+A256KW", "RSA-OAEP-256", "A256GCM"]


class UnwrapError(ValueError):
    """The wrapped bytes do not decrypt under this key (wrong key_id, tampered, or truncated)."""


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON (sorted keys, no spaces, UTF-8) as fixed in ARCHITECTURE.md."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


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


def wrap_key(master_key: bytes, key_id: str, key: bytes, version: int = 1) -> bytes:
    """Wrap `key` under one version of a master key.

    Version 1 (a key never rotated): 12-byte nonce || AES-256-GCM(master, key, AAD=key_id), the
    original format, so blobs written before rotation existed stay byte-compatible.
    Version n >= 2: "KBW2" || n (4 bytes, big-endian) || nonce || AES-256-GCM(master_n, key,
    AAD=header || key_id); the header names the version to unwrap with and is authenticated.
    """
    nonce = os.urandom(NONCE_LEN)
    if version == 1:
        return nonce + AESGCM(master_key).encrypt(nonce, key, key_id.encode())
    header = WRAP_MAGIC + version.to_bytes(4, "big")
    return header + nonce + AESGCM(master_key).encrypt(nonce, key, header + key_id.encode())


def wrapped_version(wrapped: bytes) -> int:
    """The master-key version a wrapped blob names (1 for the original, unversioned format)."""
    if len(wrapped) >= VERSIONED_MIN and wrapped.startswith(WRAP_MAGIC):
        return int.from_bytes(wrapped[len(WRAP_MAGIC):HEADER_LEN], "big")
    return 1


def unwrap_key(master_key: bytes, key_id: str, wrapped: bytes, version: int = 1) -> bytes:
    """Reverse of `wrap_key` for that version; raises UnwrapError when authentication fails."""
    if version != 1:
        header, body = wrapped[:HEADER_LEN], wrapped[HEADER_LEN:]
        aad = header + key_id.encode()
    else:
        body, aad = wrapped, key_id.encode()
    if len(body) < NONCE_LEN + 16:
        raise UnwrapError(f"wrapped key is {len(wrapped)} bytes, shorter than its header, nonce and tag")
    try:
        return AESGCM(master_key).decrypt(body[:NONCE_LEN], body[NONCE_LEN:], aad)
    except InvalidTag as exc:
        raise UnwrapError(f"wrapped key does not authenticate under key '{key_id}' version {version}") from exc


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
