"""Signed JSON documents (compact JWS, Ed25519): receipts here, manifests and model cards client side."""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from wire.canonical import canonical_json

__all__ = ["SignatureError", "canonical_json", "generate_signing_key", "sign_json", "unverified_payload",
           "verify_json"]

ALGORITHM = "Ed25519"  # RFC 9864 name; "EdDSA" is deprecated


class SignatureError(ValueError):
    """A signed document did not verify."""


def generate_signing_key() -> OKPKey:
    # the key's type fixes the curve and its privacy, not arguments joserfc would default the same way
    return OKPKey.import_key(Ed25519PrivateKey.generate())


def sign_json(payload: dict[str, Any], key: OKPKey) -> str:
    """Sign `payload` as compact JWS with the signer's key thumbprint as `kid`."""
    header = {"alg": ALGORITHM, "kid": key.thumbprint()}
    return jws.serialize_compact(header, canonical_json(payload), key, algorithms=[ALGORITHM])


def verify_json(token: str, public_key: OKPKey | dict[str, Any], *, what: str) -> dict[str, Any]:
    """Verify a compact JWS and return its JSON payload; `what` names the document in errors."""
    key = public_key if isinstance(public_key, OKPKey) else OKPKey.import_key(public_key)
    try:
        obj = jws.deserialize_compact(token.strip(), key, algorithms=[ALGORITHM])
    except (JoseError, ValueError) as exc:
        raise SignatureError(
            f"{what}.signature: expected a valid {ALGORITHM} signature by key {key.thumbprint()}, "
            f"got {type(exc).__name__}: {exc}"
        ) from exc
    try:
        payload = json.loads(obj.payload)
    except ValueError as exc:
        raise SignatureError(f"{what}.payload: expected JSON, got undecodable bytes") from exc
    if not isinstance(payload, dict):
        raise SignatureError(f"{what}.payload: expected a JSON object, got {type(payload).__name__}")
    return payload


def unverified_payload(token: str, *, what: str) -> dict[str, Any]:
    """The payload of a compact JWS without checking it: only to find which key must verify it."""
    try:
        obj = jws.extract_compact(token.strip().encode())
        payload = json.loads(obj.payload)
    except (JoseError, ValueError) as exc:
        raise SignatureError(f"{what}: expected a compact JWS, got {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict):
        raise SignatureError(f"{what}.payload: expected a JSON object, got {type(payload).__name__}")
    return payload
