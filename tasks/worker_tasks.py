"""Celery tasks run by the confidential workers. Idempotent, acknowledged late, stable names."""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from enclave.shard import ShardOutcome, ShardSpec
from enclave.signing import canonical_json, unverified_payload
from enclave.tee import evidence_provider_from_env
from enclave.worker import Enclave, sha256_hex
from tasks import storage
from tasks.celery_app import app

log = logging.getLogger(__name__)


@cache
def _enclave() -> Enclave:
    # One per worker process: attested sessions and the model cache live as long as the process.
    return Enclave(evidence_provider_from_env())


@app.task(name="cscore.attest", bind=True, acks_late=True)
def attest(self: Any, broker_urls: list[str]) -> dict[str, Any]:
    """Attest this worker to each broker; returns verdicts (measurement, TEE, expiry), no secrets."""
    verdicts = _enclave().attest(broker_urls)
    return {**verdicts, "worker": getattr(self.request, "hostname", None) or verdicts["worker"]}


@app.task(name="cscore.score_shard", bind=True, acks_late=True)
def score_shard(self: Any, spec_data: dict[str, Any]) -> dict[str, Any]:
    """Score one shard; a shard whose receipt already exists is reported, not scored again."""
    spec = ShardSpec.from_dict(spec_data)
    worker = getattr(self.request, "hostname", None) or _enclave().name
    existing = storage.get_if_exists(spec.receipt_key)
    if existing is not None:
        return _outcome_from_receipt(spec, existing, worker)
    card = unverified_payload(storage.get_bytes(_card_key(spec)).decode(), what="model card")
    scored = _enclave().score_shard(
        spec,
        storage.get_bytes(spec.input_key),
        card,
        lambda: storage.get_bytes(card["object_key"]),
    )
    if scored.evidence:
        evidence_key = f"{spec.receipt_key.rsplit('/', 1)[0]}/evidence/{scored.evidence_sha256}.json"
        storage.put_bytes(evidence_key, canonical_json(scored.evidence), "application/json")
    storage.put_bytes(spec.output_key, scored.output)
    # The receipt goes last: its presence marks the shard done, so a crash before it means a redo.
    receipt = scored.receipt.encode()
    storage.put_bytes(spec.receipt_key, receipt, "application/jose")
    outcome = ShardOutcome(
        shard_index=spec.shard_index,
        output_key=spec.output_key,
        output_sha256=scored.output_sha256,
        receipt_key=spec.receipt_key,
        receipt_sha256=sha256_hex(receipt),
        rows=scored.rows,
        worker=worker,
        reused=False,
    )
    return outcome.to_dict()


def _card_key(spec: ShardSpec) -> str:
    return f"models/{spec.model_name}/{spec.model_version}/card.jws"


def _outcome_from_receipt(spec: ShardSpec, receipt: bytes, worker: str) -> dict[str, Any]:
    payload = unverified_payload(receipt.decode(), what="receipt")
    log.info("shard %d of batch %s already has a receipt; reporting it", spec.shard_index, spec.batch_id)
    return ShardOutcome(
        shard_index=spec.shard_index,
        output_key=payload["output"]["key"],
        output_sha256=payload["output"]["sha256"],
        receipt_key=spec.receipt_key,
        receipt_sha256=sha256_hex(receipt),
        rows=payload["output"]["rows"],
        worker=worker,
        reused=True,
    ).to_dict()
