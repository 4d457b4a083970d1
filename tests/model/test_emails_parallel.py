"""`read_emails(..., processes=N)` parses in other processes and gives exactly what one process gives: the same
emails (ids, texts, sources, flags) in the same order, and the same refusal after the same emails."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdk import emails
from sdk.emails import EmailInputError, read_emails


def _message(n: int) -> bytes:
    """Mail of many shapes: with and without a Message-ID (some repeated), multipart, base64 (some broken),
    quoted-printable, 8-bit and RFC 2047 headers, HTML only."""
    mid = f"Message-ID: <m{n % 37}@example.test>\n" if n % 3 else ""
    subject = f"Subject: =?utf-8?b?{base64.b64encode(f'Offre n°{n} été'.encode()).decode()}?=\n"
    if n % 5 == 0:
        return (f"{mid}{subject}MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"b{n}\"\n\n"
                f"--b{n}\nContent-Type: text/plain; charset=utf-8\n\nplain part {n} café\n"
                f"--b{n}\nContent-Type: text/html\n\n<html><body><p>html part {n}</p></body></html>\n--b{n}--\n"
                ).encode()
    if n % 5 == 1:
        body = base64.b64encode(f"base64 body {n} \u00fc".encode()).decode() + ("!!" if n % 2 else "")
        return f"{mid}{subject}Content-Transfer-Encoding: base64\nContent-Type: text/plain; charset=utf-8\n\n{body}\n" \
            .encode()
    if n % 5 == 2:
        return f"{mid}{subject}Content-Transfer-Encoding: quoted-printable\n\nsoft=\nbreak {n} =C3=A9t=C3=A9\n".encode()
    if n % 5 == 3:
        return mid.encode() + b"Subject: latin-1 \xe9t\xe9\n\nbody with 8-bit bytes \xe9 " + str(n).encode() + b"\n"
    return f"{mid}Subject: html {n}\nContent-Type: text/html\n\n<html><body><b>only</b> html {n}</body></html>\n" \
        .encode()


def _inputs(folder: Path, count: int = 460) -> Path:
    folder.mkdir()
    with (folder / "a.mbox").open("wb") as mbox:
        for n in range(count):
            mbox.write(b"From sender@example.test Mon Jan  6 09:15:02 2025\n" + _message(n) + b"\n")
    with (folder / "b.jsonl").open("w") as jsonl:
        for n in range(count):
            row: dict[str, Any] = ({"raw": _message(n).decode("utf-8", "surrogateescape")} if n % 4 else
                                   {"subject": f"s{n}", "body": f"<p>b {n}</p>  \t spaces", "from": f"a{n}@x"})
            if n % 3 == 0:
                row["message_id"] = f"j{n}" if n % 2 else n  # numbers kept as written
            jsonl.write(json.dumps(row) + "\n")
    pq.write_table(pa.table({"message_id": [f"p{n}" for n in range(count)],
                             "text": [f"text {n}\r\n\r\n\r\nmore" for n in range(count)]}), folder / "c.parquet",
                   row_group_size=150)
    pq.write_table(pa.table({"message_id": [None if n % 2 else f"r{n}" for n in range(count)],
                             "raw": [_message(n) for n in range(count)]}), folder / "d.parquet")
    (folder / "e.eml").write_bytes(b"Message-ID: <a.mbox#3>\nSubject: an id like a file's name\n\nbody\n")
    return folder


def _read(path: Path, processes: int) -> tuple[list[tuple[Any, ...]], str | None]:
    """Every email (every field) read until the end or a refusal (its message)."""
    read: list[tuple[Any, ...]] = []
    try:
        for e in read_emails(path, processes=processes):
            read.append((e.message_id, e.text, e.source, e.flags, e.sender, e.subject, e.date))
    except EmailInputError as exc:
        return read, f"{type(exc).__name__}: {exc}"
    return read, None


@pytest.mark.parametrize("chunk", [7, 200])
def test_processes_read_what_one_process_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(emails, "_CHUNK", chunk)
    folder = _inputs(tmp_path / "in")
    alone, refusal = _read(folder, 1)
    assert refusal is None and len(alone) == 4 * 460 + 1
    assert any(e[3] for e in alone) and len({e[0] for e in alone}) == len(alone)
    assert any(e[5].startswith("Offre") for e in alone) and any(e[4] for e in alone)  # headers kept too
    assert _read(folder, 2) == (alone, None)


@pytest.mark.parametrize("fault", ["bad line", "duplicate before a bad line"])
def test_a_refusal_comes_after_the_same_emails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """A reader's refusal read ahead of the parsing still comes after every email before it, and a duplicate id
    among those is refused first, as one process reads them."""
    monkeypatch.setattr(emails, "_CHUNK", 50)
    folder = _inputs(tmp_path / "in", count=120)
    lines = (folder / "b.jsonl").read_text().splitlines()
    if fault == "duplicate before a bad line":
        lines[100] = json.dumps({"message_id": "j3", "subject": "again", "body": "x"})
    lines.insert(110, "{not json")
    (folder / "b.jsonl").write_text("\n".join(lines) + "\n")
    alone = _read(folder, 1)
    assert alone[1] is not None and ("duplicate message_id 'j3'" in alone[1]) == (fault != "bad line")
    assert len(alone[0]) == 120 + (100 if fault != "bad line" else 110)
    assert _read(folder, 2) == alone
