"""verify_audit: the happy path holds; each kind of tampering is found and said in words."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from attestation import Policy
from audit.collect import CollectError, sync_log
from audit.log import AuditLog, LogError, Witness
from audit.verify import Finding, check_broker_heads, check_results, failed, verify_audit
from enclave.signing import generate_signing_key, sign_json, unverified_payload
from tests.audit.conftest import MEASUREMENT, MODEL, OTHER_MEASUREMENT, TENANT, Scenario


def _synced(s: Scenario, *batches: str) -> AuditLog:
    for b in batches:
        s.run_batch(b)
    log = s.log()
    sync_log(log, s.brokers, s.store)
    for w in s.witnesses():
        w.observe(log)
    return log


def _verify(s: Scenario, log: AuditLog | None = None) -> list[Finding]:
    anchors, policy = s.anchors_policy()
    return verify_audit(log or s.log(), s.store, anchors, policy, witnesses=s.witnesses())


def _errors(findings: list[Finding]) -> list[str]:
    return [f.message for f in findings if f.severity == "error"]


def _lines(s: Scenario) -> list[bytes]:
    return (s.state / "audit" / "entries.jsonl").read_bytes().splitlines()


def _write_lines(s: Scenario, lines: list[bytes]) -> None:
    (s.state / "audit" / "entries.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


def test_happy_path_holds_and_sync_is_idempotent(scenario: Scenario) -> None:
    log = _synced(scenario, "b1", "b2")
    kinds = {e["kind"] for e in log.entries()}
    assert {"key_release", "attestation", "policy_change", "grant", "receipt", "batch_submitted", "batch_status",
            "batch_result"} <= kinds
    findings = _verify(scenario)
    assert not failed(findings), findings
    again = sync_log(scenario.log(), scenario.brokers, scenario.store)
    assert again.total == 0 and again.checkpoint is None
    assert scenario.log().size == log.size


def test_entries_hold_no_key_bytes_plaintext_or_scores(scenario: Scenario) -> None:
    log = _synced(scenario, "b1")
    text = (scenario.state / "audit" / "entries.jsonl").read_text()
    for word in ('"spam_probability"', '"label"', '"plaintext"', '"material"', '"wrapped"'):
        assert word not in text
    with pytest.raises(LogError, match="never holds keys"):
        log.append("receipt", "x", {"output": {"spam_probability": 0.9}})


def test_one_changed_byte_is_found(scenario: Scenario) -> None:
    _synced(scenario, "b1")
    lines = _lines(scenario)
    i = next(n for n, line in enumerate(lines) if b'"kind":"key_release"' in line)
    lines[i] = lines[i].replace(b'"decision":"allow"', b'"decision":"allox"')
    _write_lines(scenario, lines)
    errors = _errors(_verify(scenario))
    assert any("not to the root of the signed checkpoint" in e for e in errors), errors


def test_a_byte_that_breaks_json_is_found(scenario: Scenario) -> None:
    _synced(scenario, "b1")
    raw = bytearray((scenario.state / "audit" / "entries.jsonl").read_bytes())
    raw[1] ^= 0x20  # the opening quote of the first key
    (scenario.state / "audit" / "entries.jsonl").write_bytes(bytes(raw))
    errors = _errors(_verify(scenario))
    assert any("entry at position 0 is not valid JSON" in e for e in errors), errors


def test_a_removed_entry_is_found(scenario: Scenario) -> None:
    _synced(scenario, "b1")
    lines = _lines(scenario)
    del lines[3]
    _write_lines(scenario, lines)
    errors = _errors(_verify(scenario))
    assert any("position 3 holds the entry written as number 4" in e for e in errors), errors
    assert any("entries were removed" in e and "covers" in e for e in errors), errors


def test_two_reordered_entries_are_found(scenario: Scenario) -> None:
    _synced(scenario, "b1")
    lines = _lines(scenario)
    lines[2], lines[5] = lines[5], lines[2]
    _write_lines(scenario, lines)
    errors = _errors(_verify(scenario))
    assert any("position 2 holds the entry written as number 5" in e for e in errors), errors
    assert any("not to the root of the signed checkpoint" in e for e in errors), errors


def test_a_rewrite_re_signed_with_the_log_key_is_caught_by_the_witnesses(scenario: Scenario) -> None:
    """Whoever holds the log key can rewrite and re-sign; the owner's and provider's checkpoints still differ."""
    log = _synced(scenario, "b1")
    entries = log.entries()
    shutil.rmtree(scenario.state / "audit" / "checkpoints")
    (scenario.state / "audit" / "entries.jsonl").unlink()
    rewritten = scenario.log()
    for e in entries:
        if e["kind"] == "key_release" and e["key_id"] == "model/spam":
            continue  # hide the model key's release
        rewritten.append(e["kind"], e["id"], {k: v for k, v in e.items() if k not in {"kind", "id", "index"}})
    rewritten.publish_checkpoint()
    integrity_only = [f for f in _verify(scenario) if f.check in {"integrity", "witness"}]
    errors = _errors(integrity_only)
    assert errors and all("the log was rolled back" in e or "rewritten or forked" in e for e in errors), errors
    assert {"owner", "provider"} <= {w for e in errors for w in ("owner", "provider") if f"the {w} saw" in e}


def test_a_fork_is_detected(scenario: Scenario) -> None:
    """Two logs grow from the same checkpoint; the owner sees one, the provider the other."""
    log_a = _synced(scenario, "b1")
    fork_dir = scenario.state / "fork"
    shutil.copytree(scenario.state / "audit", fork_dir)
    log_b = AuditLog.open_dir(fork_dir, key_path=scenario.state / "audit" / "log-key.pem")
    log_a.append("grant", "only-in-a", {"batch_id": "a"})
    log_b.append("grant", "only-in-b", {"batch_id": "b"})
    log_a.publish_checkpoint()
    log_b.publish_checkpoint()
    owner, provider = scenario.witnesses()
    owner.observe(log_a)
    provider.observe(log_b)
    with pytest.raises(LogError, match="rewritten or forked"):
        owner.observe(log_b)
    errors = _errors(_verify(scenario, scenario.log()))
    assert any("the provider saw" in e and "rewritten or forked" in e for e in errors), errors


def test_a_forged_receipt_is_found(scenario: Scenario) -> None:
    scenario.run_batch("b1")
    key = f"results/{TENANT}/b1/shard-00000.receipt.jws"
    payload = unverified_payload(scenario.store.get(key).decode(), what="receipt")
    payload["output"]["rows"] = 999  # claims more than was scored, signed by a key not bound to any evidence
    scenario.store.put(key, sign_json(payload, generate_signing_key()).encode())
    log = scenario.log()
    sync_log(log, scenario.brokers, scenario.store)
    errors = _errors(_verify(scenario, log))
    assert any(f"receipt {key} does not verify, it is forged or altered" in e for e in errors), errors


def test_a_receipt_replaced_after_logging_is_found(scenario: Scenario) -> None:
    _synced(scenario, "b1")
    key = f"results/{TENANT}/b1/shard-00001.receipt.jws"
    scenario.store.put(key, scenario.store.get(f"results/{TENANT}/b1/shard-00000.receipt.jws"))
    errors = _errors(_verify(scenario))
    assert any(f"receipt {key} in storage" in e and "it was replaced" in e for e in errors), errors
    extra = f"results/{TENANT}/b1/shard-00002.receipt.jws"
    scenario.store.put(extra, b"eyJhbGciOiJFZDI1NTE5In0.e30.c2ln")
    errors = _errors(_verify(scenario))
    assert any(f"receipt {extra} in storage is not in the log" in e for e in errors), errors


def test_a_result_swapped_for_another_batchs_is_found(scenario: Scenario) -> None:
    _synced(scenario, "b1", "b2")
    victim, other = f"results/{TENANT}/b1/shard-00000.parquet", f"results/{TENANT}/b2/shard-00001.parquet"
    scenario.store.put(victim, scenario.store.get(other))
    errors = _errors(_verify(scenario))
    assert any(f"result object {victim} does not match its receipt" in e and "(batch b2)" in e
               for e in errors), errors


def test_a_result_object_without_receipt_is_found(scenario: Scenario) -> None:
    _synced(scenario, "b1")
    scenario.store.put(f"results/{TENANT}/b1/shard-00007.parquet", b"PAR1 smuggled")
    errors = _errors(_verify(scenario))
    assert any("shard-00007.parquet has no receipt" in e for e in errors), errors


def test_release_for_a_failed_batch_is_said_not_failed(scenario: Scenario) -> None:
    scenario.run_batch("bad", fail="score: worker lost")
    log = _synced(scenario)
    findings = _verify(scenario, log)
    assert not failed(findings), findings
    notes = [f.message for f in findings if f.severity == "note"]
    assert any("batch bad" in n and "the batch failed: score: worker lost" in n for n in notes), notes


def test_release_for_a_batch_with_no_receipt_and_no_failure_is_an_error(scenario: Scenario) -> None:
    scenario.run_batch("ghost", fail="x")
    scenario.store.delete(f"status/{TENANT}/ghost.json")
    log = _synced(scenario)
    errors = _errors(_verify(scenario, log))
    assert any("batch ghost" in e and "no receipt and no recorded failure" in e for e in errors), errors


def test_release_without_grant_and_to_an_ungranted_measurement_are_errors(scenario: Scenario) -> None:
    scenario.run_batch("nogrant", grant=False)
    scenario.run_batch("badm", measurement=OTHER_MEASUREMENT)
    log = _synced(scenario)
    errors = _errors(_verify(scenario, log))
    assert any("batch nogrant" in e and "no grant for that batch" in e for e in errors), errors
    assert any("batch nogrant: receipt of shard 0 exists but the owner never granted" in e for e in errors), errors
    assert any("for batch badm" in e and "auditor's policy does not allow" in e for e in errors), errors
    assert any("for batch badm" in e and "not among the key's allowed measurements" in e for e in errors), errors
    assert any("for batch badm against its grant" in e for e in errors), errors


def test_release_without_attestation_is_an_error(scenario: Scenario) -> None:
    scenario.owner.grant("b9", "sha256:" + "ab" * 32, ["00"], ["acme/emails"])
    scenario.owner.decide("unwrap", "allow", "default data policy holds", key_id="acme/emails", batch_id="b9",
                          model_digest="sha256:" + "ab" * 32, claims={"measurement": "00", "forged": True})
    log = _synced(scenario)
    errors = _errors(_verify(scenario, log))
    assert any("no successful attestation" in e for e in errors), errors


def test_a_broker_that_rewrites_its_history_is_refused(scenario: Scenario) -> None:
    _synced(scenario, "b1")
    scenario.owner.log[2]["hash"] = "f" * 64
    with pytest.raises(CollectError, match="decision 3 was logged with chain hash"):
        sync_log(scenario.log(), scenario.brokers, scenario.store)


def test_the_witness_file_lives_in_the_party_home(scenario: Scenario) -> None:
    log = _synced(scenario, "b1")
    saved = json.loads((scenario.state / "owner" / "audit-checkpoint.json").read_text())
    assert saved["log_key"] == log.vkey()
    assert f"\n{log.size}\n" in saved["checkpoint"]
    assert Witness(scenario.state / "owner", "owner").check(log).size == log.size


# -- forgeries correct in every way but one: each fails only the check that guards it ----------------------

def _released(s: Scenario, batch: str, key_id: str, model: str = MODEL) -> int:
    """The owner's broker releases `key_id` for `batch` to the worker's attested claims; its decision number."""
    return int(s.owner.decide("unwrap", "allow", "default data policy holds", key_id=key_id, batch_id=batch,
                              model_digest=model, claims=s.last_claims)["seq"])


def test_a_release_of_a_key_the_grant_does_not_name_is_an_error(scenario: Scenario) -> None:
    scenario.run_batch("b1")
    scenario.owner.create_key("acme/other")
    seq = _released(scenario, "b1", "acme/other")
    errors = _errors(_verify(scenario, _synced(scenario)))
    assert errors == [f"broker owner released key acme/other (unwrap, decision {seq}) for batch b1 against its "
                      "grant: the key is not among the granted keys ['acme/footer', 'acme/emails', 'acme/results']"]


def test_a_release_for_another_model_than_the_granted_one_is_an_error(scenario: Scenario) -> None:
    scenario.run_batch("b1")
    other = "sha256:" + "cd" * 32
    seq = _released(scenario, "b1", "acme/emails", model=other)
    errors = _errors(_verify(scenario, _synced(scenario)))
    assert errors == [f"broker owner released key acme/emails (unwrap, decision {seq}) for batch b1 against its "
                      f"grant: model {other} is not the granted {MODEL}"]


def test_a_release_of_a_key_the_log_never_saw_created_is_an_error(scenario: Scenario) -> None:
    scenario.run_batch("b1")
    seq = _released(scenario, "b1", "acme/unknown")
    errors = _errors(_verify(scenario, _synced(scenario)))
    assert errors == [f"broker owner released key acme/unknown (unwrap, decision {seq}) for batch b1, but the log "
                      "never saw that key created"]


def test_a_receipt_for_another_model_than_the_granted_one_is_an_error(scenario: Scenario) -> None:
    """The owner granted batch bm for another model; the worker's receipts (and releases) name MODEL."""
    other = "sha256:" + "cd" * 32
    scenario.owner.grant("bm", other, [MEASUREMENT.hex()], ["acme/footer", "acme/emails", "acme/results"])
    scenario.run_batch("bm", grant=False)
    grant_errors = [f.message for f in _verify(scenario, _synced(scenario)) if f.check == "grant"]
    assert grant_errors == [f"batch bm: receipt of shard {i} used model {MODEL}, the grant names {other}"
                            for i in (0, 1)]


