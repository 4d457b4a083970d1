"""The command line's habits (docs/CLI.md): `--version`, `--json` on every command that prints a result, progress
drawn only on a terminal, and a sentence saying what to do for the common mistakes (no stack running, no broker
configured, a key file that is not JSON or not a public key). Unknown batches and wrong tenants:
tests/cli/test_wait_for_batch.py."""

from __future__ import annotations

import argparse
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

import cscore.cli
from cscore.cli import _parser, main
from cscore.progress import progress

REPO = Path(cscore.cli.__file__).resolve().parents[1]


Leaf = tuple[tuple[str, ...], argparse.ArgumentParser]


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Leaf]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    return [leaf for sub in subs for name, child in sub.choices.items() for leaf in _leaves(child, (*path, name))]


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "cscore", "--version"], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 0 and done.stdout.startswith("cscore ") and done.stdout.split()[1][0].isdigit()


def test_every_command_takes_json() -> None:
    commands = [*_leaves(_parser()), *_leaves(_parser("audit")), *_leaves(_parser("attest"))]
    names = {" ".join(path) for path, _ in commands}
    assert {"owner submit", "owner results", "stack", "audit sync", "attest verify", "worker release"} <= names
    missing = [" ".join(path) for path, leaf in commands
               if path not in {("audit",), ("attest",)}  # placeholders, listed by `cscore --help` only
               and not any("--json" in a.option_strings for a in leaf._actions)]
    assert missing == []


def test_json_output_is_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--state-dir", str(tmp_path), "stack", "stop", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"stopped": []}


