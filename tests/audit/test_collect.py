"""How the auditor collects the log (audit/collect.py): each broker decision and each stored object becomes one entry,
field for field; a broker that rewrote or reset a decision already logged is refused; a sync appends only what is
new, in the order things happened, and signs a checkpoint only when the log moved or its checkpoint is missing or
stale. Brokers are `FakeBroker`s (the broker's exact hash chain); objects are signed with a throwaway key (the
collector reads payloads unverified: the verifier checks signatures).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from audit.collect import (
    CollectError,
    SyncReport,
    broker_entries,
    decision_entry,
    head_entry,
    parse_grant_reason,
    parse_policy_reason,
    storage_entries,
    sync_log,
)
from audit.log import AuditLog, Checkpoint
from enclave.signing import generate_signing_key, sign_json
from tests.audit.conftest import MEASUREMENT, MODEL, FakeBroker, MemoryStore
from tests.keybroker.inproc import Env
from wire.decision_log import GENESIS

M = MEASUREMENT.hex()
SIGNER = generate_signing_key()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _jws(payload: dict[str, Any]) -> bytes:
    return sign_json(payload, SIGNER).encode()


def _decision(op: str, **fields: Any) -> dict[str, Any]:
    return {"seq": 7, "hash": "h7", "time": 12.5, "operation": op, "decision": "allow", "key_id": "k",
            "batch_id": "b1", "model_digest": MODEL, "measurement": M, "claims_digest": "cd", "reason": "r", **fields}


BASE = {"broker": "owner", "seq": 7, "chain_hash": "h7", "time": 12.5, "decision": "allow", "key_id": "k",
        "batch_id": "b1", "model_digest": MODEL, "measurement": M, "claims_digest": "cd"}


# -- broker decisions ------------------------------------------------------------------------------

@pytest.mark.parametrize(("op", "kind"), [("attest", "attestation"), ("unwrap", "key_release"),
                                          ("wrap", "key_release"), ("resource", "key_release")])
def test_a_decision_is_logged_with_every_field_under_its_kind(op: str, kind: str) -> None:
    assert decision_entry("owner", _decision(op)) == (kind, "decision:owner:7", {**BASE, "operation": op,
                                                                                 "reason": "r"})


def test_a_decision_without_its_optional_fields_logs_them_empty() -> None:
    bare = {"seq": 1, "hash": "h1", "time": 1.0, "operation": "attest", "decision": "deny"}
    assert decision_entry("provider", bare) == ("attestation", "decision:provider:1", {
        "broker": "provider", "seq": 1, "chain_hash": "h1", "time": 1.0, "operation": "attest", "decision": "deny",
        "key_id": None, "batch_id": None, "model_digest": None, "measurement": None, "claims_digest": None,
        "reason": None})


def test_a_grant_is_logged_with_what_its_reason_grants() -> None:
    reason = f"grant keys ['a', 'b'] to measurements ['{M}']; worker configurations ['cf']; 20 rows"
    kind, entry_id, fields = decision_entry("owner", _decision("admin.grant", reason=reason))
    assert (kind, entry_id) == ("grant", "decision:owner:7")
    assert fields == {**BASE, "operation": "admin.grant", "reason": reason, "key_ids": ["a", "b"],
                      "granted_measurements": [M], "granted_config_digests": ["cf"], "granted_rows": 20}
    _, _, unexplained = decision_entry("owner", _decision("admin.grant", reason=None))
    assert {k: unexplained[k] for k in ("key_ids", "granted_measurements", "granted_config_digests",
                                        "granted_rows")} == dict.fromkeys(("key_ids", "granted_measurements",
                                                                           "granted_config_digests", "granted_rows"))


@pytest.mark.parametrize("op", ["admin.create_key", "admin.set_policy", "admin.put_resource"])
def test_a_policy_change_is_logged_with_the_policy_and_measurements_it_set(op: str) -> None:
    reason = "created model key; policy: claims.debug == false; measurements: ['ab']"
    kind, _, fields = decision_entry("owner", _decision(op, reason=reason))
    assert kind == "policy_change"
    assert fields == {**BASE, "operation": op, "reason": reason, "key_kind": "model",
                      "policy": "claims.debug == false", "key_measurements": ["ab"]}
    _, _, unexplained = decision_entry("owner", _decision(op, reason=None))
    assert (unexplained["key_kind"], unexplained["policy"], unexplained["key_measurements"]) == (None, None, None)


def test_reasons_the_parsers_cannot_read_give_no_grant_or_policy() -> None:
    nothing = {"key_ids": None, "granted_measurements": None, "granted_config_digests": None, "granted_rows": None}
    assert parse_grant_reason("grant keys ['a'] to measurements ['b'] and more") == nothing  # not the whole reason
    unreadable_keys = parse_grant_reason("grant keys [a b] to measurements [1, 2]")
    assert unreadable_keys == {**nothing, "granted_measurements": ["1", "2"]}
    assert parse_grant_reason("grant keys [(] to measurements []")["key_ids"] is None  # not a literal
    assert parse_policy_reason("policy: x; measurements: ['a'] trailing") == {"key_kind": None, "policy": None,
                                                                                "key_measurements": None}
    assert parse_policy_reason("policy: line one\nline two; measurements: unchanged") == {
        "key_kind": None, "policy": "line one\nline two", "key_measurements": None}


def test_broker_entries_are_the_decisions_not_yet_logged(tmp_path: Path) -> None:
    broker = FakeBroker("owner")
    broker.create_key("k1")
    log = AuditLog.open_dir(tmp_path / "log")
    for kind, entry_id, fields in broker_entries(log, "owner", broker.decisions()):
        log.append(kind, entry_id, fields)
    broker.create_key("k2")
    other = FakeBroker("provider")
    other.create_key("m1")
    other.create_key("m2")  # its seq 2 is not logged under "owner"
    assert [e[1] for e in broker_entries(log, "owner", broker.decisions())] == ["decision:owner:2"]
    assert [e[1] for e in broker_entries(log, "provider", other.decisions())] == ["decision:provider:1",
                                                                                 "decision:provider:2"]


def _rewritten(broker: FakeBroker, seq: int) -> FakeBroker:
    """The broker's log kept before `seq`, then re-chained from `seq` on with that decision's reason changed:
    well-formed, the same length."""
    forged = FakeBroker(broker.name, [dict(d) for d in broker.log[:seq - 1]])
    for d in broker.log[seq - 1:]:
        reason = d["reason"] + " (edited)" if d["seq"] == seq else d["reason"]
        forged.decide(d["operation"], d["decision"], reason, **{k: d[k] for k in ("key_id", "batch_id")})
    return forged


def test_a_broker_that_rewrote_a_logged_decision_is_refused(tmp_path: Path) -> None:
    broker = FakeBroker("owner")
    for key_id in ("k1", "k2", "k3"):
        broker.create_key(key_id)
    log = AuditLog.open_dir(tmp_path / "log")
    sync_log(log, {"owner": broker}, MemoryStore())
    forged = _rewritten(broker, 2)
    assert [d["seq"] for d in forged.log] == [1, 2, 3] and forged.log[0] == broker.log[0]
    assert forged.log[1]["prev_hash"] == broker.log[0]["hash"] and forged.log[1]["hash"] != broker.log[1]["hash"]
    with pytest.raises(CollectError) as err:
        sync_log(log, {"owner": forged}, MemoryStore())
    assert str(err.value) == (f"broker owner: decision 2 was logged with chain hash {broker.log[1]['hash']}, but "
                              f"the broker now shows {forged.log[1]['hash']} there: its decision log was rewritten "
                              "or reset")


def test_a_broker_reset_below_what_was_logged_is_refused(tmp_path: Path) -> None:
    broker = FakeBroker("owner")
    broker.create_key("k1")
    broker.create_key("k2")
    log = AuditLog.open_dir(tmp_path / "log")
    sync_log(log, {"owner": broker}, MemoryStore())
    reset = FakeBroker("owner")
    reset.create_key("k1")  # the same first decision, bar its time
    reset.log[0] = dict(broker.log[0])
    with pytest.raises(CollectError) as err:
        sync_log(log, {"owner": reset}, MemoryStore())
    assert str(err.value) == (f"broker owner: decision 2 was logged with chain hash {broker.log[1]['hash']}, but the "
                              "broker now shows nothing there: its decision log was rewritten or reset")


def test_a_broker_decision_edited_in_its_database_is_refused_at_collection(tmp_path: Path) -> None:
    """The production broker in process, read through `BrokerAdmin`: a decision already logged is edited in the
    broker's database under its old chain hash. The log's own check (same hash at that position) passes; the
    broker's chain, which a sync verifies, does not."""
    env = Env(tmp_path / "broker")
    env.admin.create_key("acme.footer")
    env.admin.create_key("acme.emails")
    log = AuditLog.open_dir(tmp_path / "log")
    assert sync_log(log, {"owner": env.admin}, MemoryStore()).appended == {"policy_change": 2, "broker_head": 1}
    first = env.admin.decisions(verify=False)[0]
    assert env.config.db_path is not None
    with sqlite3.connect(env.config.db_path) as db:  # whoever holds the database drops the append-only trigger
        db.execute("DROP TRIGGER decisions_no_update")
        db.execute("UPDATE decisions SET reason = ? WHERE seq = 1",
                   ("created data key; policy: true; measurements: []",))
    with pytest.raises(ValueError) as err:
        sync_log(log, {"owner": env.admin}, MemoryStore())
    assert str(err.value).startswith("decision 1: hash expected ")
    assert str(err.value).endswith(f", actual {first['hash']}") and GENESIS not in str(err.value)
    assert log.size == 3


