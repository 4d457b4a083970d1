"""`cscore owner results --out FILE [--format F]`: each email's results joined to its From, Subject and Date
from the owner's local journal, written as Parquet, CSV or JSON lines, never in a format the name does not say.

Real files in each format, read back with pyarrow, the standard library and pandas; the journal is real PME
Parquet under an in-memory stand-in broker (the real-broker path is in test_streaming_submit.py).
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cscore.cli import main
from sdk.emails import read_emails
from sdk.journal import (
    HeaderJoin,
    JournalError,
    JournalWriter,
    join_headers,
    journal_path,
    open_journal,
    parse_date,
    read_journal,
)
from sdk.results_file import OutputFormatError, output_format, write_results_file
from tests.enclave.test_pme import LocalWrapper

SENDER = "Zoë Canary-41d7 <zoe@example.com>"  # a canary: it must never be readable in the journal's bytes
SUBJECT = 'Invoice, "urgent"; 100% free'  # comma, quotes and semicolon: CSV must quote it


def write_results(table: pa.Table, path: Path, fmt: str) -> None:
    write_results_file(table.to_batches(max_chunksize=2), table.schema, path, fmt)  # several batches, as the CLI


def _journal(path: Path, wrapper: LocalWrapper, rows: list[tuple[str, str, str, str]], batch: str = "b-1") -> None:
    with JournalWriter(path, wrapper, footer_key="t.b.footer", column_key="t.b.emails", tenant="t",
                       batch_id=batch) as writer:
        for start in range(0, len(rows), 2):  # several tables: the writer streams row groups
            chunk = rows[start:start + 2]
            writer.write(pa.table({name: [r[i] for r in chunk]
                                   for i, name in enumerate(("message_id", "from", "subject", "date"))}))


def _results() -> pa.Table:
    return pa.table({"message_id": ["m3", "m1", "m2", "m9"], "spam_probability": [0.91, 0.02, 0.5, 0.7],
                     "label": [1, 0, 1, 1], "flags": ["", "", "undecodable base64", ""]})


def _joined(tmp_path: Path) -> pa.Table:
    wrapper = LocalWrapper()
    path = journal_path(tmp_path / "owner", "t", "b-1")
    _journal(path, wrapper, [("m1", SENDER, SUBJECT, "Tue, 3 Mar 2026 10:00:00 +0100"),
                             ("m2", "b@example.com", "héllo", "2026-03-04T05:06:07"),
                             ("m3", "", "", "not a date")])
    return join_headers(_results(), read_journal(path, wrapper, tenant="t", batch_id="b-1"))


def test_the_journal_joins_each_result_to_its_email_and_holds_no_plaintext(tmp_path: Path) -> None:
    table = _joined(tmp_path)
    assert table.column_names == ["message_id", "from", "subject", "date", "spam_probability", "label", "flags"]
    rows = {r["message_id"]: r for r in table.to_pylist()}
    assert [r["message_id"] for r in table.to_pylist()] == ["m3", "m1", "m2", "m9"]  # the results' rows and order
    assert rows["m1"]["from"] == SENDER and rows["m1"]["subject"] == SUBJECT
    assert rows["m1"]["date"] == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)  # +0100 in UTC
    assert rows["m2"]["date"] == datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)  # ISO without a zone: UTC
    assert rows["m3"]["date"] is None and rows["m3"]["spam_probability"] == 0.91
    assert rows["m9"]["from"] is None and rows["m9"]["label"] == 1  # no journal row: empty, the result kept
    raw = journal_path(tmp_path / "owner", "t", "b-1").read_bytes()
    assert raw.endswith(b"PARE") and b"Canary-41d7" not in raw and b"zoe@example.com" not in raw


def test_a_results_file_is_joined_batch_by_batch_in_order_or_by_id(tmp_path: Path) -> None:
    wrapper = LocalWrapper()
    path = journal_path(tmp_path, "t", "b-1")
    rows = [(f"m{i}", f"s{i}@example.com", f"subject {i}", "") for i in range(9)]
    _journal(path, wrapper, rows)  # row groups of 2
    results = pa.table({"message_id": [r[0] for r in rows], "spam_probability": [i / 10 for i in range(9)],
                        "label": [0] * 9, "flags": [""] * 9})
    expected = join_headers(results, read_journal(path, wrapper, tenant="t", batch_id="b-1"))
    with open_journal(path, wrapper, tenant="t", batch_id="b-1") as journal:
        join = HeaderJoin(journal)
        got = pa.Table.from_batches([b for chunk in results.to_batches(max_chunksize=3) for b in
                                     join(chunk).to_batches()], schema=join.schema(results.schema))
        assert join._whole is None  # in the journal's order: matched as it came, the journal never read whole
    assert got.to_pylist() == expected.to_pylist() and got.column("from").to_pylist()[8] == "s8@example.com"
    shuffled = results.take([4, 0, 8, 1, 2, 3, 5, 6, 7])  # another order: joined by id all the same
    with open_journal(path, wrapper, tenant="t", batch_id="b-1") as journal:
        join = HeaderJoin(journal)
        got = pa.concat_tables(join(b) for b in shuffled.to_batches(max_chunksize=4))
    assert got.to_pylist() == join_headers(shuffled, read_journal(path, wrapper, tenant="t", batch_id="b-1")
                                           ).to_pylist()
    assert got.column("subject").to_pylist()[:2] == ["subject 4", "subject 0"]


def test_a_journal_is_read_only_for_its_own_batch(tmp_path: Path) -> None:
    wrapper = LocalWrapper()
    path = journal_path(tmp_path, "t", "b-2")
    _journal(path, wrapper, [("m1", "a", "s", "")], batch="b-1")  # b-1's journal, renamed to stand for b-2
    with pytest.raises(JournalError, match="expected the journal of t/b-2, it is that of t/b-1"):
        read_journal(path, wrapper, tenant="t", batch_id="b-2")


def test_a_journal_left_unfinished_leaves_nothing(tmp_path: Path) -> None:
    path = journal_path(tmp_path, "t", "b-1")
    with pytest.raises(RuntimeError, match="upload failed"), JournalWriter(
            path, LocalWrapper(), footer_key="f", column_key="c", tenant="t", batch_id="b-1") as writer:
        writer.write(pa.table({"message_id": ["m"], "from": ["a"], "subject": ["s"], "date": [""]}))
        raise RuntimeError("upload failed")
    assert list(path.parent.iterdir()) == []


def test_without_a_journal_the_header_columns_are_there_and_empty() -> None:
    table = join_headers(_results(), None)
    assert table.column_names[:4] == ["message_id", "from", "subject", "date"]
    assert table.column("from").null_count == 4 and table.column("spam_probability").to_pylist()[0] == 0.91


@pytest.mark.parametrize("text, expected", [
    ("Mon, 2 Mar 2026 23:30:00 -0200", datetime(2026, 3, 3, 1, 30, tzinfo=UTC)),
    ("2 Mar 2026 23:30:00 -0000", datetime(2026, 3, 2, 23, 30, tzinfo=UTC)),
    ("2026-03-02T23:30:00+02:00", datetime(2026, 3, 2, 21, 30, tzinfo=UTC)),
    ("", None), ("yesterday", None)])
def test_dates_are_read_in_utc(text: str, expected: datetime | None) -> None:
    assert parse_date(text) == expected


def test_readers_keep_from_subject_and_date(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(b"From: =?utf-8?q?Zo=C3=AB?= <zoe@example.com>\nSubject: Hi\n\tthere\n"
                                     b"Date: Tue, 3 Mar 2026 10:00:00 +0100\nMessage-ID: <a@x>\n\nbody\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"message_id": "j1", "subject": "S", "body": "B",
                                                  "from": "f@example.com", "date": "2026-03-01"}) + "\n")
    (tmp_path / "c.mbox").write_bytes(b"From x Tue Mar  3 10:00:00 2026\nFrom: m@example.com\nSubject: one\n\nb\n"
                                      b"\nFrom x Tue Mar  3 10:00:00 2026\nSubject: two\n\nb\n")
    got = {e.message_id: (e.sender, e.subject, e.date) for e in read_emails(tmp_path)}
    assert got == {"<a@x>": ("Zoë <zoe@example.com>", "Hi there", "Tue, 3 Mar 2026 10:00:00 +0100"),
                   "j1": ("f@example.com", "S", "2026-03-01"),
                   "c.mbox#1": ("m@example.com", "one", ""), "c.mbox#2": ("", "two", "")}


@pytest.mark.parametrize("name, chosen, expected", [
    ("r.parquet", None, "parquet"), ("r.PQ", None, "parquet"), ("r.csv", None, "csv"), ("r.jsonl", None, "jsonl"),
    ("r.ndjson", None, "jsonl"), ("r.csv", "csv", "csv"), ("r.txt", "csv", "csv"), ("r", "jsonl", "jsonl"),
    ("r.json", "jsonl", "jsonl")])
def test_the_format_comes_from_the_name_or_from_format(name: str, chosen: str | None, expected: str) -> None:
    assert output_format(Path(name), chosen) == expected


@pytest.mark.parametrize("name, chosen, message", [
    ("r.csv", "parquet", r"--out r.csv names csv \(.csv\) but --format says parquet: name the file r.parquet, "
                         r"or drop --format to write csv"),
    ("r.parquet", "jsonl", r"names parquet \(.parquet\) but --format says jsonl: name the file r.jsonl"),
    ("r.json", None, r"the extension .json names no format; end the name in .parquet, .pq, .csv, .jsonl, .ndjson, "
                     r"or add --format parquet\|csv\|jsonl"),
    ("results", None, r"the extension \(none\) names no format"),
    ("r.csv.gz", "csv", r"compressed output \(.gz\) is not written; write r.csv and compress it afterwards")])
def test_a_name_that_disagrees_or_says_nothing_is_refused(name: str, chosen: str | None, message: str) -> None:
    with pytest.raises(OutputFormatError, match=message):
        output_format(Path(name), chosen)


def test_the_command_refuses_a_mismatch_before_contacting_anything(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.csv"
    # No stack, no broker URL: a format check that came after fetching would fail on those instead.
    rc = main(["--state-dir", str(tmp_path / "none"), "owner", "results", "b-1", "--tenant", "t", "--out", str(out),
               "--format", "parquet"])
    assert rc == 2 and not out.exists()
    assert "names csv (.csv) but --format says parquet" in capsys.readouterr().err
    assert main(["--state-dir", str(tmp_path / "none"), "owner", "results", "b-1", "--tenant", "t",
                 "--format", "csv"]) == 2
    assert "--format csv: expected --out FILE" in capsys.readouterr().err


def test_each_format_is_a_real_file_that_reads_back(tmp_path: Path) -> None:
    table = _joined(tmp_path)
    expected = table.to_pylist()
    write_results(table, tmp_path / "r.parquet", "parquet")
    assert pq.read_table(tmp_path / "r.parquet").to_pylist() == expected  # types kept (date a UTC timestamp)
    assert (tmp_path / "r.parquet").read_bytes()[:4] == b"PAR1"
    write_results(table, tmp_path / "r.csv", "csv")
    with (tmp_path / "r.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == table.column_names
    assert rows[1]["from"] == SENDER and rows[1]["subject"] == SUBJECT and rows[1]["date"].startswith(
        "2026-03-03 09:00:00") and rows[1]["spam_probability"] == "0.02"
    assert rows[3]["from"] == "" and rows[2]["flags"] == "undecodable base64"
    write_results(table, tmp_path / "r.jsonl", "jsonl")
    lines = (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    first = json.loads(lines[1])
    assert first == {"message_id": "m1", "from": SENDER, "subject": SUBJECT, "date": "2026-03-03T09:00:00+00:00",
                     "spam_probability": 0.02, "label": 0, "flags": ""}
    assert json.loads(lines[3])["date"] is None
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial file left


def test_pandas_reads_each_format(tmp_path: Path) -> None:
    """The pandas path in docs/OWNER.md, on the files `owner results --out` writes."""
    table = _joined(tmp_path)
    for name in ("r.parquet", "r.csv", "r.jsonl"):
        write_results(table, tmp_path / name, output_format(Path(name), None))
    jsonl = pd.read_json(tmp_path / "r.jsonl", lines=True, precise_float=True)
    jsonl["date"] = pd.to_datetime(jsonl["date"])
    frames = [pd.read_parquet(tmp_path / "r.parquet"),
              pd.read_csv(tmp_path / "r.csv", parse_dates=["date"], keep_default_na=False, na_values={"date": [""]}),
              jsonl]
    for frame in frames:
        assert list(frame.columns) == table.column_names
        m1 = frame.set_index("message_id").loc["m1"]
        assert m1["from"] == SENDER and m1["subject"] == SUBJECT and m1["label"] == 0
        assert m1["date"] == pd.Timestamp("2026-03-03T09:00:00Z")
        assert frame["spam_probability"].tolist() == [0.91, 0.02, 0.5, 0.7]


def test_csv_refuses_list_columns_naming_them(tmp_path: Path) -> None:
    table = pa.table({"file": ["a.png"], "probabilities": [[0.1, 0.9]]})
    with pytest.raises(OutputFormatError, match="column 'probabilities' holds lists"):
        write_results(table, tmp_path / "r.csv", "csv")
    assert not (tmp_path / "r.csv").exists()
    write_results(table, tmp_path / "r.jsonl", "jsonl")
    assert json.loads((tmp_path / "r.jsonl").read_text()) == {"file": "a.png", "probabilities": [0.1, 0.9]}
