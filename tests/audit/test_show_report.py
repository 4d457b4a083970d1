"""`audit show` word for word on a log written by hand (milliseconds a test): the verdict an auditor reads says
exactly what the findings passed in verified, each section's rows and their order, the banner, the terminal table
and the HTML page. Findings are made here too: `audit.show` never judges entries, it shows what `audit.verify` found.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import pytest

from audit.log import AuditLog, Witness
from audit.show import (
    LATER_DECISIONS,
    UNPROVEN_BATCH,
    _clock,
    _half_open,
    _short,
    _time,
    _when,
    batch_report,
    batch_verdicts,
    render_html,
    render_text,
)
from audit.verify import ERROR, NOTE, Finding

T0 = 1_700_000_000.25  # 2023-11-14 22:13:20.250 UTC
M = "ab" * 48  # a measurement
DIGEST = "d" * 64
Entry = tuple[str, dict[str, Any]]


def _world() -> list[Entry]:
    """One batch b1 of tenant acme, in the order a sync logs it, and a little of b2 around it."""
    return [
        ("policy_change", {"broker": "owner", "key_id": "acme/emails", "operation": "admin.create_key",
                           "key_kind": "data", "policy": None,
                           "key_measurements": [M], "time": T0 - 100}),
        ("key_release", {"broker": "owner", "key_id": "acme/emails", "operation": "admin.rotate_key",
                         "decision": "allow", "reason": "rotated to version 2", "time": T0 - 90}),
        ("grant", {"broker": "owner", "batch_id": "b1", "key_ids": ["acme/emails"], "model_digest": DIGEST,
                   "granted_measurements": [M], "time": T0 - 50}),
        ("batch_submitted", {"tenant": "acme", "batch_id": "b1", "objects": [{"rows": 10}, {"rows": "5"}],
                             "model": {"name": "spam", "version": "3", "digest": DIGEST},
                             "manifest_sha256": "e" * 64, "time": T0}),
        ("attestation", {"broker": "owner", "decision": "allow", "claims_digest": "c1", "measurement": M,
                         "batch_id": "b1", "time": T0 + 1.5}),
        ("key_release", {"broker": "owner", "key_id": "acme/emails", "operation": "unwrap", "decision": "allow",
                         "claims_digest": "c1", "measurement": M, "reason": "default clause", "batch_id": "b1",
                         "time": T0 + 2}),
        ("receipt", {"tenant": "acme", "batch_id": "b1", "path_batch_id": "b1", "shard_index": 1,
                     "input": {"key": "incoming/acme/b1/part-1.parquet", "row_groups": [1, 3]},
                     "output": {"rows": 5, "sha256": "f" * 64}, "worker": "w1",
                     "sessions": [{"claims_digests": ["c1"]}], "receipt_key": "results/acme/b1/shard-1.receipt.jws",
                     "issued_at": T0 + 3}),
        ("receipt", {"tenant": "acme", "batch_id": "b1", "path_batch_id": "b1", "shard_index": 0,
                     "input": {"key": "incoming/acme/b1/part-0.parquet", "row_groups": [0, 1]},
                     "output": {"rows": 10, "sha256": "0" * 64}, "worker": "w1",
                     "sessions": [{"claims_digests": ["c1"]}], "receipt_key": "results/acme/b1/shard-0.receipt.jws",
                     "issued_at": T0 + 4}),
        ("batch_result", {"batch_id": "b1", "rows": 15, "run_id": "run-7",
                          "shards": [{"reused": True}, {"reused": False}],
                          "attestation": [{"worker": "w9", "verdicts": [{"claims_digest": "c2"}]}], "time": T0 + 5}),
        ("batch_status", {"batch_id": "b1", "state": "succeeded", "result_manifest": "results/acme/b1/manifest.json",
                          "run_id": "run-7", "time": T0 + 6}),
        ("key_release", {"broker": "owner", "key_id": "acme/results", "operation": "admin.unwrap",
                         "decision": "allow", "reason": "owner reads b1", "batch_id": "b1", "time": T0 + 7}),
        ("broker_head", {"broker": "owner", "head_seq": 12, "synced_at": T0 + 8}),
        ("broker_head", {"broker": "provider", "head_seq": 4, "synced_at": "soon"}),
    ]


def _log(tmp_path: Path, entries: list[Entry], *, sign: bool = True) -> AuditLog:
    log = AuditLog.open_dir(tmp_path / "log")
    for i, (kind, fields) in enumerate(entries):
        log.append(kind, f"e{i}", fields)
    if sign:
        log.publish_checkpoint(now=int(T0) + 10)
    return log


def _report(tmp_path: Path, findings: list[Finding] | None = None, batch: str = "b1",
            entries: list[Entry] | None = None, **kwargs: Any) -> dict[str, Any]:
    log = _log(tmp_path, _world() if entries is None else entries)
    return batch_report(log, None, batch, findings or [], **kwargs)


def _rows(report: dict[str, Any], title: str) -> list[dict[str, Any]]:
    return next(s for s in report["sections"] if s["title"] == title)["rows"]


def _log_without_index(tmp_path: Path, entries: list[Entry], position: int) -> AuditLog:
    """The log of `entries`, its entry at `position` edited to lose its index (a tampered log), opened again."""
    _log(tmp_path, entries)
    path = tmp_path / "log" / "entries.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[position] = lines[position].replace(b',"index":%d' % position, b"")
    path.write_bytes(b"".join(lines))
    return AuditLog.open_dir(tmp_path / "log")


def _cells(report: dict[str, Any], title: str) -> list[dict[str, str]]:
    return [r["cells"] for r in _rows(report, title)]


# -- the verdict: what was verified, and nothing more ----------------------------------------------


def test_a_receipt_error_filed_under_another_batch_still_fails_the_batch_that_shows_it(tmp_path: Path) -> None:
    """A receipt stored under batch b2's path that speaks of b1 is filed under b2 (where it lies), at its own log
    position; b1's report shows that receipt as one of its shards, so its banner must not say it holds, nor count
    the receipt verified."""
    misplaced = Finding(ERROR, "receipt", "receipt results/acme/b2/shard-0.receipt.jws lies under batch b2 but "
                        "speaks of batch b1", "b2", 7)
    report = _report(tmp_path, [misplaced])
    verdict = report["verdict"]
    assert verdict["holds"] is False
    assert verdict["receipts"] == {"verified": 1, "total": 2}
    assert verdict["problems"] == [misplaced.message]
    shard_0 = _rows(report, "Shards")[0]
    assert shard_0["alarm"] and shard_0["problems"] == [f"error: {misplaced.message}"]
    [line] = [v for v in batch_verdicts(_log(tmp_path / "again", _world()), [misplaced]) if v["batch_id"] == "b1"]
    assert (line["holds"], line["receipts"], line["problems"]) == (False, "1/2", 1)


def test_a_forged_training_receipt_is_not_counted_verified_in_the_batch_list(tmp_path: Path) -> None:
    entries: list[Entry] = [
        ("training_submitted", {"tenant": "acme", "batch_id": "job1", "objects": [{"rows": 240}], "time": T0}),
        ("training_receipt", {"tenant": "acme", "batch_id": "job1", "worker": "w1", "issued_at": T0 + 1}),
        ("batch_status", {"batch_id": "job1", "state": "succeeded", "time": T0 + 2}),
    ]
    forged = Finding(ERROR, "training", "tuned/acme/job1/receipt.jws does not verify, it is forged or altered",
                     "job1", 1)
    [line] = batch_verdicts(_log(tmp_path, entries), [forged])
    assert line == {"batch_id": "job1", "tenant": "acme", "state": "succeeded", "receipts": "0/1", "refusals": 0,
                    "holds": False, "problems": 1}
    assert _report(tmp_path / "r", [forged], "job1", entries)["verdict"]["receipts"] == {"verified": 0, "total": 1}


def test_the_verdict_holds_only_without_errors_and_names_each_problem(tmp_path: Path) -> None:
    report = _report(tmp_path)
    verdict = report["verdict"]
    assert verdict == {
        "holds": True, "state": "succeeded", "refusals": 0, "receipts": {"verified": 2, "total": 2},
        "checkpoint": {"size": 13, "root": verdict["checkpoint"]["root"], "signed_at": int(T0) + 10,
                       "description": verdict["checkpoint"]["description"], "witnessed_by": []},
        "in_sync": True, "sync": ["every entry is signed and the bucket holds nothing unlogged for this batch"],
        "brokers": {"heads": [{"broker": "owner", "seq": 12, "synced_at": T0 + 8},
                              {"broker": "provider", "seq": 4, "synced_at": "soon"}],
                    "said": "checked against owner's decisions 1 to 12 (synced 2023-11-14 22:13:28 UTC), provider's "
                            f"decisions 1 to 4 (synced at an unknown time); {LATER_DECISIONS}"},
        "problems": [], "changed_positions": None}
    log = _log(tmp_path / "again", _world())
    assert verdict["checkpoint"]["root"] == log.tree().root().hex()
    assert verdict["checkpoint"]["description"] == log.latest_checkpoint().describe()
    notes = [Finding(NOTE, "worker", "a note about b1", "b1", 5), Finding(ERROR, "release", "about b2", "b2", None)]
    assert _report(tmp_path / "notes", notes)["verdict"]["holds"] is True
    bad = [Finding(ERROR, "release", "released to a measurement the policy does not allow", "b1", 5),
           Finding(ERROR, "receipt", "shard 1 does not verify", "b1", 6),
           Finding(ERROR, "witness", "the witnesses pinned different log keys"),
           Finding(ERROR, "grant", "a grant error of b1 without a position", "b1")]
    failed = _report(tmp_path / "bad", bad)
    assert failed["verdict"]["holds"] is False
    assert failed["verdict"]["receipts"] == {"verified": 1, "total": 2}
    assert failed["verdict"]["problems"] == ["the witnesses pinned different log keys",
                                             "released to a measurement the policy does not allow",
                                             "shard 1 does not verify", "a grant error of b1 without a position"]
    assert failed["verdict"]["changed_positions"] is None  # the entries still match every checkpoint
    release = _rows(failed, "Key releases")[0]
    assert release["alarm"] and release["problems"] == ["error: released to a measurement the policy does not allow"]


def test_a_whole_log_error_fails_every_batch_and_a_changed_span_is_named(tmp_path: Path) -> None:
    log = _log(tmp_path, _world())
    lines = (tmp_path / "log" / "entries.jsonl").read_bytes().splitlines(keepends=True)
    lines[5] = lines[5].replace(b"default clause", b"another claus")  # same length, after it was signed
    (tmp_path / "log" / "entries.jsonl").write_bytes(b"".join(lines))
    log = AuditLog.open_dir(tmp_path / "log")
    integrity = Finding(ERROR, "integrity", "the first 13 entries hash to something else")
    report = batch_report(log, None, "b1", [integrity])
    assert report["verdict"]["holds"] is False
    assert report["verdict"]["problems"] == [integrity.message,
                                             "log positions 0 to 12 were changed after they were signed"]
    assert report["verdict"]["changed_positions"] == [0, 13]
    synced = batch_report(log, None, "b1", [Finding(ERROR, "sync", "a sync recorded broker owner's log up to 12")])
    assert synced["verdict"]["problems"] == ["a sync recorded broker owner's log up to 12"]  # no span for sync
    assert synced["verdict"]["changed_positions"] is None
    assert [(v["batch_id"], v["holds"], v["problems"]) for v in batch_verdicts(log, [integrity])] == [
        ("b1", False, 1)]
    assert batch_verdicts(log, [Finding(NOTE, "integrity", "a note")])[0]["holds"] is True


def test_an_unknown_batch_never_holds_and_an_unsigned_log_is_not_in_sync(tmp_path: Path) -> None:
    report = _report(tmp_path, batch="b9")
    assert report["known"] is False and report["verdict"]["holds"] is False and report["tenant"] is None
    assert report["verdict"]["state"] == "unknown"
    log = _log(tmp_path / "unsigned", _world(), sign=False)
    verdict = batch_report(log, None, "b1", [])["verdict"]
    assert verdict["checkpoint"] is None and verdict["in_sync"] is False
    assert verdict["sync"] == ["13 entries are not covered by a signed checkpoint"]
    log.publish_checkpoint(now=int(T0))
    log.append("batch_status", "late", {"batch_id": "b1", "state": "failed", "time": T0 + 9})
    assert batch_report(log, None, "b1", [])["verdict"]["sync"] == [
        "1 entries are not covered by a signed checkpoint"]


class _Bucket:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def get(self, key: str) -> bytes:
        return self.objects[key]


def test_records_of_the_batch_the_bucket_holds_and_the_log_does_not_are_counted(tmp_path: Path) -> None:
    log = _log(tmp_path, _world())
    status = b'{"state": "failed", "updated_at": 1700000100}'
    bucket = _Bucket({"status/acme/b1.json": status, "status/acme/b2.json": status, "status/acme/b3.json": status,
                      "status/acme/b4.json": status,
                      "results/acme/b1/shard-0.receipt.jws": b"not a JWS"})  # no batch_id: b1 by its path only
    verdict = batch_report(log, bucket, "b1", [])["verdict"]  # type: ignore[arg-type]
    assert verdict["in_sync"] is False and verdict["holds"] is True
    assert verdict["sync"] == ["the bucket holds 2 record(s) of this batch that the log does not (run `cscore audit "
                               "sync`)"]


def test_witnesses_that_saw_the_checkpoint_are_named(tmp_path: Path) -> None:
    log = _log(tmp_path, _world())
    seen, stale, none = Witness(tmp_path / "a", "owner"), Witness(tmp_path / "b", "provider"), Witness(
        tmp_path / "c", "nobody")
    stale.observe(log)
    log.append("batch_status", "late", {"batch_id": "b2", "state": "failed"})
    log.publish_checkpoint(now=int(T0) + 20)
    seen.observe(log)
    report = batch_report(log, None, "b1", [], witnesses=[seen, stale, none])
    assert report["verdict"]["checkpoint"]["witnessed_by"] == ["owner"]
    assert "checkpoint  " + report["verdict"]["checkpoint"]["description"] + "; seen by owner" in render_text(report)


def test_no_broker_head_says_decisions_not_synced_cannot_be_seen(tmp_path: Path) -> None:
    report = _report(tmp_path, entries=_world()[:-2])
    assert report["verdict"]["brokers"] == {
        "heads": [], "said": "no broker log head recorded: broker decisions not yet synced cannot be seen here (run "
                             "`cscore audit sync`)"}
    assert ("  brokers     no broker log head recorded: broker decisions not yet synced cannot be seen here (run "
            "`cscore audit sync`)") in render_text(report).splitlines()


def test_the_latest_head_of_each_broker_is_the_one_shown(tmp_path: Path) -> None:
    entries = [*_world(), ("broker_head", {"broker": "owner", "head_seq": 20, "synced_at": T0 + 30})]
    assert _report(tmp_path, entries=entries)["verdict"]["brokers"]["heads"][0] == {
        "broker": "owner", "seq": 20, "synced_at": T0 + 30}


# -- the sections ----------------------------------------------------------------------------------


def test_sections_in_order_with_their_columns(tmp_path: Path) -> None:
    report = _report(tmp_path)
    assert report["batch_id"] == "b1" and report["tenant"] == "acme" and report["known"] is True
    assert report["log"] == str(tmp_path / "log") and report["log_size"] == 13
    assert [(s["title"], [c["key"] for c in s["columns"]], [c["label"] for c in s["columns"]], s["empty"])
            for s in report["sections"]] == [
        ("Submission and grants", ["position", "when", "who", "what", "detail"],
         ["#", "when", "who", "what", "detail"], "no submission or grant recorded"),
        ("Attestation", ["position", "when", "who", "worker", "measurement", "claims", "note"],
         ["#", "when", "broker", "worker", "measurement", "claims digest", "note"],
         "no attestation recorded for this batch's releases"),
        ("Key releases", ["position", "when", "who", "key", "op", "worker", "measurement", "clause", "decision"],
         ["#", "when", "broker", "key", "op", "to worker", "measurement", "policy clause", "decision"],
         "no key released"),
        ("Shards", ["position", "when", "shard", "row_groups", "input", "worker", "rows", "output", "receipt"],
         ["#", "when", "shard", "row groups [start, end)", "input", "worker", "rows", "output sha256", "receipt"],
         "no shard receipt"),
        ("Results", ["position", "when", "what", "detail"], ["#", "when", "what", "detail"],
         "no result manifest or status"),
        ("Owner's decryption", ["position", "when", "who", "key", "op", "detail"],
         ["#", "when", "broker", "key", "op", "detail"],
         "the owner has not decrypted this batch's results (or decrypted them before this was logged)"),
        ("Refusals", ["position", "when", "who", "what", "detail"], ["#", "when", "who", "what", "detail"], "none")]


def test_submission_keys_and_grants_are_told_grant_first_then_the_manifest(tmp_path: Path) -> None:
    report = _report(tmp_path)
    assert _cells(report, "Submission and grants") == [
        {"position": "0", "when": "22:11:40.250", "who": "owner broker", "what": "created the key",
         "detail": "data key acme/emails; policy default; measurements abababababab…"},
        {"position": "1", "when": "22:11:50.250", "who": "owner broker", "what": "rotated the key",
         "detail": "key acme/emails: rotated to version 2"},
        {"position": "2", "when": "22:12:30.250", "who": "owner broker", "what": "recorded the owner's grant",
         "detail": "keys acme/emails for model dddddddddddd… to measurements abababababab…"},
        {"position": "3", "when": "22:13:20.250", "who": "tenant acme", "what": "submitted the signed manifest",
         "detail": "2 object(s), 15 emails; model spam:3; manifest eeeeeeeeeeee…"}]
    assert [r["rank"] for r in _rows(report, "Submission and grants")] == [0, 0, 1, 2]


def test_attestation_releases_and_the_worker_they_went_to(tmp_path: Path) -> None:
    report = _report(tmp_path)
    assert _cells(report, "Attestation") == [
        {"position": "4", "when": "22:13:21.750", "who": "owner", "worker": "w1", "measurement": "abababababab…",
         "claims": "c1", "note": "accepted: its evidence binds this batch"}]
    assert _cells(report, "Key releases") == [
        {"position": "5", "when": "22:13:22.250", "who": "owner", "key": "acme/emails", "op": "unwrap",
         "worker": "w1", "measurement": "abababababab…", "clause": "default clause", "decision": "allow"}]
    assert [r["alarm"] for r in _rows(report, "Key releases")] == [False]
    forged = [Finding(ERROR, "receipt", "forged", "b1", 6), Finding(ERROR, "receipt", "forged", "b1", 7)]
    unproven = _report(tmp_path / "unproven", forged)  # no verified receipt signs c1: the platform's word only
    assert _cells(unproven, "Key releases")[0]["worker"] == "unproven (no signed receipt)"
    entries = [*_world()[:5], ("key_release", {**_world()[5][1], "claims_digest": "c2"}), *_world()[6:]]
    said = _report(tmp_path / "said", entries=entries)
    assert _cells(said, "Key releases")[0]["worker"] == "unproven (platform says w9)"


def test_attestations_reused_or_made_before_the_batch_are_said(tmp_path: Path) -> None:
    world = _world()
    other = ("attestation", {"broker": "provider", "decision": "allow", "claims_digest": "c1", "measurement": M,
                             "batch_id": "b0", "time": T0 - 1})
    early = ("attestation", {"broker": "provider", "decision": "allow", "claims_digest": "c1", "measurement": M,
                             "time": T0 - 2})
    late = ("attestation", {"broker": "provider", "decision": "allow", "claims_digest": "c1", "measurement": M,
                            "time": T0 + 1})
    refused = ("attestation", {"broker": "provider", "decision": "deny", "claims_digest": "c1", "time": T0 + 1})
    unrelated = ("attestation", {"broker": "provider", "decision": "allow", "claims_digest": "zz", "time": T0 + 1})
    report = _report(tmp_path, entries=[*world, other, early, late, refused, unrelated])
    assert [(c["position"], c["who"], c["note"]) for c in _cells(report, "Attestation")] == [
        ("14", "provider", "reused: attested before this batch was submitted"),
        ("13", "provider", "reused: attested for batch b0 (bound in its evidence)"),
        ("15", "provider", "accepted"),
        ("4", "owner", "accepted: its evidence binds this batch")]


def test_shards_in_shard_order_with_half_open_row_groups(tmp_path: Path) -> None:
    assert _cells(_report(tmp_path), "Shards") == [
        {"position": "7", "when": "22:13:24.250", "shard": "0", "row_groups": "[0, 1) = 1 group",
         "input": "part-0.parquet", "worker": "w1", "rows": "10", "output": "000000000000…",
         "receipt": "shard-0.receipt.jws"},
        {"position": "6", "when": "22:13:23.250", "shard": "1", "row_groups": "[1, 3) = 2 groups",
         "input": "part-1.parquet", "worker": "w1", "rows": "5", "output": "ffffffffffff…",
         "receipt": "shard-1.receipt.jws"}]
    bare: list[Entry] = [("batch_submitted", {"tenant": "acme", "batch_id": "b1"}),
            ("receipt", {"batch_id": "b1", "shard_index": "x"}), ("receipt", {"batch_id": "b1", "shard_index": 0})]
    assert [(c["position"], c["shard"], c["row_groups"], c["input"], c["worker"], c["rows"], c["output"],
             c["receipt"]) for c in _cells(_report(tmp_path / "bare", entries=bare), "Shards")] == [
        ("1", "x", "?", "?", "unnamed", "None", "?", "?"), ("2", "0", "?", "?", "unnamed", "None", "?", "?")]


def test_results_owner_decryption_and_refusals(tmp_path: Path) -> None:
    report = _report(tmp_path)
    assert _cells(report, "Results") == [
        {"position": "8", "when": "22:13:25.250", "what": "result manifest",
         "detail": "2 shard(s), 15 rows, 1 reused from an earlier attempt; run run-7"},
        {"position": "9", "when": "22:13:26.250", "what": "status succeeded", "detail": "manifest.json; run run-7"}]
    assert _cells(report, "Owner's decryption") == [
        {"position": "10", "when": "22:13:27.250", "who": "owner", "key": "acme/results", "op": "admin.unwrap",
         "detail": "owner reads b1"}]
    assert _cells(report, "Refusals") == []
    assert report["summary"] == [
        "15 emails in 2 object(s), model spam:3 (dddddddddddd…), tenant acme.",
        "2 shard(s) on 1 worker(s): w1; 1 key release(s), 0 refusal(s).",
        "Batch succeeded.",
        "Submitted 2023-11-14 22:13:20 UTC."]


def test_a_failed_batch_its_refusals_and_refused_attestations(tmp_path: Path) -> None:
    world = _world()[:8]
    entries = [*world,
               ("key_release", {"broker": "provider", "key_id": "model/spam", "operation": "unwrap",
                                "decision": "deny", "reason": "no grant", "batch_id": "b1", "time": T0 + 4.5}),
               ("attestation", {"broker": "owner", "decision": "deny", "reason": "bad signature", "batch_id": "b1",
                                "time": T0 + 4.6}),
               ("attestation", {"broker": "owner", "decision": "deny", "reason": "stale nonce", "batch_id": "b2",
                                "time": T0 + 4.7}),
               ("attestation", {"broker": "owner", "decision": "deny", "reason": "no batch", "time": T0 + 4.8}),
               ("attestation", {"broker": "owner", "decision": "deny", "reason": "before", "time": T0 - 1}),
               ("batch_status", {"batch_id": "b1", "state": "failed", "reason": "attest: refused", "time": T0 + 5}),
               ("attestation", {"broker": "owner", "decision": "deny", "reason": "after", "time": T0 + 6})]
    report = _report(tmp_path, entries=entries)
    assert [(c["position"], c["who"], c["what"], c["detail"]) for c in _cells(report, "Refusals")] == [
        ("8", "provider broker", "refused unwrap", "key model/spam: no grant"),
        ("9", "owner broker", "refused an attestation for this batch", f"bad signature ({UNPROVEN_BATCH})"),
        ("10", "owner broker", "refused an attestation during this batch",
         f"stale nonce (it names batch b2; {UNPROVEN_BATCH})"),
        ("11", "owner broker", "refused an attestation during this batch",
         f"no batch (it names no batch; {UNPROVEN_BATCH})"),
        ("13", "platform", "marked the batch failed", "attest: refused")]
    assert all(r["alarm"] for r in _rows(report, "Refusals"))
    assert report["verdict"]["refusals"] == 5 and report["verdict"]["state"] == "failed"
    assert _cells(report, "Results") == [{"position": "13", "when": "22:13:25.250", "what": "status failed",
                                          "detail": "attest: refused"}]
    assert [r["alarm"] for r in _rows(report, "Results")] == [True]
    assert [r["alarm"] for r in _rows(report, "Key releases")] == [False, True]
    assert report["summary"][1:3] == ["2 shard(s) on 1 worker(s): w1; 1 key release(s), 5 refusal(s).",
                                      "Batch failed."]
    running = [*world, ("attestation", {"broker": "owner", "decision": "deny", "reason": "later",
                                        "time": T0 + 999})]  # no end yet: every refusal after the start is during it
    assert [c["detail"] for c in _cells(_report(tmp_path / "running", entries=running), "Refusals")] == [
        f"later (it names no batch; {UNPROVEN_BATCH})"]
    unsubmitted: list[Entry] = [("batch_status", {"batch_id": "b1", "state": "running"}),
                                ("attestation", {"broker": "owner", "decision": "deny", "reason": "x", "time": T0})]
    assert _cells(_report(tmp_path / "unsubmitted", entries=unsubmitted), "Refusals") == []


def test_a_training_job_has_its_section_and_summary(tmp_path: Path) -> None:
    entries: list[Entry] = [
        ("training_submitted", {"tenant": "acme", "batch_id": "job1", "objects": [{"rows": 200}, {"rows": 40}],
                                "holdout": {"fraction": 0.2}, "recipe": {"name": "lr", "version": "1",
                                                                         "digest": "r" * 64},
                                "model": {"name": "tuned", "version": "2"}, "time": T0}),
        ("training_receipt", {"tenant": "acme", "batch_id": "job1", "worker": "w3",
                              "model": {"name": "tuned", "version": "2", "digest": "9" * 64},
                              "input": {"sha256": "8" * 64}, "recipe": {"name": "lr", "version": "1",
                                                                        "digest": "r" * 64},
                              "metrics": {"holdout_rows": 48, "precision": 0.9, "recall": 0.8, "f1": 0.85},
                              "issued_at": T0 + 1}),
        ("tuned_model", {"tenant": "acme", "batch_id": "job1", "name": "tuned", "version": "2", "digest": "9" * 64,
                         "lineage": {"job_id": "job1", "input_sha256": "8" * 64, "recipe": {"digest": "r" * 64}},
                         "time": T0 + 0.5}),
        ("batch_status", {"batch_id": "job1", "state": "succeeded", "time": T0 + 2})]
    report = _report(tmp_path, batch="job1", entries=entries)
    assert [s["title"] for s in report["sections"]][4] == "Training and lineage"
    assert next(s for s in report["sections"] if s["title"] == "Training and lineage")["empty"] == (
        "no training receipt or tuned model card")
    assert _cells(report, "Training and lineage") == [
        {"position": "1", "when": "22:13:21.250", "what": "worker w3 trained tuned:2",
         "detail": "model 999999999999… from data 888888888888… and recipe lr:1 (rrrrrrrrrrrr…); held out 48: "
                   "precision 0.9, recall 0.8, F1 0.85"},
        {"position": "2", "when": "22:13:20.750", "what": "enclave signed the tuned model's card",
         "detail": "acme/tuned:2 (999999999999…), lineage: job job1, data 888888888888…, recipe rrrrrrrrrrrr…; "
                   "scores tenant acme's batches only"}]
    assert _cells(report, "Submission and grants") == [
        {"position": "0", "when": "22:13:20.250", "who": "tenant acme",
         "what": "submitted the signed training manifest",
         "detail": "240 labelled emails, 0.2 held out; recipe lr:1 (rrrrrrrrrrrr…); tuned model tuned:2"}]
    assert _cells(report, "Shards") == []
    assert report["summary"] == [
        "Training job: 240 labelled emails, recipe lr:1 (rrrrrrrrrrrr…), tuned model tuned:2, tenant acme.",
        "Trained on w3: held-out F1 0.85; 0 key release(s), 0 refusal(s).",
        "Job succeeded.",
        "Submitted 2023-11-14 22:13:20 UTC."]
    bare = _report(tmp_path / "bare", batch="job1", entries=[("training_submitted", {"batch_id": "job1"})])
    assert bare["summary"] == ["Training job: 0 labelled emails, recipe None:None (?), tuned model None:None, "
                               "tenant None.", "Trained on no worker: held-out F1 ?; 0 key release(s), 0 refusal(s).",
                               "Job unknown."]


def test_policy_changes_in_words_and_admin_operations_named(tmp_path: Path) -> None:
    changes: list[Entry] = [("policy_change", {"broker": "owner", "key_id": "k", "operation": "admin.set_policy",
                                  "policy": "strict", "key_measurements": None}),
                            ("policy_change", {"broker": "owner", "key_id": "k", "operation": "admin.put_resource",
                                  "key_measurements": []})]
    ops: list[Entry] = [("key_release", {"broker": "owner", "key_id": "k", "operation": op, "reason": "r"}) for op in (
        "admin.create_key", "admin.set_policy", "admin.put_resource", "admin.set_platform_floor", "admin.other",
        "admin.wrap")]
    grant: Entry = ("grant", {"broker": "owner", "batch_id": "b1", "key_ids": ["k"]})
    later: Entry = ("policy_change", {"broker": "owner", "key_id": "k", "policy": "after the batch"})
    report = _report(tmp_path, entries=[*changes, *ops, grant, later])
    assert [(c["what"], c["detail"]) for c in _cells(report, "Submission and grants")] == [
        ("changed the key's policy", "key k; policy strict; measurements unchanged"),
        ("stored a resource", "key k; policy default; measurements none"),
        ("created the key", "key k: r"), ("changed the key's policy", "key k: r"), ("stored a resource", "key k: r"),
        ("set the platform floor", "key k: r"), ("admin.other", "key k: r"),
        ("recorded the owner's grant", "keys k for model ? to measurements none")]


# -- the terminal and HTML drawings ----------------------------------------------------------------


def test_the_terminal_report_word_for_word(tmp_path: Path) -> None:
    report = _report(tmp_path, [Finding(ERROR, "release", "released <to> w9", "b1", 5)])
    cp = report["verdict"]["checkpoint"]["description"]
    text = render_text(report)
    lines = text.splitlines()
    assert lines[:11] == [
        "Batch b1: audit DOES NOT HOLD; batch succeeded",
        "  receipts    2/2 verified",
        "  refusals    0",
        f"  checkpoint  {cp}",
        "  log         in sync: every entry is signed and the bucket holds nothing unlogged for this batch",
        "  brokers     owner's decisions 1 to 12 (synced 2023-11-14 22:13:28 UTC)",
        "              provider's decisions 1 to 4 (synced at an unknown time)",
        f"              {LATER_DECISIONS}",
        "  PROBLEM     released <to> w9",
        "",
        "  15 emails in 2 object(s), model spam:3 (dddddddddddd…), tenant acme."]
    releases = lines.index("== Key releases ==")
    assert lines[releases + 1:releases + 4] == [
        "  #  when          broker  key          op      to worker  measurement    policy clause   decision",
        "✗ 5  22:13:22.250  owner   acme/emails  unwrap  w1         abababababab…  default clause  allow",
        "      ^ error: released <to> w9"]
    assert lines[lines.index("== Refusals ==") + 1] == "  (none)"
    assert "== Training and lineage ==" not in lines
    shards = lines.index("== Shards ==")
    assert lines[shards + 1].startswith("  #  when          shard  row groups [start, end)  input           worker")


def test_a_long_cell_is_clipped_in_the_terminal_and_whole_in_the_json(tmp_path: Path) -> None:
    long_reason = "r" * 40
    world = _world()
    world[5][1]["reason"] = long_reason
    world[3][1]["manifest_sha256"] = "e" * 16  # 16 characters: shown whole
    report = _report(tmp_path, entries=world)
    assert _cells(report, "Key releases")[0]["clause"] == long_reason
    assert _cells(report, "Submission and grants")[3]["detail"].endswith("manifest eeeeeeeeeeeeeeee")
    text = render_text(report)
    assert "r" * 29 + "…" in text and "r" * 30 not in text


def test_the_html_page_says_the_same_escaped(tmp_path: Path) -> None:
    bad = [Finding(ERROR, "release", "released <b>to</b> w9", "b1", 5)]
    report = _report(tmp_path, bad)
    page = render_html(report)
    cp = html.escape(report["verdict"]["checkpoint"]["description"])
    assert page.startswith('<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-'
                           "Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\"><title>Audit of"
                           " batch b1</title><style>")
    assert page.endswith("\n</body></html>\n")
    assert ('<section class="verdict fail" id="verdict"><h1>Batch b1: audit does NOT hold</h1><dl>'
            "<dt>batch state</dt><dd>succeeded</dd><dt>receipts</dt><dd>2/2 verified</dd><dt>refusals</dt><dd>0</dd>"
            f"<dt>checkpoint</dt><dd>{cp}</dd><dt>witnessed by</dt><dd>nobody yet</dd><dt>log</dt><dd>in sync: every "
            "entry is signed and the bucket holds nothing unlogged for this batch</dd><dt>broker logs</dt><dd>checked "
            "against owner&#x27;s decisions 1 to 12 (synced 2023-11-14 22:13:28 UTC), provider&#x27;s decisions 1 to "
            "4 (synced at an unknown time); later broker decisions are not in the log (run `cscore audit sync` to see "
            "them)</dd><dt>problem</dt><dd>released &lt;b&gt;to&lt;/b&gt; w9</dd></dl></section>") in page
    assert ('<ul class="summary"><li>15 emails in 2 object(s), model spam:3 (dddddddddddd…), tenant acme.</li>'
            "<li>2 shard(s) on 1 worker(s): w1; 1 key release(s), 0 refusal(s).</li><li>Batch succeeded.</li>"
            "<li>Submitted 2023-11-14 22:13:20 UTC.</li></ul>") in page
    assert ('<h2>Key releases</h2><table><thead><tr><th>#</th><th>when</th><th>broker</th><th>key</th><th>op</th>'
            "<th>to worker</th><th>measurement</th><th>policy clause</th><th>decision</th></tr></thead><tbody>"
            '<tr class="alarm"><td>5</td><td>22:13:22.250</td><td>owner</td><td>acme/emails</td><td>unwrap</td>'
            "<td>w1</td><td>abababababab…</td><td>default clause</td><td>allow</td></tr>"
            '<tr class="problem"><td colspan="9">error: released &lt;b&gt;to&lt;/b&gt; w9</td></tr></tbody></table>'
            ) in page
    assert '<h2>Refusals</h2><p class="empty">none</p>' in page
    assert "<h2>Attestation</h2><table><thead>" in page and "<tr><td>4</td>" in page
    good = render_html(_report(tmp_path / "good"))
    assert '<section class="verdict" id="verdict"><h1>Batch b1: audit holds</h1>' in good
    seen = _report(tmp_path / "seen", witnesses=[])
    seen["verdict"]["checkpoint"]["witnessed_by"] = ["owner", "provider"]
    assert "<dt>witnessed by</dt><dd>owner, provider</dd>" in render_html(seen)
    assert "; seen by owner, provider\n" in render_text(seen)
    seen["verdict"]["checkpoint"] = None
    seen["verdict"]["in_sync"] = False
    seen["verdict"]["sync"] = ["2 entries are not covered", "the bucket holds 1 record(s)"]
    assert ("<dt>checkpoint</dt><dd>none</dd><dt>witnessed by</dt><dd>nobody yet</dd><dt>log</dt><dd>NOT in sync: 2 "
            "entries are not covered; the bucket holds 1 record(s)</dd>") in render_html(seen)
    lines = render_text(seen).splitlines()
    assert lines[3:5] == ["  checkpoint  none",
                          "  log         NOT in sync: 2 entries are not covered; the bucket holds 1 record(s)"]


# -- the formatting helpers ------------------------------------------------------------------------


def test_times_are_read_from_the_first_field_present_and_drawn_in_utc() -> None:
    assert _time({"time": 5, "updated_at": 6}) == 5.0
    assert _time({"updated_at": "6"}) == 6.0 and _time({"issued_at": 7}) == 7.0 and _time({"created_at": 8}) == 8.0
    assert _time({}) == float("inf") and _time({"time": "soon"}) == float("inf") and _time({"time": 0}) == float("inf")
    assert _time({"time": [1]}) == float("inf")
    assert _when({"time": T0}) == "22:13:20.250" and _when({"time": int(T0)}) == "22:13:20"
    assert _when({"time": T0 + 0.0009}) == "22:13:20.250" and _when({}) == ""
    assert _clock(0) == "1970-01-01 00:00:00 UTC" and _clock(None) == "at an unknown time"
    assert _clock("x") == "at an unknown time"


def test_short_values_and_row_groups() -> None:
    assert _short("a" * 16) == "a" * 16 and _short("a" * 17) == "a" * 12 + "…"
    assert _short(None) == "?" and _short("") == "?" and _short(0) == "?"
    assert _half_open([2, 3]) == "[2, 3) = 1 group" and _half_open([0, 0]) == "[0, 0) = 0 groups"
    assert _half_open(["1", "x"]) == "[1, 0) = -1 groups"
    assert _half_open([1]) == "?" and _half_open((0, 1)) == "?" and _half_open([1, 2, 3]) == "?"


def test_batches_are_listed_in_order_of_first_mention_with_their_counts(tmp_path: Path) -> None:
    entries: list[Entry] = [
        ("key_release", {"batch_id": "b0", "decision": "deny", "operation": "unwrap", "broker": "owner"}),
        *_world(),
        ("grant", {"broker": "owner", "batch_id": "b2", "key_ids": []}),
        ("batch_status", {"batch_id": "b3", "state": "failed", "reason": "x", "time": T0}),
        ("training_submitted", {"tenant": "zed", "batch_id": "job1"}),
        ("batch_submitted", {"tenant": "acme", "batch_id": "b1"}),
        ("batch_submitted", {"tenant": "acme", "batch_id": "b4"}),  # mentioned by its submission only
    ]
    log = _log(tmp_path, entries)
    mine = [Finding(ERROR, "release", "x", "b2", None), Finding(NOTE, "worker", "y", "b3", None)]
    assert batch_verdicts(log, mine) == [
        {"batch_id": "b1", "tenant": "acme", "state": "succeeded", "receipts": "2/2", "refusals": 0, "holds": True,
         "problems": 0},
        {"batch_id": "b2", "tenant": None, "state": "unknown", "receipts": "0/0", "refusals": 0, "holds": False,
         "problems": 1},
        {"batch_id": "b3", "tenant": None, "state": "failed", "receipts": "0/0", "refusals": 1, "holds": True,
         "problems": 0},
        {"batch_id": "job1", "tenant": "zed", "state": "unknown", "receipts": "0/0", "refusals": 0, "holds": True,
         "problems": 0},
        {"batch_id": "b4", "tenant": "acme", "state": "unknown", "receipts": "0/0", "refusals": 0, "holds": True,
         "problems": 0}]


def test_the_report_is_plain_json(tmp_path: Path) -> None:
    import json

    report = _report(tmp_path)
    assert json.loads(json.dumps(report)) == report
    assert all(set(r) == {"position", "rank", "time", "alarm", "cells", "problems"}
               for s in report["sections"] for r in s["rows"])
    assert _rows(report, "Shards")[0]["time"] == T0 + 4 and _rows(report, "Submission and grants")[0]["time"] == (
        T0 - 100)


@pytest.fixture(autouse=True)
def _utc_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: T0 + 10)  # no test depends on the wall clock


def test_a_manifest_logged_without_a_time_is_shown_not_crashed_on(tmp_path: Path) -> None:
    """A manifest whose JWS does not parse is logged with its fields empty (no created_at): the report has no
    start time then; it used to pass infinity to time.gmtime, and `audit show` died with OverflowError."""
    world = _world()
    del world[3][1]["time"]
    world[3][1]["created_at"] = None
    report = _report(tmp_path, entries=world)
    assert report["summary"][-1] == "Batch succeeded."
    assert _cells(report, "Submission and grants")[3]["when"] == ""
    assert _cells(report, "Attestation")[0]["note"] == "accepted: its evidence binds this batch"
    assert render_text(report).startswith("Batch b1: audit HOLDS; batch succeeded")
    training = _report(tmp_path / "t", batch="job1", entries=[("training_submitted", {"batch_id": "job1",
                                                                                         "created_at": "soon"})])
    assert training["summary"][-1] == "Job unknown."


def test_a_shard_receipt_before_a_training_receipt_does_not_hide_it(tmp_path: Path) -> None:
    entries: list[Entry] = [("training_submitted", {"tenant": "acme", "batch_id": "job1"}),
                            ("receipt", {"batch_id": "job1", "shard_index": 0}),
                            ("training_receipt", {"batch_id": "job1", "worker": "w3"})]
    report = _report(tmp_path, batch="job1", entries=entries)
    assert [c["what"] for c in _cells(report, "Training and lineage")] == ["worker w3 trained None:None"]


def test_a_receipt_lying_under_the_batchs_path_is_shown_whatever_batch_it_names(tmp_path: Path) -> None:
    world = _world()
    world[6][1]["batch_id"] = "b0"  # it speaks of b0 (verify files that error under b1, where it lies)
    report = _report(tmp_path, entries=world)
    assert [c["shard"] for c in _cells(report, "Shards")] == ["0", "1"]
    assert report["verdict"]["receipts"] == {"verified": 2, "total": 2}


def test_an_entry_edited_to_lose_its_position_does_not_take_another_entrys_errors(tmp_path: Path) -> None:
    entries: list[Entry] = [("batch_submitted", {"tenant": "acme", "batch_id": "b1", "time": T0}),
                            ("batch_submitted", {"tenant": "acme", "batch_id": "b2", "time": T0})]
    log = _log_without_index(tmp_path, entries, 0)
    report = batch_report(log, None, "b1", [Finding(ERROR, "release", "about b2's entry", "b2", 1)])
    assert report["verdict"]["holds"] is True and report["verdict"]["problems"] == []


def test_a_job_known_by_its_training_receipt_alone_is_a_training_job_of_the_tenant_its_path_names(
        tmp_path: Path) -> None:
    entries: list[Entry] = [("training_receipt", {"batch_id": "job1", "path_tenant": "acme", "worker": "w3"})]
    report = _report(tmp_path, batch="job1", entries=entries)
    assert report["tenant"] == "acme"
    assert [s["title"] for s in report["sections"]][4] == "Training and lineage"
    assert report["summary"][0].startswith("Training job: ")


def test_a_refused_attestation_after_the_batch_succeeded_is_not_said_to_be_during_it(tmp_path: Path) -> None:
    after: Entry = ("attestation", {"broker": "owner", "decision": "deny", "reason": "later", "time": T0 + 100})
    assert _cells(_report(tmp_path, entries=[*_world(), after]), "Refusals") == []


def test_every_section_of_the_terminal_report_word_for_word(tmp_path: Path) -> None:
    """The tables an auditor reads, whole: a blank line before each title, the header's and rows' padding cut at the
    end of the line, a mark on the alarmed row only, long cells clipped to their column's width."""
    report = _report(tmp_path, [Finding(ERROR, "release", "released <to> w9", "b1", 5)])
    assert render_text(report).splitlines()[11:] == [
        "  2 shard(s) on 1 worker(s): w1; 1 key release(s), 0 refusal(s).",
        "  Batch succeeded.",
        "  Submitted 2023-11-14 22:13:20 UTC.",
        "",
        "== Submission and grants ==",
        "  #  when          who           what                           detail",
        "  0  22:11:40.250  owner broker  created the key                "
        "data key acme/emails; policy default; measurements abababab…",
        "  1  22:11:50.250  owner broker  rotated the key                key acme/emails: rotated to version 2",
        "  2  22:12:30.250  owner broker  recorded the owner's grant     "
        "keys acme/emails for model dddddddddddd… to measurements ab…",
        "  3  22:13:20.250  tenant acme   submitted the signed manifest  "
        "2 object(s), 15 emails; model spam:3; manifest eeeeeeeeeeee…",
        "",
        "== Attestation ==",
        "  #  when          broker  worker  measurement    claims digest  note",
        "  4  22:13:21.750  owner   w1      abababababab…  c1             accepted: its evidence bi…",
        "",
        "== Key releases ==",
        "  #  when          broker  key          op      to worker  measurement    policy clause   decision",
        "✗ 5  22:13:22.250  owner   acme/emails  unwrap  w1         abababababab…  default clause  allow",
        "      ^ error: released <to> w9",
        "",
        "== Shards ==",
        "  #  when          shard  row groups [start, end)  input           worker  rows  output sha256  receipt",
        "  7  22:13:24.250  0      [0, 1) = 1 group         part-0.parquet  w1      10    000000000000…  "
        "shard-0.receipt.jws",
        "  6  22:13:23.250  1      [1, 3) = 2 groups        part-1.parquet  w1      5     ffffffffffff…  "
        "shard-1.receipt.jws",
        "",
        "== Results ==",
        "  #  when          what              detail",
        "  8  22:13:25.250  result manifest   2 shard(s), 15 rows, 1 reused from an earlier attempt; run …",
        "  9  22:13:26.250  status succeeded  manifest.json; run run-7",
        "",
        "== Owner's decryption ==",
        "  #   when          broker  key           op            detail",
        "  10  22:13:27.250  owner   acme/results  admin.unwrap  owner reads b1",
        "",
        "== Refusals ==",
        "  (none)"]


