"""A training job in the transparency log: its manifest, releases, the enclave's receipt and the tuned model's
lineage, checked by `audit verify` and told by `audit show`."""

from __future__ import annotations

from typing import Any

from audit.collect import storage_entries, sync_log
from audit.show import batch_report, batch_verdicts, render_text
from audit.verify import ERROR, verify_audit
from enclave.signing import generate_signing_key, sign_json, unverified_payload
from tests.audit.conftest import RECIPE, TENANT, Scenario


def _sync(s: Scenario) -> None:
    sync_log(s.log(), s.brokers, s.store)


def _errors(s: Scenario) -> list[str]:
    anchors, policy = s.anchors_policy()
    return [str(f) for f in verify_audit(s.log(), s.store, anchors, policy) if f.severity == ERROR]


def _section(report: dict[str, Any], title: str) -> list[dict[str, str]]:
    return [row["cells"] for row in next(s for s in report["sections"] if s["title"] == title)["rows"]]


def test_a_training_job_holds_and_tells_its_story(scenario: Scenario) -> None:
    scenario.run_batch("b1")
    scenario.run_training("t-1")
    _sync(scenario)
    assert _errors(scenario) == []  # its releases have a receipt: a training receipt counts
    anchors, policy = scenario.anchors_policy()
    report = batch_report(scenario.log(), scenario.store, "t-1",
                          verify_audit(scenario.log(), scenario.store, anchors, policy))
    assert report["verdict"]["holds"] and report["verdict"]["receipts"] == {"verified": 1, "total": 1}
    assert [s["title"] for s in report["sections"]] == [
        "Submission and grants", "Attestation", "Key releases", "Shards", "Training and lineage", "Results",
        "Owner's decryption", "Refusals"]
    submission = [r["what"] for r in _section(report, "Submission and grants")]
    assert submission[-2:] == ["recorded the owner's grant", "submitted the signed training manifest"]
    releases = {(r["who"], r["key"]) for r in _section(report, "Key releases")}
    assert releases == {("provider", "recipe.spam-recipe"), ("owner", "acme.t-1.train"), ("owner", "acme.t-1.share")}
    training = _section(report, "Training and lineage")
    assert [r["what"] for r in training] == ["enclave signed the tuned model's card",
                                             "worker w1 trained spam-filter-tuned:1"]
    assert "F1 0.975" in training[1]["detail"] and "lineage: job t-1" in training[0]["detail"]
    assert report["summary"][0].startswith("Training job: 300 labelled emails, recipe spam-recipe:1")
    text = render_text(report)
    assert "audit HOLDS; batch succeeded" in text and "Training and lineage" in text
    assert {v["batch_id"] for v in batch_verdicts(scenario.log(), [])} == {"b1", "t-1"}
    batch = batch_report(scenario.log(), scenario.store, "b1", [])
    assert "Training and lineage" not in [s["title"] for s in batch["sections"]]


def test_a_training_receipt_by_a_worker_launched_with_an_ungranted_configuration_is_an_error(
        scenario: Scenario) -> None:
    """The granted code launched by the platform with its own configuration (HOST_DATA) trains the job: its receipt
    and card verify, its measurement is granted, but the owner granted another configuration."""
    granted, launched = "07" * 32, "09" * 32
    scenario.run_training("t-1", host_data=bytes.fromhex(launched), config_digests=[granted])
    _sync(scenario)
    assert [e for e in _errors(scenario) if "[error] grant" in e] == [
        f"[error] grant: training job t-1: trained by a worker launched with configuration {launched[:16]}…, not "
        f"one the owner's grant names ({[granted]}) (log entry 17)"]
    scenario.run_training("t-2", version=2, host_data=bytes.fromhex(granted), config_digests=[granted])
    _sync(scenario)
    assert not [e for e in _errors(scenario) if "t-2" in e]


def test_a_training_receipt_the_platform_signed_is_found(scenario: Scenario) -> None:
    scenario.run_training("t-1")
    key = f"tuned/{TENANT}/spam-filter-tuned/1/receipt.jws"
    payload = unverified_payload(scenario.store.get(key).decode(), what="receipt")
    scenario.store.put(key, sign_json({**payload, "metrics": {**payload["metrics"], "f1": 1.0}},
                                      generate_signing_key()).encode())
    _sync(scenario)
    assert any("receipt.jws does not verify, it is forged or altered" in e for e in _errors(scenario))


def test_a_tuned_card_swapped_for_another_jobs_is_found(scenario: Scenario) -> None:
    """The platform puts version 2's card (another job's lineage) where version 1's was, before the sync."""
    scenario.run_training("t-1", version=1)
    scenario.run_training("t-2", version=2)
    scenario.store.put(f"tuned/{TENANT}/spam-filter-tuned/1/card.jws",
                       scenario.store.get(f"tuned/{TENANT}/spam-filter-tuned/2/card.jws"))
    _sync(scenario)
    assert any("training job t-1: no tuned model card logged for spam-filter-tuned:1" in e for e in _errors(scenario))


def test_a_training_job_without_a_grant_for_its_recipe_is_an_error(scenario: Scenario) -> None:
    scenario.owner.grant("t-1", "sha256:" + "00" * 32, [], [])  # recorded first: the later grant replaces it
    scenario.run_training("t-1")
    scenario.owner.grant("t-1", "sha256:" + "00" * 32, [], [])  # the owner's last word names another recipe
    _sync(scenario)
    assert any(f"which the owner's grant (sha256:{'00' * 32}) does not name" in e for e in _errors(scenario))
    assert RECIPE != "sha256:" + "00" * 32


def test_a_training_jobs_releases_are_tied_to_the_worker_its_receipt_signs(scenario: Scenario) -> None:
    scenario.run_training("t-1")
    _sync(scenario)
    anchors, policy = scenario.anchors_policy()
    findings = verify_audit(scenario.log(), scenario.store, anchors, policy)
    assert not [f for f in findings if f.check == "worker"], findings
    report = batch_report(scenario.log(), scenario.store, "t-1", findings)
    assert {r["worker"] for r in _section(report, "Key releases")} == {"w1"}


def test_a_training_receipt_without_sessions_proves_no_worker(scenario: Scenario) -> None:
    scenario.run_training("t-1", signed_sessions=False)
    _sync(scenario)
    anchors, policy = scenario.anchors_policy()
    findings = verify_audit(scenario.log(), scenario.store, anchors, policy)
    unproven = [f for f in findings
                if f.check == "worker" and "which no verified receipt of batch t-1 signs" in f.message]
    assert len(unproven) == 3 and all(f.severity == "note" for f in unproven), findings


def test_a_log_copy_of_a_training_receipt_that_misstates_its_sessions_is_found(scenario: Scenario) -> None:
    scenario.run_training("t-1")
    log = scenario.log()
    forged = [{"broker": "owner", "claims_digests": ["ab" * 32]}]  # another worker's attested claims
    for kind, entry_id, fields in storage_entries(scenario.store):
        log.append(kind, entry_id, {**fields, "sessions": forged} if kind == "training_receipt" else fields)
    _sync(scenario)
    anchors, policy = scenario.anchors_policy()
    findings = verify_audit(scenario.log(), scenario.store, anchors, policy)
    misstated = [f for f in findings if f.check == "training" and "says sessions" in f.message]
    assert len(misstated) == 1 and "but its signature covers" in misstated[0].message, findings
    # A misstated receipt links nothing: the releases are unproven, not tied to the forged claims.
    assert len([f for f in findings if f.check == "worker"]) == 3
