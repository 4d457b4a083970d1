"""Receipts and usage records as the enclave signs them and anyone holding its evidence verifies them.

Real throughout: an Ed25519 receipt key bound into simulated SEV-SNP evidence through report_data (the
`Worker` of `test_result_checks`), verified by the attestation library. Each refusal is on a document correct
in every other way, and is asserted word for word.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import OKPKey

from attestation import Policy, TrustAnchors
from attestation.errors import AttestationError
from enclave.measurement import code_measurement
from enclave.receipts import (
    RECEIPT_TYPE,
    USAGE_TYPE,
    BrokerSession,
    ReceiptError,
    evidence_document,
    sign_receipt,
    sign_usage,
    verify_receipt,
)
from enclave.signing import SignatureError, sign_json
from enclave.tee import SimulatedSnpProvider
from tests.enclave.test_result_checks import CONFIG, FILE_ID, DictStore, Worker, _spec
from tests.enclave.test_result_checks import sim_dir as sim_dir  # the simulated firmware: a fixture
from wire.canonical import canonical_json
from wire.training import TRAINING_RECEIPT_TYPE

DIGEST = "ab" * 32


def _worker(sim_dir: Path) -> Worker:
    return Worker(DictStore(), sim_dir)


def _verify(token: str, doc: dict[str, Any], sim_dir: Path, **kwargs: Any) -> Any:
    policy = Policy.from_dict({"allowed_measurements": [code_measurement().hex()], "allowed_roots": ["simulated"]})
    return verify_receipt(token, doc, anchors=TrustAnchors.from_dir(sim_dir), policy=policy, **kwargs)


def _receipt(worker: Worker, **changes: Any) -> str:
    """A shard receipt as the worker signs it (`changes` replace its arguments)."""
    spec = _spec(3)
    arguments: dict[str, Any] = {
        "spec": spec, "output_key": spec.output_key, "input_sha256": "", "input_file_id": FILE_ID,
        "output_sha256": "cd" * 32, "rows": 200, "evidence_sha256": worker.digest, "worker": "cscore-worker-1@vm",
        "sessions": (BrokerSession("provider", ("ee" * 32,)), BrokerSession("owner", (DIGEST, "0f" * 32)))}
    return sign_receipt(OKPKey.import_key(worker.key), **{**arguments, **changes})


def test_a_receipt_signs_what_the_shard_read_wrote_used_and_where(sim_dir: Path) -> None:
    """Every field the owner and the auditor read, as signed: sessions sorted by broker, digests sorted."""
    worker = _worker(sim_dir)
    before = int(time.time())
    receipt = _verify(_receipt(worker), worker.doc, sim_dir)
    issued = receipt.payload.pop("issued_at")
    spec = _spec(3)
    assert receipt.payload == {
        "type": "cscore.receipt/v2", "tenant": "acme", "batch_id": "b-1", "shard_index": 3,
        "input": {"key": spec.input_key, "sha256": "", "file_id": FILE_ID, "row_groups": [3, 4]},
        "output": {"key": spec.output_key, "sha256": "cd" * 32, "rows": 200},
        "model": {"name": "spam", "version": 1, "digest": spec.model_digest},
        "evidence_sha256": worker.digest, "worker": "cscore-worker-1@vm",
        "sessions": [{"broker": "owner", "claims_digests": ["0f" * 32, DIGEST]},
                     {"broker": "provider", "claims_digests": ["ee" * 32]}]}
    assert isinstance(issued, int) and before <= issued <= time.time()
    assert receipt.claims.measurement == code_measurement().hex() and receipt.claims.host_data == CONFIG.hex()


def test_a_usage_record_names_owner_batch_shard_model_and_rows_and_verifies_as_usage_only(sim_dir: Path) -> None:
    worker = _worker(sim_dir)
    spec = _spec(2)
    before = int(time.time())
    token = sign_usage(OKPKey.import_key(worker.key), spec=spec, provider="provider", rows=150,
                       evidence_sha256=worker.digest)
    usage = _verify(token, worker.doc, sim_dir, expected_type=USAGE_TYPE)  # no sessions: none are asked for
    issued = usage.payload.pop("issued_at")
    assert usage.payload == {"type": "cscore.usage/v1", "provider": "provider", "tenant": "acme", "batch_id": "b-1",
                             "shard_index": 2, "rows": 150, "evidence_sha256": worker.digest,
                             "model": {"name": "spam", "version": 1, "digest": spec.model_digest}}
    assert isinstance(issued, int) and before <= issued <= time.time()
    with pytest.raises(ReceiptError) as refused:  # a usage record offered as a shard's receipt
        _verify(token, worker.doc, sim_dir)
    assert str(refused.value) == "receipt.type: expected cscore.receipt/v2, got 'cscore.usage/v1'"


@pytest.mark.parametrize("runtime_data", ["missing", None, [], {"nonce": "n", "tee_pubkey": {"kty": "EC"}}])
def test_evidence_without_a_receipt_key_is_refused(sim_dir: Path, runtime_data: Any) -> None:
    worker = _worker(sim_dir)
    doc = {"evidence": worker.doc["evidence"]} if runtime_data == "missing" else {**worker.doc,
                                                                                  "runtime_data": runtime_data}
    with pytest.raises(ReceiptError) as refused:
        _verify(_receipt(worker), doc, sim_dir)
    assert str(refused.value) == "evidence.runtime_data.receipt_pubkey: expected a JWK, got nothing"


def test_a_receipt_beside_other_genuine_evidence_of_the_same_key_is_refused(sim_dir: Path) -> None:
    """The platform stores beside a receipt another report the same enclave made (same keys, same runtime data):
    the evidence verifies and binds the key, but it is not the evidence the receipt signs."""
    worker = _worker(sim_dir)
    runtime = worker.doc["runtime_data"]
    provider = SimulatedSnpProvider(sim_dir, code_measurement(), host_data=CONFIG)
    other = evidence_document(provider.get_evidence(hashlib.sha512(canonical_json(runtime)).digest()), runtime)
    other_digest = hashlib.sha256(canonical_json(other)).hexdigest()
    assert other_digest != worker.digest
    with pytest.raises(ReceiptError) as refused:
        _verify(_receipt(worker), other, sim_dir)
    assert str(refused.value) == (f"receipt.evidence_sha256: expected {other_digest} (the evidence stored beside it), "
                                  f"got {worker.digest}")


def test_a_document_of_another_type_or_of_none_is_refused(sim_dir: Path) -> None:
    worker = _worker(sim_dir)
    key = OKPKey.import_key(worker.key)
    untyped = sign_json({"evidence_sha256": worker.digest, "sessions": []}, key)
    with pytest.raises(ReceiptError) as refused:
        _verify(untyped, worker.doc, sim_dir)
    assert str(refused.value) == "receipt.type: expected cscore.receipt/v2, got None"
    with pytest.raises(ReceiptError) as refused:  # a shard receipt offered as a training receipt
        _verify(_receipt(worker), worker.doc, sim_dir, expected_type=TRAINING_RECEIPT_TYPE)
    assert str(refused.value) == f"receipt.type: expected {TRAINING_RECEIPT_TYPE}, got '{RECEIPT_TYPE}'"


@pytest.mark.parametrize("kind", [RECEIPT_TYPE, TRAINING_RECEIPT_TYPE])
def test_a_receipt_whose_signed_sessions_do_not_parse_is_refused_naming_the_field(sim_dir: Path, kind: str) -> None:
    """Shard and training receipts alike: sessions an auditor could not join to a broker's releases."""
    worker = _worker(sim_dir)
    key = OKPKey.import_key(worker.key)
    bad = {"type": kind, "evidence_sha256": worker.digest,
           "sessions": [{"broker": "owner", "claims_digests": ["AB" * 32]}]}
    with pytest.raises(ReceiptError) as refused:
        _verify(sign_json(bad, key), worker.doc, sim_dir, expected_type=kind)
    assert str(refused.value).startswith("receipt.sessions[0].claims_digests[0]: expected 64 lower-case hex")
    with pytest.raises(ReceiptError) as refused:
        _verify(sign_json({k: v for k, v in bad.items() if k != "sessions"}, key), worker.doc, sim_dir,
                expected_type=kind)
    assert str(refused.value).startswith("receipt.sessions: expected ")
    good = {**bad, "sessions": [{"broker": "owner", "claims_digests": [DIGEST]}]}
    assert _verify(sign_json(good, key), worker.doc, sim_dir, expected_type=kind).payload == good