def test_a_cell_as_wide_as_its_column_is_shown_whole(tmp_path: Path) -> None:
    world = _world()
    world[5][1]["reason"] = "c" * 30  # the policy clause's column is 30 wide
    line = next(s for s in render_text(_report(tmp_path, entries=world)).splitlines() if s.startswith("  5 "))
    assert line.endswith("abababababab…  " + "c" * 30 + "  allow")


def test_the_whole_html_page_after_its_style_word_for_word(tmp_path: Path) -> None:
    report = _report(tmp_path, [Finding(ERROR, "release", "released <to> w9", "b1", 5)])
    cp = html.escape(report["verdict"]["checkpoint"]["description"])
    assert render_html(report).split("</style>", 1)[1] == (
        "</head>\n<body>\n"
        '<section class="verdict fail" id="verdict"><h1>Batch b1: audit does NOT hold</h1><dl>'
        "<dt>batch state</dt><dd>succeeded</dd><dt>receipts</dt><dd>2/2 verified</dd><dt>refusals</dt><dd>0</dd>"
        f"<dt>checkpoint</dt><dd>{cp}</dd><dt>witnessed by</dt><dd>nobody yet</dd>"
        "<dt>log</dt><dd>in sync: every entry is signed and the bucket holds nothing unlogged for this batch</dd>"
        "<dt>broker logs</dt><dd>checked against owner&#x27;s decisions 1 to 12 (synced 2023-11-14 22:13:28 UTC), "
        "provider&#x27;s decisions 1 to 4 (synced at an unknown time); later broker decisions are not in the log (run "
        "`cscore audit sync` to see them)</dd><dt>problem</dt><dd>released &lt;to&gt; w9</dd></dl></section>\n"
        '<ul class="summary"><li>15 emails in 2 object(s), model spam:3 (dddddddddddd…), tenant acme.</li>'
        "<li>2 shard(s) on 1 worker(s): w1; 1 key release(s), 0 refusal(s).</li><li>Batch succeeded.</li>"
        "<li>Submitted 2023-11-14 22:13:20 UTC.</li></ul>\n"
        "<h2>Submission and grants</h2><table><thead><tr><th>#</th><th>when</th><th>who</th><th>what</th>"
        "<th>detail</th></tr></thead><tbody>"
        "<tr><td>0</td><td>22:11:40.250</td><td>owner broker</td><td>created the key</td>"
        "<td>data key acme/emails; policy default; measurements abababababab…</td></tr>"
        "<tr><td>1</td><td>22:11:50.250</td><td>owner broker</td><td>rotated the key</td>"
        "<td>key acme/emails: rotated to version 2</td></tr>"
        "<tr><td>2</td><td>22:12:30.250</td><td>owner broker</td><td>recorded the owner&#x27;s grant</td>"
        "<td>keys acme/emails for model dddddddddddd… to measurements abababababab…</td></tr>"
        "<tr><td>3</td><td>22:13:20.250</td><td>tenant acme</td><td>submitted the signed manifest</td>"
        "<td>2 object(s), 15 emails; model spam:3; manifest eeeeeeeeeeee…</td></tr></tbody></table>\n"
        "<h2>Attestation</h2><table><thead><tr><th>#</th><th>when</th><th>broker</th><th>worker</th>"
        "<th>measurement</th><th>claims digest</th><th>note</th></tr></thead><tbody>"
        "<tr><td>4</td><td>22:13:21.750</td><td>owner</td><td>w1</td><td>abababababab…</td><td>c1</td>"
        "<td>accepted: its evidence binds this batch</td></tr></tbody></table>\n"
        "<h2>Key releases</h2><table><thead><tr><th>#</th><th>when</th><th>broker</th><th>key</th><th>op</th>"
        "<th>to worker</th><th>measurement</th><th>policy clause</th><th>decision</th></tr></thead><tbody>"
        '<tr class="alarm"><td>5</td><td>22:13:22.250</td><td>owner</td><td>acme/emails</td><td>unwrap</td>'
        "<td>w1</td><td>abababababab…</td><td>default clause</td><td>allow</td></tr>"
        '<tr class="problem"><td colspan="9">error: released &lt;to&gt; w9</td></tr></tbody></table>\n'
        "<h2>Shards</h2><table><thead><tr><th>#</th><th>when</th><th>shard</th><th>row groups [start, end)</th>"
        "<th>input</th><th>worker</th><th>rows</th><th>output sha256</th><th>receipt</th></tr></thead><tbody>"
        "<tr><td>7</td><td>22:13:24.250</td><td>0</td><td>[0, 1) = 1 group</td><td>part-0.parquet</td><td>w1</td>"
        "<td>10</td><td>000000000000…</td><td>shard-0.receipt.jws</td></tr>"
        "<tr><td>6</td><td>22:13:23.250</td><td>1</td><td>[1, 3) = 2 groups</td><td>part-1.parquet</td><td>w1</td>"
        "<td>5</td><td>ffffffffffff…</td><td>shard-1.receipt.jws</td></tr></tbody></table>\n"
        "<h2>Results</h2><table><thead><tr><th>#</th><th>when</th><th>what</th><th>detail</th></tr></thead><tbody>"
        "<tr><td>8</td><td>22:13:25.250</td><td>result manifest</td>"
        "<td>2 shard(s), 15 rows, 1 reused from an earlier attempt; run run-7</td></tr>"
        "<tr><td>9</td><td>22:13:26.250</td><td>status succeeded</td><td>manifest.json; run run-7</td></tr>"
        "</tbody></table>\n"
        "<h2>Owner&#x27;s decryption</h2><table><thead><tr><th>#</th><th>when</th><th>broker</th><th>key</th>"
        "<th>op</th><th>detail</th></tr></thead><tbody>"
        "<tr><td>10</td><td>22:13:27.250</td><td>owner</td><td>acme/results</td><td>admin.unwrap</td>"
        "<td>owner reads b1</td></tr></tbody></table>\n"
        '<h2>Refusals</h2><p class="empty">none</p>\n'
        "</body></html>\n")


