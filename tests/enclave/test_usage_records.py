"""The provider's reading of usage records (`cscore provider usage`): the platform stores them, so each must be
the enclave's, for this model, stored under the shard it names, or the provider's bill is the platform's to write.

Each refusal is a record correct in every other way: signed by a receipt key bound into simulated SEV-SNP evidence
through report_data, as a worker signs it, then altered in the one way the check guards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey

from attestation import Policy, TrustAnchors
from enclave.measurement import code_measurement
from enclave.receipts import sign_receipt, sign_usage
from sdk.provider import UsageTotals, UsageVerificationError, released_batches, usage_records
from tests.enclave.test_result_checks import BATCH, TENANT, DictStore, Worker, _spec
from tests.enclave.test_result_checks import sim_dir as sim_dir  # the simulated firmware: a fixture
from wire.shard import ShardSpec

MODEL = "spam"  # _spec's model name


class ListingStore(DictStore):
    """The platform's bucket, listable by prefix as the provider lists its model's usage folder."""

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))


def _key(spec: ShardSpec, model: str = MODEL) -> str:
    return f"usage/{model}/{spec.tenant}/{spec.batch_id}/shard-{spec.shard_index:05d}.jws"


def _record(worker: Worker, spec: ShardSpec, rows: int = 200, *, key: Ed25519PrivateKey | None = None) -> bytes:
    return sign_usage(OKPKey.import_key(key or worker.key), spec=spec, provider="provider", rows=rows,
                      evidence_sha256=worker.digest).encode()


def _usage(store: ListingStore, sim_dir: Path, measurement: str | None = None) -> UsageTotals:
    policy = Policy.from_dict({"allowed_measurements": [measurement or code_measurement().hex()],
                               "allowed_roots": ["simulated"]})
    return usage_records(store, MODEL, anchors=TrustAnchors.from_dir(sim_dir), policy=policy)  # type: ignore[arg-type]


def _stored(sim_dir: Path, *specs: ShardSpec) -> tuple[ListingStore, Worker]:
    store = ListingStore()
    worker = Worker(store, sim_dir)
    for index, spec in enumerate(specs):
        store.objects[_key(spec)] = _record(worker, spec, rows=100 + index)
    return store, worker


def test_honest_records_are_totalled_per_owner_with_each_batch_counted_once(sim_dir: Path) -> None:
    store, _ = _stored(sim_dir, _spec(0), _spec(1), _spec(2))
    assert _usage(store, sim_dir) == UsageTotals({TENANT: (1, 100 + 101 + 102)}, records=3, batches=frozenset({BATCH}))


def test_a_record_signed_by_a_key_the_evidence_does_not_bind_is_refused(sim_dir: Path) -> None:
    store, worker = _stored(sim_dir, _spec(0))
    store.objects[_key(_spec(1))] = _record(worker, _spec(1), key=Ed25519PrivateKey.generate())  # the platform's
    with pytest.raises(UsageVerificationError, match=rf"^{_key(_spec(1))}: receipt.signature"):
        _usage(store, sim_dir)


def test_a_genuine_record_copied_under_another_shards_key_is_refused(sim_dir: Path) -> None:
    store, _ = _stored(sim_dir, _spec(0))
    store.objects[_key(_spec(7))] = store.objects[_key(_spec(0))]  # the same rows billed twice
    with pytest.raises(UsageVerificationError, match=rf"^{_key(_spec(7))}: shard_index expected 7 \(from where it "
                                                     r"is stored\), got 0$"):
        _usage(store, sim_dir)


@pytest.mark.parametrize(("folder", "field", "expected", "actual"), [
    (f"usage/{MODEL}/other-tenant/{BATCH}/shard-00000.jws", "tenant", "'other-tenant'", f"'{TENANT}'"),
    (f"usage/{MODEL}/{TENANT}/b-other/shard-00000.jws", "batch_id", "'b-other'", f"'{BATCH}'"),
])
def test_a_genuine_record_moved_to_another_owner_or_batch_is_refused(
        sim_dir: Path, folder: str, field: str, expected: str, actual: str) -> None:
    store, _ = _stored(sim_dir, _spec(0))
    store.objects[folder] = store.objects.pop(_key(_spec(0)))
    with pytest.raises(UsageVerificationError, match=rf"^{folder}: {field} expected {expected} \(from where it is "
                                                     rf"stored\), got {actual}$"):
        _usage(store, sim_dir)


def test_another_models_record_moved_into_this_models_folder_is_refused(sim_dir: Path) -> None:
    store, worker = _stored(sim_dir)
    other = ShardSpec(**{**_spec(0).__dict__, "model_name": "other-model"})
    store.objects[_key(_spec(0))] = _record(worker, other)
    with pytest.raises(UsageVerificationError, match=r"model.name expected 'spam' \(from where it is stored\), "
                                                     r"got 'other-model'$"):
        _usage(store, sim_dir)


def test_a_shard_receipt_stored_as_a_usage_record_is_refused(sim_dir: Path) -> None:
    store, worker = _stored(sim_dir)
    spec = _spec(0)
    store.objects[_key(spec)] = sign_receipt(
        OKPKey.import_key(worker.key), spec=spec, output_key=spec.output_key, input_sha256="", input_file_id="ef",
        output_sha256="00" * 32, rows=200, evidence_sha256=worker.digest, worker="w", sessions=()).encode()
    with pytest.raises(UsageVerificationError, match=r"receipt.type: expected cscore.usage/v1, got 'cscore.receipt"):
        _usage(store, sim_dir)


def test_a_record_from_an_enclave_the_provider_does_not_release_to_is_refused(sim_dir: Path) -> None:
    store, _ = _stored(sim_dir, _spec(0))
    with pytest.raises(UsageVerificationError, match=r"measurement: expected one of \['(?:ab){48}'\], got "
                                                     rf"{code_measurement().hex()}"):
        _usage(store, sim_dir, measurement="ab" * 48)


def test_a_record_under_a_name_that_is_not_a_shards_or_without_its_evidence_is_named(sim_dir: Path) -> None:
    store, worker = _stored(sim_dir, _spec(0))
    odd = f"usage/{MODEL}/{TENANT}/{BATCH}/extra.jws"
    store.objects[odd] = store.objects[_key(_spec(0))]
    with pytest.raises(UsageVerificationError, match=rf"^{odd}: expected usage/spam/TENANT/BATCH/shard-NNNNN.jws"):
        _usage(store, sim_dir)
    del store.objects[odd]
    del store.objects[f"results/{TENANT}/{BATCH}/evidence/{worker.digest}.json"]
    with pytest.raises(UsageVerificationError, match=rf"expected the attestation evidence the record names at "
                                                     rf"results/{TENANT}/{BATCH}/evidence/{worker.digest}.json"):
        _usage(store, sim_dir)


def test_released_batches_are_the_allowed_unwraps_of_this_models_key() -> None:
    def entry(batch: str, operation: str = "unwrap", decision: str = "allow", key_id: str = f"model.{MODEL}") -> dict:
        return {"operation": operation, "decision": decision, "key_id": key_id, "batch_id": batch}

    decisions = [entry("b-1"), entry("b-1"), entry("b-2"),  # each worker of a batch unwraps once
                 entry("b-denied", decision="deny"), entry("b-other-model", key_id="model.other"),
                 entry("b-metered", operation="meter"), entry("b-admin", operation="admin.unwrap"),
                 entry("")]  # an attestation names no batch
    assert released_batches(decisions, MODEL) == {"b-1", "b-2"}
