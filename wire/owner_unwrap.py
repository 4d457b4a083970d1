"""The owner's own unwrap at its key broker: how a data owner's reader gets a key to decrypt its results.

One HTTPS call, authenticated by the owner's admin bearer token (no attestation: the owner's own machine):

    POST {broker}/admin/v0/unwrap
    Authorization: Bearer <admin token>
    {"key_id": str, "wrapped": base64 of a wire.keywrap blob, "recipient_jwk": {EC P-256 public JWK},
     "batch_id": str (optional: the batch being read, named in the broker's decision log)}
    200 -> {"jwe": compact JWE of the raw key to recipient_jwk, alg ECDH-ES+A256KW, enc A256GCM (RFC 7516/7518)}
    4xx/5xx -> RFC 9457 problem JSON ({"type", "title", "status", "detail", ...}); 401 for a wrong token.

The recipient key is fresh per call, so a key never crosses the wire in clear even inside TLS. Readers:
`sdk.broker_admin.BrokerAdmin.unwrap` (Python) and `sdk/spark/OwnerBrokerKmsClient.java` (Parquet-MR's
KmsClient, for Spark), whose constants tests/wire/test_owner_unwrap.py holds equal to these.
"""

from __future__ import annotations

from typing import Any

PATH = "/admin/v0/unwrap"
JWE_ALG = "ECDH-ES+A256KW"
JWE_ENC = "A256GCM"
JWE_ALGS = [JWE_ALG, JWE_ENC]  # joserfc's allow-list for decrypting the answer
RECIPIENT_CURVE = "P-256"
RESPONSE_FIELD = "jwe"


def request_body(
    key_id: str, wrapped_b64: str, recipient_jwk: dict[str, Any], batch_id: str | None = None
) -> dict[str, Any]:
    """The JSON body of an owner unwrap: `wrapped_b64` is standard base64 of the wrapped key, `recipient_jwk`
    the caller's ephemeral public key; `batch_id` is left out when None (the broker logs no batch)."""
    body: dict[str, Any] = {"key_id": key_id, "wrapped": wrapped_b64, "recipient_jwk": recipient_jwk}
    if batch_id:
        body["batch_id"] = batch_id
    return body