def test_a_grants_keys_are_named_whole_and_its_measurements_shortened(tmp_path: Path) -> None:
    grant: Entry = ("grant", {"broker": "owner", "batch_id": "b1", "key_ids": ["acme/emails-of-november", "acme/b"],
                              "model_digest": DIGEST, "granted_measurements": [M, "cd" * 48]})
    assert _cells(_report(tmp_path, entries=[grant]), "Submission and grants")[0]["detail"] == (
        "keys acme/emails-of-november, acme/b for model dddddddddddd… to measurements abababababab…, cdcdcdcdcdcd…")


def test_a_refused_attestation_at_the_batchs_first_or_last_moment_is_during_it(tmp_path: Path) -> None:
    world = _world()[:8]
    at_start: Entry = ("attestation", {"broker": "owner", "decision": "deny", "reason": "first", "time": T0})
    done: Entry = ("batch_status", {"batch_id": "b1", "state": "succeeded", "time": T0 + 5})
    at_end: Entry = ("attestation", {"broker": "provider", "decision": "deny", "reason": "last", "batch_id": "b2",
                                     "time": T0 + 5})
    report = _report(tmp_path, entries=[*world, at_start, done, at_end])
    assert [(c["position"], c["when"], c["who"], c["what"], c["detail"]) for c in _cells(report, "Refusals")] == [
        ("8", "22:13:20.250", "owner broker", "refused an attestation during this batch",
         f"first (it names no batch; {UNPROVEN_BATCH})"),
        ("10", "22:13:25.250", "provider broker", "refused an attestation during this batch",
         f"last (it names batch b2; {UNPROVEN_BATCH})")]


