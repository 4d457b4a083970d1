"""`cscore audit verify|show|batches|sync` word for word, in process (milliseconds a test): the arguments, where the
log and the state are found, whom the auditor trusts, what each command prints and its exit status. The bucket,
the brokers and `verify_audit` are stood in for here (their own tests are elsewhere): these tests are about what
the commands do with what those return."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

import sdk.broker_admin
import sdk.storage
from attestation import Policy, TrustAnchors
from audit import cli
from audit.collect import SyncReport
from audit.log import AuditLog, S3Storage, Witness
from audit.verify import ERROR, NOTE, Finding
from tests.keybroker.inproc import write_firmware

T0 = 1_700_000_000
M = "ab" * 48
ENTRIES: list[tuple[str, dict[str, Any]]] = [
    ("batch_submitted", {"tenant": "acme", "batch_id": "b1", "objects": [{"rows": 3}], "time": T0}),
    ("receipt", {"tenant": "acme", "batch_id": "b1", "shard_index": 0, "worker": "w1", "issued_at": T0 + 1}),
    ("batch_status", {"batch_id": "b1", "state": "succeeded", "time": T0 + 2}),
    ("batch_submitted", {"tenant": "zed", "batch_id": "longer-batch", "time": T0 + 3}),
]


class _Store:
    """`sdk.storage.ObjectStore` with nothing in it (the bucket the auditor's checks read)."""

    made: list[_Store] = []

    def __init__(self, bucket: str | None = None, endpoint_url: str | None = None) -> None:
        self.bucket = bucket or "cscore"
        _Store.made.append(self)

    def keys(self, prefix: str) -> list[str]:
        return []

    def get_if_exists(self, key: str) -> bytes | None:
        return None

    def get(self, key: str) -> bytes:
        raise KeyError(key)

    def put(self, key: str, data: bytes) -> None:  # the log's key, written when a signer opens it
        pass


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state folder whose default log holds batch b1 (succeeded, one receipt) and a second batch, signed."""
    monkeypatch.setattr(sdk.storage, "ObjectStore", _Store)
    monkeypatch.delenv("CSCORE_SIM_TEE_DIR", raising=False)
    monkeypatch.delenv("CSCORE_STATE_DIR", raising=False)
    # The default state folder, .state/demo, is relative: from an empty folder, never the user's demo state
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    _Store.made = []
    log = AuditLog.open_dir(tmp_path / "audit", key_path=tmp_path / "audit" / "log-key.pem")
    for i, (kind, fields) in enumerate(ENTRIES):
        log.append(kind, f"e{i}", fields)
    log.publish_checkpoint(now=T0 + 10)
    return tmp_path


@pytest.fixture
def verdicts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """`verify_audit` answering with the findings the test puts in ``verdicts[0]``; its calls after that."""
    calls: list[Any] = [[]]

    def verify_audit(log: AuditLog, store: Any, anchors: TrustAnchors, policy: Policy, *,
                     witnesses: list[Witness]) -> list[Finding]:
        calls.append((log, store, anchors, policy, witnesses))
        return list(calls[0])

    monkeypatch.setattr(cli, "verify_audit", verify_audit)
    return calls


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _run(argv: list[str]) -> int:
    args = _parse(argv)
    return int(args.func(args))


# -- arguments, state, log, trust ------------------------------------------------------------------


def test_each_command_and_its_arguments() -> None:
    show = vars(_parse(["audit", "show", "b1", "--log", "s3://b/p", "--measurement", "aa", "--measurement", "bb",
                        "--policy", "p.toml", "--trust-dir", "t", "--html", "r.html", "--json"]))
    assert show == {"command": "audit", "audit_action": "show", "batch": "b1", "audit_state_dir": None,
                    "audit_log": "s3://b/p", "measurement": ["aa", "bb"], "policy": Path("p.toml"),
                    "trust_dir": Path("t"), "html": Path("r.html"), "json": True, "func": cli.cmd_show}
    verify = vars(_parse(["audit", "verify", "--state-dir", "s"]))
    assert verify == {"command": "audit", "audit_action": "verify", "audit_state_dir": Path("s"), "audit_log": None,
                      "measurement": None, "policy": None, "trust_dir": None, "json": False, "func": cli.cmd_verify}
    batches = vars(_parse(["audit", "batches"]))
    assert batches == {"command": "audit", "audit_action": "batches", "audit_state_dir": None, "audit_log": None,
                       "measurement": None, "policy": None, "trust_dir": None, "json": False,
                       "func": cli.cmd_batches}
    sync = vars(_parse(["audit", "sync", "--json"]))
    assert sync == {"command": "audit", "audit_action": "sync", "audit_state_dir": None, "audit_log": None,
                    "json": True, "func": cli.cmd_sync}
    for argv in (["audit"], ["audit", "show"], ["audit", "verify", "--state-dir", "s", "--log", "l"]):
        with pytest.raises(SystemExit):
            _parse(argv)


def _says(words: str, text: str) -> bool:
    """``words`` in ``text`` as whole words (a help text wrapped in other characters does not say them)."""
    return re.search(rf"(?<!\S){re.escape(words)}(?!\S)", text) is not None


def test_the_help_says_what_each_command_does_and_its_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(["audit", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    for words in ("check the log's integrity and meaning; exit 0 when all holds",
                  "verify, then tell one batch's story; exit 1 if the audit fails, 2 if the batch or the log is "
                  "unknown",
                  "every batch in the log with its state and verdict; exit 1 if any audit fails",
                  "append new broker decisions and S3 records, sign, let witnesses see it"):
        assert _says(words, said), words
    with pytest.raises(SystemExit):
        _parse(["audit", "show", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    for words in ("local stack state (log in <dir>/audit)", "log location: a directory or s3://bucket/prefix",
                  "enclave measurement the auditor accepts (hex); repeatable (default: the measurement of this "
                  "checkout's worker code)", "attestation policy file (JSON/TOML) instead of --measurement",
                  "simulated TEE roots to accept (default $CSCORE_SIM_TEE_DIR)",
                  "also write a self-contained HTML report here", "the same report as JSON, for tools"):
        assert _says(words, said), words
    with pytest.raises(SystemExit):
        _parse(["audit", "sync", "--help"])
    assert _says("what was appended and the checkpoint, as JSON", " ".join(capsys.readouterr().out.split()))
    with pytest.raises(SystemExit):
        _parse(["audit", "batches", "--help"])
    assert _says("--json as JSON", " ".join(capsys.readouterr().out.split()))
    with pytest.raises(SystemExit):
        _parse(["audit", "verify", "--help"])
    assert _says("--json findings as JSON", " ".join(capsys.readouterr().out.split()))
    with pytest.raises(SystemExit):
        _parse(["--help"])
    assert _says("the auditor's tools: verify the log, show a batch's story", " ".join(capsys.readouterr().out.split()))


def test_the_state_folder_is_the_option_then_the_callers_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSCORE_STATE_DIR", raising=False)
    assert cli._state_dir(argparse.Namespace()) == Path(".state/demo")
    monkeypatch.setenv("CSCORE_STATE_DIR", "/env")
    assert cli._state_dir(argparse.Namespace(audit_state_dir=None)) == Path("/env")
    assert cli._state_dir(argparse.Namespace(state_dir=Path("/caller"))) == Path("/caller")
    assert cli._state_dir(argparse.Namespace(audit_state_dir=Path("/mine"), state_dir=Path("/caller"))) == Path(
        "/mine")


def test_a_stack_env_file_is_adopted_without_overriding_what_is_set(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["CSCORE_T_A", "CSCORE_T_B", "CSCORE_T_C", "CSCORE_T_D", "CSCORE_T_E", "CSCORE_T_SET"]
    for name in names:  # set, then removed: monkeypatch removes at teardown what load_stack_env sets
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    cli.load_stack_env(tmp_path)  # no stack.env: nothing
    monkeypatch.setenv("CSCORE_T_SET", "mine")
    (tmp_path / "stack.env").write_text("CSCORE_T_A=1\n CSCORE_T_B = 'two words' \n#CSCORE_T_C=3\n  # CSCORE_T_D=4\n"
                                        "CSCORE_T_E\nCSCORE_T_SET=theirs\n")
    cli.load_stack_env(tmp_path)
    assert {n: os.environ.get(n) for n in names} == {"CSCORE_T_A": "1", "CSCORE_T_B": "two words", "CSCORE_T_C": None,
                                                     "CSCORE_T_D": None, "CSCORE_T_E": None, "CSCORE_T_SET": "mine"}


def test_the_log_is_the_state_folders_a_folder_read_only_or_s3(state: Path, tmp_path: Path) -> None:
    default = cli.open_log(None, state)
    assert default.describe() == str(state / "audit") and default.size == 4 and default._signer is not None
    other = tmp_path / "copy"
    other.mkdir()
    read_only = cli.open_log(str(other), tmp_path / "no-state")
    assert read_only.describe() == str(other) and read_only._signer is None
    assert not (tmp_path / "no-state").exists() and not (other / "log-key.pem").exists()
    keyed = cli.open_log(str(other), state)
    assert keyed._signer is not None and not (other / "log-key.pem").exists()
    s3 = cli.open_log("s3://bucket/some/prefix", state)
    assert isinstance(s3.storage, S3Storage) and s3.describe() == "s3://bucket/some/prefix/"
    assert s3._signer is not None
    bare = cli.open_log("s3://bucket", tmp_path / "no-state")
    assert bare.describe() == "s3://bucket/audit/" and bare._signer is None


def test_the_witnesses_are_the_owner_and_the_provider_in_their_homes(tmp_path: Path) -> None:
    assert [(w.home, w.name) for w in cli.witnesses(tmp_path)] == [(tmp_path / "owner", "owner"),
                                                                   (tmp_path / "provider", "provider")]


def test_the_auditor_trusts_amd_and_a_simulated_root_only_when_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    sim = write_firmware(tmp_path / "sim")
    monkeypatch.delenv("CSCORE_SIM_TEE_DIR", raising=False)
    args = argparse.Namespace(trust_dir=None, policy=None, measurement=[M])
    anchors, policy = cli.auditor_trust(args)
    assert "simulated" not in {r.kind for r in anchors.roots}
    assert (policy.allowed_measurements, policy.allowed_roots) == ((M,), ("amd",))
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("CSCORE_SIM_TEE_DIR", str(sim))
    anchors, policy = cli.auditor_trust(args)
    assert "simulated" in {r.kind for r in anchors.roots} and policy.allowed_roots == ("amd", "simulated")
    assert capsys.readouterr().err == (f"audit: trusting SIMULATED TEE roots from {sim} ($CSCORE_SIM_TEE_DIR): "
                                       "evidence they sign proves no hardware ran the code; for development only\n")
    monkeypatch.setenv("CSCORE_SIM_TEE_DIR", "")
    assert "simulated" not in {r.kind for r in cli.auditor_trust(args)[0].roots}
    assert capsys.readouterr().err == ""
    anchors, policy = cli.auditor_trust(argparse.Namespace(trust_dir=sim, policy=None, measurement=[M, "cd" * 48]))
    assert "simulated" in {r.kind for r in anchors.roots} and policy.allowed_roots == ("amd", "simulated")
    assert capsys.readouterr().err == (f"audit: trusting SIMULATED TEE roots from {sim} (--trust-dir): evidence "
                                       "they sign proves no hardware ran the code; for development only\n")
    monkeypatch.delenv("CSCORE_SIM_TEE_DIR")
    assert policy.allowed_measurements == (M, "cd" * 48)
    (tmp_path / "p.json").write_text(json.dumps({"allowed_measurements": ["ef" * 48], "allowed_roots": ["amd"]}))
    _, policy = cli.auditor_trust(argparse.Namespace(trust_dir=sim, policy=tmp_path / "p.json", measurement=[M]))
    assert policy == Policy.from_file(tmp_path / "p.json")
    import enclave.measurement

    monkeypatch.setattr(enclave.measurement, "code_measurement", lambda: bytes(range(48)))
    _, policy = cli.auditor_trust(argparse.Namespace(trust_dir=None, policy=None, measurement=None))
    assert policy.allowed_measurements == (bytes(range(48)).hex(),)


# -- the commands ----------------------------------------------------------------------------------


def test_verify_prints_each_finding_then_the_verdict(state: Path, verdicts: list[Any],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["audit", "verify", "--state-dir", str(state), "--measurement", M]) == 0
    assert capsys.readouterr().out == f"audit of {state / 'audit'} (4 entries): holds\n"
    log, store, anchors, policy, witnesses = verdicts[1]
    assert log.describe() == str(state / "audit") and store is _Store.made[0]
    assert policy.allowed_measurements == (M,) and "simulated" not in {r.kind for r in anchors.roots}
    assert [(w.home, w.name) for w in witnesses] == [(state / "owner", "owner"), (state / "provider", "provider")]
    verdicts[0] = [Finding(NOTE, "worker", "a note", "b1", 1), Finding(ERROR, "receipt", "forged", "b1", 1)]
    assert _run(["audit", "verify", "--state-dir", str(state), "--measurement", M]) == 1
    assert capsys.readouterr().out == ("[note] worker: a note (log entry 1)\n[error] receipt: forged (log entry 1)\n"
                                       f"audit of {state / 'audit'} (4 entries): does NOT hold\n")
    assert _run(["audit", "verify", "--state-dir", str(state), "--measurement", M, "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == [
        {"severity": "note", "check": "worker", "message": "a note", "batch_id": "b1", "index": 1},
        {"severity": "error", "check": "receipt", "message": "forged", "batch_id": "b1", "index": 1}]
    verdicts[0] = [Finding(NOTE, "worker", "a note")]
    assert _run(["audit", "verify", "--state-dir", str(state), "--measurement", M]) == 0


def test_a_log_never_synced_is_refused_by_each_command(tmp_path: Path, state: Path, verdicts: list[Any],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    unsigned = tmp_path / "unsigned"
    log = AuditLog.open_dir(unsigned)
    log.append("batch_status", "x", {"batch_id": "b1", "state": "failed"})
    for location, size in ((empty, 0), (unsigned, 1)):
        for command in (["verify"], ["show", "b1"], ["batches"]):
            assert _run(["audit", *command, "--log", str(location), "--measurement", M]) == 2
            out = capsys.readouterr()
            assert out.out == "" and out.err == (
                f"The audit log at {location} was never synced ({size} entries, no signed checkpoint): run `cscore "
                "audit sync` first, or point --log/--state-dir at the log.\n")
    assert len(verdicts) == 1  # nothing was verified


def test_show_prints_the_report_and_exits_by_its_verdict(state: Path, verdicts: list[Any], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from audit.show import batch_report, render_html, render_text

    monkeypatch.setenv("CSCORE_STATE_DIR", str(state))
    args = ["audit", "show", "b1", "--measurement", M]
    assert _run(args) == 0
    log = AuditLog.open_dir(state / "audit")
    report = batch_report(log, _Store(), "b1", [], witnesses=cli.witnesses(state))
    assert capsys.readouterr().out == render_text(report) + "\n"
    assert _run([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == report
    page = tmp_path / "b1.html"
    verdicts[0] = [Finding(ERROR, "receipt", "forged", "b1", 1)]
    assert _run([*args, "--html", str(page)]) == 1
    failed = batch_report(log, _Store(), "b1", verdicts[0], witnesses=cli.witnesses(state))
    out = capsys.readouterr()
    assert out.out == render_text(failed) + "\n" and out.err == f"HTML report written to {page}\n"
    assert page.read_text() == render_html(failed)
    assert out.out.startswith("Batch b1: audit DOES NOT HOLD; batch succeeded\n  receipts    0/1 verified\n")


def test_show_of_a_batch_the_log_does_not_hold_names_those_it_does(state: Path, verdicts: list[Any],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["audit", "show", "nope", "--state-dir", str(state), "--measurement", M]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == (f"The audit log at {state / 'audit'} holds nothing about batch 'nope'. "
                                         "Batches it knows: b1, longer-batch. If the batch is new, run `cscore audit "
                                         "sync`.\n")
    empty = state / "only-heads"
    log = AuditLog.open_dir(empty)
    log.append("broker_head", "h", {"broker": "owner", "head_seq": 1})
    log.publish_checkpoint(now=T0)
    assert _run(["audit", "show", "nope", "--log", str(empty), "--measurement", M]) == 2
    assert "Batches it knows: none. If" in capsys.readouterr().err


def test_batches_lists_each_batch_in_columns_and_exits_1_if_any_fails(state: Path, verdicts: list[Any],
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    args = ["audit", "batches", "--state-dir", str(state), "--measurement", M]
    assert _run(args) == 0
    assert capsys.readouterr().out.splitlines() == [
        "batch         tenant      state       receipts  refused  verdict",
        "b1            acme        succeeded        1/1        0  holds",
        "longer-batch  zed         unknown          0/0        0  holds"]
    verdicts[0] = [Finding(ERROR, "receipt", "forged", "b1", 1), Finding(ERROR, "release", "x", "b1", None)]
    assert _run(args) == 1
    assert capsys.readouterr().out.splitlines()[1] == (
        "b1            acme        succeeded        0/1        0  does NOT hold: 2 problem(s)")
    assert _run([*args, "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == [
        {"batch_id": "b1", "tenant": "acme", "state": "succeeded", "receipts": "0/1", "refusals": 0, "holds": False,
         "problems": 2},
        {"batch_id": "longer-batch", "tenant": "zed", "state": "unknown", "receipts": "0/0", "refusals": 0,
         "holds": True, "problems": 0}]
    verdicts[0] = [Finding(ERROR, "integrity", "altered")]
    assert _run(args) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "The log itself does not verify: run `cscore audit verify` for the details."
    assert lines[1].endswith("does NOT hold: 1 problem(s)")
    verdicts[0] = [Finding(ERROR, "result", "result object results/acme/b9/x has no receipt in the log", "b9")]
    assert _run(args) == 1  # an error about a batch the log never mentions still fails the command
    assert capsys.readouterr().out.splitlines()[-1].endswith("  holds")
    verdicts[0] = [Finding(NOTE, "worker", "a note")]
    assert _run(args) == 0


def test_batches_widen_the_first_column_to_the_shortest_name_it_needs(state: Path, verdicts: list[Any],
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog.open_dir(tmp_path / "short")
    log.append("batch_status", "s", {"batch_id": "b", "state": "failed", "time": T0})
    log.publish_checkpoint(now=T0)
    assert _run(["audit", "batches", "--log", str(tmp_path / "short"), "--measurement", M]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "batch  tenant      state       receipts  refused  verdict",
        "b      None        failed           0/0        1  holds"]


class _Admin:
    made: list[_Admin] = []

    def __init__(self, url: str, token: str, *, party: str) -> None:
        self.url, self.token, self.party, self.closed = url, token, party, False
        _Admin.made.append(self)

    def close(self) -> None:
        self.closed = True


def test_sync_reads_each_partys_broker_then_lets_both_witnesses_see_the_log(
        state: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _Admin.made = []
    monkeypatch.setattr(sdk.broker_admin, "BrokerAdmin", _Admin)
    seen: list[Any] = []

    def sync_log(log: AuditLog, brokers: dict[str, Any], store: Any) -> SyncReport:
        seen.append((log.describe(), dict(brokers), store))
        log.append("batch_status", f"s{len(seen)}", {"batch_id": "b2", "state": "failed"})
        return SyncReport({"batch_status": 1}, log.publish_checkpoint(now=T0 + 20))

    monkeypatch.setattr(cli, "sync_log", sync_log)
    (state / "owner").mkdir()
    (state / "owner" / "broker-admin-token").write_text(" owner-token\n")
    (state / "provider").mkdir()  # no token: not synced
    (state / "stack.env").write_text("CSCORE_OWNER_BROKER_URL=http://owner\nCSCORE_PROVIDER_BROKER_URL=http://p\n")
    for name in ("CSCORE_OWNER_BROKER_URL", "CSCORE_PROVIDER_BROKER_URL"):  # removed at teardown once set
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    assert _run(["audit", "sync", "--state-dir", str(state)]) == 0
    [owner] = _Admin.made
    assert (owner.url, owner.token, owner.party, owner.closed) == ("http://owner", "owner-token", "owner", True)
    assert seen == [(str(state / "audit"), {"owner": owner}, _Store.made[0])]
    log = AuditLog.open_dir(state / "audit")
    cp = log.latest_checkpoint()
    assert capsys.readouterr().out == f"audit log: appended 1 batch_status; checkpoint {cp.describe()}\n"
    assert [w.saved()["checkpoint"] for w in cli.witnesses(state)] == [cp.note, cp.note]  # type: ignore[index]
    assert _run(["audit", "sync", "--state-dir", str(state), "--json"]) == 0
    cp = AuditLog.open_dir(state / "audit").latest_checkpoint()
    import base64

    assert json.loads(capsys.readouterr().out) == {"appended": {"batch_status": 1}, "checkpoint": {
        "origin": cp.origin, "size": 6, "root": base64.b64encode(cp.root).decode(), "timestamp": T0 + 20}}


def test_sync_closes_the_brokers_when_it_fails_and_says_nothing_new_as_json(
        state: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _Admin.made = []
    monkeypatch.setattr(sdk.broker_admin, "BrokerAdmin", _Admin)
    monkeypatch.setenv("CSCORE_PROVIDER_BROKER_URL", "http://p")
    monkeypatch.delenv("CSCORE_OWNER_BROKER_URL", raising=False)
    (state / "provider").mkdir()
    (state / "provider" / "broker-admin-token").write_text("t")
    (state / "owner").mkdir()
    (state / "owner" / "broker-admin-token").write_text("t")  # a token without a URL: not synced

    def broken(log: AuditLog, brokers: dict[str, Any], store: Any) -> SyncReport:
        raise ValueError("a broker's chain does not verify")

    monkeypatch.setattr(cli, "sync_log", broken)
    with pytest.raises(ValueError, match="chain"):
        cli.sync_from_env(state)
    assert [(a.party, a.closed) for a in _Admin.made] == [("provider", True)]
    monkeypatch.setattr(cli, "sync_log", lambda log, brokers, store: SyncReport())
    assert _run(["audit", "sync", "--state-dir", str(state), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"appended": {}, "checkpoint": None}


def test_the_standalone_entry_runs_the_audit_commands(state: Path, verdicts: list[Any],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", "--state-dir", str(state), "--measurement", M]) == 0
    assert capsys.readouterr().out.endswith("holds\n")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: audit audit [-h] {verify,show,batches,sync}")


def test_sync_appends_to_the_log_named_not_the_state_folders(state: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []

    def sync_log(log: AuditLog, brokers: dict[str, Any], store: Any) -> SyncReport:
        seen.append(log.describe())
        return SyncReport({}, log.publish_checkpoint(now=T0))  # signed with the state's log key

    monkeypatch.setattr(cli, "sync_log", sync_log)
    monkeypatch.setenv("CSCORE_STATE_DIR", str(state))
    other = tmp_path / "other-log"
    other.mkdir()
    assert _run(["audit", "sync", "--log", str(other)]) == 0
    cp = AuditLog.open_dir(other, create=False).latest_checkpoint()
    assert seen == [str(other)] and capsys.readouterr().out == (
        f"audit log: appended nothing new; checkpoint {cp.describe()}\n")


def test_the_standalone_entry_reads_the_command_line_after_the_program(state: Path, verdicts: list[Any],
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.argv", ["audit", "verify", "--state-dir", str(state), "--measurement", M])
    assert cli.main() == 0
    assert capsys.readouterr().out == f"audit of {state / 'audit'} (4 entries): holds\n"


def test_show_checks_the_bucket_and_the_state_folders_witnesses(state: Path, verdicts: list[Any],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    class Bucket(_Store):
        def keys(self, prefix: str) -> list[str]:
            return ["status/acme/b1.json"] if prefix == "status/" else []

        def get(self, key: str) -> bytes:
            return b'{"state": "failed"}'

    monkeypatch.setattr(sdk.storage, "ObjectStore", Bucket)
    cli.witnesses(state)[0].observe(AuditLog.open_dir(state / "audit"))
    assert _run(["audit", "show", "b1", "--state-dir", str(state), "--measurement", M]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].endswith("; seen by owner")
    assert lines[4] == ("  log         NOT in sync: the bucket holds 1 record(s) of this batch that the log does not "
                        "(run `cscore audit sync`)")


def test_a_stack_env_value_keeps_its_equals_signs_and_joins_its_words(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CSCORE_T_F", "CSCORE_T_G"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    (tmp_path / "stack.env").write_text("CSCORE_T_F=a=b\nCSCORE_T_G=one two\n")
    cli.load_stack_env(tmp_path)
    assert (os.environ["CSCORE_T_F"], os.environ["CSCORE_T_G"]) == ("a=b", "onetwo")
