"""Shard receipts: a worker's signed statement of what it read, with which model, and what it wrote.

The receipt key is generated inside the enclave and bound into its attestation evidence
(runtime_data.receipt_pubkey, hashed into report_data), so a valid receipt proves which attested
code produced which outputs. Anyone holding the evidence document can check it. The receipt also signs
the worker's name and the claims digests of the broker sessions its batch's keys came through
(`wire.receipt`), which ties each release in a broker's log to this worker.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc.jwk import OKPKey

from attestation import Claims, Evidence, Policy, TrustAnchors, appraise, verify_evidence
from enclave.signing import canonical_json, sign_json, verify_json
from wire.errors import FormatError
from wire.receipt import RECEIPT_TYPE, BrokerSession, parse_sessions, sessions_json
from wire.shard import ShardSpec
from wire.training import TRAINING_RECEIPT_TYPE

__all__ = ["RECEIPT_TYPE", "USAGE_TYPE", "BrokerSession", "ReceiptError", "VerifiedReceipt", "evidence_document",
           "sign_receipt", "sign_usage", "verify_receipt"]
USAGE_TYPE = "cscore.usage/v1"  # metering without data: which owner's batch used how many rows of which model


class ReceiptError(ValueError):
    """A receipt does not prove what it claims."""


@dataclass(frozen=True)
class VerifiedReceipt:
    """A receipt whose signature, evidence binding and attestation all checked out."""

    payload: dict[str, Any]
    claims: Claims


def evidence_document(evidence: Evidence, runtime_data: dict[str, Any]) -> dict[str, Any]:
    """What a verifier needs beside a receipt: the evidence and the runtime data it binds."""
    return {"evidence": evidence.to_json(), "runtime_data": runtime_data}


def sign_receipt(
    key: OKPKey,
    *,
    spec: ShardSpec,
    output_key: str,
    input_sha256: str,
    input_file_id: str,
    output_sha256: str,
    rows: int,
    evidence_sha256: str,
    worker: str,
    sessions: Sequence[BrokerSession],
) -> str:
    """Sign the receipt of one shard with the enclave's receipt key.

    The input is named by what the worker checked: a PME input by the file id in its authenticated footer
    (`input_file_id`, `input_sha256` ""), the plaintext baseline by its whole-file SHA-256 (`input_file_id` "").
    `worker` is the worker's stable name; `sessions` the brokers this batch's key requests went to, with the
    claims digests of the tokens they carried (`wire.receipt`; empty for the unattested baseline).
    """
    payload = {
        "type": RECEIPT_TYPE,
        "tenant": spec.tenant,
        "batch_id": spec.batch_id,
        "shard_index": spec.shard_index,
        "input": {
            "key": spec.input_key,
            "sha256": input_sha256,
            "file_id": input_file_id,
            "row_groups": [spec.row_group_start, spec.row_group_end],
        },
        "output": {"key": output_key, "sha256": output_sha256, "rows": rows},
        "model": {"name": spec.model_name, "version": spec.model_version, "digest": spec.model_digest},
        "evidence_sha256": evidence_sha256,
        "worker": worker,
        "sessions": sessions_json(sessions),
        "issued_at": int(time.time()),
    }
    return sign_json(payload, key)


def sign_usage(key: OKPKey, *, spec: ShardSpec, provider: str, rows: int, evidence_sha256: str) -> str:
    """A usage record for the model's provider: owner (tenant), batch, shard, model and row count; no content.

    Signed by the same enclave key as the shard's receipt, so it verifies against the same evidence.
    """
    payload = {"type": USAGE_TYPE, "provider": provider, "tenant": spec.tenant, "batch_id": spec.batch_id,
               "shard_index": spec.shard_index, "rows": rows, "evidence_sha256": evidence_sha256,
               "model": {"name": spec.model_name, "version": spec.model_version, "digest": spec.model_digest},
               "issued_at": int(time.time())}
    return sign_json(payload, key)


def verify_receipt(
    token: str,
    evidence_doc: dict[str, Any],
    *,
    anchors: TrustAnchors,
    policy: Policy,
    at: datetime | None = None,
    expected_type: str = RECEIPT_TYPE,
) -> VerifiedReceipt:
    """Check a receipt (or another document the enclave signs with its receipt key, of `expected_type`):
    evidence digest, attestation (chain and policy), key binding, signature, and for a shard receipt the shape
    of its signed sessions. Raises ReceiptError, SignatureError, AttestationError."""
    digest = hashlib.sha256(canonical_json(evidence_doc)).hexdigest()
    runtime_data = evidence_doc.get("runtime_data")
    if not isinstance(runtime_data, dict) or "receipt_pubkey" not in runtime_data:
        raise ReceiptError("evidence.runtime_data.receipt_pubkey: expected a JWK, got nothing")
    claims = verify_evidence(Evidence.from_json(evidence_doc["evidence"]), anchors, at or datetime.now(UTC))
    appraise(claims, policy, report_data=hashlib.sha512(canonical_json(runtime_data)).digest())
    payload = verify_json(token, runtime_data["receipt_pubkey"], what="receipt")
    if payload.get("type") != expected_type:
        raise ReceiptError(f"receipt.type: expected {expected_type}, got {payload.get('type')!r}")
    if payload.get("evidence_sha256") != digest:
        raise ReceiptError(
            f"receipt.evidence_sha256: expected {digest} (the evidence stored beside it), "
            f"got {payload.get('evidence_sha256')}"
        )
    if expected_type in (RECEIPT_TYPE, TRAINING_RECEIPT_TYPE):
        try:
            parse_sessions(payload)
        except FormatError as exc:
            raise ReceiptError(str(exc)) from exc
    return VerifiedReceipt(payload=payload, claims=claims)
