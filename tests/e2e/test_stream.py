"""`cscore owner stream` on the real local stack: waves of mail become verified results exactly once, a SIGKILLed
stream resumes without losing or repeating an email, a bad file is refused by name and line without blocking others.

The stream runs as the real command (a child process), as an owner would run it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cscore.demo import TENANT, onboard_tenant
from enclave.measurement import code_measurement
from infra.local.stack import LocalStack
from sdk.corpus import CorpusEmail
from sdk.party import Party
from sdk.provider import publish_model
from sdk.storage import ObjectStore

pytestmark = pytest.mark.e2e
WAIT_S = 600


@pytest.fixture(scope="module")
def model(stack: LocalStack, model_bytes: bytes) -> str:
    store = ObjectStore()
    publish_model(model_bytes, "spam-filter", provider=Party.from_env("provider"), store=store,
                  allowed_measurements=[code_measurement().hex()])
    owner = Party.from_env("owner")
    onboard_tenant(owner, store, stack.state_dir)
    owner.trust_provider(Party.from_env("provider").public_key())
    return "spam-filter"


@pytest.fixture(scope="module")
def raws(corpus: tuple[list[CorpusEmail], list[CorpusEmail]]) -> Iterator[bytes]:
    """Held-out emails without their mbox "From " line, endlessly (each test takes the next ones)."""
    _, held_out = corpus
    return iter([e.raw.split(b"\n", 1)[1] if e.raw.startswith(b"From ") else e.raw for e in held_out] * 4)


def _eml(raw: bytes, message_id: str) -> bytes:
    return f"Message-ID: <{message_id}>\n".encode() + raw


def _mbox(messages: list[tuple[str, bytes]]) -> bytes:
    quoted = (re.sub(rb"^(>*From )", rb">\1", _eml(raw, mid), flags=re.MULTILINE) for mid, raw in messages)
    return b"".join(b"From stream@example.test Mon Jan  6 09:15:02 2025\n" + q + b"\n\n" for q in quoted)


def _jsonl(messages: list[tuple[str, bytes]]) -> bytes:
    return "".join(json.dumps({"message_id": mid, "raw": raw.decode("utf-8", "replace")}) + "\n"
                   for mid, raw in messages).encode()


def _drop(folder: Path, name: str, data: bytes) -> None:
    """Written under a hidden name, then renamed in: how a careful writer delivers (and what the stream expects)."""
    partial = folder / f".{name}.partial"
    partial.write_bytes(data)
    os.replace(partial, folder / name)


def _wave(folder: Path, raws: Iterator[bytes], tag: str, *, eml: int, mbox: int, jsonl: int) -> set[str]:
    """Drop .eml files, one mbox and one JSON lines file; returns the message ids they hold."""
    ids: set[str] = set()
    for i in range(eml):
        mid = f"{tag}-eml-{i}@stream.test"
        _drop(folder, f"{tag}-{i:03d}.eml", _eml(next(raws), mid))
        ids.add(f"<{mid}>")
    box = [(f"{tag}-mbox-{i}@stream.test", next(raws)) for i in range(mbox)]
    _drop(folder, f"{tag}.mbox", _mbox(box))
    ids.update(f"<{mid}>" for mid, _ in box)
    lines = [(f"{tag}-json-{i}", next(raws)) for i in range(jsonl)]
    _drop(folder, f"{tag}.jsonl", _jsonl(lines))
    ids.update(mid for mid, _ in lines)
    return ids


def _stream_argv(stack: LocalStack, source: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cscore", "--state-dir", str(stack.state_dir), "owner", "stream", str(source),
            "--model", "spam-filter", "--tenant", TENANT, "--out", str(out), "--accept-simulated", "--json",
            "--settle", "0.5", "--poll", "0.3", *extra]


def _run_once(stack: LocalStack, source: Path, out: Path, *extra: str) -> tuple[int, list[dict[str, Any]], str]:
    run = subprocess.run(_stream_argv(stack, source, out, "--once", "--wait", str(WAIT_S), *extra),
                         capture_output=True, text=True, timeout=WAIT_S + 120)
    return run.returncode, [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")], run.stderr


def _written_ids(out: Path) -> list[str]:
    """Every message id in every results file of `out` (a repeat shows up as a duplicate here)."""
    ids: list[str] = []
    for path in sorted(out.glob("*.parquet")):
        table = pq.read_table(path)
        assert table.column_names[:3] == ["message_id", "spam_probability", "label"], path
        assert all(0.0 <= p <= 1.0 for p in table.column("spam_probability").to_pylist())
        ids.extend(table.column("message_id").to_pylist())
    return ids


def test_waves_of_mail_become_verified_results_exactly_once(stack: LocalStack, model: str, raws: Iterator[bytes],
                                                            tmp_path: Path) -> None:
    drop, out = tmp_path / "drop", tmp_path / "out"
    drop.mkdir()
    expected = _wave(drop, raws, "w1", eml=12, mbox=15, jsonl=20)
    (drop / "w1-late.eml.part").write_bytes(_eml(next(raws), "still-being-written@stream.test"))  # in progress
    rc, events, stderr = _run_once(stack, drop, out, "--batch-size", "20")
    assert rc == 0, stderr[-3000:]
    assert sorted(_written_ids(out)) == sorted(expected)
    written = [e for e in events if e["event"] == "written"]
    assert sum(e["emails"] for e in written) == len(expected) and all(e["receipts_verified"] >= 1 for e in written)
    assert max(e["emails"] for e in written) <= 20

    expected |= _wave(drop, raws, "w2", eml=5, mbox=3, jsonl=8)  # a second wave, and the first run's files again
    os.replace(drop / "w1-late.eml.part", drop / "w1-late.eml")  # its writer finished: now it counts
    expected.add("<still-being-written@stream.test>")
    rc, events, stderr = _run_once(stack, drop, out, "--batch-size", "20")
    assert rc == 0, stderr[-3000:]
    assert sorted(e["file"] for e in events if e["event"] == "read") == sorted(
        ["w1-late.eml", "w2.mbox", "w2.jsonl", *(f"w2-{i:03d}.eml" for i in range(5))])
    ids = _written_ids(out)
    assert len(ids) == len(set(ids)) and set(ids) == expected
    leaked = [e for e in events if any(k in e for k in ("text", "spam_probability", "label"))]
    assert not leaked, "events name no email text and no score"


def test_maildir_reads_new_and_cur_never_tmp_and_a_moved_message_once(stack: LocalStack, model: str,
                                                                        raws: Iterator[bytes], tmp_path: Path) -> None:
    maildir, out = tmp_path / "Maildir", tmp_path / "out"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1700000000.M1P1.host:2,S").write_bytes(_eml(next(raws), "md-read@stream.test"))
    (maildir / "new" / "1700000001.M2P1.host").write_bytes(_eml(next(raws), "md-new@stream.test"))
    half = maildir / "tmp" / "1700000002.M3P1.host"
    half.write_bytes(b"Message-ID: <md-half@stream.test>\nSubj")  # being delivered: maildir's tmp/ is never read
    rc, _, stderr = _run_once(stack, maildir, out)
    assert rc == 0, stderr[-3000:]
    assert sorted(_written_ids(out)) == ["<md-new@stream.test>", "<md-read@stream.test>"]
    # The mail program reads the new message (new/ -> cur/ with flags); the delivery completes (tmp/ -> new/).
    os.replace(maildir / "new" / "1700000001.M2P1.host", maildir / "cur" / "1700000001.M2P1.host:2,S")
    half.write_bytes(_eml(next(raws), "md-half@stream.test"))
    os.replace(half, maildir / "new" / half.name)
    rc, events, stderr = _run_once(stack, maildir, out)
    assert rc == 0, stderr[-3000:]
    assert [e["file"] for e in events if e["event"] == "read"] == ["1700000002.M3P1.host"]
    assert sorted(_written_ids(out)) == ["<md-half@stream.test>", "<md-new@stream.test>", "<md-read@stream.test>"]


def test_a_bad_file_is_refused_by_name_and_line_and_blocks_nothing(stack: LocalStack, model: str,
                                                                   raws: Iterator[bytes], tmp_path: Path) -> None:
    drop, out = tmp_path / "drop", tmp_path / "out"
    drop.mkdir()
    good = [(f"ok-{i}", next(raws)) for i in range(6)]
    _drop(drop, "a-good.jsonl", _jsonl(good[:3]))
    _drop(drop, "b-bad.jsonl", _jsonl(good[3:5]) + b'{"message_id": "x", "raw": 42}\n')
    _drop(drop, "c-notmail.eml", b"id,text\n1,hello\n")
    _drop(drop, "d-good.jsonl", _jsonl(good[5:]))
    rc, events, _ = _run_once(stack, drop, out)
    assert rc == 1  # something was refused: the exit status says so
    refused = {e["file"]: e["error"] for e in events if e["event"] == "refused"}
    assert set(refused) == {"b-bad.jsonl", "c-notmail.eml"}
    assert "b-bad.jsonl:3: expected" in refused["b-bad.jsonl"]  # file and line, what was expected
    assert "c-notmail.eml" in refused["c-notmail.eml"] and "CSV" in refused["c-notmail.eml"]
    # Nothing of the bad file was scored (a file is all or nothing), and the good ones were.
    assert sorted(_written_ids(out)) == ["ok-0", "ok-1", "ok-2", "ok-5"]
    # Fixed, the file is read again; the untouched refusal is not repeated.
    _drop(drop, "b-bad.jsonl", _jsonl(good[3:5]))
    rc, events, stderr = _run_once(stack, drop, out)
    assert rc == 0, stderr[-3000:]
    assert [e["file"] for e in events if e["event"] in ("read", "refused")] == ["b-bad.jsonl"]
    assert sorted(_written_ids(out)) == [f"ok-{i}" for i in range(6)]


def test_a_streamed_batch_joins_back_to_each_emails_from_subject_and_date(stack: LocalStack, model: str,
                                                                         tmp_path: Path) -> None:
    """`cscore owner results` on a streamed batch: each email's From, Subject and Date from the batch's journal,
    which the stream wrote on this machine as `submit` does."""
    drop, out = tmp_path / "drop", tmp_path / "out"
    drop.mkdir()
    for i in range(3):
        _drop(drop, f"h-{i}.eml", _eml(f"From: Sender {i} <s{i}@example.test>\nSubject: streamed {i}\n"
                                       f"Date: Tue, 3 Mar 2026 10:0{i}:00 +0100\n\nmeeting notes {i}\n".encode(),
                                       f"h-{i}@stream.test"))
    rc, events, stderr = _run_once(stack, drop, out)
    assert rc == 0, stderr[-3000:]
    rows: dict[str, dict[str, str]] = {}
    for batch_id in [e["batch_id"] for e in events if e["event"] == "written"]:
        csv_out = tmp_path / f"{batch_id}.csv"
        done = subprocess.run([sys.executable, "-m", "cscore", "--state-dir", str(stack.state_dir), "owner",
                               "results", batch_id, "--tenant", TENANT, "--accept-simulated", "--out", str(csv_out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "warning" not in done.stderr, done.stderr[-3000:]
        with csv_out.open(newline="") as fh:
            rows.update({r["message_id"]: r for r in csv.DictReader(fh)})
    assert sorted(rows) == [f"<h-{i}@stream.test>" for i in range(3)]
    for i in range(3):
        row = rows[f"<h-{i}@stream.test>"]
        assert (row["from"], row["subject"]) == (f"Sender {i} <s{i}@example.test>", f"streamed {i}")
        assert row["date"].startswith(f"2026-03-03 09:0{i}:00") and 0.0 <= float(row["spam_probability"]) <= 1.0


def _kill_when(proc: subprocess.Popen[str], wanted: str, timeout: float) -> list[dict[str, Any]]:
    """Read the stream's JSON events until one of kind `wanted`, then SIGKILL it; returns the events seen."""
    assert proc.stdout is not None
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.startswith("{"):
            seen.append(json.loads(line))
            if seen[-1]["event"] == wanted:
                break
        if time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert seen and seen[-1]["event"] == wanted, f"no {wanted!r} event within {timeout} s: {seen}"
    return seen