def test_a_receipt_is_checked_at_the_time_given(sim_dir: Path) -> None:
    """An auditor checks a receipt at the time it was issued: the chain must have been valid then."""
    worker = _worker(sim_dir)
    token = _receipt(worker)
    assert _verify(token, worker.doc, sim_dir, at=datetime.now(UTC)).payload["shard_index"] == 3
    with pytest.raises(AttestationError) as refused:
        _verify(token, worker.doc, sim_dir, at=datetime(2000, 1, 1, tzinfo=UTC))
    assert (refused.value.field, refused.value.actual) == ("evidence.vcek.validity", "2000-01-01T00:00:00+00:00")


def test_a_receipt_signed_by_another_key_than_the_bound_one_is_refused(sim_dir: Path) -> None:
    worker = _worker(sim_dir)
    forger = _worker(sim_dir)  # another enclave's genuine key: not the one this evidence binds
    with pytest.raises(SignatureError) as refused:
        _verify(_receipt(worker, evidence_sha256=forger.digest), forger.doc, sim_dir)
    bound = OKPKey.import_key(forger.doc["runtime_data"]["receipt_pubkey"]).thumbprint()
    assert str(refused.value).startswith(f"receipt.signature: expected a valid Ed25519 signature by key {bound}, "
                                         "got BadSignatureError")


def test_a_receipt_by_a_key_the_evidence_does_not_bind_is_refused(sim_dir: Path) -> None:
    """The forger writes its own key into the runtime data beside genuine evidence, and signs with it: the
    signature verifies, but the evidence's report_data binds the enclave's key, not the forger's."""
    from attestation.errors import AppraisalError
    from enclave.signing import generate_signing_key

    worker, forger = _worker(sim_dir), generate_signing_key()
    doc = {**worker.doc, "runtime_data": {**worker.doc["runtime_data"],
                                          "receipt_pubkey": forger.as_dict(private=False)}}
    digest = hashlib.sha256(canonical_json(doc)).hexdigest()
    with pytest.raises(AppraisalError) as refused:
        _verify(sign_json({"type": RECEIPT_TYPE, "evidence_sha256": digest, "sessions": []}, forger), doc, sim_dir)
    assert refused.value.field == "report_data"
    assert refused.value.expected == hashlib.sha512(canonical_json(doc["runtime_data"])).hexdigest()
    assert refused.value.actual == hashlib.sha512(canonical_json(worker.doc["runtime_data"])).hexdigest()
