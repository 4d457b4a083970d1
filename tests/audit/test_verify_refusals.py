"""Each check of `audit.verify` on a log right in every way but one, its refusal asserted whole.

The world is built once per module, as a real run leaves it (tests/audit/conftest.py's Scenario: simulated
SEV-SNP evidence, enclave-signed receipts and tuned cards, broker hash chains, a synced log); its objects are
then held in memory, so each test forges its own copy and calls the one check it is about in milliseconds.
A finding is compared as (severity, check, message, batch_id, index): the text the auditor reads, and the
batch and log position it is filed under.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from attestation import Policy, TrustAnchors
from attestation.errors import AttestationError
from audit.collect import sync_log
from audit.log import (
    CHECKPOINT,
    ENTRIES,
    HISTORY,
    VKEY,
    AuditLog,
    Checkpoint,
    LogError,
    Witness,
    load_or_create_key,
    sign_note,
)
from audit.merkle import ProofError, verify_consistency
from audit.verify import (
    SIGNED_RECEIPT_FIELDS,
    SIGNED_TRAINING_FIELDS,
    Finding,
    SignedWorker,
    changed_span,
    check_broker_heads,
    check_grants,
    check_integrity,
    check_receipts,
    check_releases,
    check_results,
    check_training,
    check_unreceipted_batches,
    check_worker_links,
    failed,
    readable_entries,
    signed_workers,
    verify_audit,
)
from enclave.receipts import verify_receipt
from enclave.signing import canonical_json, generate_signing_key, sign_json, unverified_payload
from sdk.storage import ObjectStore
from tests.audit.conftest import MEASUREMENT, MODEL, OTHER_MEASUREMENT, RECIPE, TENANT, Scenario
from wire.worker_config import config_digest_from_claims

Row = tuple[str, str, str, Any, Any]


class Bucket:
    """The world's objects in memory, with `ObjectStore`'s reads (a missing key: KeyError, or None)."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = dict(objects)

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def get_if_exists(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))


@dataclass
class World:
    """Batch b1 (two shards), a batch "bad" that failed after its keys were released, training jobs t-1 (model
    version 1) and t-2 (version 2); synced into a log whose files are kept (`log_files`)."""

    entries: list[dict[str, Any]]
    objects: dict[str, bytes]
    log_files: dict[str, bytes]
    anchors: TrustAnchors
    policy: Policy

    def fork(self) -> tuple[list[dict[str, Any]], Bucket]:
        """A copy of the entries and the bucket to forge."""
        return copy.deepcopy(self.entries), Bucket(self.objects)

    def entry(self, entries: list[dict[str, Any]], kind: str, **match: Any) -> dict[str, Any]:
        return next(e for e in entries if e.get("kind") == kind and all(e.get(k) == v for k, v in match.items()))

    def log(self, folder: Path) -> AuditLog:
        """The synced log, written to `folder` as the sync left it."""
        for name, data in self.log_files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return AuditLog.open_dir(folder)


@functools.cache
def _built_world() -> World:
    """Built once per process and kept in memory (its folders are removed): mutation testing forks one pytest
    session per mutant from the process that ran the tests clean, and each reuses it instead of paying for a
    simulated chip and five enclave signatures again."""
    from attestation.simulated import create_simulated_firmware

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(name, value)
        mp.delenv("CSCORE_S3_ENDPOINT", raising=False)
        sim_dir, state = Path(tmp) / "sim-tee", Path(tmp) / "state"
        sim_dir.mkdir()
        create_simulated_firmware(sim_dir)
        with mock_aws():
            store = ObjectStore("cscore")
            store._s3.create_bucket(Bucket="cscore")
            s = Scenario(state, store, sim_dir)
            s.run_batch("b1")
            s.run_batch("bad", fail="score: worker lost")
            s.run_training("t-1", version=1)
            s.run_training("t-2", version=2)
            log = s.log()
            sync_log(log, s.brokers, s.store)
            objects = {k: store.get(k) for prefix in ("incoming/", "results/", "tuned/", "status/")
                       for k in store.keys(prefix)}
        audit = state / "audit"
        files = {str(f.relative_to(audit)): f.read_bytes() for f in audit.rglob("*") if f.is_file()}
        anchors, policy = s.anchors_policy()
        return World([json.loads(line) for line in log.lines()], objects, files, anchors, policy)


@pytest.fixture
def world() -> World:
    return _built_world()


def rows(findings: list[Finding]) -> list[Row]:
    return [(f.severity, f.check, f.message, f.batch_id, f.index) for f in findings]


def _receipts(w: World, entries: list[dict[str, Any]], bucket: Bucket) -> tuple[int, list[Row]]:
    verified, findings = check_receipts(entries, bucket, w.anchors, w.policy)
    return len(verified), rows(findings)


SHARD0, SHARD1 = (f"results/{TENANT}/b1/shard-0000{i}.receipt.jws" for i in (0, 1))


# -- shard receipts ---------------------------------------------------------------------------------


def test_the_batchs_logged_receipts_verify_and_nothing_is_found(world: World) -> None:
    entries, bucket = world.fork()
    verified, findings = check_receipts(entries, bucket, world.anchors, world.policy)
    assert findings == []
    assert sorted((r.payload["batch_id"], r.payload["shard_index"], r.claims.measurement) for r in verified) == [
        ("b1", 0, MEASUREMENT.hex()), ("b1", 1, MEASUREMENT.hex())]


def test_a_logged_receipt_removed_from_storage_is_named_and_still_verifies_from_the_log(world: World) -> None:
    entries, bucket = world.fork()
    del bucket.objects[SHARD0]
    at = world.entry(entries, "receipt", receipt_key=SHARD0)["index"]
    assert _receipts(world, entries, bucket) == (2, [
        ("error", "receipt", f"receipt {SHARD0} is in the log but no longer in storage", "b1", at)])


def test_a_logged_receipt_replaced_in_storage_is_named_with_both_digests(world: World) -> None:
    entries, bucket = world.fork()
    e0, e1 = (world.entry(entries, "receipt", receipt_key=k) for k in (SHARD0, SHARD1))
    bucket.objects[SHARD0] = bucket.objects[SHARD1]  # a genuine receipt, of the other shard
    assert _receipts(world, entries, bucket) == (2, [
        ("error", "receipt", f"receipt {SHARD0} in storage (sha256 {e1['receipt_sha256'][:16]}…) is not the one "
                             f"logged ({e0['receipt_sha256'][:16]}…): it was replaced", "b1", e0["index"])])


def test_an_empty_receipt_logged_empty_is_not_called_replaced_only_unverified(world: World) -> None:
    """Storage and log agree on an empty receipt (both hash to sha256 of nothing): it was not replaced, it is just
    no receipt; one finding says so."""
    entries, bucket = world.fork()
    e0 = world.entry(entries, "receipt", receipt_key=SHARD0)
    e0["receipt_sha256"], e0["jws"] = hashlib.sha256(b"").hexdigest(), ""
    bucket.objects[SHARD0] = b""
    verified, found = _receipts(world, entries, bucket)
    assert verified == 1 and len(found) == 1
    severity, check, message, batch, at = found[0]
    assert (severity, check, batch, at) == ("error", "receipt", "b1", e0["index"])
    assert message.startswith(f"receipt {SHARD0} does not verify, it is forged or altered: receipt.signature: "
                              "expected a valid Ed25519 signature by key ")
    assert message.endswith(", got DecodeError: decode_error: Invalid JSON Web Signature")


def test_a_receipt_whose_evidence_is_gone_is_not_verified(world: World) -> None:
    entries, bucket = world.fork()
    e0 = world.entry(entries, "receipt", receipt_key=SHARD0)
    del bucket.objects[e0["evidence_key"]]
    assert _receipts(world, entries, bucket) == (1, [
        ("error", "receipt", f"receipt {SHARD0}: its evidence {e0['evidence_key']} is missing, so nobody can check "
                             "which code signed it", "b1", e0["index"])])


def test_a_logged_receipt_signed_by_a_key_no_evidence_binds_does_not_verify(world: World) -> None:
    entries, bucket = world.fork()
    e0 = world.entry(entries, "receipt", receipt_key=SHARD0)
    e0["jws"] = sign_json(unverified_payload(e0["jws"], what="receipt"), generate_signing_key())
    verified, found = _receipts(world, entries, bucket)
    assert verified == 1 and len(found) == 1
    assert found[0][0:2] == ("error", "receipt") and found[0][3:] == ("b1", e0["index"])
    assert found[0][2].startswith(f"receipt {SHARD0} does not verify, it is forged or altered: "
                                "receipt.signature: expected a valid Ed25519 signature by key "), found