@pytest.mark.timeout(1800)  # three runs, each waiting on DAG runs: minutes on a loaded machine
def test_a_sigkilled_stream_resumes_losing_and_repeating_nothing(stack: LocalStack, model: str,
                                                                  raws: Iterator[bytes], tmp_path: Path) -> None:
    drop, out = tmp_path / "drop", tmp_path / "out"
    drop.mkdir()
    expected = _wave(drop, raws, "k1", eml=6, mbox=10, jsonl=14)
    argv = _stream_argv(stack, drop, out, "--batch-size", "10", "--max-in-flight", "2")
    # Killed twice: right after a batch is cut (before or while it uploads), then after results were written.
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    before = _kill_when(first, "cut", WAIT_S)
    assert not [e for e in before if e["event"] == "written"]
    expected |= _wave(drop, raws, "k2", eml=4, mbox=0, jsonl=6)  # mail keeps arriving while it is down
    second = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    during = _kill_when(second, "written", WAIT_S)
    assert during[0]["event"] == "resumed"
    ids = _written_ids(out)
    assert ids and len(ids) < len(expected)  # killed mid-way: some written, some not
    rc, events, stderr = _run_once(stack, drop, out, "--batch-size", "10")
    assert rc == 0, stderr[-3000:]
    assert events[0]["event"] == "resumed"
    ids = _written_ids(out)
    assert len(ids) == len(set(ids)), "an email was written twice"
    assert set(ids) == expected, f"lost {len(expected - set(ids))} emails"
    # Each batch went into the bucket once: one manifest per batch the runs cut, at most one upload reported each.
    everything = [*before, *during, *events]
    cut = {path.stem for path in out.glob("*.parquet")}  # a killed run cut batches whose events went unread
    uploads = [e["batch_id"] for e in everything if e["event"] == "submitted" and not e.get("found_in_bucket")]
    assert len(uploads) == len(set(uploads)) and set(uploads) <= cut
    stream_ids = {b.rsplit("-", 1)[0] for b in cut}
    manifests = [k for k in ObjectStore().keys(f"incoming/{TENANT}/") if k.endswith("/manifest.jws")
                 and any(f"/{s}-" in k for s in stream_ids)]
    assert len(manifests) == len(cut)
