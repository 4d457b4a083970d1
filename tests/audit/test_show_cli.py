"""The batch story, its HTML page, and the `audit verify` / `audit show` commands."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from audit.cli import add_commands
from audit.collect import sync_log
from audit.show import batch_report, render_text
from audit.verify import verify_audit
from enclave.signing import canonical_json
from tests.audit.conftest import MEASUREMENT, TENANT, Scenario


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _sync(s: Scenario) -> None:
    log = s.log()
    sync_log(log, s.brokers, s.store)
    for w in s.witnesses():
        w.observe(log)


def _report(s: Scenario, batch: str) -> dict[str, Any]:
    anchors, policy = s.anchors_policy()
    findings = verify_audit(s.log(), s.store, anchors, policy, witnesses=s.witnesses())
    return batch_report(s.log(), s.store, batch, findings, witnesses=s.witnesses())


def _section(report: dict[str, Any], title: str) -> list[dict[str, str]]:
    return [row["cells"] for row in next(s for s in report["sections"] if s["title"] == title)["rows"]]


def test_report_verifies_then_tells_the_batch_in_sections(scenario: Scenario) -> None:
    scenario.run_batch("b1")
    scenario.run_batch("b2")
    _sync(scenario)
    report = _report(scenario, "b1")
    verdict = report["verdict"]
    assert verdict["holds"] and verdict["state"] == "succeeded" and verdict["in_sync"]
    assert verdict["receipts"] == {"verified": 2, "total": 2} and verdict["refusals"] == 0
    assert verdict["checkpoint"]["size"] == scenario.log().size
    assert verdict["checkpoint"]["witnessed_by"] == ["owner", "provider"]
    assert [s["title"] for s in report["sections"]] == [
        "Submission and grants", "Attestation", "Key releases", "Shards", "Results", "Owner's decryption", "Refusals"]
    submission = _section(report, "Submission and grants")
    assert [r["what"] for r in submission][-2:] == ["recorded the owner's grant", "submitted the signed manifest"]
    releases = _section(report, "Key releases")
    assert {(r["who"], r["key"], r["op"], r["worker"]) for r in releases} >= {
        ("provider", "model/spam", "unwrap", "w1"), ("owner", "acme/emails", "unwrap", "w1")}
    assert all(r["clause"].startswith("default") and r["measurement"].startswith("000102030405") for r in releases)
    assert {r["worker"] for r in _section(report, "Attestation")} == {"w1"}
    shards = _section(report, "Shards")
    assert [(r["shard"], r["row_groups"]) for r in shards] == [("0", "[0, 1) = 1 group"), ("1", "[1, 2) = 1 group")]
    text = render_text(report)
    assert "audit HOLDS; batch succeeded" in text and "receipts    2/2 verified" in text
    assert "batch b2" not in text and "/b2/" not in text  # nothing of the other batch
    assert "['" not in json.dumps(submission) and "['" not in text and "–" not in text  # no Python lists
    assert "model key model/spam; policy default; measurements 000102030405…" in [r["detail"] for r in submission]
    assert "model key model/spam; policy default" in text
    assert max(len(line) for line in text.splitlines()) <= 130
    assert json.loads(json.dumps(report)) == report


def test_owner_decryption_and_a_reused_attestation_are_told(scenario: Scenario,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    scenario.run_batch("b1")
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 10)  # b2 is submitted well after b1's attestation
    scenario.run_batch("b2", reuse_attestation=True)
    scenario.owner.decide("admin.unwrap", "allow", "owner unwrap to read batch b2's results", key_id="acme/results",
                          batch_id="b2")
    _sync(scenario)
    report = _report(scenario, "b2")
    owner_rows = _section(report, "Owner's decryption")
    assert [(r["who"], r["key"], r["op"], r["detail"]) for r in owner_rows] == [
        ("owner", "acme/results", "admin.unwrap", "owner unwrap to read batch b2's results")]
    attested = _section(report, "Attestation")
    assert len(attested) == 2 and all(r["note"] == "reused: attested for batch b1 (bound in its evidence)"
                                      for r in attested)
    assert all(r["note"] == "accepted: its evidence binds this batch"
               for r in _section(_report(scenario, "b1"), "Attestation"))
    assert _section(_report(scenario, "b1"), "Owner's decryption") == []


def test_refusals_have_their_section(scenario: Scenario) -> None:
    scenario.run_batch("bad", fail="attest: worker refused <script>")
    scenario.owner.decide("unwrap", "deny", "the batch has no grant at this broker", key_id="acme/emails",
                          batch_id="bad", model_digest="m", claims={"measurement": MEASUREMENT.hex()})
    _sync(scenario)
    report = _report(scenario, "bad")
    assert report["verdict"]["state"] == "failed" and report["verdict"]["refusals"] == 2
    refusals = _section(report, "Refusals")
    assert any("has no grant" in r["detail"] for r in refusals) and any("<script>" in r["detail"] for r in refusals)
    denied = [r for r in _section(report, "Key releases") if r["decision"] == "deny"]
    assert denied and denied[0]["key"] == "acme/emails"


def test_refused_attestations_are_tied_to_the_batch_they_name_and_said_unproven(
        scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario.run_batch("b1")
    scenario.owner.decide("attest", "deny", "evidence rejected: VCEK signature does not verify", batch_id="b1")
    now = time.time()
    ticks = iter(range(1, 10_000))
    monkeypatch.setattr(time, "time", lambda: now + 3600 + next(ticks))  # long after b1, one second a step
    scenario._submit("b2", 1)
    scenario.owner.decide("attest", "deny", "evidence rejected: report signature", batch_id="b2")
    scenario.owner.decide("attest", "deny", "nonce already used", batch_id="b1")  # names b1, during b2
    scenario._status("b2", "failed", reason="attest: refused")
    _sync(scenario)
    b1 = _section(_report(scenario, "b1"), "Refusals")
    assert [r["what"] for r in b1] == ["refused an attestation for this batch"] * 2
    assert all("batch as the requester named it, unproven" in r["detail"] for r in b1)
    b2 = _section(_report(scenario, "b2"), "Refusals")
    assert {r["what"] for r in b2} == {"refused an attestation for this batch", "refused an attestation during "
                                       "this batch", "marked the batch failed"}
    assert any("it names batch b1" in r["detail"] for r in b2)


def _tampered_copy(s: Scenario, tmp: Path) -> Path:
    """A copy of the log where one release's measurement reads ffff… (same length, still canonical JSON)."""
    copy = tmp / "copy"
    shutil.copytree(s.state / "audit", copy)
    lines = (copy / "entries.jsonl").read_bytes().splitlines()
    for i, line in enumerate(lines):
        entry = json.loads(line)
        if entry["kind"] == "key_release" and entry["key_id"] == "acme/emails":
            entry["measurement"] = "f" * len(entry["measurement"])
            lines[i] = canonical_json(entry)
            break
    (copy / "entries.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    return copy


def test_show_fails_and_marks_a_tampered_release(scenario: Scenario, sim_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCORE_BUCKET", "cscore")
    monkeypatch.setenv("CSCORE_STATE_DIR", str(scenario.state))
    scenario.run_batch("b1")
    _sync(scenario)
    trust = ["--trust-dir", str(sim_dir), "--measurement", MEASUREMENT.hex()]
    assert _run(["audit", "show", "b1", "--log", str(scenario.state / "audit"), *trust]) == 0
    capsys.readouterr()
    copy = _tampered_copy(scenario, tmp_path)
    assert _run(["audit", "show", "b1", "--log", str(copy), *trust]) == 1
    out = capsys.readouterr().out
    assert "audit DOES NOT HOLD" in out
    marked = [line for line in out.splitlines() if line.startswith("✗") and "acme/emails" in line]
    assert marked and "ffffffffffff" in marked[0], out
    assert "which the auditor's policy does not allow" in out and "were changed after they were signed" in out
    assert _run(["audit", "show", "b1", "--log", str(copy), "--json", *trust]) == 1
    report = json.loads(capsys.readouterr().out)
    bad = [r for r in next(s for s in report["sections"] if s["title"] == "Key releases")["rows"] if r["problems"]]
    assert len(bad) == 1 and bad[0]["alarm"] and bad[0]["cells"]["key"] == "acme/emails"


def test_show_refuses_unknown_batches_and_unsynced_logs(scenario: Scenario, sim_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCORE_BUCKET", "cscore")
    monkeypatch.setenv("CSCORE_STATE_DIR", str(scenario.state))
    trust = ["--trust-dir", str(sim_dir), "--measurement", MEASUREMENT.hex()]
    scenario.run_batch("b1")
    empty = tmp_path / "empty-log"
    empty.mkdir()
    assert _run(["audit", "show", "b1", "--log", str(empty), *trust]) == 2
    assert "was never synced" in capsys.readouterr().err
    _sync(scenario)
    assert _run(["audit", "show", "nope", "--log", str(scenario.state / "audit"), *trust]) == 2
    err = capsys.readouterr().err
    assert "holds nothing about batch 'nope'" in err and "b1" in err


def test_batches_lists_state_and_verdict(scenario: Scenario, sim_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCORE_BUCKET", "cscore")
    monkeypatch.setenv("CSCORE_STATE_DIR", str(scenario.state))
    trust = ["--trust-dir", str(sim_dir), "--measurement", MEASUREMENT.hex()]
    scenario.run_batch("b1")
    scenario.run_batch("bad", fail="attestation refused")
    _sync(scenario)
    assert _run(["audit", "batches", "--log", str(scenario.state / "audit"), "--json", *trust]) == 0
    rows = {r["batch_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["b1"]["state"] == "succeeded" and rows["b1"]["receipts"] == "2/2" and rows["b1"]["holds"]
    assert rows["bad"]["state"] == "failed" and rows["bad"]["refusals"] == 1 and rows["bad"]["holds"]
    assert _run(["audit", "batches", "--log", str(_tampered_copy(scenario, tmp_path)), *trust]) == 1
    assert "does NOT hold" in capsys.readouterr().out


def test_audit_verify_command_exit_codes(scenario: Scenario, sim_dir: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCORE_BUCKET", "cscore")
    scenario.run_batch("b1")
    _sync(scenario)
    common = ["--state-dir", str(scenario.state), "--trust-dir", str(sim_dir), "--measurement", MEASUREMENT.hex()]
    assert _run(["audit", "verify", *common]) == 0
    assert "holds" in capsys.readouterr().out
    scenario.store.put(f"results/{TENANT}/b1/shard-00000.parquet", b"PAR1 other bytes")
    assert _run(["audit", "verify", *common]) == 1
    out = capsys.readouterr().out
    assert "does not match its receipt" in out and "does NOT hold" in out


INJECTED = "<script>document.title='pwned'</script><b id=\"injected\">x</b>"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


class _Dom(HTMLParser):
    """Elements, their ids and the text of the rendered DOM that Chromium dumped."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.text: list[str] = []
        self.title = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.ids |= {v or "" for k, v in attrs if k == "id"}
        self._in = tag

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in == "title":
            self.title += data


def _render_in_chromium(page: Path, profile: Path) -> _Dom:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    if browser is None:
        pytest.fail("no Chromium to render the audit page: run `make setup` (installs Debian's chromium as root)")
    dumped = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                             page.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    dom = _Dom()
    dom.feed(dumped)
    return dom


def test_html_page_renders_in_a_real_browser_and_injected_markup_stays_inert(
        scenario: Scenario, sim_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCORE_BUCKET", "cscore")
    monkeypatch.setenv("CSCORE_STATE_DIR", str(scenario.state))
    scenario.run_batch("b1", fail=f"attest: worker refused {INJECTED}")
    scenario.owner.decide("unwrap", "deny", f"no grant {INJECTED}", key_id="acme/emails", batch_id="b1",
                          model_digest="m", claims={"measurement": MEASUREMENT.hex()})
    _sync(scenario)
    page = tmp_path / "b1.html"
    trust = ["--trust-dir", str(sim_dir), "--measurement", MEASUREMENT.hex()]
    assert _run(["audit", "show", "b1", "--log", str(scenario.state / "audit"), "--html", str(page), *trust]) == 0
    capsys.readouterr()
    dom = _render_in_chromium(page, tmp_path / "chromium-profile")
    text = " ".join(dom.text)
    assert dom.title == "Audit of batch b1"  # the injected script never ran
    assert "script" not in dom.tags and "injected" not in dom.ids and "b" not in dom.tags
    assert INJECTED in text  # shown as text, whole
    assert "Batch b1: audit holds" in text and "batch state" in text and "failed" in text
    assert dom.tags.count("table") == 5 and dom.tags.count("h2") == 7
    assert "verdict" in dom.ids


def test_log_on_s3_round_trips(scenario: Scenario) -> None:
    from audit.log import AuditLog, S3Storage, load_or_create_key

    log = AuditLog(S3Storage(scenario.store, "audit/"), signer=load_or_create_key(scenario.state / "k.pem"))
    scenario.run_batch("b1")
    report = sync_log(log, scenario.brokers, scenario.store)
    assert report.total > 0 and report.checkpoint is not None
    again = AuditLog(S3Storage(scenario.store, "audit/"))
    assert again.size == log.size and again.latest_checkpoint().root == log.tree().root()
    assert sync_log(again, scenario.brokers, scenario.store, checkpoint=False).total == 0
