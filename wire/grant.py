"""The model grant: an owner broker's signed word that one attested worker may score one batch with one model.

The provider's broker releases a model key only against such a grant from an owner broker registered with
it, every batch afresh (DESIGN §4). The owner broker issues it to an attested worker session after checking
its own batch grant (model, measurements, configuration digests); the grant names the worker's attested
key, so it is useless to anyone but that session.

Compact JWS, ES256, header `typ` `cscore-model-grant+jws`, `kid` = RFC 7638 thumbprint of the signing key.
Payload (`cscore.model-grant/v1`)::

    {"type", "issuer": owner broker name, "batch_id", "model_digest": "sha256:<hex>",
     "measurement": hex, "config_digest": hex (32 bytes), "tee_key": RFC 7638 thumbprint, "rows": int,
     "issued_at": epoch s, "expires_at": epoch s}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from wire.canonical import canonical_json
from wire.errors import FormatError, require, typed_document

GRANT_TYPE = "cscore.model-grant/v1"
GRANT_TYP = "cscore-model-grant+jws"
GRANT_TTL_S = 600  # long enough for a batch's first shard on every worker; each batch asks afresh
_FIELDS = {"type", "issuer", "batch_id", "model_digest", "measurement", "config_digest", "tee_key", "rows",
           "issued_at", "expires_at"}


@dataclass(frozen=True)
class ModelGrant:
    """One batch, one model, one attested worker key (see the module docstring)."""

    issuer: str
    batch_id: str
    model_digest: str
    measurement: str
    config_digest: str
    tee_key: str
    rows: int
    issued_at: int
    expires_at: int

    def to_json(self) -> dict[str, Any]:
        return {"type": GRANT_TYPE, **asdict(self)}

    @classmethod
    def parse(cls, doc: Any) -> ModelGrant:
        """Strict parse; FormatError names the field."""
        doc = typed_document(doc, "model_grant", GRANT_TYPE, _FIELDS)
        text = {name: require(doc, name, str, where="model_grant")
                for name in ("issuer", "batch_id", "model_digest", "measurement", "config_digest", "tee_key")}
        numbers = {name: require(doc, name, int, where="model_grant") for name in ("rows", "issued_at", "expires_at")}
        if numbers["rows"] < 1:  # metered against the provider's quota: a negative count would give it back
            raise FormatError("model_grant.rows", "at least 1", numbers["rows"])
        return cls(**text, **numbers)


def sign_grant(grant: ModelGrant, key: ECKey) -> str:
    """Compact JWS of the grant by the owner broker's grant key (ES256)."""
    header = {"alg": "ES256", "typ": GRANT_TYP, "kid": key.thumbprint()}
    return jws.serialize_compact(header, canonical_json(grant.to_json()), key, algorithms=["ES256"])


def verify_grant(token: str, issuers: dict[str, dict[str, Any]], *, now: float) -> ModelGrant:
    """Verify a grant against registered owner brokers (`name -> public JWK`), then its expiry.

    Raises FormatError: `model_grant.kid` when no registered issuer has the signing key,
    `model_grant.signature`, `model_grant.issuer` when the payload names another issuer than the key's,
    `model_grant.expires_at` when expired.
    """
    try:
        header = jws.extract_compact(token.encode()).protected
    except (JoseError, ValueError) as exc:
        raise FormatError("model_grant", "a compact JWS", f"{type(exc).__name__}") from exc
    if header.get("typ") != GRANT_TYP or header.get("alg") != "ES256":
        raise FormatError("model_grant.header", f"alg ES256, typ {GRANT_TYP}", header)
    by_kid = {ECKey.import_key(jwk).thumbprint(): (name, jwk) for name, jwk in issuers.items()}
    if header.get("kid") not in by_kid:
        raise FormatError("model_grant.kid", f"the key of a registered owner broker {sorted(issuers)}",
                          header.get("kid"), "the provider registers each owner broker's grant key")
    name, jwk = by_kid[header["kid"]]
    try:
        signed = jws.deserialize_compact(token, ECKey.import_key(jwk), algorithms=["ES256"])
        grant = ModelGrant.parse(json.loads(signed.payload))
    except (JoseError, ValueError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError("model_grant.signature", f"a valid ES256 signature by owner broker '{name}'",
                          type(exc).__name__) from exc
    if grant.issuer != name:
        raise FormatError("model_grant.issuer", name, grant.issuer, "the key belongs to another owner broker")
    if grant.expires_at <= now:
        raise FormatError("model_grant.expires_at", f"> {int(now)}", grant.expires_at, "ask the owner broker again")
    return grant
