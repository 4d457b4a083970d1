"""Request and response bodies of the broker's HTTP API (they also make its OpenAPI document)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keybroker.config import check_chip_ids, check_min_tcb

KEY_ID = r"^[A-Za-z0-9._:-]{1,128}$"
BATCH_ID = r"^[A-Za-z0-9._:/-]{1,256}$"
HEX_MEASUREMENT = r"^[0-9a-fA-F]{64,128}$"
B64 = r"^[A-Za-z0-9+/_=-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _lower(values: list[str] | None) -> list[str] | None:
    """Measurements are compared as lower-case hex."""
    if values is None:
        return None
    bad = [v for v in values if not re.fullmatch(HEX_MEASUREMENT, v)]
    if bad:
        raise ValueError(f"measurements must be 32-64 bytes of hex, got {bad[0][:40]!r}")
    return [v.lower() for v in values]


class AuthRequest(_Strict):
    tee: Literal["sev-snp", "tdx"] = Field(description="TEE kind of the evidence to come")


class AuthResponse(BaseModel):
    nonce: str = Field(description="base64url; goes into runtime_data.nonce")
    session: str


class RuntimeData(_Strict):
    nonce: str = Field(max_length=256)
    tee_pubkey: dict[str, Any] = Field(description="EC P-256/P-384 or RSA public JWK: releases are JWEs to it")
    receipt_pubkey: dict[str, Any] = Field(description="public JWK the enclave signs receipts with")
    batch_id: str | None = Field(default=None, pattern=BATCH_ID,
                                 description="the batch (or training job) this attestation is for; logged with the "
                                             "decision, bound into report_data like every field here")
    broker: str | None = Field(default=None, max_length=128,
                               description="this broker's name as the worker's measured configuration names it; a "
                                           "broker attests no worker that names another (one reaching it through a "
                                           "relay the configuration lists under another name)")


class AttestRequest(_Strict):
    session: str = Field(max_length=128)
    runtime_data: RuntimeData
    evidence: dict[str, Any] = Field(description="attestation Evidence.to_json()")


class AttestResponse(BaseModel):
    token: str = Field(description="ES256 JWT; use with a KBS-PoP header signed by the tee key")
    expires_at: int
    claims: dict[str, Any]


class UnwrapRequest(_Strict):
    key_id: str = Field(pattern=KEY_ID)
    wrapped: str = Field(pattern=B64, max_length=8192, description="base64 of nonce || AES-256-GCM")
    batch_id: str = Field(default="", max_length=256)
    model_digest: str = Field(default="", max_length=256)
    grant: str | None = Field(default=None, max_length=8192,
                              description="model keys: an owner broker's model grant (wire.grant) for this batch")


class ReleaseRequest(_Strict):
    key_id: str = Field(pattern=KEY_ID)
    batch_id: str = Field(max_length=256)
    model_digest: str = Field(max_length=256)


class ModelGrantRequest(_Strict):
    batch_id: str = Field(pattern=BATCH_ID)
    model_digest: str = Field(min_length=1, max_length=256)


class ModelGrantResponse(BaseModel):
    grant: str = Field(description="compact JWS (wire.grant), ES256 by GET /kbs/v0/grant-key")
    expires_at: int


class RegisterOwnerRequest(_Strict):
    name: str = Field(pattern=KEY_ID, description="the owner broker's name (its `name` in its model grants)")
    grant_key: dict[str, Any] = Field(description="its public grant key: GET /kbs/v0/grant-key of that broker")


class WrapRequest(_Strict):
    key_id: str = Field(pattern=KEY_ID)
    key_jwe: str = Field(max_length=16384, description="compact JWE to GET /kbs/v0/broker-key")
    batch_id: str = Field(default="", max_length=256)
    model_digest: str = Field(default="", max_length=256)


class JweResponse(BaseModel):
    jwe: str


class WrappedResponse(BaseModel):
    wrapped: str


def _min_tcb(value: dict[str, int] | None) -> dict[str, int] | None:
    return None if value is None else check_min_tcb(value, "min_tcb")


def _chip_ids(value: list[str] | None) -> list[str] | None:
    return None if value is None else check_chip_ids(value, "chip_ids")


def _quota(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if set(value) != {"rows", "period_s"} or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                    for v in value.values()):
        raise ValueError(f"quota: expected {{'rows': int > 0, 'period_s': int > 0}}, got {value!r}")
    return dict(value)


QUOTA_DOC = "model keys: rows per registered owner per period ({rows, period_s}); null: unlimited"
MIN_TCB_DOC = "minimum reported TCB per component (bootloader, tee, snp, microcode, fmc); null: broker config's"
CHIP_IDS_DOC = "allowed chip ids (hex); [] pins nothing; null: the broker config's"


class CreateKeyRequest(_Strict):
    key_id: str = Field(pattern=KEY_ID)
    kind: Literal["data", "model", "result"] = "data"
    policy: str | None = Field(default=None, max_length=8192, description="CEL; null: the kind's default")
    measurements: list[str] = Field(default_factory=list, description="allowed measurements (model keys)")
    min_tcb: dict[str, int] | None = Field(default=None, description=MIN_TCB_DOC)
    chip_ids: list[str] | None = Field(default=None, max_length=1024, description=CHIP_IDS_DOC)
    quota: dict[str, Any] | None = Field(default=None, description=QUOTA_DOC)

    _norm = field_validator("measurements")(_lower)
    _tcb = field_validator("min_tcb")(_min_tcb)
    _chips = field_validator("chip_ids")(_chip_ids)
    _quota = field_validator("quota")(_quota)


class KeyInfo(BaseModel):
    key_id: str
    kind: str
    policy: str | None
    measurements: list[str]
    created: float
    updated: float
    version: int = Field(default=1, description="newest master-key version (the one wraps use)")
    min_tcb: dict[str, int] | None = None
    chip_ids: list[str] | None = None
    quota: dict[str, Any] | None = None
    new: bool = False


class SetPolicyRequest(_Strict):
    policy: str | None = Field(default=None, max_length=8192)
    measurements: list[str] | None = None
    min_tcb: dict[str, int] | None = Field(default=None, description=MIN_TCB_DOC + "; absent: unchanged")
    chip_ids: list[str] | None = Field(default=None, max_length=1024, description=CHIP_IDS_DOC + "; absent: unchanged")
    quota: dict[str, Any] | None = Field(default=None, description=QUOTA_DOC + "; absent: unchanged")

    _norm = field_validator("measurements")(_lower)
    _tcb = field_validator("min_tcb")(_min_tcb)
    _chips = field_validator("chip_ids")(_chip_ids)
    _quota = field_validator("quota")(_quota)


class GrantRequest(_Strict):
    batch_id: str = Field(pattern=BATCH_ID)
    model_digest: str = Field(min_length=1, max_length=256)
    measurements: list[str] = Field(min_length=1)
    key_ids: list[str] = Field(min_length=1)
    config_digests: list[str] = Field(min_length=1, description="SHA-256 (hex) of worker configuration documents "
                                      "the owner accepts (HOST_DATA / MRCONFIGID)")
    rows: int = Field(ge=1, description="rows in the batch (the provider meters them)")

    _norm = field_validator("measurements")(_lower)

    @field_validator("config_digests")
    @classmethod
    def _digests(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if not re.fullmatch(r"[0-9a-fA-F]{64}", v)]
        if bad:
            raise ValueError(f"config_digests must be 32 bytes of hex, got {bad[0][:70]!r}")
        return [v.lower() for v in values]


class ResourceRequest(_Strict):
    value_jwe: str = Field(max_length=65536, description="compact JWE to GET /kbs/v0/broker-key")
    measurements: list[str] = Field(default_factory=list)
    policy: str | None = Field(default=None, max_length=8192)

    _norm = field_validator("measurements")(_lower)


class AdminWrapRequest(_Strict):
    key_id: str = Field(pattern=KEY_ID)
    key_jwe: str = Field(max_length=16384)


class AdminUnwrapRequest(_Strict):
    key_id: str = Field(pattern=KEY_ID)
    wrapped: str = Field(pattern=B64, max_length=8192)
    recipient_jwk: dict[str, Any] = Field(description="the caller's ephemeral public JWK")
    batch_id: str | None = Field(default=None, pattern=BATCH_ID,
                                 description="the batch whose results the owner reads (for the decision log)")


class DecisionsResponse(BaseModel):
    entries: list[dict[str, Any]]
    head: dict[str, Any]
    checkpoint: str = Field(description="ES256 JWS over the head, by the token key")
