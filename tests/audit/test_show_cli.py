"""The batch story, its HTML page, and the `audit verify` / `audit show` commands."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from audit.cli import add_commands
from audit.collect import sync_log
from audit.show import batch_story, render_html
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


def test_story_tells_submission_grant_attestation_releases_shards_and_outcome(scenario: Scenario) -> None:
    scenario.run_batch("b1")
    scenario.run_batch("b2")
    _sync(scenario)
    story = batch_story(scenario.log(), scenario.store, "b1")
    text = "\n".join(story)
    assert "Tenant acme submitted batch b1: 1 object(s), 20 emails, model spam:1" in text
    assert "owner broker recorded the owner's grant: keys ['acme/footer', 'acme/emails', 'acme/results']" in text
    assert "A worker attested to the provider broker with measurement 0001020304050607…" in text
    assert "The provider broker released key model/spam (unwrap)" in text
    assert "Shard 1 (row groups 1–2 of incoming/acme/b1/part-00000.parquet) ran on worker w1: 10 rows" in text
    assert "The batch succeeded" in text
    assert "batch b2" not in text and "/b2/" not in text  # nothing of the other batch
    assert [i for i, line in enumerate(story) if "submitted" in line] == [0]


def test_story_tells_refusals_and_failures(scenario: Scenario) -> None:
    scenario.run_batch("bad", fail="attest: worker refused <script>")
    scenario.owner.decide("unwrap", "deny", "the batch has no grant at this broker", key_id="acme/emails",
                          batch_id="bad", model_digest="m", claims={"measurement": MEASUREMENT.hex()})
    _sync(scenario)
    story = batch_story(scenario.log(), scenario.store, "bad")
    assert any("REFUSED key acme/emails (unwrap)" in s and "has no grant" in s for s in story), story
    assert any("The batch FAILED" in s and "worker refused" in s for s in story), story
    page = render_html(story, title="Batch <bad>")
    assert "<script>" not in page and "&lt;script&gt;" in page and "Batch &lt;bad&gt;" in page
    assert page.count('class="alarm"') == 2


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


def test_audit_show_command_writes_html(scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCORE_BUCKET", "cscore")
    scenario.run_batch("b1")
    _sync(scenario)
    page = tmp_path / "b1.html"
    assert _run(["audit", "show", "b1", "--log", str(scenario.state / "audit"), "--html", str(page)]) == 0
    assert "submitted batch b1" in capsys.readouterr().out
    assert page.read_text().startswith("<!doctype html>")


def test_log_on_s3_round_trips(scenario: Scenario) -> None:
    from audit.log import AuditLog, S3Storage, load_or_create_key

    log = AuditLog(S3Storage(scenario.store, "audit/"), signer=load_or_create_key(scenario.state / "k.pem"))
    scenario.run_batch("b1")
    report = sync_log(log, scenario.brokers, scenario.store)
    assert report.total > 0 and report.checkpoint is not None
    again = AuditLog(S3Storage(scenario.store, "audit/"))
    assert again.size == log.size and again.latest_checkpoint().root == log.tree().root()
    assert sync_log(again, scenario.brokers, scenario.store, checkpoint=False).total == 0