def test_a_broker_head_is_logged_once_per_head(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_764_000_000.123456)  # a clock with digits past the millisecond
    kind, entry_id, fields = head_entry("owner", {"seq": 4, "hash": "h4"})
    assert (kind, entry_id) == ("broker_head", "head:owner:4:h4")
    assert fields == {"broker": "owner", "head_seq": 4, "head_hash": "h4", "synced_at": 1_764_000_000.123}


# -- stored objects --------------------------------------------------------------------------------

def _store() -> tuple[MemoryStore, dict[str, bytes]]:
    """A bucket with a batch (b1: manifest, two receipts, result manifest, status), a failed batch's status, a batch
    whose receipt and result manifest are unreadable (b4), a result manifest with no receipt (b3), a training job (t-1)
    with its card and receipt, a card without a receipt, and objects the collector passes over."""
    card = {"tenant": "acme", "name": "tuned", "version": 1, "digest": "sha256:" + "11" * 32,
            "lineage": {"job_id": "t-1", "recipe": "r"}, "evidence_sha256": "e3", "wrapped_share": "AAAA"}
    raw = {
        "incoming/acme/b1/manifest.jws": _jws({
            "tenant": "acme", "batch_id": "b1", "created_at": 100, "model": {"digest": MODEL},
            "key_broker": {"name": "owner"},
            "objects": [{"key": "incoming/acme/b1/p.parquet", "size": 9, "sha256": "cd", "file_id": "f", "rows": 3,
                         "row_groups": 1, "extra": "dropped"}]}),
        "incoming/acme/b1/p.parquet": b"PAR1",
        "incoming/acme/b2/manifest.jws": b"\xff not a token",
        "incoming/acme/t-1/training.jws": _jws({
            "tenant": "acme", "job_id": "t-1", "created_at": 50, "recipe": {"name": "r"}, "model": {"name": "m"},
            "holdout": {"fraction": 0.3}, "object": {"key": "incoming/acme/t-1/train.parquet", "size": 5,
                                                      "sha256": "ee", "rows": 30, "spam": 15},
            "key_broker": {"share_wrapped": "AAAA"}}),
        "incoming/acme/t-2/training.jws": _jws({"tenant": "acme", "job_id": "t-2", "created_at": 60, "object": "x"}),
        "incoming/acme/t-3/training.jws": b"\xff",
        "results/acme/b1/shard-00000.receipt.jws": _jws({  # listed after shard 1, issued before it
            "tenant": "acme", "batch_id": "b1", "shard_index": 0, "evidence_sha256": "e0", "issued_at": 200}),
        "results/acme/b1/shard-00001.receipt.jws": _jws({
            "tenant": "acme", "batch_id": "b1", "shard_index": 1, "input": {"sha256": "cd"}, "output": {"key": "o1"},
            "model": {"digest": MODEL}, "evidence_sha256": "e1", "worker": "w1", "sessions": [], "issued_at": 300}),
        "results/acme/b1/shard-00000.parquet": b"PAR1",
        "results/acme/b1/result-manifest.json": json.dumps({
            "rows": 20, "run_id": "run-1", "manifest_sha256": "ms", "model": {"digest": MODEL},
            "shards": [{"shard_index": 0, "worker": "w1", "receipt_key": "rk", "receipt_sha256": "rs",
                        "output_key": "ok", "output_sha256": "os", "rows": 10, "reused": False, "extra": 1}],
            "attestation": [{"worker": "w1", "extra": 2, "verdicts": [
                {"broker": "owner", "accepted": True, "tee": "sev-snp", "measurement": M, "root": "simulated",
                 "claims_digest": "cd", "extra": 3}]}, {"worker": "w9"}]}).encode(),
        "results/acme/b3/result-manifest.json": b"{not json",
        "results/acme/b4/shard-00000.receipt.jws": b"\xfe",
        "results/acme/b4/result-manifest.json": b"{}",
        "tuned/acme/tuned/1/receipt.jws": _jws({
            "tenant": "acme", "job_id": "t-1", "input": {"sha256": "ee"}, "recipe": {"name": "r"},
            "model": {"digest": "d"}, "metrics": {"f1": 0.9}, "evidence_sha256": "e3", "worker": "w2",
            "sessions": [{"broker": "owner"}], "issued_at": 400}),
        "tuned/acme/tuned/1/card.jws": _jws(card),
        "tuned/acme/tuned/1/model.onnx.enc": b"x",
        "tuned/acme/tuned/2/card.jws": _jws({**card, "version": 2, "lineage": "not a dict"}),
        "tuned/acme/tuned/3/receipt.jws": b"\xff",
        "status/acme/b1.json": json.dumps({"state": "succeeded", "updated_at": 300.7, "run_id": "run-1",
                                           "manifest_sha256": "ms", "result_manifest": "rm", "extra": 1}).encode(),
        "status/acme/b2.json": json.dumps({"state": "failed", "reason": "lost", "updated_at": 300.3}).encode(),
        "status/acme/b4.json": json.dumps({"state": "succeeded", "updated_at": 1.0}).encode(),
        "status/acme/t-1.json": json.dumps({"state": "succeeded", "updated_at": 399.5}).encode(),
        "status/orphan.json": b"[not json",
        "status/acme/notes.txt": b"x",
    }
    store = MemoryStore()
    for key, data in raw.items():
        store.put(key, data)
    return store, raw