def test_a_receipt_by_a_measurement_the_grant_does_not_name_is_an_error(scenario: Scenario) -> None:
    """The auditor's policy allows both builds; the owner granted batch bo to one, the receipts are the other's."""
    scenario.owner.grant("bo", MODEL, [MEASUREMENT.hex()], ["acme/footer", "acme/emails", "acme/results"])
    scenario.run_batch("bo", grant=False, measurement=OTHER_MEASUREMENT)
    anchors, _ = scenario.anchors_policy()
    both = Policy.from_dict({"allowed_measurements": [MEASUREMENT.hex(), OTHER_MEASUREMENT.hex()],
                             "allowed_roots": ["simulated"]})
    findings = verify_audit(_synced(scenario), scenario.store, anchors, both, witnesses=scenario.witnesses())
    assert [f.message for f in findings if f.check == "grant"] == [
        f"batch bo: receipt of shard {i} was signed by measurement {OTHER_MEASUREMENT.hex()[:16]}…, not granted"
        for i in (0, 1)]


GRANTED_CONFIG, PLATFORM_CONFIG = bytes([7]) * 32, bytes([9]) * 32


def test_a_receipt_by_a_worker_launched_with_a_configuration_the_grant_does_not_name_is_an_error(
        scenario: Scenario) -> None:
    """The platform launches the granted code with its own configuration (HOST_DATA: one naming its own broker as
    the owner's): genuine evidence, a granted measurement, receipts for the owner's batch. The owner's grant names
    the configuration it granted; the audit must hold the receipts to it, as the owner's results check does."""
    scenario.owner.grant("bh", MODEL, [MEASUREMENT.hex()], ["acme/footer", "acme/emails", "acme/results"],
                         [GRANTED_CONFIG.hex()])
    scenario.run_batch("bh", grant=False, host_data=PLATFORM_CONFIG)
    assert [f.message for f in _verify(scenario, _synced(scenario)) if f.check == "grant"] == [
        f"batch bh: receipt of shard {i} was signed by a worker launched with configuration "
        f"{PLATFORM_CONFIG.hex()[:16]}…, not one the grant names ({[GRANTED_CONFIG.hex()]})" for i in (0, 1)]


