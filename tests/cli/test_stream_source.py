"""What `cscore owner stream` counts as arrived mail, and its journal's guards (no stack needed)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from enclave.signing import generate_signing_key
from sdk.stream import Journal, StreamError, scan


def _touch(path: Path, age_s: float, data: bytes = b"Subject: x\n\nhi\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_maildir_counts_new_and_cur_by_unique_name_never_tmp(tmp_path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    _touch(tmp_path / "tmp" / "3.M3.host", 0)  # still being delivered
    _touch(tmp_path / "new" / "2.M2.host", 0)  # just delivered: maildir's rename makes it complete, no settle
    _touch(tmp_path / "cur" / "1.M1.host:2,S", 60)
    _touch(tmp_path / "cur" / ".hidden", 60)
    found, waiting = scan(tmp_path, settle_s=30)
    assert [(a.key, a.path.parent.name) for a in found] == [("1.M1.host", "cur"), ("2.M2.host", "new")]
    assert waiting == 0


def test_drop_folder_waits_for_settled_files_and_skips_in_progress_names(tmp_path: Path) -> None:
    _touch(tmp_path / "old.eml", 10)
    _touch(tmp_path / "sub" / "box.mbox", 10)
    _touch(tmp_path / "fresh.jsonl", 0)  # may still be growing
    for name in ("x.eml.part", "y.jsonl.tmp", "z.mbox.crdownload", ".hidden.eml"):
        _touch(tmp_path / name, 10)
    found, waiting = scan(tmp_path, settle_s=2)
    assert sorted(a.key for a in found) == ["old.eml", "sub/box.mbox"]
    assert waiting == 1
    found, waiting = scan(tmp_path, settle_s=2, now=time.time() + 5)
    assert sorted(a.key for a in found) == ["fresh.jsonl", "old.eml", "sub/box.mbox"] and waiting == 0


def test_one_stream_process_per_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    first = Journal(path, source=tmp_path, tenant="acme")
    try:
        with pytest.raises(StreamError, match="another `cscore owner stream` holds this journal"):
            Journal(path, source=tmp_path, tenant="acme")
    finally:
        first.close()
    Journal(path, source=tmp_path, tenant="acme").close()  # released with the first


def test_a_journal_streams_one_source_for_one_tenant(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path, source=tmp_path, tenant="acme")
    stream_id = journal.meta("stream_id")
    journal.close()
    with pytest.raises(StreamError, match="streams tenant 'acme', not 'other'"):
        Journal(path, source=tmp_path, tenant="other")
    with pytest.raises(StreamError, match="streams source"):
        Journal(path, source=tmp_path / "elsewhere", tenant="acme")
    again = Journal(path, source=tmp_path, tenant="acme")
    assert again.meta("stream_id") == stream_id  # batch ids stay the same across restarts
    again.close()


def test_a_journal_from_before_headers_were_kept_gains_them_and_keeps_its_queue(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    old = sqlite3.connect(path)  # the messages table as cscore created it before it kept From, Subject and Date
    old.executescript("CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL UNIQUE,"
                      " file_key TEXT NOT NULL, text TEXT, arrived_at REAL NOT NULL, batch_id TEXT);"
                      "INSERT INTO messages (message_id, file_key, text, arrived_at) VALUES ('m1', 'a.eml', 'hi', 1);")
    old.close()
    journal = Journal(path, source=tmp_path, tenant="acme")
    try:
        rows = journal.db.execute("SELECT message_id, text, sender, subject, date, flags FROM messages").fetchall()
    finally:
        journal.close()
    assert rows == [("m1", "hi", None, None, None, None)]


def test_a_partial_batch_grows_while_the_pipeline_is_full(tmp_path: Path) -> None:
    """Aged mail is cut into a partial batch only when a place is free; a full pipeline lets it grow to the
    size cap (a full batch is still cut and waits). No email is dropped or cut twice on the way."""
    from sdk.stream import Stream, StreamOptions

    source = tmp_path / "drop"
    source.mkdir()
    journal = Journal(tmp_path / "j.sqlite", source=source, tenant="acme")
    events: list[dict[str, object]] = []
    stream = Stream(source, tmp_path / "out", journal, None, "acme", None, None, [],  # type: ignore[arg-type]
                    verify=lambda _: None, emit=events.append,  # type: ignore[arg-type,return-value]
                    options=StreamOptions(batch_size=10, max_age_s=0.0, max_in_flight=2))
    db = journal.db

    def arrive(count: int) -> None:
        start = int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
        db.executemany("INSERT INTO messages (message_id, file_key, text, arrived_at) VALUES (?,?,?,?)",
                       [(f"m{start + i}", "f", "t", time.time() - 60) for i in range(count)])

    def batches() -> list[tuple[str, int, str]]:
        return [tuple(r) for r in db.execute("SELECT batch_id, emails, state FROM batches ORDER BY n")]

    try:
        arrive(3)
        stream.cut()
        first = batches()
        assert [(n, s) for _, n, s in first] == [(3, "cut")]  # a free place: aged mail is cut at once
        db.execute("UPDATE batches SET state='submitted'")
        arrive(3)
        stream.cut()
        assert [(n, s) for _, n, s in batches()] == [(3, "submitted"), (3, "cut")]  # one place left: taken
        db.execute("UPDATE batches SET state='submitted'")
        arrive(4)
        stream.cut(force=True)
        assert len(batches()) == 2  # full: the 4 aged emails wait, even when forced
        arrive(8)
        stream.cut()
        assert [(n, s) for _, n, s in batches()][2:] == [(10, "cut")]  # the size cap is cut, and waits
        db.execute(f"UPDATE batches SET state='written' WHERE batch_id='{first[0][0]}'")
        stream.cut()
        assert len(batches()) == 3  # one submitted and one waiting: still full
        db.execute("UPDATE batches SET state='written' WHERE state='submitted'")
        stream.cut()
        assert [(n, s) for _, n, s in batches()][3:] == [(2, "cut")]  # a place: the rest is cut
        per_batch = dict(db.execute("SELECT batch_id, count(*) FROM messages GROUP BY batch_id").fetchall())
        assert sorted(per_batch.values()) == [2, 3, 3, 10] and None not in per_batch
        assert [e["emails"] for e in events if e["event"] == "cut"] == [3, 3, 10, 2]
    finally:
        journal.close()


class _Bucket:
    """The platform's bucket as the stream reads it: whatever it holds, by key."""

    bucket = "platform"

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get_if_exists(self, key: str) -> bytes | None:
        return self.objects.get(key)