def test_stored_objects_are_entries_in_the_order_they_happened() -> None:
    store, _ = _store()
    order = [entry_id.split(":")[0] + ":" + entry_id.split(":")[1] for _, entry_id, _ in storage_entries(store)]
    assert order == [
        "tuned-card:tuned/acme/tuned/2/card.jws",            # no receipt, no time: -0.25
        "training-manifest:incoming/acme/t-3/training.jws",  # unreadable: 0 (ties in the order listed)
        "manifest:incoming/acme/b2/manifest.jws",            # unreadable: 0
        "training-receipt:tuned/acme/tuned/3/receipt.jws",   # unreadable: 0
        "receipt:results/acme/b4/shard-00000.receipt.jws",   # unreadable: 0
        "status:status/orphan.json",                         # unreadable: 0
        "result-manifest:results/acme/b4/result-manifest.json",  # its batch's last receipt (0), then half a second
        "result-manifest:results/acme/b3/result-manifest.json",  # no receipt: 0.5
        "status:status/acme/b4.json",                        # 1.0
        "training-manifest:incoming/acme/t-1/training.jws",  # 50
        "training-manifest:incoming/acme/t-2/training.jws",  # 60
        "manifest:incoming/acme/b1/manifest.jws",            # 100
        "receipt:results/acme/b1/shard-00000.receipt.jws",   # 200
        "receipt:results/acme/b1/shard-00001.receipt.jws",   # 300
        "status:status/acme/b2.json",                        # 300.3
        "result-manifest:results/acme/b1/result-manifest.json",  # 300.5: its batch's last receipt, then half a second
        "status:status/acme/b1.json",                        # 300.7
        "status:status/acme/t-1.json",                       # 399.5
        "tuned-card:tuned/acme/tuned/1/card.jws",            # a quarter second before its receipt
        "training-receipt:tuned/acme/tuned/1/receipt.jws",   # 400
    ]