def test_receipts_by_a_granted_configuration_hold(scenario: Scenario) -> None:
    scenario.owner.grant("bg", MODEL, [MEASUREMENT.hex()], ["acme/footer", "acme/emails", "acme/results"],
                         [GRANTED_CONFIG.hex()])
    scenario.run_batch("bg", grant=False, host_data=GRANTED_CONFIG)
    assert not failed(_verify(scenario, _synced(scenario)))


def test_an_entry_rewritten_in_another_json_form_is_named(scenario: Scenario) -> None:
    """The same object in non-canonical JSON (a space added): its bytes, hence the tree, change too."""
    _synced(scenario, "b1")
    lines = _lines(scenario)
    lines[1] = lines[1].replace(b'":', b'": ', 1)
    _write_lines(scenario, lines)
    assert "entry at position 1 is not in canonical form: it was edited after it was written" in _errors(
        _verify(scenario))


def test_a_sync_that_records_another_chain_hash_for_a_broker_head_is_caught(scenario: Scenario) -> None:
    """Every decision is logged; the head a sync recorded for the owner's broker carries another chain hash."""
    from audit.collect import decision_entry, head_entry

    scenario.run_batch("b1")
    log, last = scenario.log(), scenario.owner.log[-1]
    for name, broker in scenario.brokers.items():
        for d in broker.decisions():
            log.append(*decision_entry(name, d))
    log.append(*head_entry("owner", {**last, "hash": "f" * 64}))
    findings = _verify(scenario, _synced(scenario))
    assert [f.message for f in findings if f.check == "sync"] == [
        f"a sync recorded broker owner's decision {last['seq']} with chain hash {'f' * 16}…, the log holds "
        f"{last['hash'][:16]}…"]


