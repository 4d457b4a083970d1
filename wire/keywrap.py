"""The wrapped-key format of the key brokers, shared with the enclave (which wraps result keys locally).

Version 1 (a key never rotated): 12-byte nonce || AES-256-GCM(master, key, AAD=key_id).
Version n >= 2: "KBW2" || n (4 bytes, big-endian) || nonce || AES-256-GCM(master_n, key, AAD=header || key_id);
the header names the version to unwrap with and is authenticated. No key lives here: callers pass them.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_LEN = 12
WRAP_MAGIC = b"KBW2"
HEADER_LEN = len(WRAP_MAGIC) + 4
VERSIONED_MIN = HEADER_LEN + NONCE_LEN + 16


class UnwrapError(ValueError):
    """The wrapped bytes do not decrypt under this key (wrong key_id, tampered, or truncated)."""


def wrap_key(master_key: bytes, key_id: str, key: bytes, version: int = 1) -> bytes:
    """Wrap `key` under one version of a master key (format in the module docstring)."""
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