def _entries(store: MemoryStore) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {e[1].split(":")[1]: e for e in storage_entries(store)}


def test_a_manifest_is_logged_with_its_token_and_what_it_claims() -> None:
    store, raw = _store()
    key = "incoming/acme/b1/manifest.jws"
    assert _entries(store)[key] == ("batch_submitted", f"manifest:{key}:{_sha(raw[key])}", {
        "tenant": "acme", "batch_id": "b1", "manifest_key": key, "manifest_sha256": _sha(raw[key]),
        "jws": raw[key].decode(), "created_at": 100, "model": {"digest": MODEL}, "key_broker": {"name": "owner"},
        "objects": [{"key": "incoming/acme/b1/p.parquet", "size": 9, "sha256": "cd", "file_id": "f", "rows": 3,
                     "row_groups": 1}],
        "claimed_batch_id": "b1", "claimed_tenant": "acme"})


def test_an_unreadable_manifest_is_logged_as_unreadable() -> None:
    store, raw = _store()
    key = "incoming/acme/b2/manifest.jws"
    _, _, fields = _entries(store)[key]
    assert fields == {"tenant": "acme", "batch_id": "b2", "manifest_key": key, "manifest_sha256": _sha(raw[key]),
                      "jws": "\ufffd not a token", "created_at": None, "objects": [], "model": None,
                      "key_broker": None, "claimed_batch_id": None, "claimed_tenant": None}