def test_results_without_reused_shards_or_a_run_say_neither(tmp_path: Path) -> None:
    entries: list[Entry] = [
        ("batch_submitted", {"tenant": "acme", "batch_id": "b1", "time": T0}),
        ("batch_result", {"batch_id": "b1", "rows": 3, "shards": [{"reused": False}], "time": T0 + 1}),
        ("batch_status", {"batch_id": "b1", "state": "running", "time": T0 + 2}),
        ("batch_status", {"batch_id": "b1", "state": "succeeded", "result_manifest": "results/acme/b1/m.json",
                          "time": T0 + 3})]
    report = _report(tmp_path, entries=entries)
    assert [(c["what"], c["detail"]) for c in _cells(report, "Results")] == [
        ("result manifest", "1 shard(s), 3 rows"), ("status running", "?"), ("status succeeded", "m.json")]
    assert [r["alarm"] for r in _rows(report, "Results")] == [False, False, False]


def test_receipts_of_one_shard_are_in_log_order_and_the_summary_names_each_worker_once(tmp_path: Path) -> None:
    entries: list[Entry] = [
        ("batch_submitted", {"tenant": "acme", "batch_id": "b1", "objects": [{"rows": 4}], "time": T0}),
        ("receipt", {"batch_id": "b1", "shard_index": 1, "worker": "w2", "issued_at": T0 + 1}),
        ("receipt", {"batch_id": "b1", "shard_index": 0, "worker": "w2", "issued_at": T0 + 2}),
        ("receipt", {"batch_id": "b1", "shard_index": 0, "worker": "w1", "issued_at": T0 + 3}),
        ("receipt", {"batch_id": "b1", "shard_index": 2, "issued_at": T0 + 4})]
    report = _report(tmp_path, entries=entries)
    assert [(c["position"], c["shard"], c["worker"]) for c in _cells(report, "Shards")] == [
        ("2", "0", "w2"), ("3", "0", "w1"), ("1", "1", "w2"), ("4", "2", "unnamed")]
    assert report["summary"][:2] == ["4 emails in 1 object(s), model None:None (?), tenant acme.",
                                     "4 shard(s) on 2 worker(s): w1, w2; 0 key release(s), 0 refusal(s)."]