def test_a_receipt_is_verified_at_the_time_it_was_issued(world: World) -> None:
    """The log's copy says the receipt was issued in 1970, before the simulated chip's certificates: its evidence
    is checked at that time, not now, and refused."""
    entries, bucket = world.fork()
    e0 = world.entry(entries, "receipt", receipt_key=SHARD0)
    e0["issued_at"] = 1.0
    doc = json.loads(bucket.objects[e0["evidence_key"]])
    with pytest.raises(AttestationError) as refused:  # what verify_receipt itself says of evidence checked in 1970
        verify_receipt(e0["jws"], doc, anchors=world.anchors, policy=world.policy,
                       at=datetime.fromtimestamp(1.0, UTC))
    assert _receipts(world, entries, bucket) == (1, [
        ("error", "receipt", f"receipt {SHARD0} does not verify, it is forged or altered: {refused.value}", "b1",
         e0["index"])])


def test_a_log_copy_of_a_receipt_without_its_issue_time_is_verified_now_and_named(world: World) -> None:
    entries, bucket = world.fork()
    e0 = world.entry(entries, "receipt", receipt_key=SHARD0)
    signed = e0["issued_at"]
    e0["issued_at"] = None
    assert _receipts(world, entries, bucket) == (2, [
        ("error", "receipt", f"the log's copy of receipt {SHARD0} says issued_at None, but its signature covers "
                             f"{signed!r}", "b1", e0["index"])])


@pytest.mark.parametrize("name", [n for n in SIGNED_RECEIPT_FIELDS if n != "issued_at"])
def test_a_log_copy_of_a_receipt_that_misstates_a_signed_field_is_named(world: World, name: str) -> None:
    entries, bucket = world.fork()
    e0 = world.entry(entries, "receipt", receipt_key=SHARD0)
    signed = e0[name]
    e0[name] = "forged"
    assert _receipts(world, entries, bucket) == (2, [
        ("error", "receipt", f"the log's copy of receipt {SHARD0} says {name} 'forged', but its signature covers "
                             f"{signed!r}", "b1", e0["index"])])


@pytest.mark.parametrize("field", ["path_batch_id", "path_tenant"])
def test_a_receipt_logged_under_another_batch_or_tenants_folder_is_named(world: World, field: str) -> None:
    """The log's copy keeps the receipt's own bytes and JWS but files it under another folder's batch or tenant."""
    entries, bucket = world.fork()
    e0 = world.entry(entries, "receipt", receipt_key=SHARD0)
    e0[field] = "elsewhere"
    batch = e0["path_batch_id"]
    assert _receipts(world, entries, bucket) == (2, [
        ("error", "receipt", f"receipt {SHARD0} lies under batch {batch} but speaks of batch b1 (output "
                             f"results/{TENANT}/b1/shard-00000.parquet)", batch, e0["index"])])


def test_only_receipts_in_storage_that_the_log_lacks_are_named(world: World) -> None:
    """A receipt written after the sync is named under its batch; other objects and other folders are not
    receipts of a batch."""
    entries, bucket = world.fork()
    bucket.objects[f"results/{TENANT}/b7/shard-00000.receipt.jws"] = b"eyJhbGciOiJFZDI1NTE5In0.e30.c2ln"
    bucket.objects[f"results/{TENANT}/b7/shard-00000.receipt.json"] = b"{}"
    bucket.objects[f"incoming/{TENANT}/b7/shard-00000.receipt.jws"] = b"{}"
    bucket.objects[f"results/{TENANT}/b1/shard-00003.receipt.jws"] = bucket.objects[SHARD0]  # a logged one's bytes
    assert _receipts(world, entries, bucket) == (2, [
        ("error", "receipt", f"receipt results/{TENANT}/b7/shard-00000.receipt.jws in storage is not in the log: it "
                             "was written or replaced after the last sync", "b7", None)])


def test_a_training_receipt_is_not_checked_as_a_batchs_receipt(world: World) -> None:
    entries, bucket = world.fork()
    verified, findings = check_receipts([e for e in entries if e.get("kind") != "receipt"], bucket, world.anchors,
                                        world.policy)
    assert verified == [] and [f.message for f in findings] == [
        f"receipt {k} in storage is not in the log: it was written or replaced after the last sync"
        for k in (SHARD0, SHARD1)]


# -- training receipts and tuned cards -----------------------------------------------------------------


def _training(w: World, entries: list[dict[str, Any]], bucket: Bucket) -> list[Row]:
    return rows(check_training(entries, bucket, w.anchors, w.policy))


def _tuned(version: int, name: str) -> str:
    return f"tuned/{TENANT}/spam-filter-tuned/{version}/{name}"


RECEIPT1, CARD1 = _tuned(1, "receipt.jws"), _tuned(1, "card.jws")


def test_the_training_jobs_verify_and_nothing_is_found(world: World) -> None:
    entries, bucket = world.fork()
    assert _training(world, entries, bucket) == []


@pytest.mark.parametrize("name", SIGNED_TRAINING_FIELDS)
def test_a_log_copy_of_a_training_receipt_that_misstates_a_signed_field_is_named(world: World, name: str) -> None:
    entries, bucket = world.fork()
    e = world.entry(entries, "training_receipt", receipt_key=RECEIPT1)
    signed = e[name]
    e[name] = "forged"
    assert _training(world, entries, bucket) == [
        ("error", "training", f"the log's copy of training receipt {RECEIPT1} says {name} 'forged', but its signature "
                              f"covers {signed!r}", "t-1", e["index"])]


@pytest.mark.parametrize(("name", "replaced"), [("receipt", False), ("card", False), ("receipt", True),
                                                ("card", True)])
def test_a_logged_training_document_removed_or_replaced_in_storage_is_named(world: World, name: str,
                                                                            replaced: bool) -> None:
    entries, bucket = world.fork()
    key = _tuned(1, f"{name}.jws")
    if replaced:
        bucket.objects[key] = bucket.objects[_tuned(2, f"{name}.jws")]  # the other job's genuine document
    else:
        del bucket.objects[key]
    kind = "training_receipt" if name == "receipt" else "tuned_model"
    at = world.entry(entries, kind, **{f"{name}_key": key})["index"]
    found = _training(world, entries, bucket)
    assert found[0] == ("error", "training", f"{key} in storage is not the one logged: it was "
                                             f"{'replaced' if replaced else 'removed'}", "t-1", at)
    if name == "receipt":  # the receipt is verified from the log's copy of its JWS
        assert len(found) == 1, found
    elif not replaced:  # the card is verified as stored: nothing to verify
        assert len(found) == 2 and found[1][0:2] == ("error", "training") and found[1][3:] == ("t-1", at), found
        assert found[1][2].startswith(f"{key} does not verify, it is forged or altered: "), found


@pytest.mark.parametrize("kind", ["training_receipt", "tuned_model"])
def test_a_training_document_whose_evidence_is_gone_does_not_verify(world: World, kind: str) -> None:
    entries, bucket = world.fork()
    e = world.entry(entries, kind, batch_id="t-1")
    e["evidence_key"] = _tuned(1, "evidence/gone.json")  # the receipt and card share theirs: each is named
    key = e["receipt_key"] if kind == "training_receipt" else e["card_key"]
    found = _training(world, entries, bucket)
    assert found[0] == ("error", "training", f"{key} does not verify, it is forged or altered: its evidence "
                                             f"{e['evidence_key']} is missing", "t-1", e["index"])


def test_a_training_receipt_signed_by_a_key_no_evidence_binds_does_not_verify(world: World) -> None:
    entries, bucket = world.fork()
    e = world.entry(entries, "training_receipt", receipt_key=RECEIPT1)
    e["jws"] = sign_json(unverified_payload(e["jws"], what="receipt"), generate_signing_key())
    found = _training(world, entries, bucket)
    assert len(found) == 1 and found[0][0:2] == ("error", "training") and found[0][3:] == ("t-1", e["index"])
    assert found[0][2].startswith(f"{RECEIPT1} does not verify, it is forged or altered: "
                                "receipt.signature: expected a valid Ed25519 signature by key "), found


