"""Attestation tokens (ES256 JWTs signed by the broker) and the per-request proof of possession.

A token names the attested TEE public key (`cnf.jkt` + the JWK). Every request that uses it carries a
`KBS-PoP` header: a JWS over (method, path, token hash, body hash, time, id) signed by that same key,
so a token copied off the wire is useless without the enclave's private key.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from keybroker.crypto import b64url, canonical_json, public_jwk, sha256_hex
from keybroker.sessions import ReplayCache
from wire.pop import POP_HEADER, POP_TYPE

POP_WINDOW_S = 120


@dataclass
class TokenRejected(Exception):
    """Why a bearer token or its proof of possession was refused."""

    slug: str
    reason: str
    field: str | None = None
    expected: Any = None
    actual: Any = None

    def __str__(self) -> str:
        return self.reason


class TokenIssuer:
    """Issues and checks the broker's attestation tokens."""

    def __init__(self, signing_key: ECKey, issuer: str, ttl_s: int) -> None:
        self._key = signing_key
        self._issuer = issuer
        self._ttl = ttl_s
        self._replay = ReplayCache(POP_WINDOW_S * 2)

    def public_jwk(self) -> dict[str, Any]:
        """The verification key of tokens and log checkpoints."""
        return {**self._key.as_dict(private=False), "alg": "ES256", "use": "sig", "kid": self._key.thumbprint()}

    def sign(self, payload: dict[str, Any], typ: str = "JWT") -> str:
        """Sign arbitrary claims with the broker key (tokens, decision-log checkpoints)."""
        return jwt.encode({"alg": "ES256", "typ": typ, "kid": self._key.thumbprint()}, payload, self._key,
                          algorithms=["ES256"])

    def issue(self, claims: dict[str, Any], tee_pubkey: dict[str, Any],
              receipt_pubkey: dict[str, Any]) -> tuple[str, int]:
        """A token bound to `tee_pubkey`, carrying the appraised claims; returns (token, exp)."""
        now = int(time.time())
        exp = now + self._ttl
        payload = {
            "iss": self._issuer, "iat": now, "exp": exp, "jti": secrets.token_urlsafe(12),
            "cnf": {"jkt": public_jwk(tee_pubkey).thumbprint()},
            "tee_pubkey": tee_pubkey, "receipt_pubkey": receipt_pubkey,
            "claims": claims, "claims_digest": sha256_hex(canonical_json(claims)),
        }
        return self.sign(payload), exp

    def check(self, token: str | None) -> dict[str, Any]:
        """Verify signature, issuer and expiry; returns the payload."""
        if not token:
            raise TokenRejected("token-missing", "no attestation token: send 'Authorization: Bearer <token>' "
                                "obtained from /kbs/v0/attest", "Authorization", "Bearer <token>", None)
        try:
            payload = jwt.decode(token, self._key, algorithms=["ES256"]).claims
        except (JoseError, ValueError) as exc:
            raise TokenRejected("token-invalid", f"attestation token is not one this broker signed: {exc}",
                                "Authorization") from exc
        if payload.get("iss") != self._issuer:
            raise TokenRejected("token-invalid", "token issued by another broker", "iss", self._issuer,
                                payload.get("iss"))
        now = int(time.time())
        if int(payload.get("exp", 0)) <= now:
            raise TokenRejected("token-expired", "attestation token expired; attest again", "exp",
                                f"> {now}", payload.get("exp"))
        return payload

    def check_pop(self, payload: dict[str, Any], token: str, pop: str | None, method: str, path: str,
                  body: bytes) -> None:
        """The request must be signed by the private half of the token's tee_pubkey."""
        if not pop:
            raise TokenRejected("pop-missing", f"missing {POP_HEADER} header (proof of possession of the "
                                "attested tee key)", POP_HEADER)
        try:
            key = public_jwk(payload["tee_pubkey"])
            proof = jwt.decode(pop, key, algorithms=["ES256"])
        except (JoseError, ValueError, KeyError) as exc:
            raise TokenRejected("pop-key-mismatch", "the request is not signed by the tee key this token was "
                                "issued to", "tee_pubkey", payload.get("cnf", {}).get("jkt"), None) from exc
        if proof.header.get("typ") != POP_TYPE:  # a JWS the tee key signed for another purpose is not a proof
            raise TokenRejected("pop-invalid", f"the {POP_HEADER} header is not typed as a proof of possession",
                                f"{POP_HEADER}.typ", POP_TYPE, proof.header.get("typ"))
        claims = proof.claims
        expected = {"htm": method, "htu": path, "ath": b64url(hashlib.sha256(token.encode()).digest()),
                    "bh": b64url(hashlib.sha256(body).digest())}
        for name, value in expected.items():
            if claims.get(name) != value:
                raise TokenRejected("pop-invalid", f"proof of possession does not cover this request ({name})",
                                    f"{POP_HEADER}.{name}", value, claims.get(name))
        if abs(time.time() - float(claims.get("iat", 0))) > POP_WINDOW_S:
            raise TokenRejected("pop-invalid", "proof of possession is stale or from the future; check clocks",
                                f"{POP_HEADER}.iat", f"within {POP_WINDOW_S} s of now", claims.get("iat"))
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:  # without an id the replay cache cannot tell two uses apart
            raise TokenRejected("pop-invalid", "proof of possession has no jti (a unique id per request)",
                                f"{POP_HEADER}.jti", "a non-empty string", jti)
        if not self._replay.first_use(jti):
            raise TokenRejected("pop-replayed", "proof of possession already used; sign each request anew",
                                f"{POP_HEADER}.jti")