def test_an_attestation_at_the_batchs_submission_is_not_reused(tmp_path: Path) -> None:
    world = _world()
    same_time: Entry = ("attestation", {"broker": "provider", "decision": "allow", "claims_digest": "c1",
                                        "measurement": M, "time": T0})
    report = _report(tmp_path, entries=[*world, same_time])
    assert [(c["position"], c["note"]) for c in _cells(report, "Attestation")] == [
        ("13", "accepted"), ("4", "accepted: its evidence binds this batch")]


def test_untimed_decisions_follow_the_timed_ones_in_log_order(tmp_path: Path) -> None:
    release = {"broker": "owner", "key_id": "k", "operation": "unwrap", "decision": "allow", "batch_id": "b1"}
    entries: list[Entry] = [("key_release", {**release, "reason": "untimed 1"}),
                            ("key_release", {**release, "reason": "late", "time": T0 + 2}),
                            ("key_release", {**release, "reason": "untimed 2"}),
                            ("key_release", {**release, "reason": "early", "time": T0 + 1})]
    report = _report(tmp_path, entries=entries)
    assert [(c["position"], c["when"], c["clause"]) for c in _cells(report, "Key releases")] == [
        ("3", "22:13:21.250", "early"), ("1", "22:13:22.250", "late"), ("0", "", "untimed 1"), ("2", "", "untimed 2")]
    assert [r["time"] for r in _rows(report, "Key releases")] == [T0 + 1, T0 + 2, None, None]