def test_a_training_document_written_after_the_sync_is_an_error(scenario: Scenario) -> None:
    """After the sync the platform replaces the tuned card with one it signed: not what the log holds."""
    scenario.run_training("t-1")
    _synced(scenario)
    key = f"tuned/{TENANT}/spam-filter-tuned/1/card.jws"
    payload = unverified_payload(scenario.store.get(key).decode(), what="card")
    scenario.store.put(key, sign_json({**payload, "metrics": {**payload["metrics"], "f1": 1.0}},
                                      generate_signing_key()).encode())
    errors = _errors(_verify(scenario))
    assert f"{key} in storage is not in the log: it was written or replaced after the last sync" in errors, errors


def test_a_training_receipt_moved_under_another_models_folder_is_an_error(scenario: Scenario) -> None:
    """The platform stores job t-1's genuine receipt (and its evidence) under version 3's folder, not version 1's."""
    scenario.run_training("t-1")
    old, new = f"tuned/{TENANT}/spam-filter-tuned/1/", f"tuned/{TENANT}/spam-filter-tuned/3/"
    for key in scenario.store.keys(old):
        if key.endswith("receipt.jws") or "/evidence/" in key:
            scenario.store.put(new + key.removeprefix(old), scenario.store.get(key))
    scenario.store.delete(old + "receipt.jws")
    errors = [f.message for f in _verify(scenario, _synced(scenario)) if f.check == "training"]
    assert errors == [f"training receipt {new}receipt.jws speaks of tenant {TENANT}, model spam-filter-tuned:1"]