def test_a_tuned_card_is_verified_as_a_card_and_a_receipt_as_a_receipt(world: World) -> None:
    """The log's copy of t-1's receipt carries t-1's card (same enclave key, same evidence): refused by type."""
    entries, bucket = world.fork()
    e = world.entry(entries, "training_receipt", receipt_key=RECEIPT1)
    e["jws"] = bucket.objects[CARD1].decode()
    found = _training(world, entries, bucket)
    assert len(found) == 1 and found[0][2].startswith(f"{RECEIPT1} does not verify, it is forged or altered: "), found
    assert "type" in found[0][2], found


def test_a_training_receipt_filed_under_another_models_folder_is_named(world: World) -> None:
    """t-1's genuine receipt, byte for byte, logged and stored under version 3's folder."""
    entries, bucket = world.fork()
    e = world.entry(entries, "training_receipt", receipt_key=RECEIPT1)
    moved = _tuned(3, "receipt.jws")
    bucket.objects[moved] = bucket.objects.pop(RECEIPT1)
    e["receipt_key"] = moved
    assert _training(world, entries, bucket) == [
        ("error", "training", f"training receipt {moved} speaks of tenant {TENANT}, model spam-filter-tuned:1", "t-1",
         e["index"])]


def test_a_training_receipt_that_does_not_verify_does_not_end_the_check_of_the_others(world: World) -> None:
    entries, bucket = world.fork()
    e = world.entry(entries, "training_receipt", receipt_key=RECEIPT1)
    e["jws"] = bucket.objects[CARD1].decode()  # not a receipt
    entries.remove(world.entry(entries, "tuned_model", card_key=_tuned(2, "card.jws")))
    found = _training(world, entries, bucket)
    assert [f[2].split(":")[0] for f in found] == [
        f"{RECEIPT1} does not verify, it is forged or altered", "training job t-2",
        f"{_tuned(2, 'card.jws')} in storage is not in the log"]


def _grant(entries: list[dict[str, Any]], job: str) -> dict[str, Any]:
    return next(e for e in entries if e.get("kind") == "grant" and e.get("batch_id") == job)


def _grant_refusal(job: str, at: int, grant: str) -> Row:
    return ("error", "grant", f"training job {job}: trained with recipe {RECIPE} by measurement "
                              f"{MEASUREMENT.hex()[:16]}…, which the owner's grant ({grant}) does not name", job, at)


def test_a_training_job_is_held_to_its_grants_recipe_and_measurement(world: World) -> None:
    other = "sha256:" + "00" * 32
    for forge, named in [(lambda g: g.update(kind="key_release"), "none"),
                         (lambda g: g.update(decision="deny"), "none"),
                         (lambda g: g.update(model_digest=other), other),
                         (lambda g: g.update(granted_measurements=["00" * 48]), RECIPE),
                         (lambda g: g.update(granted_measurements=None), RECIPE)]:
        entries, bucket = world.fork()
        forge(_grant(entries, "t-1"))
        at = world.entry(entries, "training_receipt", receipt_key=RECEIPT1)["index"]
        assert _training(world, entries, bucket) == [_grant_refusal("t-1", at, named)], named


def test_a_training_job_is_held_to_the_worker_configurations_its_grant_names(world: World) -> None:
    zeros = config_digest_from_claims(bytes(32).hex())  # the simulated worker's HOST_DATA
    entries, bucket = world.fork()
    _grant(entries, "t-1")["granted_config_digests"] = ["07" * 32]
    at = world.entry(entries, "training_receipt", receipt_key=RECEIPT1)["index"]
    assert _training(world, entries, bucket) == [
        ("error", "grant", f"training job t-1: trained by a worker launched with configuration {zeros[:16]}…, not one "
                           f"the owner's grant names ({['07' * 32]})", "t-1", at)]
    _grant(entries, "t-1")["granted_config_digests"] = [zeros]
    assert _training(world, entries, bucket) == []


def test_only_the_owners_allowed_grant_of_the_job_counts(world: World) -> None:
    """Entries of other kinds or decisions that name the job (a refused grant, a release) do not replace it."""
    entries, bucket = world.fork()
    other = "sha256:" + "00" * 32
    entries += [{"kind": "grant", "decision": "deny", "batch_id": "t-1", "model_digest": other, "index": 900},
                {"kind": "key_release", "decision": "allow", "batch_id": "t-1", "model_digest": other, "index": 901}]
    assert _training(world, entries, bucket) == []


def test_a_training_job_without_its_tuned_card_is_named(world: World) -> None:
    entries, bucket = world.fork()
    card = world.entry(entries, "tuned_model", card_key=CARD1)
    entries.remove(card)
    entries.remove(_grant(entries, "t-2"))  # the next job is still checked
    at = world.entry(entries, "training_receipt", receipt_key=RECEIPT1)["index"]
    at2 = world.entry(entries, "training_receipt", batch_id="t-2")["index"]
    assert _training(world, entries, bucket) == [
        ("error", "training", "training job t-1: no tuned model card logged for spam-filter-tuned:1", "t-1", at),
        _grant_refusal("t-2", at2, "none"),
        ("error", "training", f"{CARD1} in storage is not in the log: it was written or replaced after the last "
                              "sync", None, None)]


def test_a_tuned_card_of_another_job_is_not_the_receipts_lineage(world: World) -> None:
    """The log's copy of t-2's card entry is filed as version 1's (t-1's removed): the card verifies, but its digest
    and lineage (job t-2) are not t-1's receipt's."""
    entries, bucket = world.fork()
    entries.remove(world.entry(entries, "tuned_model", card_key=CARD1))
    card2 = world.entry(entries, "tuned_model", card_key=_tuned(2, "card.jws"))
    card2["version"] = 1
    assert _training(world, entries, bucket) == [
        ("error", "training", f"tuned model {card2['card_key']}: its digest and lineage are not its training "
                              f"receipt's {RECEIPT1}", "t-1", card2["index"]),
        ("error", "training", "training job t-2: no tuned model card logged for spam-filter-tuned:2", "t-2",
         world.entry(entries, "training_receipt", batch_id="t-2")["index"]),
        ("error", "training", f"{CARD1} in storage is not in the log: it was written or replaced after the last "
                              "sync", None, None)]


def test_only_training_documents_in_storage_that_the_log_lacks_are_named(world: World) -> None:
    entries, bucket = world.fork()
    for name in ("receipt.jws", "card.jws", "model.onnx.enc", "receipt.json"):
        bucket.objects[_tuned(9, name)] = b"written after the sync: " + name.encode()
    bucket.objects[f"results/{TENANT}/b9/receipt.jws"] = b"not a training document"
    assert _training(world, entries, bucket) == [
        ("error", "training", f"{_tuned(9, n)} in storage is not in the log: it was written or replaced after the "
                              "last sync", None, None) for n in ("card.jws", "receipt.jws")]


# -- key releases ------------------------------------------------------------------------------------


def _release(entries: list[dict[str, Any]], broker: str, key_id: str, batch: str = "b1") -> dict[str, Any]:
    return next(e for e in entries if e.get("kind") == "key_release" and e.get("broker") == broker
                and e.get("key_id") == key_id and e.get("batch_id") == batch)


def _what(e: dict[str, Any]) -> str:
    return (f"broker {e['broker']} released key {e['key_id']} ({e['operation']}, decision {e['seq']}) for batch "
            f"{e['batch_id']}")


def _owner_b1_releases(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("kind") == "key_release" and e.get("broker") == "owner"
            and e.get("batch_id") == "b1"]