def test_a_worker_is_taken_from_a_result_manifest_only_with_its_claims_digest(tmp_path: Path) -> None:
    release = {"broker": "owner", "key_id": "k", "operation": "unwrap", "decision": "allow", "batch_id": "b1"}
    entries: list[Entry] = [
        ("key_release", {**release, "claims_digest": "c1", "time": T0}),
        ("key_release", {**release, "time": T0 + 1}),  # no claims digest: nobody's word names its worker
        ("key_release", {**release, "claims_digest": "c2", "time": T0 + 2}),  # named by no manifest's worker
        ("batch_result", {"batch_id": "b9", "attestation": [
            {"worker": "w7", "verdicts": [{"claims_digest": "c1"}, {}]},
            {"verdicts": [{"claims_digest": "c2"}]}, {"worker": "w8"}]}),
        ("batch_status", {"batch_id": "b9", "attestation": [{"worker": "w6", "verdicts": [{"claims_digest": "c2"}]}]})]
    report = _report(tmp_path, entries=entries)
    assert [c["worker"] for c in _cells(report, "Key releases")] == [
        "unproven (platform says w7)", "unproven (no signed receipt)", "unproven (no signed receipt)"]


def test_admin_operations_on_any_key_the_batch_used_are_told_up_to_its_last_entry(tmp_path: Path) -> None:
    """A key counts when granted or released for the batch; admin operations on it are listed wherever they lie
    among other entries, up to and including the batch's last entry."""
    entries: list[Entry] = [
        ("grant", {"broker": "owner", "batch_id": "b1", "key_ids": ["k"]}),
        ("key_release", {"broker": "owner", "key_id": "k", "operation": "admin.rotate_key", "reason": "r"}),
        ("policy_change", {"broker": "provider", "key_id": "model/m", "operation": "admin.set_policy", "policy": "p"}),
        ("key_release", {"broker": "provider", "key_id": "model/m", "operation": "unwrap", "decision": "allow",
                         "batch_id": "b1"}),
        ("key_release", {"broker": "owner", "key_id": "k", "operation": "admin.set_platform_floor", "reason": "f",
                         "batch_id": "b1"}),
        ("key_release", {"broker": "owner", "key_id": "k", "operation": "admin.rotate_key", "reason": "after"})]
    rows = _rows(_report(tmp_path, entries=entries), "Submission and grants")
    assert [(r["cells"]["position"], r["cells"]["who"], r["cells"]["what"], r["cells"]["detail"], r["rank"])
            for r in rows] == [
        ("1", "owner broker", "rotated the key", "key k: r", 0),
        ("2", "provider broker", "changed the key's policy", "key model/m; policy p; measurements unchanged", 0),
        ("4", "owner broker", "set the platform floor", "key k: f", 0),
        ("0", "owner broker", "recorded the owner's grant", "keys k for model ? to measurements none", 1)]