def test_status_objects_the_platform_garbles_stop_no_stream(tmp_path: Path) -> None:
    """A status that is not JSON, or not an object, reads as 'not ended yet' (the platform may rewrite it), and a
    batch whose manifest was replaced by one the owner never signed is rejected by name: one bad object must not
    end the owner's stream, which every restart would then end again at the same object."""
    from sdk.results import fetch_results
    from sdk.stream import Stream

    source = tmp_path / "drop"
    source.mkdir()
    journal = Journal(tmp_path / "j.sqlite", source=source, tenant="acme")
    bucket = _Bucket({"status/acme/s-1.json": b"\xff not json", "status/acme/s-2.json": b"[1, 2]",
                      "status/acme/s-3.json": b'{"state": "succeeded"}',
                      "incoming/acme/s-3/manifest.jws": b"eyJhbGciOiJFZERTQSJ9.e30.AAAA"})  # not the owner's
    owner = type("Owner", (), {"signing_key": lambda self: generate_signing_key()})()
    events: list[dict[str, object]] = []

    def verify(batch_id: str) -> object:
        return fetch_results("acme", batch_id, owner=owner, store=bucket, anchors=None, policy=None)  # type: ignore

    stream = Stream(source, tmp_path / "out", journal, None, "acme", owner, bucket, [],  # type: ignore[arg-type]
                    verify=verify, emit=events.append)  # type: ignore[arg-type]
    try:
        journal.db.executemany("INSERT INTO batches (n, batch_id, emails, state, cut_at) VALUES (?,?,?,?,?)",
                               [(n, f"s-{n}", 1, "submitted", time.time()) for n in (1, 2, 3)])
        stream.collect()
        states = dict(journal.db.execute("SELECT batch_id, state FROM batches").fetchall())
        assert states == {"s-1": "submitted", "s-2": "submitted", "s-3": "rejected"}
        assert [(e["event"], e["batch_id"]) for e in events] == [("rejected", "s-3")]
        assert str(events[0]["reason"]).startswith("manifest.")
        assert events[0]["advice"] == ("once the cause is fixed, cscore owner results s-3 --tenant acme --out FILE "
                                       "verifies and writes them (this stream does not verify a rejected batch again)")
    finally:
        journal.close()