def _decision(entries: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """A broker decision as the log records it, at a log position past the world's."""
    return {"decision": "allow", "seq": 1000 + len(entries), "index": 1000 + len(entries), **fields}


def _forge_entry(entries: list[dict[str, Any]], entry: dict[str, Any], forge: str, field: str, value: str) -> None:
    """``entry`` removed from the log, refused, moved after every other entry, or else ``field`` set to ``value``."""
    if forge == "removed":
        entries.remove(entry)
    elif forge == "refused":
        entry["decision"] = "deny"
    elif forge == "after":
        entries.remove(entry)
        entries.append(entry)
    else:
        entry[field] = value


def _releases_found(w: World, entries: list[dict[str, Any]], policy: Policy | None = None) -> list[Row]:
    return rows(check_releases(entries, policy or w.policy))


def test_every_release_in_the_world_follows_its_attestation_key_policy_and_grant(world: World) -> None:
    entries, _ = world.fork()
    assert len([e for e in entries if e.get("kind") == "key_release"]) == 14
    assert _releases_found(world, entries) == []


def test_a_release_without_an_attested_measurement_is_an_error(world: World) -> None:
    entries, _ = world.fork()
    e = _release(entries, "owner", "acme/emails")
    e["measurement"] = None
    assert _releases_found(world, entries) == [
        ("error", "release", f"{_what(e)} without an attested measurement", "b1", e["index"])]


def test_a_release_to_a_measurement_the_auditors_policy_does_not_allow_is_an_error(world: World) -> None:
    entries, _ = world.fork()
    strict = Policy.from_dict({"allowed_measurements": [OTHER_MEASUREMENT.hex()], "allowed_roots": ["simulated"]})
    assert _releases_found(world, entries, strict) == [
        ("error", "release", f"{_what(e)} to measurement {MEASUREMENT.hex()[:16]}…, which the auditor's policy does "
                             "not allow", e["batch_id"], e["index"])
        for e in entries if e.get("kind") == "key_release"]


@pytest.mark.parametrize("forge", ["removed", "refused", "after", "claims"])
def test_a_release_without_an_attestation_of_its_claims_before_it_at_that_broker_is_an_error(
        world: World, forge: str) -> None:
    """The owner's attestation of b1's worker removed, refused, moved after the releases, or of other claims; the
    provider's attestation of the same claims stays and does not count at the owner's broker."""
    entries, _ = world.fork()
    attested = next(e for e in entries if e.get("kind") == "attestation" and e.get("broker") == "owner"
                    and e.get("batch_id") == "b1")
    _forge_entry(entries, attested, forge, "claims_digest", "cd" * 32)
    assert _releases_found(world, entries) == [
        ("error", "release", f"{_what(e)}, but no successful attestation at that broker with the same claims comes "
                             "before it", "b1", e["index"]) for e in _owner_b1_releases(entries)]


def test_a_release_of_a_key_created_at_the_other_broker_only_is_an_error(world: World) -> None:
    """The owner's broker releases "model/spam", a key only the provider's broker ever created."""
    entries, _ = world.fork()
    e = _release(entries, "owner", "acme/emails")
    e["key_id"] = "model/spam"
    assert _releases_found(world, entries) == [
        ("error", "release", f"{_what(e)}, but the log never saw that key created", "b1", e["index"])]


def test_a_key_with_a_custom_policy_is_noted_once_per_broker_and_key(world: World) -> None:
    """Releases of a key under a custom policy are the broker's judgement: one note per (broker, key), at the first
    release; a refused policy change changes nothing."""
    entries, _ = world.fork()
    policy = "claims.tee == 'sev-snp'"
    first = entries.index(_release(entries, "provider", "model/spam"))
    pairs = [("owner", "shared/k"), ("provider", "shared/k"), ("owner", "shared/j")]
    changes = [_decision(entries, kind="policy_change", broker=broker, key_id=key_id, key_kind="data", policy=policy,
                         key_measurements=None) for broker, key_id in pairs]
    refused = _decision(entries, kind="policy_change", broker="owner", key_id="acme/emails", policy=policy,
                        decision="deny")
    entries[first:first] = [*changes, refused]
    released: list[dict[str, Any]] = []
    for broker, key_id in [*pairs, ("owner", "shared/k")]:
        released.append({**_release(entries, broker, "acme/emails" if broker == "owner" else "model/spam"),
                         "key_id": key_id, "reason": f"custom policy holds at {broker}",
                         "index": 2000 + len(released)})
        entries.append(released[-1])
    assert _releases_found(world, entries) == [
        ("note", "release", f"key {e['key_id']} at broker {e['broker']} has a custom policy ({policy}); its releases "
                            f"were judged by the broker (custom policy holds at {e['broker']}), re-read the policy by "
                            "hand", "b1", e["index"]) for e in released[:3]]


def test_a_model_key_is_released_only_to_its_allowed_measurements_as_last_set(world: World) -> None:
    """The provider narrows model/spam to another measurement before b1's release; a later change that leaves the
    measurements unchanged keeps the narrowed list."""
    entries, _ = world.fork()
    e = _release(entries, "provider", "model/spam")
    narrowed = ["00" * 48]
    entries[entries.index(e):entries.index(e)] = [
        _decision(entries, kind="policy_change", broker="provider", key_id="model/spam", key_kind=None, policy=None,
                  key_measurements=narrowed),
        _decision(entries, kind="policy_change", broker="provider", key_id="model/spam", key_kind=None, policy=None,
                  key_measurements=None)]
    assert _releases_found(world, entries) == [
        ("error", "release", f"{_what(r)} to measurement {MEASUREMENT.hex()[:16]}…, not among the key's allowed "
                             f"measurements {narrowed}", batch, r["index"])
        for batch in ("b1", "bad") for r in [_release(entries, "provider", "model/spam", batch)]]


def test_a_key_made_a_model_key_is_held_to_its_measurements_not_to_the_grant(world: World) -> None:
    entries, _ = world.fork()
    e = _release(entries, "owner", "acme/emails")
    entries.insert(entries.index(e), _decision(entries, kind="policy_change", broker="owner", key_id="acme/emails",
                                               key_kind="model", policy=None, key_measurements=None))
    assert _releases_found(world, entries) == [
        ("error", "release", f"{_what(r)} to measurement {MEASUREMENT.hex()[:16]}…, not among the key's allowed "
                             "measurements []", batch, r["index"])
        for batch in ("b1", "bad") for r in [_release(entries, "owner", "acme/emails", batch)]]


@pytest.mark.parametrize("measurements", [[MEASUREMENT.hex()], [], None])
def test_a_resource_key_is_held_to_its_measurements(world: World, measurements: list[str] | None) -> None:
    """A key under res/ is a resource key unless its change says otherwise: its measurements, not a grant, decide;
    a change that leaves them unset leaves none."""
    entries, _ = world.fork()
    e = {**_release(entries, "owner", "acme/emails"), "key_id": "res/acme/blocklist", "operation": "resource",
         "index": 2000}
    entries += [_decision(entries, kind="policy_change", broker="owner", key_id="res/acme/blocklist", key_kind=None,
                          policy=None, key_measurements=measurements), e]
    assert _releases_found(world, entries) == ([] if measurements else [
        ("error", "release", f"{_what(e)} to measurement {MEASUREMENT.hex()[:16]}…, not among the key's allowed "
                             "measurements []", "b1", 2000)])


def test_a_key_first_seen_in_a_policy_change_without_its_kind_is_held_to_the_grant(world: World) -> None:
    """The log saw no creation of acme/late, only a policy change that names no kind: not a resource key (its name
    is not under res/), so b1's grant decides, and it does not name the key."""
    entries, _ = world.fork()
    e = {**_release(entries, "owner", "acme/emails"), "key_id": "acme/late", "index": 2000}
    entries += [_decision(entries, kind="policy_change", broker="owner", key_id="acme/late", key_kind=None,
                          policy=None, key_measurements=[MEASUREMENT.hex()]), e]
    assert _releases_found(world, entries) == [
        ("error", "release", f"{_what(e)} against its grant: the key is not among the granted keys "
                             "['acme/footer', 'acme/emails', 'acme/results']", "b1", 2000)]


def test_refusals_and_operations_that_release_nothing_are_not_judged(world: World) -> None:
    entries, _ = world.fork()
    e = _release(entries, "owner", "acme/emails")
    entries += [{**e, "decision": "deny", "measurement": None, "index": 2000},
                {**e, "operation": "admin.rotate", "measurement": None, "index": 2001}]
    assert _releases_found(world, entries) == []


@pytest.mark.parametrize("forge", ["removed", "refused", "after", "provider"])
def test_a_data_key_release_needs_the_owners_grant_for_the_batch_before_it(world: World, forge: str) -> None:
    entries, _ = world.fork()
    grant = next(e for e in entries if e.get("kind") == "grant" and e.get("batch_id") == "b1")
    _forge_entry(entries, grant, forge, "broker", "provider")
    assert _releases_found(world, entries) == [
        ("error", "release", f"{_what(e)}, but the owner recorded no grant for that batch before it", "b1", e["index"])
        for e in _owner_b1_releases(entries)]


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("granted_measurements", ["00" * 48], f"measurement {MEASUREMENT.hex()[:16]}… is not among the granted "
                                          f"{['00' * 48]}"),
    ("granted_measurements", None, f"measurement {MEASUREMENT.hex()[:16]}… is not among the granted None"),
    ("key_ids", None, "the key is not among the granted keys None"),
    ("model_digest", RECIPE, f"model {MODEL} is not the granted {RECIPE}")])