def test_a_training_receipt_copied_under_another_models_folder_is_an_error(scenario: Scenario) -> None:
    """As above, but the genuine receipt also stays in its own folder: the byte-identical copy is logged as an
    entry of its own (entries are by key and content, not content alone) and named."""
    scenario.run_training("t-1")
    old, new = f"tuned/{TENANT}/spam-filter-tuned/1/", f"tuned/{TENANT}/spam-filter-tuned/3/"
    for key in scenario.store.keys(old):
        if key.endswith("receipt.jws") or "/evidence/" in key:
            scenario.store.put(new + key.removeprefix(old), scenario.store.get(key))
    errors = [f.message for f in _verify(scenario, _synced(scenario)) if f.check == "training"]
    assert errors == [f"training receipt {new}receipt.jws speaks of tenant {TENANT}, model spam-filter-tuned:1"]


def test_a_batch_receipt_copied_under_another_batch_is_an_error(scenario: Scenario) -> None:
    """The platform copies batch b1's genuine receipt and its evidence, byte for byte, under batch b2's folder
    as well (the originals stay): the copy is an entry of its own, and named."""
    scenario.run_batch("b1")
    scenario.run_batch("b2")
    b1 = f"results/{TENANT}/b1/"
    source = next(k for k in scenario.store.keys(b1) if k.endswith(".receipt.jws"))
    for key in [source, *(k for k in scenario.store.keys(b1 + "evidence/"))]:
        scenario.store.put(key.replace("/b1/", "/b2/").replace(".receipt.jws", "-copy.receipt.jws"),
                           scenario.store.get(key))
    copy = source.replace("/b1/", "/b2/").replace(".receipt.jws", "-copy.receipt.jws")
    errors = [e for e in _errors(_verify(scenario, _synced(scenario))) if copy in e]
    assert errors and errors[0].startswith(f"receipt {copy} lies under batch b2 but speaks of batch b1"), errors


