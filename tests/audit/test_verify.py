"""verify_audit: the happy path holds; each kind of tampering is found and said in words."""

from __future__ import annotations

import json
import shutil

import pytest

from audit.collect import CollectError, sync_log
from audit.log import AuditLog, LogError, Witness
from audit.verify import Finding, failed, verify_audit
from enclave.signing import generate_signing_key, sign_json, unverified_payload
from tests.audit.conftest import OTHER_MEASUREMENT, TENANT, Scenario


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