def test_a_receipt_is_logged_with_its_token_claims_and_evidence_key() -> None:
    store, raw = _store()
    key = "results/acme/b1/shard-00001.receipt.jws"
    assert _entries(store)[key] == ("receipt", f"receipt:{key}:{_sha(raw[key])}", {
        "receipt_key": key, "receipt_sha256": _sha(raw[key]), "jws": raw[key].decode(), "path_tenant": "acme",
        "path_batch_id": "b1", "tenant": "acme", "batch_id": "b1", "shard_index": 1, "input": {"sha256": "cd"},
        "output": {"key": "o1"}, "model": {"digest": MODEL}, "evidence_sha256": "e1",
        "evidence_key": "results/acme/b1/evidence/e1.json", "worker": "w1", "sessions": [], "issued_at": 300})


def test_an_unreadable_receipt_is_logged_as_unreadable_under_its_folder() -> None:
    store, raw = _store()
    key = "results/acme/b4/shard-00000.receipt.jws"
    _, _, fields = _entries(store)[key]
    assert fields["jws"] == "\ufffd" and fields["receipt_sha256"] == _sha(raw[key])
    assert (fields["path_tenant"], fields["path_batch_id"], fields["tenant"], fields["issued_at"]) == (
        "acme", "b4", None, None)
    assert fields["evidence_key"] == "results/acme/b4/evidence/None.json"


def test_a_training_manifest_is_logged_without_its_token() -> None:
    store, raw = _store()
    key = "incoming/acme/t-1/training.jws"
    assert _entries(store)[key] == ("training_submitted", f"training-manifest:{key}:{_sha(raw[key])}", {
        "tenant": "acme", "batch_id": "t-1", "manifest_key": key, "manifest_sha256": _sha(raw[key]),
        "created_at": 50, "objects": [{"key": "incoming/acme/t-1/train.parquet", "size": 5, "sha256": "ee",
                                       "rows": 30}],
        "recipe": {"name": "r"}, "model": {"name": "m"}, "holdout": {"fraction": 0.3}, "claimed_batch_id": "t-1",
        "claimed_tenant": "acme"})
    assert _entries(store)["incoming/acme/t-2/training.jws"][2]["objects"] == []  # its object is not a mapping
    unreadable = _entries(store)["incoming/acme/t-3/training.jws"][2]
    assert (unreadable["tenant"], unreadable["batch_id"], unreadable["created_at"], unreadable["objects"]) == (
        "acme", "t-3", None, [])


def test_a_training_receipt_is_logged_with_its_token_and_job() -> None:
    store, raw = _store()
    key = "tuned/acme/tuned/1/receipt.jws"
    assert _entries(store)[key] == ("training_receipt", f"training-receipt:{key}:{_sha(raw[key])}", {
        "receipt_key": key, "receipt_sha256": _sha(raw[key]), "jws": raw[key].decode(), "path_tenant": "acme",
        "tenant": "acme", "batch_id": "t-1", "path_batch_id": "t-1", "input": {"sha256": "ee"},
        "recipe": {"name": "r"}, "model": {"digest": "d"}, "metrics": {"f1": 0.9}, "evidence_sha256": "e3",
        "evidence_key": "tuned/acme/tuned/1/evidence/e3.json", "worker": "w2", "sessions": [{"broker": "owner"}],
        "issued_at": 400})
    unreadable = _entries(store)["tuned/acme/tuned/3/receipt.jws"][2]
    assert (unreadable["jws"], unreadable["path_tenant"], unreadable["batch_id"], unreadable["issued_at"]) == (
        "\ufffd", "acme", None, None)