def test_a_data_key_release_is_held_to_each_term_of_its_grant(world: World, field: str, value: Any,
                                                              problem: str) -> None:
    entries, _ = world.fork()
    next(e for e in entries if e.get("kind") == "grant" and e.get("batch_id") == "b1")[field] = value
    assert _releases_found(world, entries) == [
        ("error", "release", f"{_what(e)} against its grant: {problem}", "b1", e["index"])
        for e in _owner_b1_releases(entries)]


# -- grants of verified receipts, result objects ----------------------------------------------------------


def _grants_found(w: World, entries: list[dict[str, Any]], bucket: Bucket) -> list[Row]:
    verified, _ = check_receipts(entries, bucket, w.anchors, w.policy)
    return rows(check_grants(entries, verified))


def test_the_batchs_receipts_had_its_grant(world: World) -> None:
    entries, bucket = world.fork()
    assert _grants_found(world, entries, bucket) == []


@pytest.mark.parametrize("forge", ["removed", "refused", "not a grant"])
def test_a_receipt_of_a_batch_the_owner_never_granted_is_an_error(world: World, forge: str) -> None:
    entries, bucket = world.fork()
    grant = next(e for e in entries if e.get("kind") == "grant" and e.get("batch_id") == "b1")
    _forge_entry(entries, grant, forge, "kind", "key_release")
    assert _grants_found(world, entries, bucket) == [
        ("error", "grant", f"batch b1: receipt of shard {i} exists but the owner never granted the batch", "b1", None)
        for i in (0, 1)]


def test_a_receipt_is_held_to_each_term_of_its_grant(world: World) -> None:
    zeros = config_digest_from_claims(bytes(32).hex())
    for field, value, said in [
            ("model_digest", RECIPE, f"used model {MODEL}, the grant names {RECIPE}"),
            ("granted_measurements", None, f"was signed by measurement {MEASUREMENT.hex()[:16]}…, not granted"),
            ("granted_config_digests", ["07" * 32], f"was signed by a worker launched with configuration "
                                                    f"{zeros[:16]}…, not one the grant names ({['07' * 32]})")]:
        entries, bucket = world.fork()
        next(e for e in entries if e.get("kind") == "grant" and e.get("batch_id") == "b1")[field] = value
        assert _grants_found(world, entries, bucket) == [
            ("error", "grant", f"batch b1: receipt of shard {i} {said}", "b1", None) for i in (0, 1)], field
    entries, bucket = world.fork()
    next(e for e in entries if e.get("kind") == "grant" and e.get("batch_id") == "b1")["granted_config_digests"] = [
        zeros]
    assert _grants_found(world, entries, bucket) == []


def _results_found(entries: list[dict[str, Any]], bucket: Bucket) -> list[Row]:
    return rows(check_results(entries, bucket))


def test_every_result_object_has_the_digest_its_receipt_signed(world: World) -> None:
    entries, bucket = world.fork()
    assert _results_found(entries, bucket) == []


def test_a_result_object_replaced_by_another_shards_is_named_with_its_origin(world: World) -> None:
    entries, bucket = world.fork()
    out0, out1 = (f"results/{TENANT}/b1/shard-0000{i}.parquet" for i in (0, 1))
    e0, e1 = (world.entry(entries, "receipt", receipt_key=k) for k in (SHARD0, SHARD1))
    bucket.objects[out0] = bucket.objects[out1]
    bucket.objects[out1] = b"PAR1 rewritten"
    rewritten = hashlib.sha256(b"PAR1 rewritten").hexdigest()
    assert _results_found(entries, bucket) == [
        ("error", "result", f"result object {out0} does not match its receipt {SHARD0}: sha256 "
                            f"{e1['output']['sha256'][:16]}…, the receipt signed {e0['output']['sha256'][:16]}…; it "
                            f"is the output of {SHARD1} (batch b1)", "b1", e0["index"]),
        ("error", "result", f"result object {out1} does not match its receipt {SHARD1}: sha256 "
                            f"{rewritten[:16]}…, the receipt signed {e1['output']['sha256'][:16]}…",
         "b1", e1["index"])]


def test_a_result_object_whose_receipt_is_not_a_batch_receipt_has_none(world: World) -> None:
    """Only shard receipts (kind "receipt") with an output name result objects; other entries naming it do not."""
    entries, bucket = world.fork()
    out0 = f"results/{TENANT}/b1/shard-00000.parquet"
    e0 = world.entry(entries, "receipt", receipt_key=SHARD0)
    e0["kind"] = "training_receipt"
    bucket.objects[f"results/{TENANT}/b1/shard-00000.json"] = b"not a result object"
    assert _results_found(entries, bucket) == [
        ("error", "result", f"result object {out0} has no receipt in the log", "b1", None)]
    e0.update(kind="receipt", output="not a dict")
    assert _results_found(entries, bucket) == [
        ("error", "result", f"result object {out0} has no receipt in the log", "b1", None)]


# -- which worker got which key ---------------------------------------------------------------------------


def _links_found(entries: list[dict[str, Any]], receipt_findings: list[Finding] | None = None) -> list[Row]:
    return rows(check_worker_links(entries, receipt_findings or []))


def _manifest(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in entries if e.get("kind") == "batch_result" and e.get("batch_id") == "b1")


def _unproven(e: dict[str, Any], said: str = "") -> Row:
    return ("note", "worker", f"broker {e['broker']} released key {e['key_id']} (decision {e['seq']}) to claims "
                              f"{e['claims_digest'][:12]}…, which no verified receipt of batch {e['batch_id']} signs: "
                              f"which worker got it is not proven{said}", e["batch_id"], e["index"])


def test_every_release_of_a_receipted_batch_is_tied_to_the_worker_its_receipts_sign(world: World) -> None:
    entries, _ = world.fork()
    assert _links_found(entries) == []
    links = signed_workers(entries, set())
    digest = _manifest(entries)["attestation"][0]["verdicts"][0]["claims_digest"]
    first = world.entry(entries, "receipt", receipt_key=SHARD0)["index"]
    assert links[("b1", digest)] == SignedWorker("w1", first)
    assert {batch for batch, _ in links} == {"b1", "t-1", "t-2"}


def test_a_release_to_claims_no_receipt_signs_is_unproven_with_what_the_platform_says(world: World) -> None:
    """A second worker of b1 got the emails key and signed nothing; the platform's manifest names it, unsigned."""
    entries, _ = world.fork()
    other = {**_release(entries, "owner", "acme/emails"), "claims_digest": "cd" * 32, "index": 2000}
    unsaid = {**other, "claims_digest": "ef" * 32, "index": 2001}
    entries += [other, unsaid, {**unsaid, "decision": "deny", "index": 2002},
                {**unsaid, "operation": "admin.grant", "index": 2003}, {**unsaid, "batch_id": "b7", "index": 2004}]
    _manifest(entries)["attestation"] += [{"worker": "w9", "verdicts": [{"claims_digest": "cd" * 32},
                                                                         {"claims_digest": None}]},
                                          {"worker": None, "verdicts": [{"claims_digest": "ef" * 32}]}]
    assert _links_found(entries) == [_unproven(other, " (the platform's unsigned result manifest says w9)"),
                                     _unproven(unsaid)]


def test_a_receipt_with_an_error_ties_no_release_to_its_worker(world: World) -> None:
    entries, _ = world.fork()
    bad = [Finding("error", "receipt", "altered", "b1", world.entry(entries, "receipt", receipt_key=k)["index"])
           for k in (SHARD0, SHARD1)]
    b1 = [e for e in entries if e.get("kind") == "key_release" and e.get("batch_id") == "b1"]
    assert _links_found(entries, bad) == [_unproven(e, " (the platform's unsigned result manifest says w1)")
                                          for e in b1]
    # a note about a receipt, or an error about something else at its position, does not unlink it
    assert _links_found(entries, [Finding("note", "receipt", "said", "b1", f.index) for f in bad]
                        + [Finding("error", "result", "other", "b1", f.index) for f in bad]) == []
    training = world.entry(entries, "training_receipt", receipt_key=RECEIPT1)["index"]
    t1 = [e for e in entries if e.get("kind") == "key_release" and e.get("batch_id") == "t-1"]
    assert _links_found(entries, [Finding("error", "training", "altered", "t-1", training)]) == [
        _unproven(e) for e in t1]