def test_each_training_submission_is_told_after_the_keys_and_grants(tmp_path: Path) -> None:
    entries: list[Entry] = [
        ("grant", {"broker": "owner", "batch_id": "job1", "key_ids": ["k"]}),
        ("key_release", {"broker": "owner", "key_id": "k", "operation": "admin.create_key", "reason": "new"}),
        ("training_submitted", {"tenant": "acme", "batch_id": "job1", "objects": [{"rows": 10}], "time": T0}),
        ("training_submitted", {"tenant": "acme", "batch_id": "job1", "objects": [{"rows": 12}], "time": T0 + 1})]
    rows = _rows(_report(tmp_path, batch="job1", entries=entries), "Submission and grants")
    assert [(r["cells"]["position"], r["cells"]["what"], r["cells"]["detail"], r["rank"]) for r in rows] == [
        ("1", "created the key", "key k: new", 0),
        ("0", "recorded the owner's grant", "keys k for model ? to measurements none", 1),
        ("2", "submitted the signed training manifest",
         "10 labelled emails, None held out; recipe None:None (?); tuned model None:None", 2),
        ("3", "submitted the signed training manifest",
         "12 labelled emails, None held out; recipe None:None (?); tuned model None:None", 2)]


def test_a_shard_receipt_edited_to_lose_its_position_is_still_listed(tmp_path: Path) -> None:
    """A tampered log fails its integrity check elsewhere; the report still shows every receipt, the edited one at
    position -1, rather than dying on the missing index."""
    entries: list[Entry] = [("batch_submitted", {"tenant": "acme", "batch_id": "b1", "time": T0}),
                            ("receipt", {"batch_id": "b1", "shard_index": 0, "worker": "w1"}),
                            ("receipt", {"batch_id": "b1", "shard_index": 0, "worker": "w2"})]
    log = _log_without_index(tmp_path, entries, 1)
    report = batch_report(log, None, "b1", [])
    assert [(c["position"], c["worker"]) for c in _cells(report, "Shards")] == [("-1", "w1"), ("2", "w2")]