def test_progress_is_drawn_on_a_terminal_only(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with progress("uploading", total=3, unit="emails") as bar:  # stderr is captured here: not a terminal
        bar.advance(3)
        bar.describe("done")
    assert capsys.readouterr() == ("", "")
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w", closefd=True) as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        with progress("uploading-canary", total=3, unit="emails") as bar:
            bar.advance(2)
        terminal.flush()
    drawn = os.read(leader, 65536).decode(errors="replace")
    os.close(leader)
    assert "uploading-canary" in drawn


def test_off_a_terminal_rich_is_not_even_imported() -> None:
    code = ("import sys\nfrom cscore.progress import progress\nwith progress('x', total=1) as p:\n    p.advance()\n"
            "print('rich' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.stdout.strip() == "False" and done.stderr == ""


def _no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith(("AWS_", "CSCORE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))  # never the user's ~/.aws
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # boto3's default session keeps the credentials an earlier test's client found: a fresh one per test.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


def test_no_stack_running_says_how_to_start_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _no_aws(monkeypatch, tmp_path)
    nothing = tmp_path / "never-started"
    assert main(["--state-dir", str(nothing), "owner", "results", "b-1", "--tenant", "acme", "--wait", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cscore: error: no object storage configured") and "Traceback" not in err
    assert f"start the stack (`cscore stack start`), or pass --state-dir naming a running one (no {nothing}" in err
    stopped = tmp_path / "stopped"  # a stack that ran here once: its stack.env names ports nobody listens on
    stopped.mkdir()
    env = {"CSCORE_S3_ENDPOINT": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}
    (stopped / "stack.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    for name, value in env.items():  # what the command loads from stack.env, set here so that it is undone after
        monkeypatch.setenv(name, value)
    assert main(["--state-dir", str(stopped), "owner", "results", "b-1", "--tenant", "acme", "--wait", "1"]) == 2
    err = capsys.readouterr().err
    assert "object storage at http://127.0.0.1:9" in err and "does not answer: is the stack of" in err
    assert "Start it again with `cscore stack start`" in err and "Traceback" not in err


def test_state_dir_may_follow_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`stack start` says "pass --state-dir to other commands": after the command it is the same option."""
    _no_aws(monkeypatch, tmp_path)
    monkeypatch.delenv("CSCORE_STATE_DIR", raising=False)
    nothing = tmp_path / "never-started"
    assert main(["owner", "results", "b-1", "--tenant", "acme", "--wait", "1", "--state-dir", str(nothing)]) == 2
    assert f"or pass --state-dir naming a running one (no {nothing / 'stack.env'} here)" in capsys.readouterr().err
    assert main(["--state-dir", str(nothing), "owner", "results", "b-1", "--tenant", "acme", "--wait", "1"]) == 2
    assert f"(no {nothing / 'stack.env'} here)" in capsys.readouterr().err  # the global one is not overridden
    assert main(["stack", "stop", "--state-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"stopped": []}
    for path, leaf in [*_leaves(_parser()), *_leaves(_parser("audit")), *_leaves(_parser("attest"))]:
        assert "--state-dir" in leaf._option_string_actions, path


def test_no_broker_configured_says_how_to_start_the_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """With no stack.env in the state dir it names the folder looked in: a stack started from another folder was
    reported as no stack at all."""
    _no_aws(monkeypatch, tmp_path)
    monkeypatch.delenv("CSCORE_OWNER_BROKER_URL", raising=False)
    assert main(["--state-dir", str(tmp_path), "owner", "grant-key"]) == 2
    assert capsys.readouterr().err == ("cscore: error: CSCORE_OWNER_BROKER_URL is not set: start the stack "
                                       "(`cscore stack start`), or pass --state-dir naming a running one (no "
                                       f"{tmp_path / 'stack.env'} here), or point it at the owner's key broker\n")
    (tmp_path / "stack.env").write_text("CSCORE_BUCKET=cscore\n")  # a stack without a broker of this party
    monkeypatch.setenv("CSCORE_BUCKET", "cscore")  # what the command loads from it, so that it is undone after
    assert main(["--state-dir", str(tmp_path), "owner", "grant-key"]) == 2
    assert capsys.readouterr().err == ("cscore: error: CSCORE_OWNER_BROKER_URL is not set: start the stack "
                                       "(`cscore stack start`) or point it at the owner's key broker\n")


@pytest.mark.parametrize("content, found", [
    ("{not json", "got '{not json' (Expecting property name"),
    ("-----BEGIN PUBLIC KEY-----\nMCow\n", "got '-----BEGIN PUBLIC KEY-----' (Expecting value"),
    ("", "got 'an empty file'"),
    ("[1, 2]", "as a JSON object, got a JSON list"),
    ('{"kty": "RSA", "n": "x", "e": "AQAB"}',
     "expected an Ed25519 public key (JWK kty OKP, crv Ed25519), got kty 'RSA'"),
    ('{"kty": "OKP", "crv": "Ed25519", "x": "x", "d": "secret"}', "expected a public key, got a private one")])
def test_a_provider_key_file_that_is_not_a_public_key_says_where_the_right_one_comes_from(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, found: str) -> None:
    key = tmp_path / "provider.jwk"
    key.write_text(content)
    # Refused before the stack is looked for: no broker URL is set here.
    assert main(["--state-dir", str(tmp_path), "owner", "trust-provider", str(key)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cscore: error: {key}: ") and found in err, err
    assert "`cscore provider key > provider.jwk` on the provider's machine writes it" in err
    assert not (tmp_path / "owner").exists()  # nothing pinned


def test_an_owner_grant_key_file_that_is_not_json_says_where_it_comes_from(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "owner-grant.jwk"
    key.write_bytes(b"\xff\xfe not text")
    assert main(["--state-dir", str(tmp_path), "provider", "register-owner", "owner", str(key)]) == 2
    err = capsys.readouterr().err
    assert "got bytes that are not UTF-8 text; `cscore owner grant-key > owner-grant.jwk`" in err


def test_a_submitted_batch_says_how_to_get_its_results(capsys: pytest.CaptureFixture[str]) -> None:
    batch = argparse.Namespace(batch_id="b-1", tenant="acme", rows=3, manifest_key="incoming/acme/b-1/manifest.jws")
    cscore.cli._print_submitted(argparse.Namespace(json=False), batch, "emails")
    assert capsys.readouterr().out == (
        "submitted batch b-1: 3 emails (incoming/acme/b-1/manifest.jws)\n"
        "next: cscore owner results b-1 --tenant acme --out FILE  (waits for the batch, verifies every receipt, "
        "decrypts)\n")
    cscore.cli._print_submitted(argparse.Namespace(json=True), batch, "emails")  # --json: the object only
    assert json.loads(capsys.readouterr().out) == {"batch_id": "b-1", "tenant": "acme", "rows": 3,
                                                   "manifest_key": "incoming/acme/b-1/manifest.jws"}


def test_a_reader_that_goes_away_is_not_reported_as_an_error() -> None:
    """`cscore ... | head`: output to a closed pipe ends quietly with 141 (128 + SIGPIPE), not 'cscore: error: [Errno
    32] Broken pipe' and 2, which read as if the command had failed."""
    data = REPO / "tests" / "data" / "attestation" / "sev-snp" / "go-sev-guest"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        done = subprocess.run([sys.executable, "-m", "cscore", "attest", "verify", str(data / "attestation.bin"),
                               "--certs", str(data / "vcek.testcer"), "--at", "2026-01-01"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_model_file_that_is_not_onnx_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """It said 'model: expected an ONNX protobuf ...': which file, when a script publishes several?"""
    _no_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("CSCORE_PROVIDER_BROKER_URL", "https://127.0.0.1:9")  # never reached: refused before
    notes = tmp_path / "notes.md"
    notes.write_text("# not a model\n")
    assert main(["--state-dir", str(tmp_path), "provider", "publish", str(notes), "--name", "x"]) == 2
    assert capsys.readouterr().err == (f"cscore: error: {notes}: expected an ONNX protobuf, got unreadable bytes "
                                       "(DecodeError)\n")


@pytest.mark.parametrize("given, said", [
    (["mail.mbox"], "owner submit mail.mbox: expected --model NAME or NAME:VERSION, got none; `cscore models` lists"),
    (["--model", "spam-filter"], "owner submit --model spam-filter: expected EMAILS (what to score: "),
    ([], "owner submit: expected EMAILS and --model (or --resubmit BATCH), got neither"),
])
def test_owner_submit_names_what_it_lacks(given: list[str], said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """EMAILS without --model said "got neither"; the usage error comes before any stack or storage is needed."""
    _no_aws(monkeypatch, tmp_path)
    assert main(["--state-dir", str(tmp_path / "never-started"), "owner", "submit", *given, "--tenant", "acme"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cscore: error: {said}") and err.count("\n") == 1
