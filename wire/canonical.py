"""The one byte encoding of a JSON value that every party hashes and signs: RFC 8785 (JCS)."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON of `value` (UTF-8 bytes); raises `rfc8785.CanonicalizationError` subclasses
    for values JSON cannot carry exactly (NaN, integers beyond 2**53)."""
    return rfc8785.dumps(value)


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def digest_json(value: Any) -> str:
    """Hex SHA-256 of the canonical JSON of `value`: how documents are named by digest."""
    return sha256_hex(canonical_json(value))