def test_a_tuned_card_is_logged_by_digest_without_its_token() -> None:
    store, raw = _store()
    key = "tuned/acme/tuned/1/card.jws"
    assert _entries(store)[key] == ("tuned_model", f"tuned-card:{key}:{_sha(raw[key])}", {
        "card_key": key, "card_sha256": _sha(raw[key]), "tenant": "acme", "batch_id": "t-1", "name": "tuned",
        "version": 1, "digest": "sha256:" + "11" * 32, "lineage": {"job_id": "t-1", "recipe": "r"},
        "evidence_sha256": "e3", "evidence_key": "tuned/acme/tuned/1/evidence/e3.json"})
    bare = _entries(store)["tuned/acme/tuned/2/card.jws"][2]
    assert (bare["lineage"], bare["batch_id"], bare["version"]) == ({}, None, 2)


def test_a_result_manifest_is_logged_with_its_shards_and_verdicts_only() -> None:
    store, raw = _store()
    key = "results/acme/b1/result-manifest.json"
    assert _entries(store)[key] == ("batch_result", f"result-manifest:{key}:{_sha(raw[key])}", {
        "tenant": "acme", "batch_id": "b1", "key": key, "sha256": _sha(raw[key]), "rows": 20, "run_id": "run-1",
        "manifest_sha256": "ms", "model": {"digest": MODEL},
        "shards": [{"shard_index": 0, "worker": "w1", "receipt_key": "rk", "receipt_sha256": "rs", "output_key": "ok",
                    "output_sha256": "os", "rows": 10, "reused": False}],
        "attestation": [{"worker": "w1", "verdicts": [{"broker": "owner", "accepted": True, "tee": "sev-snp",
                                                       "measurement": M, "root": "simulated",
                                                       "claims_digest": "cd"}]},
                        {"worker": "w9", "verdicts": []}]})
    unreadable = _entries(store)["results/acme/b3/result-manifest.json"][2]
    assert (unreadable["rows"], unreadable["shards"], unreadable["attestation"]) == (None, [], [])


def test_a_status_is_logged_with_its_state_and_an_unreadable_one_empty() -> None:
    store, raw = _store()
    key = "status/acme/b2.json"
    assert _entries(store)[key] == ("batch_status", f"status:{key}:{_sha(raw[key])}", {
        "tenant": "acme", "batch_id": "b2", "key": key, "state": "failed", "reason": "lost", "run_id": None,
        "manifest_sha256": None, "result_manifest": None, "updated_at": 300.3})
    assert _entries(store)["status/acme/b1.json"][2] == {
        "tenant": "acme", "batch_id": "b1", "key": "status/acme/b1.json", "state": "succeeded", "reason": None,
        "run_id": "run-1", "manifest_sha256": "ms", "result_manifest": "rm", "updated_at": 300.7}
    assert _entries(store)["status/orphan.json"][2] == {
        "tenant": "", "batch_id": "", "key": "status/orphan.json", "state": None, "reason": None, "run_id": None,
        "manifest_sha256": None, "result_manifest": None, "updated_at": None}


# -- a whole sync ----------------------------------------------------------------------------------

def _brokers() -> dict[str, FakeBroker]:
    owner, provider = FakeBroker("owner"), FakeBroker("provider")
    owner.create_key("acme/footer")
    owner.grant("b1", MODEL, [M], ["acme/footer"])
    owner.decide("unwrap", "allow", "default data policy holds", key_id="acme/footer", batch_id="b1")
    return {"provider": provider, "owner": owner}  # the provider has decided nothing yet