def test_a_failure_reason_the_platform_wrote_cannot_forge_lines_on_the_owners_terminal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The platform's reason holds a newline, a line erase and a right-to-left override, to print a 'results ...
    verified' line of its own under the failure: the owner sees one line with those characters escaped."""
    from cscore.stream_cli import _progress_line
    from sdk.platform_text import MAX_CHARS, shown

    forged = "worker lost\n\x1b[2K\rresults  s-1: 500 verified (2 receipts) \u202e"
    events = _collect_one_failure(tmp_path, forged)
    _progress_line(events[0])
    printed = capsys.readouterr().out
    first = printed.splitlines()[0]
    assert "\x1b" not in printed and "\r" not in printed and "\u202e" not in printed
    assert first.startswith("FAILED   s-1: worker lost\\n\\x1b[2K\\rresults  s-1") and first.endswith("\\u202e")
    assert not any(line.startswith("results") for line in printed.splitlines())
    assert len(shown("x" * (MAX_CHARS + 10))) == MAX_CHARS


def test_a_manifest_the_platform_planted_does_not_make_the_stream_skip_a_submit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On restart a cut batch whose manifest is in the bucket counts as submitted (the manifest is uploaded last).
    Only the owner's own signed manifest naming that batch counts: one signed by another key, or the owner's
    genuine manifest of another batch copied to this batch's place, is a plant, and the batch is submitted."""
    import sdk.stream
    from enclave.signing import sign_json
    from sdk.stream import Stream, StreamOptions

    key = generate_signing_key()
    owner = type("Owner", (), {"signing_key": lambda self: key})()
    genuine = {n: sign_json({"tenant": "acme", "batch_id": n}, key).encode() for n in ("s-1", "s-9")}
    bucket = _Bucket({"incoming/acme/s-1/manifest.jws": genuine["s-1"],
                      "incoming/acme/s-2/manifest.jws": sign_json({"tenant": "acme", "batch_id": "s-2"},
                                                                  generate_signing_key()).encode(),
                      "incoming/acme/s-3/manifest.jws": genuine["s-9"]})
    submitted: list[str] = []
    monkeypatch.setattr(sdk.stream, "submit_batch", lambda *a, batch_id, **k: submitted.append(batch_id))
    source = tmp_path / "drop"
    source.mkdir()
    journal = Journal(tmp_path / "j.sqlite", source=source, tenant="acme")
    events: list[dict[str, object]] = []
    stream = Stream(source, tmp_path / "out", journal, None, "acme", owner, bucket, [],  # type: ignore[arg-type]
                    verify=lambda _: None, emit=events.append,  # type: ignore[arg-type,return-value]
                    options=StreamOptions(max_in_flight=5))
    try:
        journal.db.executemany("INSERT INTO batches (n, batch_id, emails, state, cut_at) VALUES (?,?,?,?,?)",
                               [(n, f"s-{n}", 1, "cut", time.time()) for n in (1, 2, 3, 4)])
        stream.submit_cut()
        assert submitted == ["s-2", "s-3", "s-4"]
        assert [e["batch_id"] for e in events if e.get("found_in_bucket")] == ["s-1"]
        assert {s for (s,) in journal.db.execute("SELECT state FROM batches")} == {"submitted"}
    finally:
        journal.close()


