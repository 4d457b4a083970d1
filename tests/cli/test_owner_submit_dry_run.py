"""`cscore owner submit --dry-run`: every file read and checked, nothing sent anywhere; and refusals of a
real submit come before any request to S3 or a broker.

S3 and the owner's broker are one HTTP server that records every request it gets (and answers 503),
so "nothing uploaded, no key created" is checked as "no request at all"; a real submit of good input
shows the server is the one the command would talk to.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str]

    def _any(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def _submit(url: str, emails: Path, *extra: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1", "CSCORE_S3_ENDPOINT": url,
           "CSCORE_OWNER_BROKER_URL": url, "CSCORE_STATE_DIR": str(home / "state")}
    return subprocess.run([sys.executable, "-m", "cscore", "owner", "submit", str(emails), "--model", "spam-filter",
                           "--tenant", "acme", *extra], capture_output=True, text=True, env=env, timeout=120)


def _copy(owner_inputs: Path, folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names or [p.name for p in owner_inputs.iterdir() if p.name != "README.md"]:
        shutil.copy(owner_inputs / name, folder / name)
    return folder


def test_dry_run_reports_every_file_and_contacts_nothing(owner_inputs: Path, tmp_path: Path,
                                                         server: tuple[str, list[str]]) -> None:
    url, seen = server
    inbox = _copy(owner_inputs, tmp_path / "inbox")
    (inbox / "broken-b64.eml").write_bytes(b"Message-ID: <bad@x>\nSubject: s\nContent-Transfer-Encoding: base64\n\n"
                                           b"aGVsbG8=\nx\n")
    result = _submit(url, inbox, "--dry-run", "--json", home=tmp_path)
    assert result.returncode == 2, result.stderr  # three files are refused
    report = json.loads(result.stdout)
    files = {f["file"]: f for f in report["files"]}
    assert {name: f["emails"] for name, f in files.items() if not f["error"]} == {
        "b64-padding.eml": 1, "body-from-with-time-words.mbox": 2, "broken-b64.eml": 1,
        "float-id-pandas-nan.parquet": 3, "int-message-id.jsonl": 2, "leading-blank-line.mbox": 2,
        "mboxo-unescaped.mbox": 2, "mboxrd-escaped.mbox": 2, "utf16-powershell.jsonl": 2}
    assert "row group 0" in files["corrupt-page.parquet"]["error"]
    assert "surrogate-message-id.jsonl:1: message_id holds a lone surrogate" in files["surrogate-message-id.jsonl"][
        "error"]
    assert "Parquet Modular Encryption" in files["already-pme-encrypted.parquet"]["error"]
    assert files["broken-b64.eml"]["flagged"] == [
        {"message_id": "<bad@x>", "problems": ["base64 body: 1 character(s) could not be decoded and were skipped"]}]
    assert report["emails"] == 17 and report["ok"] is False
    assert seen == []


def test_dry_run_of_good_input_says_ready_and_a_real_submit_would_reach_the_server(
        owner_inputs: Path, tmp_path: Path, server: tuple[str, list[str]]) -> None:
    url, seen = server
    inbox = _copy(owner_inputs, tmp_path / "inbox", "mboxo-unescaped.mbox", "int-message-id.jsonl")
    result = _submit(url, inbox, "--dry-run", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "mboxo-unescaped.mbox: 2 email(s)" in result.stdout
    assert "4 email(s) in 2 file(s), 0 flagged, 0 refused: ready to submit" in result.stdout
    assert seen == []
    real = _submit(url, inbox, home=tmp_path)  # the control: without --dry-run the same command talks to it
    assert real.returncode != 0 and seen, real.stderr


@pytest.mark.parametrize(("name", "named"), [
    ("corrupt-page.parquet", "corrupt-page.parquet row group 0"),
    ("surrogate-message-id.jsonl", "surrogate-message-id.jsonl:1"),
    ("already-pme-encrypted.parquet", "Parquet Modular Encryption"),
])
def test_a_refused_input_is_refused_before_any_request(owner_inputs: Path, tmp_path: Path,
                                                       server: tuple[str, list[str]], name: str, named: str) -> None:
    url, seen = server
    result = _submit(url, owner_inputs / name, home=tmp_path)
    assert result.returncode == 2 and named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert seen == []


def test_submit_batch_checks_every_email_before_creating_a_key(tmp_path: Path, server: tuple[str, list[str]],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    from sdk.broker_admin import BrokerAdminError
    from sdk.emails import Email, EmailInputError
    from sdk.models import ModelListing
    from sdk.owner import submit_batch
    from sdk.party import Party
    from sdk.storage import ObjectStore

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    url, seen = server
    owner = Party(home=tmp_path / "owner", broker_url=url)
    owner.home.mkdir()
    (owner.home / "broker-admin-token").write_text("token")
    model = ModelListing("spam", 1, "0" * 64, "signer", 0, True)

    def submit(emails: list[Email]) -> None:
        submit_batch(emails, model, tenant="acme", owner=owner, store=ObjectStore("b", url), measurements=["00"])

    with pytest.raises(EmailInputError, match=r"email 1 \(ids\.jsonl\): message_id holds a lone surrogate"):
        submit([Email("a", "text"), Email("b\udc80", "text", source="ids.jsonl")])
    assert seen == []
    # The control: a well-formed batch goes on to the (refusing) server: first the platform's published
    # worker configuration (the owner reviews it before granting), then the broker.
    with pytest.raises((BrokerAdminError, ClientError)):
        submit([Email("a", "text")])
    assert seen and seen[0].startswith("GET") and "platform/worker-config.json" in seen[0]