def test_a_result_manifest_naming_another_worker_than_the_signed_one_is_an_error(world: World) -> None:
    entries, _ = world.fork()
    manifest = _manifest(entries)
    digest = manifest["attestation"][0]["verdicts"][0]["claims_digest"]
    manifest["attestation"][0]["worker"] = "w9"
    manifest["shards"][1]["worker"] = "w8"
    where = f"the result manifest {manifest['key']} (written by the platform, unsigned)"
    first = world.entry(entries, "receipt", receipt_key=SHARD0)["index"]
    assert _links_found(entries) == [
        ("error", "worker", f"{where} names worker 'w9' for attested claims {digest[:12]}…, but the enclave's receipt "
                            f"at log position {first} signs 'w1'", "b1", manifest["index"]),
        ("error", "worker", f"{where} names worker 'w8' for shard 1, but its receipt signs 'w1'", "b1",
         manifest["index"])]


def test_a_result_manifest_shard_without_a_worker_or_a_logged_receipt_names_nobody(world: World) -> None:
    entries, _ = world.fork()
    manifest = _manifest(entries)
    manifest["shards"][0]["worker"] = None
    manifest["shards"][1]["receipt_key"] = "results/acme/b1/shard-00009.receipt.jws"
    manifest["shards"][1]["worker"] = "w8"
    manifest["attestation"][0]["verdicts"][0]["claims_digest"] = "cd" * 32
    assert _links_found(entries) == []


def test_a_result_manifest_is_not_compared_with_a_receipt_that_has_an_error(world: World) -> None:
    """Shard 1's receipt has an error finding: the manifest's worker for shard 1 is not held to what it says (nor
    to a training receipt's); shard 0's verified receipt still ties the claims to w1."""
    entries, _ = world.fork()
    manifest = _manifest(entries)
    manifest["shards"][1]["worker"] = "w8"
    manifest["shards"].append({**manifest["shards"][1], "receipt_key": RECEIPT1})
    at = world.entry(entries, "receipt", receipt_key=SHARD1)["index"]
    assert _links_found(entries, [Finding("error", "receipt", "altered", "b1", at)]) == []


def test_a_session_that_is_not_an_object_links_nothing(world: World) -> None:
    entries, _ = world.fork()
    receipt = world.entry(entries, "receipt", receipt_key=SHARD0)
    receipt["sessions"] = ["owner", *receipt["sessions"]]
    assert signed_workers(entries, set()) == signed_workers(world.entries, set())
    receipt["sessions"] = [None, "owner"]  # nothing left: the same claims are linked through shard 1's receipt
    digest = _manifest(entries)["attestation"][0]["verdicts"][0]["claims_digest"]
    shard1 = world.entry(entries, "receipt", receipt_key=SHARD1)["index"]
    assert signed_workers(entries, set())[("b1", digest)] == SignedWorker("w1", shard1)


# -- broker heads, batches without receipts -----------------------------------------------------------------


def test_each_brokers_head_is_backed_by_its_own_decisions(world: World) -> None:
    entries, _ = world.fork()
    assert rows(check_broker_heads(entries)) == []
    heads = [e for e in entries if e.get("kind") == "broker_head"]
    assert {h["broker"] for h in heads} == {"owner", "provider"}
    owner = next(h for h in heads if h["broker"] == "owner")
    last = next(e for e in entries if e.get("broker") == "owner" and e.get("seq") == owner["head_seq"])
    last["seq"] = str(last["seq"])  # a decision whose number is not a number backs nothing
    assert rows(check_broker_heads(entries)) == [
        ("error", "sync", f"a sync recorded broker owner's log up to decision {owner['head_seq']}, but the log lacks "
                          f"decision(s) {owner['head_seq']} before it", None, owner["index"])]


def test_a_head_recorded_with_another_chain_hash_is_named(world: World) -> None:
    entries, _ = world.fork()
    owner = next(e for e in entries if e.get("kind") == "broker_head" and e["broker"] == "owner")
    held = next(e for e in entries if e.get("broker") == "owner" and e.get("seq") == owner["head_seq"])["chain_hash"]
    owner["head_hash"] = "f" * 64
    assert rows(check_broker_heads(entries)) == [
        ("error", "sync", f"a sync recorded broker owner's decision {owner['head_seq']} with chain hash {'f' * 16}…, "
                          f"the log holds {held[:16]}…", None, owner["index"])]
    owner["head_seq"] = None  # a head that names no decision: decision 0, which no broker writes
    assert rows(check_broker_heads(entries)) == [
        ("error", "sync", f"a sync recorded broker owner's decision 0 with chain hash {'f' * 16}…, the log holds None…",
         None, owner["index"])]


def test_a_head_is_backed_only_by_decisions_of_the_kinds_brokers_make(world: World) -> None:
    entries, _ = world.fork()
    owner = next(e for e in entries if e.get("kind") == "broker_head" and e["broker"] == "owner")
    for kind in ("attestation", "grant", "policy_change", "key_release"):
        assert any(e.get("kind") == kind and e.get("broker") == "owner" for e in entries), kind
    first = next(e for e in entries if e.get("broker") == "owner" and e.get("seq") == 1)
    first["kind"] = "receipt"
    assert rows(check_broker_heads(entries)) == [
        ("error", "sync", f"a sync recorded broker owner's log up to decision {owner['head_seq']}, but the log lacks "
                          "decision(s) 1 before it", None, owner["index"])]


def test_keys_released_for_a_batch_without_a_receipt_need_its_recorded_failure(world: World) -> None:
    entries, _ = world.fork()
    assert rows(check_unreceipted_batches(entries)) == [
        ("note", "batch", "batch bad: 3 key release(s) but no receipt, because the batch failed: score: worker lost",
         "bad", None)]
    status = next(e for e in entries if e.get("kind") == "batch_status" and e.get("batch_id") == "bad")
    status["state"] = "succeeded"
    assert rows(check_unreceipted_batches(entries)) == [
        ("error", "batch", "batch bad: 3 key release(s) but no receipt and no recorded failure (status: succeeded)",
         "bad", None)]
    status["kind"] = "batch_submitted"
    assert rows(check_unreceipted_batches(entries)) == [
        ("error", "batch", "batch bad: 3 key release(s) but no receipt and no recorded failure (status: none)",
         "bad", None)]


def test_only_released_keys_count_and_a_receipt_counts_for_its_folders_batch(world: World) -> None:
    entries, _ = world.fork()
    entries = [e for e in entries if e.get("batch_id") != "bad"]
    receipts = [e for e in entries if e.get("kind") in ("receipt", "training_receipt")]
    release = _release(entries, "owner", "acme/emails")
    entries += [{**release, "batch_id": "b7", "decision": "deny"}, {**release, "batch_id": "b7", "operation": "x"},
                {**release, "batch_id": None}, {**release, "batch_id": "b8", "kind": "attestation"}]
    assert rows(check_unreceipted_batches(entries)) == []
    for r in receipts:
        r["batch_id"] = "elsewhere"  # the log's copy; the folder's batch is what counts
    assert rows(check_unreceipted_batches(entries)) == []
    for r in receipts:
        r["path_batch_id"] = "elsewhere"
    assert [f[2] for f in rows(check_unreceipted_batches(entries))] == [
        "batch b1: 5 key release(s) but no receipt and no recorded failure (status: succeeded)",
        "batch t-1: 3 key release(s) but no receipt and no recorded failure (status: succeeded)",
        "batch t-2: 3 key release(s) but no receipt and no recorded failure (status: succeeded)"]


# -- the whole audit --------------------------------------------------------------------------------------