def test_a_sync_appends_decisions_heads_and_objects_and_signs_a_checkpoint(tmp_path: Path) -> None:
    log, brokers = AuditLog.open_dir(tmp_path / "log"), _brokers()
    store, _ = _store()
    report = sync_log(log, brokers, store)
    owner = brokers["owner"].log
    kinds = [(e["kind"], e["id"]) for e in log.entries()]
    assert kinds[:4] == [("policy_change", "decision:owner:1"), ("grant", "decision:owner:2"),
                         ("key_release", "decision:owner:3"), ("broker_head", f"head:owner:3:{owner[2]['hash']}")]
    assert [k for k, _ in kinds[4:]] == [e[0] for e in storage_entries(store)]
    assert report.appended == {"policy_change": 1, "grant": 1, "key_release": 1, "broker_head": 1, "tuned_model": 2,
                               "batch_submitted": 2, "batch_status": 5, "batch_result": 3, "receipt": 3,
                               "training_submitted": 3, "training_receipt": 2}
    assert report.total == 24 == log.size
    assert report.checkpoint == log.latest_checkpoint() and report.checkpoint is not None
    assert report.checkpoint.size == 24 and report.checkpoint.root == log.tree().root()
    assert report.summary() == ("audit log: appended 3 batch_result, 5 batch_status, 2 batch_submitted, 1 broker_head, "
                                "1 grant, 1 key_release, 1 policy_change, 3 receipt, 2 training_receipt, "
                                "3 training_submitted, 2 tuned_model; checkpoint " + report.checkpoint.describe())


def test_a_second_sync_of_nothing_new_appends_and_signs_nothing(tmp_path: Path) -> None:
    log, brokers = AuditLog.open_dir(tmp_path / "log"), _brokers()
    store, _ = _store()
    first = sync_log(log, brokers, store)
    again = sync_log(log, brokers, store)
    assert again.appended == {} and again.total == 0 and again.checkpoint is None
    assert again.summary() == "audit log: appended nothing new"
    assert log.size == 24 and log.history() == [first.checkpoint.note]  # type: ignore[union-attr]
    brokers["owner"].decide("attest", "allow", "evidence verified and bound")
    more = sync_log(log, brokers, store)
    assert more.appended == {"attestation": 1, "broker_head": 1} and more.checkpoint is not None
    assert more.checkpoint.size == 26


def test_a_sync_signs_a_missing_or_stale_checkpoint_and_none_when_told_not_to(tmp_path: Path) -> None:
    log = AuditLog.open_dir(tmp_path / "log")
    unsigned = sync_log(log, _brokers(), MemoryStore(), checkpoint=False)
    assert unsigned.total == 4 and unsigned.checkpoint is None and log.checkpoint_note() is None
    assert sync_log(log, {}, MemoryStore(), checkpoint=False).checkpoint is None
    first = sync_log(log, {}, MemoryStore())  # nothing new, but no checkpoint yet
    assert first.total == 0 and first.checkpoint is not None and first.checkpoint.size == 4
    log.append("grant", "late", {})  # appended by another writer after the checkpoint
    stale = sync_log(log, {}, MemoryStore())
    assert stale.total == 0 and stale.checkpoint is not None and stale.checkpoint.size == 5
    assert sync_log(log, {}, MemoryStore()).checkpoint is None  # now current


def test_a_sync_replaces_a_checkpoint_that_does_not_verify(tmp_path: Path) -> None:
    log = AuditLog.open_dir(tmp_path / "log")
    sync_log(log, _brokers(), MemoryStore())
    note = log.checkpoint_note()
    assert note is not None
    (tmp_path / "log" / "checkpoint").write_text(note.replace("\n4\n", "\n3\n"))  # its signature no longer holds
    report = sync_log(log, {}, MemoryStore())
    assert report.checkpoint is not None and Checkpoint.open(str(log.checkpoint_note()), str(log.vkey())).size == 4


def test_a_report_sums_and_names_what_it_appended() -> None:
    report = SyncReport({"grant": 2, "attestation": 1})
    assert report.total == 3 and report.summary() == "audit log: appended 1 attestation, 2 grant"


def test_a_sync_reads_every_page_of_a_long_broker_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker answers at most 10,000 decisions a call (2 here): a sync that took the first page for the whole
    log would never audit a release logged after it. Every page is appended; the head is the log's last entry."""
    env = Env(tmp_path / "broker")
    for key_id in ("acme.footer", "acme.emails", "acme.results", "acme.more", "acme.last"):
        env.admin.create_key(key_id)
    store = env.app.state.broker.store
    page = store.decisions
    monkeypatch.setattr(store, "decisions", lambda after=0: page(after, limit=2))
    log = AuditLog.open_dir(tmp_path / "log")
    assert sync_log(log, {"owner": env.admin}, MemoryStore()).appended == {"policy_change": 5, "broker_head": 1}
    last = env.admin.decisions()[-1]
    assert last["seq"] == 5 and f"head:owner:5:{last['hash']}" in log.ids()
