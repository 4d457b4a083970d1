"""Which worker got which key rests on what the enclave signed, never on the platform's result manifest.

Receipts sign the worker's name and the claims digests of its broker sessions (wire.receipt); the brokers log
the same digests in their release decisions. These tests rewrite the platform's unsigned records and the
log's copy of a receipt, and check the auditor is not fooled.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from audit.collect import storage_entries, sync_log
from audit.show import batch_report, render_text
from audit.verify import ERROR, NOTE, Finding, verify_audit
from tests.audit.conftest import MEASUREMENT, MODEL, TENANT, Scenario


def _sync(s: Scenario) -> None:
    log = s.log()
    sync_log(log, s.brokers, s.store)
    for w in s.witnesses():
        w.observe(log)


def _verify(s: Scenario) -> list[Finding]:
    anchors, policy = s.anchors_policy()
    return verify_audit(s.log(), s.store, anchors, policy, witnesses=s.witnesses())


def _report(s: Scenario, batch: str, findings: list[Finding]) -> dict[str, Any]:
    return batch_report(s.log(), s.store, batch, findings, witnesses=s.witnesses())


def _section(report: dict[str, Any], title: str) -> list[dict[str, Any]]:
    return list(next(s for s in report["sections"] if s["title"] == title)["rows"])


def _rename_workers(s: Scenario, batch: str, name: str) -> None:
    """The platform rewrites its own result manifest: every worker name (attestation and shards) becomes `name`."""
    key = f"results/{TENANT}/{batch}/result-manifest.json"
    doc = json.loads(s.store.get(key))
    for a in doc["attestation"]:
        a["worker"] = name
    for shard in doc["shards"]:
        shard["worker"] = name
    s.store.put(key, json.dumps(doc).encode())


def test_releases_name_the_worker_its_receipts_signed(scenario: Scenario) -> None:
    scenario.run_batch("b1")
    _sync(scenario)
    findings = _verify(scenario)
    assert not [f for f in findings if f.check == "worker"], findings
    report = _report(scenario, "b1", findings)
    releases = [r["cells"] for r in _section(report, "Key releases")]
    assert releases and {r["worker"] for r in releases} == {"w1"}
    assert {r["cells"]["worker"] for r in _section(report, "Attestation")} == {"w1"}


def test_a_platform_that_renames_the_workers_in_its_result_manifest_is_caught(scenario: Scenario) -> None:
    scenario.run_batch("b1")
    _rename_workers(scenario, "b1", "cscore-worker-9@elsewhere")
    _sync(scenario)
    findings = _verify(scenario)
    worker_errors = [f for f in findings if f.check == "worker" and f.severity == ERROR]
    assert worker_errors, findings
    assert any("names worker 'cscore-worker-9@elsewhere' for attested claims" in f.message
               and "signs 'w1'" in f.message for f in worker_errors)
    assert any("for shard 0" in f.message for f in worker_errors)
    report = _report(scenario, "b1", findings)
    assert not report["verdict"]["holds"]
    # The release table keeps the signed name; the result manifest's row carries the finding.
    assert {r["cells"]["worker"] for r in _section(report, "Key releases")} == {"w1"}
    manifest_rows = [r for r in _section(report, "Results") if r["cells"]["what"] == "result manifest"]
    assert manifest_rows[0]["alarm"] and any("cscore-worker-9@elsewhere" in p for p in manifest_rows[0]["problems"])
    assert "audit DOES NOT HOLD" in render_text(report)


def test_a_release_that_no_receipt_signs_is_marked_unproven(scenario: Scenario) -> None:
    scenario.run_batch("b1")
    # A second worker attested, got a data key for b1 and signed nothing (its shard failed and went elsewhere).
    other = {"measurement": MEASUREMENT.hex(), "tee": "sev-snp", "root": "simulated", "debug": False,
             "nonce": secrets.token_hex(8)}
    scenario.owner.decide("attest", "allow", "evidence verified and bound", claims=other)
    scenario.owner.decide("unwrap", "allow", "default data policy holds", key_id="acme/emails", batch_id="b1",
                          model_digest=MODEL, claims=other)
    _sync(scenario)
    findings = _verify(scenario)
    notes = [f for f in findings if f.check == "worker"]
    assert len(notes) == 1 and notes[0].severity == NOTE and "not proven" in notes[0].message, findings
    report = _report(scenario, "b1", findings)
    assert report["verdict"]["holds"]  # a note, not a failure: keys to a worker that failed are expected
    unproven = [r for r in _section(report, "Key releases") if r["position"] == notes[0].index]
    assert unproven[0]["cells"]["worker"] == "unproven (no signed receipt)"
    assert unproven[0]["problems"] and unproven[0]["problems"][0].startswith("note: ")


def test_a_log_copy_of_a_receipt_that_misstates_its_worker_is_found(scenario: Scenario) -> None:
    scenario.run_batch("b1")
    # A dishonest sync copies the receipts into the log with another worker name (the JWS stays the enclave's).
    log = scenario.log()
    for kind, entry_id, fields in storage_entries(scenario.store):
        if kind == "receipt":
            fields = {**fields, "worker": "cscore-worker-9@elsewhere"}
        log.append(kind, entry_id, fields)
    _sync(scenario)
    findings = _verify(scenario)
    misstated = [f for f in findings if f.check == "receipt" and "says worker 'cscore-worker-9@elsewhere'" in f.message]
    assert len(misstated) == 2 and all("its signature covers 'w1'" in f.message for f in misstated), findings
    report = _report(scenario, "b1", findings)
    assert not report["verdict"]["holds"] and report["verdict"]["receipts"] == {"verified": 0, "total": 2}
    # A misstated receipt links nothing: the releases are not credited to the name the log's copy gives.
    assert all(r["cells"]["worker"].startswith("unproven") for r in _section(report, "Key releases"))


def test_the_banner_says_which_broker_log_heads_it_checked_against(scenario: Scenario) -> None:
    scenario.run_batch("b1")
    _sync(scenario)
    heads = {"owner": len(scenario.owner.log), "provider": len(scenario.provider.log)}
    # A refusal after the sync: the report cannot see it, and must not claim to have checked past the head.
    scenario.owner.decide("unwrap", "deny", "measurement not granted", key_id="acme/emails", batch_id="b1",
                          model_digest=MODEL)
    report = _report(scenario, "b1", _verify(scenario))
    brokers = report["verdict"]["brokers"]
    assert {h["broker"]: h["seq"] for h in brokers["heads"]} == heads
    assert "later broker decisions are not in the log" in brokers["said"]
    text = render_text(report)
    assert f"owner's decisions 1 to {heads['owner']} (synced 20" in text and "run `cscore audit sync`" in text
    assert report["verdict"]["refusals"] == 0
    _sync(scenario)
    report = _report(scenario, "b1", _verify(scenario))
    assert {h["broker"]: h["seq"] for h in report["verdict"]["brokers"]["heads"]}["owner"] == heads["owner"] + 1
    assert report["verdict"]["refusals"] == 1


def test_a_sync_that_drops_a_refusal_but_records_the_head_is_caught(scenario: Scenario) -> None:
    from audit.collect import decision_entry, head_entry

    scenario.run_batch("b1")
    scenario.owner.decide("unwrap", "deny", "measurement not granted", key_id="acme/emails", batch_id="b1",
                          model_digest=MODEL)
    log = scenario.log()
    dropped = scenario.owner.log[-1]["seq"]
    for name, broker in scenario.brokers.items():
        for d in broker.decisions():
            if (name, d["seq"]) != ("owner", dropped):
                log.append(*decision_entry(name, d))
        log.append(*head_entry(name, broker.log[-1]))
    _sync(scenario)
    findings = _verify(scenario)
    dropped_found = [f for f in findings if f.check == "sync" and f.severity == ERROR]
    assert len(dropped_found) == 1 and f"lacks decision(s) {dropped} before it" in dropped_found[0].message
    assert not _report(scenario, "b1", findings)["verdict"]["holds"]