def test_the_synced_world_holds_and_each_check_is_run(world: World, tmp_path: Path) -> None:
    log = world.log(tmp_path / "audit")
    _, bucket = world.fork()
    assert verify_audit(log, bucket, world.anchors, world.policy) == [
        Finding("note", "batch", "batch bad: 3 key release(s) but no receipt, because the batch failed: score: "
                                 "worker lost", "bad")]
    bucket.objects[f"results/{TENANT}/b7/shard-00000.receipt.jws"] = b"written after the sync"
    bucket.objects[f"results/{TENANT}/b7/shard-00000.parquet"] = b"PAR1"
    bucket.objects[_tuned(9, "card.jws")] = b"written after the sync"
    release = _release(world.entries, "owner", "acme/emails")
    fields = {k: v for k, v in release.items() if k not in ("kind", "index")}
    log.append("key_release", "forged:1", {**fields, "measurement": None})  # released without attestation
    log.append("key_release", "forged:2", {**fields, "claims_digest": "cd" * 32})  # to a worker nobody signed
    grant = next(e for e in world.entries if e.get("kind") == "grant" and e.get("batch_id") == "b1")
    log.append("grant", "forged:3", {**{k: v for k, v in grant.items() if k not in ("kind", "index")},
                                     "model_digest": RECIPE})  # the owner's last word: another model
    log.append("broker_head", "forged:4", {"broker": "owner", "head_seq": 1, "head_hash": "f" * 64})
    found = verify_audit(log, bucket, world.anchors, world.policy, witnesses=[Witness(tmp_path / "owner", "owner")])
    assert {(f.severity, f.check) for f in found} == {
        ("note", "integrity"), ("note", "witness"), ("error", "release"), ("error", "receipt"), ("error", "result"),
        ("error", "grant"), ("note", "worker"), ("error", "sync"), ("error", "training"), ("note", "batch")}, found


# -- the log's integrity ----------------------------------------------------------------------------------


def _integrity(log: AuditLog, *witnesses: Witness) -> list[Row]:
    return rows(check_integrity(log, witnesses))


def _rewrite(log: AuditLog, folder: Path, change: Any) -> AuditLog:
    """The log's entry lines passed through `change` and written back (what an operator with disk access does)."""
    lines = (folder / ENTRIES).read_bytes().splitlines()
    (folder / ENTRIES).write_bytes(b"".join(line + b"\n" for line in change(lines)))
    return AuditLog.open_dir(folder)


def _mismatch(log: AuditLog, where: str = "") -> Row:
    latest = log.latest_checkpoint()
    root = log.tree().root(latest.size).hex()[:16]
    return ("error", "integrity", f"the first {latest.size} entries hash to {root}…, not to the root of the signed "
                                  f"checkpoint ({latest.describe()}): an entry was changed, removed or "
                                  f"reordered{where}",
            None, None)


def test_the_synced_log_is_intact_and_its_witnesses_agree(world: World, tmp_path: Path) -> None:
    log = world.log(tmp_path / "audit")
    owner = Witness(tmp_path / "owner", "owner")
    assert _integrity(log) == []
    assert _integrity(log, owner) == [
        ("note", "witness", "no witness has pinned the log's key yet; the key stored beside the log was trusted", None,
         None),
        ("note", "witness", "the owner has not seen any checkpoint of this log yet", None, None)]
    owner.observe(log)
    assert _integrity(log, owner) == []
    assert changed_span(log) is None


@pytest.mark.parametrize(("line", "said"), [
    (b"{not json", "is not valid JSON: its bytes were altered"),
    (b"[3]", "is not in canonical form: it was edited after it was written"),
    (b'{"index": 3}', "is not in canonical form: it was edited after it was written")])
def test_an_altered_entry_is_named_at_its_position(world: World, tmp_path: Path, line: bytes, said: str) -> None:
    log = world.log(tmp_path / "audit")
    n = log.size
    log = _rewrite(log, tmp_path / "audit", lambda lines: [line if i == 3 else x for i, x in enumerate(lines)])
    assert _integrity(log) == [("error", "integrity", f"entry at position 3 {said}", None, None),
                               _mismatch(log, f" (within positions 0..{n - 1})")]
    assert len(readable_entries(log)) == n - (line != b'{"index": 3}')


def test_every_altered_entry_is_named_not_only_the_first(world: World, tmp_path: Path) -> None:
    log = world.log(tmp_path / "audit")
    altered = {3: b"{not json", 5: b"[5]"}
    log = _rewrite(log, tmp_path / "audit", lambda lines: [altered.get(i, x) for i, x in enumerate(lines)])
    assert [f[2] for f in _integrity(log)[:2]] == [
        "entry at position 3 is not valid JSON: its bytes were altered",
        "entry at position 5 is not in canonical form: it was edited after it was written"]


def test_a_rewrite_re_signed_with_the_log_key_is_named_by_every_earlier_checkpoint_of_it(world: World,
                                                                                        tmp_path: Path) -> None:
    """The operator edits entry 2 (canonical, at its index) and signs a new head of the same size: the head holds,
    but each published checkpoint over entry 2 (one of the same size too, kept under another name) refuses it."""
    log = world.log(tmp_path / "audit")
    n = log.size
    log.append("grant", "later:1", {"batch_id": "later-1"})
    same_size = log.publish_checkpoint().note
    (tmp_path / "audit" / HISTORY / "0").write_text(same_size)

    def edited(lines: list[bytes]) -> list[bytes]:
        entry = json.loads(lines[2])
        return [*lines[:2], canonical_json({**entry, "reason": "rewritten"}), *lines[3:]]

    log = _rewrite(log, tmp_path / "audit", edited)
    latest = log.publish_checkpoint()
    found = []
    for note in log.history()[:2]:  # history/0 (size n + 1, the old root), then history/n
        old = Checkpoint.open(note, str(log.vkey()))
        with pytest.raises(ProofError) as refused:
            verify_consistency(old.size, latest.size, log.consistency_proof(old.size, latest.size), old.root,
                               latest.root)
        found.append(("error", "integrity", f"the checkpoint {old.describe()} is not consistent with the latest "
                                            f"({latest.describe()}): the log was rewritten ({refused.value})", None,
                      None))
    assert [Checkpoint.open(note, str(log.vkey())).size for note in log.history()] == [n + 1, n, n + 1]
    assert _integrity(log) == found


def test_an_altered_entry_of_a_log_without_its_published_history_is_named_without_a_span(world: World,
                                                                                       tmp_path: Path) -> None:
    log = world.log(tmp_path / "audit")
    shutil.rmtree(tmp_path / "audit" / HISTORY)
    log = _rewrite(log, tmp_path / "audit", lambda lines: [lines[0].replace(b'"', b"'", 1), *lines[1:]])
    assert changed_span(log) is None
    assert _integrity(log) == [("error", "integrity", "entry at position 0 is not valid JSON: its bytes were altered",
                                None, None), _mismatch(log)]


def test_reordered_entries_are_named_and_located_after_the_checkpoints_they_still_match(world: World,
                                                                                       tmp_path: Path) -> None:
    """Two checkpoints; entries 2 and 3 of the second stretch swapped: the first still matches."""
    log = world.log(tmp_path / "audit")
    first = log.size
    for i in range(4):
        log.append("grant", f"later:{i}", {"batch_id": f"later-{i}", "decision": "allow"})
    log.publish_checkpoint()
    swap = {first + 2: first + 3, first + 3: first + 2}

    def swapped(lines: list[bytes]) -> list[bytes]:
        return [lines[swap.get(i, i)] for i in range(len(lines))]

    log = _rewrite(log, tmp_path / "audit", swapped)
    forged = log.history()[0].replace(f"\n{first}\n", f"\n{first - 1}\n")  # no longer verifies: passed over
    (tmp_path / "audit" / HISTORY / "1").write_text(forged)
    with pytest.raises(LogError) as unverified:
        Checkpoint.open(forged, str(log.vkey()))
    assert changed_span(log) == (first, first + 4)
    latest = log.latest_checkpoint()
    old = Checkpoint.open(log.history()[1], str(log.vkey()))  # history/1 is the forged one
    with pytest.raises(ProofError) as refused:
        verify_consistency(first, latest.size, log.consistency_proof(first, latest.size), old.root, latest.root)
    assert _integrity(log) == [
        ("error", "integrity", f"position {first + 2} holds the entry written as number {first + 3}: entries were "
                               "removed or reordered", None, None),
        ("error", "integrity", f"position {first + 3} holds the entry written as number {first + 2}: entries were "
                               "removed or reordered", None, None),
        _mismatch(log, f" (within positions {first}..{first + 3}; the first {first} entries still match their "
                       "checkpoint)"),
        ("error", "integrity", f"a published checkpoint does not verify: {unverified.value}", None, None),
        ("error", "integrity", f"the checkpoint {old.describe()} is not consistent with the latest "
                               f"({latest.describe()}): the log was rewritten ({refused.value})", None, None)]


def test_a_log_shorter_than_its_signed_checkpoint_is_named(world: World, tmp_path: Path) -> None:
    log = world.log(tmp_path / "audit")
    n, latest = log.size, log.latest_checkpoint()
    log = _rewrite(log, tmp_path / "audit", lambda lines: lines[:-1])
    assert _integrity(log) == [
        ("error", "integrity", f"the signed checkpoint ({latest.describe()}) covers {n} entries but the log holds only "
                               f"{n - 1}: entries were removed", None, None)]
    assert changed_span(log) == (0, n - 1)