def test_a_sync_that_dropped_decisions_is_named_with_the_missing_ranges() -> None:
    """The platform's sync recorded broker owner's head at decision 10 but left decisions 2-4, 7 and 9-10 out
    (refusals it would rather hide): the finding lists them as ranges."""
    kept = [1, 5, 6, 8]
    entries: list[dict[str, Any]] = [{"kind": "attestation", "broker": "owner", "seq": n, "chain_hash": f"h{n}",
                                      "index": i} for i, n in enumerate(kept)]
    entries.append({"kind": "broker_head", "broker": "owner", "head_seq": 10, "head_hash": "h10", "index": 4})
    assert [str(f) for f in check_broker_heads(entries)] == [
        "[error] sync: a sync recorded broker owner's log up to decision 10, but the log lacks decision(s) 2-4, 7, "
        "9-10 before it (log entry 4)"]
    entries[-1] = {"kind": "broker_head", "broker": "owner", "head_seq": 3, "head_hash": "h3", "index": 4}
    assert [f.message for f in check_broker_heads(entries)] == [
        "a sync recorded broker owner's log up to decision 3, but the log lacks decision(s) 2-3 before it"]
    entries[-1] = {"kind": "broker_head", "broker": "owner", "head_seq": 2, "head_hash": "h2", "index": 4}
    assert [f.message for f in check_broker_heads(entries)] == [
        "a sync recorded broker owner's log up to decision 2, but the log lacks decision(s) 2 before it"]


def test_a_result_object_the_platform_added_is_named_under_its_batch() -> None:
    """Objects the platform put under results/ with no receipt in the log: each finding names the batch from the
    key's third part (none for a key too short to have one)."""

    class Bucket:
        objects = {"results/acme/b-9/shard-00000.x.parquet": b"rows", "results/acme.parquet": b"rows",
                   "results/acme/b-8.parquet": b"rows",
                   "results/acme/b-9/notes.txt": b"not a result"}

        def get(self, key: str) -> bytes:
            return self.objects[key]

        def keys(self, prefix: str) -> list[str]:
            return sorted(k for k in self.objects if k.startswith(prefix))

    found = check_results([], Bucket())
    assert [(f.severity, f.check, f.message, f.batch_id) for f in found] == [
        ("error", "result", "result object results/acme.parquet has no receipt in the log", None),
        ("error", "result", "result object results/acme/b-8.parquet has no receipt in the log", "b-8.parquet"),
        ("error", "result", "result object results/acme/b-9/shard-00000.x.parquet has no receipt in the log", "b-9")]