def test_maildir_files_already_read_are_not_looked_at_again(tmp_path: Path) -> None:
    """A stream passes the keys it has read: those are neither stat'ed nor returned (each pass costs the new
    mail only), whether still in new/ or moved to cur/ with flags; other files are, as before."""
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    _touch(tmp_path / "new" / "1.M1.host", 30)
    _touch(tmp_path / "cur" / "2.M2.host:2,S", 20)
    _touch(tmp_path / "new" / "3.M3.host", 10)
    found, _ = scan(tmp_path, settle_s=0, read={"1.M1.host", "2.M2.host"})
    assert [a.key for a in found] == ["3.M3.host"]
    found, _ = scan(tmp_path, settle_s=0, read={"3.M3.host"})
    assert [a.key for a in found] == ["1.M1.host", "2.M2.host"]  # oldest first


@pytest.mark.parametrize(("reason", "says", "never"), [
    # the same input would be refused again: a resubmit cannot help
    ("score: shard 0 failed on the worker: WorkerRefusal: InputRefused: shard row 3: email-text expects a string, "
     "found int", "submit it as a new batch", "--resubmit"),
    ("score: shard 0 failed on the worker: WorkerRefusal: ShardInputError: input incoming/acme/s-1/part-0.parquet: "
     "expected sha256 ab12 (from the signed manifest), got cd34", "fix the input", "--resubmit"),
    ("validate: manifest.objects[0].size: expected 4096 (signed), got 4000", "new batch", "--resubmit"),
    ("score: shard 0 failed on the worker: KbsError: 403 the batch has no grant at this broker", "new batch",
     "--resubmit"),
    # a part that was down: resubmitting the same batch is what helps, and the stream watches it
    ("score: 2 of 4 shards unfinished after 3600 s",
     "`cscore owner submit --resubmit s-1 --tenant acme` (finished shards are reused). This stream writes its results "
     "once it succeeds.", "new batch"),
])
def test_a_failed_batch_is_advised_a_resubmit_only_where_it_can_help(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], reason: str, says: str, never: str) -> None:
    from cscore.stream_cli import _progress_line

    events = _collect_one_failure(tmp_path, reason)
    assert [(e["event"], e["reason"]) for e in events] == [("failed", reason)]
    advice = str(events[0]["advice"])
    assert says in advice and never not in advice, advice
    _progress_line(events[0])
    assert capsys.readouterr().out.splitlines()[1] == f"         next: {advice}"


def _collect_one_failure(tmp_path: Path, reason: str) -> list[dict[str, object]]:
    """The events a stream emits when it collects one submitted batch whose status says failed for `reason`."""
    from sdk.stream import Stream

    source = tmp_path / "drop"
    source.mkdir()
    journal = Journal(tmp_path / "j.sqlite", source=source, tenant="acme")
    bucket = _Bucket({"status/acme/s-1.json": json.dumps({"state": "failed", "reason": reason}).encode()})
    events: list[dict[str, object]] = []
    stream = Stream(source, tmp_path / "out", journal, None, "acme", None, bucket, [],  # type: ignore[arg-type]
                    verify=lambda _: None, emit=events.append)  # type: ignore[arg-type,return-value]
    try:
        journal.db.execute("INSERT INTO batches (n, batch_id, emails, state, cut_at) VALUES (1, 's-1', 1, "
                           "'submitted', 0)")
        stream.collect()
    finally:
        journal.close()
    return events