def test_entries_after_the_latest_checkpoint_are_noted_and_a_later_history_point_is_not_a_rewrite(
        world: World, tmp_path: Path) -> None:
    """The head is set back to the first checkpoint after a second was published: the two entries since are said
    to be unsigned; the second checkpoint, larger than the head, is not checked against it."""
    log = world.log(tmp_path / "audit")
    head = (tmp_path / "audit" / CHECKPOINT).read_bytes()
    log.append("grant", "later:1", {"batch_id": "later-1"})
    log.append("grant", "later:2", {"batch_id": "later-2"})
    log.publish_checkpoint()
    (tmp_path / "audit" / CHECKPOINT).write_bytes(head)
    assert _integrity(AuditLog.open_dir(tmp_path / "audit")) == [
        ("note", "integrity", "2 entries after the latest checkpoint are not signed yet (run a sync to sign them)",
         None, None)]


def test_a_later_checkpoint_filed_first_in_the_history_does_not_end_the_check(world: World, tmp_path: Path) -> None:
    """The platform files a checkpoint larger than the head under history/0, before a signed checkpoint of another
    tree of size 1: the first is passed over, the second is still named."""
    log = world.log(tmp_path / "audit")
    head = (tmp_path / "audit" / CHECKPOINT).read_bytes()
    log.append("grant", "later:1", {"batch_id": "later-1"})
    (tmp_path / "audit" / HISTORY / "0").write_text(log.publish_checkpoint().note)
    (tmp_path / "audit" / CHECKPOINT).write_bytes(head)
    other = Checkpoint(log.origin, 1, bytes(32), 0)
    (tmp_path / "audit" / HISTORY / "1").write_text(
        sign_note(other.text(), log.origin, load_or_create_key(tmp_path / "audit" / "log-key.pem")))
    log = AuditLog.open_dir(tmp_path / "audit")
    latest = log.latest_checkpoint()
    with pytest.raises(ProofError) as refused:
        verify_consistency(1, latest.size, log.consistency_proof(1, latest.size), bytes(32), latest.root)
    old = Checkpoint.open(log.history()[1], str(log.vkey()))
    assert [f for f in _integrity(log) if f[0] == "error"] == [
        ("error", "integrity", f"the checkpoint {old.describe()} is not consistent with the latest "
                               f"({latest.describe()}): the log was rewritten ({refused.value})", None, None)]


def test_a_head_or_a_published_checkpoint_that_does_not_verify_is_named(world: World, tmp_path: Path) -> None:
    log = world.log(tmp_path / "audit")
    note = log.history()[0]
    forged = note.replace(f"\n{log.size}\n", f"\n{log.size - 1}\n")  # the signature no longer covers it
    with pytest.raises(LogError) as refused:
        Checkpoint.open(forged, str(log.vkey()))
    (tmp_path / "audit" / HISTORY / "1").write_text(forged)
    assert _integrity(log) == [
        ("error", "integrity", f"a published checkpoint does not verify: {refused.value}", None, None)]
    assert changed_span(log) is None  # the unverifiable one is passed over, and the next still matches
    (tmp_path / "audit" / CHECKPOINT).write_text(forged)
    assert _integrity(AuditLog.open_dir(tmp_path / "audit")) == [
        ("error", "integrity", f"the log's latest checkpoint cannot be trusted: {refused.value}", None, None)]
    n = log.size  # past the unverifiable one, the next published checkpoint still locates a change
    altered = _rewrite(log, tmp_path / "audit", lambda lines: [*lines[:-1], lines[-1].replace(b'"', b"'", 1)])
    assert changed_span(altered) == (0, n)


def test_witnesses_that_pinned_different_keys_are_named_and_each_is_asked(world: World, tmp_path: Path) -> None:
    """The head and the published checkpoints are then checked with the log's own key (each named witness says
    whether it agrees): no checkpoint is reported as not verifying under no key at all."""
    log = world.log(tmp_path / "audit")
    owner, provider = Witness(tmp_path / "owner", "owner"), Witness(tmp_path / "provider", "provider")
    owner.observe(log)
    other = AuditLog.open_dir(tmp_path / "other")
    other.append("grant", "g1", {"batch_id": "g1"})
    other.publish_checkpoint()
    provider.observe(other)
    with pytest.raises(LogError) as refused:
        provider.check(log)
    pinned = {"owner": log.vkey(), "provider": other.vkey()}
    assert _integrity(log, owner, provider) == [
        ("error", "witness", f"the witnesses pinned different log keys: {pinned}: they were shown two different logs",
         None, None),
        ("error", "witness", str(refused.value), None, None)]


def test_the_head_is_checked_with_the_key_the_witnesses_pinned(world: World, tmp_path: Path) -> None:
    """The operator replaces the log's key and re-signs the head: the witnesses' pinned key refuses it."""
    log = world.log(tmp_path / "audit")
    owner = Witness(tmp_path / "owner", "owner")
    owner.observe(log)
    pinned = log.vkey()
    (tmp_path / "audit" / VKEY).unlink()
    rekeyed = AuditLog.open_dir(tmp_path / "audit", key_path=tmp_path / "new-key.pem")
    rekeyed.publish_checkpoint()
    with pytest.raises(LogError) as refused:
        rekeyed.latest_checkpoint(pinned)
    with pytest.raises(LogError) as witness:
        owner.check(rekeyed)
    assert _integrity(rekeyed, owner) == [
        ("error", "integrity", f"the log's latest checkpoint cannot be trusted: {refused.value}", None, None)]
    assert str(witness.value).startswith("owner's witness: the log now presents key ")


def test_a_finding_reads_with_its_severity_check_and_log_position() -> None:
    assert str(Finding("error", "receipt", "altered", "b1", 7)) == "[error] receipt: altered (log entry 7)"
    assert str(Finding("note", "batch", "failed", "b1")) == "[note] batch: failed"
    assert str(Finding("note", "batch", "at the start", None, 0)) == "[note] batch: at the start (log entry 0)"
    assert failed([Finding("note", "batch", "x"), Finding("error", "batch", "y")])
    assert not failed([Finding("note", "batch", "x")]) and not failed([])


class _Failing(Bucket):
    """A store whose reads fail for a reason other than a missing object (access denied, outage)."""

    def get_if_exists(self, key: str) -> bytes | None:
        raise OSError(f"access denied: {key}")


class _GetOnly:
    """A store with only `get` and `keys` (an `Objects` without `get_if_exists`)."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = dict(objects)

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))


def test_a_storage_failure_is_not_taken_for_a_missing_object(world: World) -> None:
    """Through `get_if_exists` only a missing object reads as None; an outage stops the audit instead of reading
    as receipts and evidence removed."""
    entries, bucket = world.fork()
    with pytest.raises(OSError, match="access denied"):
        check_receipts(entries, _Failing(bucket.objects), world.anchors, world.policy)


def test_a_store_without_get_if_exists_is_read_through_get(world: World) -> None:
    entries, bucket = world.fork()
    verified, findings = check_receipts(entries, _GetOnly(bucket.objects), world.anchors, world.policy)
    assert len(verified) == 2 and findings == []
    del bucket.objects[SHARD0]
    at = world.entry(entries, "receipt", receipt_key=SHARD0)["index"]
    assert rows(check_receipts(entries, _GetOnly(bucket.objects), world.anchors, world.policy)[1]) == [
        ("error", "receipt", f"receipt {SHARD0} is in the log but no longer in storage", "b1", at)]


def test_a_stored_card_that_is_not_utf8_is_refused_not_a_crash(world: World) -> None:
    entries, bucket = world.fork()
    bucket.objects[CARD1] = b"\xff\xfe" + bucket.objects[CARD1]
    at = world.entry(entries, "tuned_model", card_key=CARD1)["index"]
    found = _training(world, entries, bucket)
    assert found[0] == ("error", "training", f"{CARD1} in storage is not the one logged: it was replaced", "t-1", at)
    assert len(found) == 3 and found[1][2].startswith(f"{CARD1} does not verify, it is forged or altered: "), found
    assert found[2] == ("error", "training", f"{CARD1} in storage is not in the log: it was written or replaced after "
                                             "the last sync", None, None)