def test_a_training_jobs_summary_names_each_worker_once_in_order(tmp_path: Path) -> None:
    entries: list[Entry] = [("training_submitted", {"tenant": "acme", "batch_id": "job1", "time": T0}),
                            ("training_receipt", {"batch_id": "job1", "worker": "w4", "metrics": {"f1": 0.5}}),
                            ("training_receipt", {"batch_id": "job1", "worker": "w3", "metrics": {"f1": 0.7}}),
                            ("training_receipt", {"batch_id": "job1", "worker": "w4"})]
    assert _report(tmp_path, batch="job1", entries=entries)["summary"][1] == (
        "Trained on w3, w4: held-out F1 0.5; 0 key release(s), 0 refusal(s).")


def test_a_batch_without_receipts_says_it_ran_on_no_worker(tmp_path: Path) -> None:
    entries: list[Entry] = [("batch_submitted", {"tenant": "acme", "batch_id": "b1", "time": T0})]
    assert _report(tmp_path, entries=entries)["summary"][1] == (
        "0 shard(s) on 0 worker(s): none; 0 key release(s), 0 refusal(s).")


def test_a_zero_time_in_any_field_is_no_time() -> None:
    assert _time({"created_at": 0}) == float("inf") and _time({"issued_at": 0.0}) == float("inf")
    assert _when({"created_at": 0}) == ""
    assert _when({"time": int(T0) + 1}) == "22:13:21"  # an odd whole second has no fraction either


def test_a_batch_whose_one_entry_lost_its_position_lists_no_admin_row_logged_after_it(tmp_path: Path) -> None:
    """The batch's last position reads a missing index as 0, as every other reader does: a key's admin change logged
    after the batch (position 1) is not part of its story, whatever the edited entry held."""
    entries: list[Entry] = [
        ("grant", {"broker": "owner", "batch_id": "b1", "key_ids": ["acme/emails"], "model_digest": DIGEST,
                   "granted_measurements": [M], "time": T0}),
        ("key_release", {"broker": "owner", "key_id": "acme/emails", "operation": "admin.rotate_key",
                         "decision": "allow", "reason": "rotated to version 2", "time": T0 + 1})]
    log = _log_without_index(tmp_path, entries, 0)
    report = batch_report(log, None, "b1", [])
    assert [c["what"] for c in _cells(report, "Submission and grants")] == ["recorded the owner's grant"]
