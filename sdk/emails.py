"""The data owner's email readers: folders of .eml/.txt files, mbox, JSON lines, Parquet -> ``Email``.

``email_text`` is the one function that turns a raw RFC 822 message into the text the spam model
scores (subject, newline, body text); training uses it too, so what is scored matches what was learned.

Speed: ``email.parser`` with ``policy.compat32`` parses ~4x faster than ``policy.default`` (which builds
rich header objects we do not need); measured numbers are in ``bench/scoring.py``.
"""

from __future__ import annotations

import binascii
import codecs
import html
import io
import json
import math
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from email import errors, policy
from email.header import Header, decode_header
from email.message import Message
from email.parser import BytesParser
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from sdk.mbox import MMDF_SEPARATOR, split_mbox, split_mmdf
from sdk.paths import not_readable

_PARSER = BytesParser(policy=policy.compat32)
_SNIFF_BYTES = 8192  # enough to tell the format; the header block is then read whole (up to _HEAD_LIMIT)
_HEAD_LIMIT = 1 << 20
_JSON_SUFFIXES = {".jsonl", ".ndjson", ".json"}
_EXPECTED = "an email source (.eml/.txt RFC 822 message, mbox, JSON lines or Parquet)"
_KNOWN_HEADERS = frozenset(
    "from to cc bcc subject date message-id received return-path mime-version content-type "
    "content-transfer-encoding delivered-to reply-to sender in-reply-to references x-mailer "
    "list-id envelope-to x-original-to status x-status x-uid x-keywords dkim-signature arc-seal "
    "authentication-results thread-topic thread-index importance x-gm-thrid x-gmail-labels".split()
)
_KNOWN_HEADER_PREFIXES = ("x-", "arc-", "dkim-", "list-", "resent-", "content-", "received-", "authentication-")
_WELL_FORMED_HEAD = re.compile(rb"(?:(?:[\x21-\x39\x3b-\x7e]+[ \t]*:|[ \t])[^\r\n]*\r?\n)*")
_USED_HEADERS = re.compile(
    rb"^(?:subject|from|date|message-id|mime-version|content-type|content-transfer-encoding|content-disposition)"
    rb"[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*",
    re.IGNORECASE | re.MULTILINE,
)
_MBOX_FROM = re.compile(rb"From \S*\s.*\b\d{1,2}:\d{2}\b")
_HEADER_LINE = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"BZh", "bzip2-compressed data"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
    (b"SQLite format 3", "an SQLite database"),
)


class EmailInputError(ValueError):
    """The owner's input cannot be read as emails; the message names the file (line, row group) and the problem."""


class NotEmailError(EmailInputError):
    """A file is not an email source; the message names the file, what was expected and what was found."""


@dataclass(frozen=True, slots=True)
class Email:
    """One email to score: a unique ``message_id`` and the model's input ``text``.

    ``source`` names the file it came from (relative to the input), ``flags`` what could not be read
    right (an undecodable transfer encoding, ...): the text is then what could be read. ``sender``,
    ``subject`` and ``date`` are the From, Subject and Date headers as written ("" when absent), kept on
    the owner's machine only (`sdk.journal`) to join results back. None of these is compared, uploaded or
    scored.
    """

    message_id: str
    text: str
    source: str = field(default="", compare=False)
    flags: tuple[str, ...] = field(default=(), compare=False)
    sender: str = field(default="", compare=False)
    subject: str = field(default="", compare=False)
    date: str = field(default="", compare=False)


# ---------------------------------------------------------------------------------------------------
# email_text: raw RFC 822 -> model text


def email_text(raw: bytes) -> str:
    """Subject, newline, then the body text: text/plain parts, else text/html parts with tags stripped.

    Never raises on broken MIME, bad transfer encodings or unknown charsets (bytes that cannot be
    decoded become U+FFFD); the result is always valid Unicode (no lone surrogates).
    """
    return _email(raw)[1]


def _email(raw: bytes) -> tuple[Message, str, tuple[str, ...]]:
    """The parsed message, its model text, and what could not be read right (see ``Email.flags``)."""
    msg = _parse(raw)
    flags: list[str] = []
    text = clean_text(_subject(msg, flags) + "\n" + _body(msg, flags))
    if any(isinstance(d, _BOUNDARY_DEFECTS) for part in msg.walk() for d in part.defects):
        flags.append("multipart message whose boundary is missing: its body was read as one text")
    return msg, text, tuple(flags)


def _parse(raw: bytes) -> Message:
    """Parse like ``BytesParser(policy=compat32).parsebytes``, ~2-3x faster.

    The feed parser walks every header and body line in Python, and corpus mail carries ~27 headers
    (Received chains) of which we read five. So when the header block is well formed, only the
    headers we use go through the parser; a single-part body is attached as the parser would have
    stored it, and a multipart body is cut at its boundaries as the parser would cut it (`_parts`).
    Anything else (a header block that is not plainly ``Name: value`` lines, message/* parts, a
    multipart body the parser would mark defective) takes the full parse.
    """
    msg = _fast_parse(raw)
    return _PARSER.parsebytes(raw) if msg is None else msg


def _fast_parse(raw: bytes) -> Message | None:
    """``raw`` parsed through the fast paths of `_parse`, or None where only the full parse is exact."""
    end = _header_end(raw)
    if end is None:
        return None
    head = raw[: end[0]]
    if head.startswith(b"From "):  # mbox separator line: not a header
        head = head[head.find(b"\n") + 1 :]
    if not _WELL_FORMED_HEAD.fullmatch(head):
        return None
    msg = Message()  # compat32, as _PARSER makes them
    for header in _USED_HEADERS.finditer(head):  # the feed parser's own header step, without its line machinery
        msg.set_raw(*policy.compat32.header_source_parse([header.group(0).decode("ascii", "surrogateescape")]))
    maintype = msg.get_content_maintype()
    if maintype == "message":
        return None
    if maintype == "multipart":
        parts = _parts(msg, raw[end[1] :])
        if parts is None:
            return None
        payload: list[Message | str] = [*parts]
        msg.set_payload(payload)  # preamble and epilogue are not kept: nothing reads them
        return msg
    msg.set_payload(raw[end[1] :].decode("ascii", "surrogateescape"))  # as the feed parser stores it
    return msg


def _header_end(raw: bytes) -> tuple[int, int] | None:
    """(end of the header block with its last line break, start of the body), or None without a blank line.

    A blank first line (no header lines), else the first of "\n\n", "\n\r\n": what the feed parser takes for
    the blank line, found with ``bytes.find`` (the regex ``\r?\n\r?\n`` tries every byte of the header block).
    """
    if raw.startswith((b"\n", b"\r\n")):  # no header lines at all
        return 0, raw.find(b"\n") + 1
    lf = raw.find(b"\n\n")
    crlf = raw.find(b"\n\r\n", 0, len(raw) if lf < 0 else lf)
    if lf < 0 and crlf < 0:
        return None
    if crlf < 0 or 0 <= lf < crlf:
        return lf + 1, lf + 2
    return crlf + 1, crlf + 3


def _parts(msg: Message, body: bytes) -> list[Message] | None:
    """The parts of multipart ``msg`` whose ``body`` follows its header block, each parsed as the feed parser
    parses a part (RFC 2046 section 5.1.1: the line break before a boundary line belongs to it), or None where
    the parser would do otherwise: no boundary, a lone CR (the parser breaks lines there too), no opening or
    no closing boundary line, adjacent boundary lines, a digest (its parts default to message/rfc822), a
    part the fast paths do not take."""
    boundary = msg.get_boundary()
    if not boundary or msg.get_content_subtype() == "digest" or body.count(b"\r") != body.count(b"\r\n"):
        return None
    lines = _boundary_lines(body, b"--" + boundary.encode("ascii", "surrogateescape"))
    if not lines or lines[0][2]:
        return None
    parts: list[Message] = []
    for (_, start, _), (end, _, close) in zip(lines, lines[1:], strict=False):
        if end == start:  # the parser swallows a boundary line right after another
            return None
        parsed = _fast_parse(body[start:end])
        if parsed is None:
            return None
        payload = _stored_payload(parsed)
        if isinstance(payload, str):  # a multipart part's line break would end its epilogue, which is not kept
            parsed.set_payload(payload[: -2 if payload.endswith("\r\n") else -1] if payload else payload)
        parts.append(parsed)
        if close:
            return parts
    return None  # no closing boundary line


_BOUNDARY_TAIL = re.compile(rb"(--)?[ \t]*(?:\r?\n|\Z)")  # after "--boundary": the feed parser's boundaryre


def _boundary_lines(body: bytes, delimiter: bytes) -> list[tuple[int, int, bool]]:
    """(start, end with its line break, closing?) of each line of ``body`` that the feed parser takes for a
    boundary line of ``delimiter`` ("--" and the boundary), up to the first closing one."""
    lines: list[tuple[int, int, bool]] = []
    at = body.find(delimiter)
    while at >= 0:
        tail = _BOUNDARY_TAIL.match(body, at + len(delimiter)) if at == 0 or body[at - 1] == 0x0A else None
        if tail is None:
            at = body.find(delimiter, at + 1)
            continue
        lines.append((at, tail.end(), tail.group(1) is not None))
        if tail.group(1) is not None:
            break
        at = body.find(delimiter, tail.end())
    return lines


def _headers(msg: Message) -> dict[str, str]:
    """The From, Subject and Date headers, decoded (`Email`'s sender, subject and date; "" when absent)."""
    values = {name: msg.get(header) for name, header in (("sender", "From"), ("subject", "Subject"), ("date", "Date"))}
    return {name: "" if value is None else _valid_unicode(" ".join(_decode_header_value(value).split()))
            for name, value in values.items()}


def _valid_unicode(text: str) -> str:
    """`text`, its raw 8-bit bytes (kept as surrogates by the parser) read as UTF-8, else cp1252."""
    if _not_unicode(text) is None:
        return text
    return _decode_bytes(_utf8(text), None)


def _subject(msg: Message, flags: list[str] | None = None) -> str:
    value = msg.get("Subject")
    if value is None:
        return ""
    return " ".join(_decode_header_value(value, flags, "subject").split())


def _decode_header_value(value: str | Header, flags: list[str] | None = None, what: str = "header") -> str:
    """Decode RFC 2047 encoded words; raw 8-bit headers are tried as UTF-8, then cp1252."""
    try:
        parts = decode_header(value)
    except Exception:  # malformed encoded words: fall back to the literal text
        return str(value)
    out = []
    for chunk, charset in parts:
        out.append(_decode_bytes(chunk, charset, flags, what) if isinstance(chunk, bytes) else chunk)
    return "".join(out)


def _body(msg: Message, flags: list[str] | None = None) -> str:
    """The body text; what could not be decoded is appended to ``flags``."""
    flags = [] if flags is None else flags
    plain: list[str] = []
    markup: list[str] = []
    for part in msg.walk():
        if part.is_multipart() or _is_attachment(part):
            continue
        maintype, subtype = part.get_content_maintype(), part.get_content_subtype()
        if maintype not in ("text", "multipart"):  # "multipart" here = broken: no parts found
            continue
        text = _part_text(part, flags)
        is_html = subtype == "html" or _LOOKS_HTML.search(text) is not None  # HTML mislabelled text/plain
        (markup if is_html else plain).append(text)
    body = "\n".join(t for t in plain if t.strip())
    return body if body else "\n".join(_strip_html(t) for t in markup)


def _is_attachment(part: Message) -> bool:
    disposition = part.get("Content-Disposition")
    return disposition is not None and str(disposition).strip().lower().startswith("attachment")


def _part_text(part: Message, flags: list[str]) -> str:
    payload = _payload_bytes(part, flags)
    if payload is None:
        return ""
    try:
        charset = part.get_content_charset()
    except Exception:  # a malformed charset parameter
        charset = None
    return _decode_bytes(payload, charset, flags)


_KNOWN_CTE = frozenset(("", "7bit", "8bit", "binary", "quoted-printable", "x-uuencode", "uuencode", "x-uue", "uue"))
_BOUNDARY_DEFECTS = (errors.NoBoundaryInMultipartDefect, errors.StartBoundaryNotFoundDefect)
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")
_BASE64_RUN = re.compile(rb"([A-Za-z0-9+/]+)=*")


def _payload_bytes(part: Message, flags: list[str]) -> bytes | None:
    """The part's body with its Content-Transfer-Encoding undone, or None if it has no bytes payload."""
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().strip("\"'").lower()
    payload = _stored_payload(part)
    if cte == "base64" and isinstance(payload, str):
        return _decode_base64(payload.encode("ascii", "surrogateescape"), flags)
    if cte not in _KNOWN_CTE:
        flags.append(f"unknown Content-Transfer-Encoding {cte[:40]!r}: the body was read undecoded")
    decoded = part.get_payload(decode=True)
    return decoded if isinstance(decoded, bytes) else None


def _stored_payload(part: Message) -> object:
    """The payload as the parser stored it: for text, 8-bit bytes as surrogates (`get_payload()` would decode them
    with "replace", and they would no longer encode)."""
    return part.__dict__["_payload"]


def _decode_base64(data: bytes, flags: list[str]) -> bytes:
    """Decode all of a base64 body, also when it is several separately padded chunks.

    The standard decoders stop at the first padding ("=="), silently dropping the rest. Characters
    outside the alphabet and an incomplete last group cannot be decoded: they are flagged.
    """
    compact = b"".join(data.split())
    if b"=" not in compact.rstrip(b"=") and len(compact) % 4 == 0:  # the common, well-formed case
        try:
            return binascii.a2b_base64(compact, strict_mode=True)
        except binascii.Error:
            pass
    junk = len(_NOT_BASE64.findall(compact))
    out, stray = [], 0
    for run in _BASE64_RUN.finditer(_NOT_BASE64.sub(b"", compact)):
        chunk = run.group(1)
        if len(chunk) % 4 == 1:  # one lone character carries no whole byte
            chunk, stray = chunk[:-1], stray + 1
        out.append(binascii.a2b_base64(chunk + b"=" * (-len(chunk) % 4)))
    if junk or stray:
        flags.append(f"base64 body: {junk + stray} character(s) could not be decoded and were skipped")
    return b"".join(out)


_UNDECLARED = frozenset(("us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown", "default"))


def _decode_bytes(data: bytes, charset: str | None, flags: list[str] | None = None, what: str = "body") -> str:
    """Decode with the declared charset; unknown or missing charsets: UTF-8 if valid, else cp1252.

    What cannot be decoded becomes U+FFFD. A charset that is unknown, or that the bytes do not fit (declared
    UTF-8 but Latin-1 bytes, 8-bit bytes in declared ASCII), is appended to `flags` naming `what` was read.
    """
    flags = [] if flags is None else flags
    declared = charset.strip().strip("\"'").lower() if charset else ""
    if declared and declared not in _UNDECLARED:
        try:
            return data.decode(declared)
        except UnicodeDecodeError:
            text = data.decode(declared, errors="replace")
            flags.append(f"{what}: {_replaced(text)} byte sequence(s) not valid in its declared charset "
                         f"{declared[:40]!r} were replaced with U+FFFD")
            return text
        except (LookupError, UnicodeError, ValueError, TypeError):
            pass  # unknown or broken codec name: guess below, flagged
    try:
        text = data.decode("utf-8")
        guessed = "UTF-8"
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
        guessed = "cp1252" + (f" ({_replaced(text)} undefined byte(s) replaced with U+FFFD)" if "\ufffd" in text
                              else "")
    if declared and declared not in _UNDECLARED:
        flags.append(f"{what}: unknown charset {declared[:40]!r}: read as {guessed}")
    elif declared in ("us-ascii", "ascii") and not data.isascii():
        flags.append(f"{what}: declared {declared} but has 8-bit bytes: read as {guessed}")
    elif "\ufffd" in text and guessed != "UTF-8":
        flags.append(f"{what}: no charset declared and not UTF-8: read as {guessed}")
    return text


def _replaced(text: str) -> int:
    return text.count("\ufffd")


_LOOKS_HTML = re.compile(r"<(html|body)\b", re.IGNORECASE)
_SCRIPT_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_SPACE_RUNS = re.compile(r"  +")  # after the other blanks became spaces: a literal prefix, found fast
_BLANK_LINES = re.compile(r"\n\s*\n+")


def _strip_html(markup: str) -> str:
    """Visible text of an HTML fragment: drop scripts, styles, comments and tags, unescape entities."""
    text = _TAG.sub(" ", _COMMENT.sub(" ", _SCRIPT_STYLE.sub(" ", markup)))
    # Each run of blanks (space, tab, CR, FF, VT) becomes one space: str.replace, then the runs (a character class
    # at every position was 60 % of this function).
    text = html.unescape(text).replace("\t", " ").replace("\r", " ").replace("\f", " ").replace("\v", " ")
    text = _SPACE_RUNS.sub(" ", text)
    return _BLANK_LINES.sub("\n", text).strip()


def clean_text(text: str) -> str:
    """The normalisation every model input gets (all readers apply it): valid UTF-8, no NULs, no U+0130.

    Safe for any UTF-8 consumer (Parquet, onnxruntime): lone surrogates become U+FFFD.

    Also maps U+0130 (capital I with dot) to "I": it is the one character whose Python lowercase
    ("i" + U+0307) differs from the C.UTF-8 lowercase the ONNX graph uses ("i") in a way the ASCII
    tokenizer sees (checked over all of Unicode), so this keeps sklearn and ONNX scores equal.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text.replace("\x00", " ").replace("\u0130", "I")


# ---------------------------------------------------------------------------------------------------
# read_emails: the owner's files -> Email


def read_emails(path: Path, *, processes: int = 1) -> Iterator[Email]:
    """Yield the emails in ``path``: a folder (recursively; files sorted by name), an mbox file (see
    ``sdk.mbox``), a single .eml/.txt message, JSON lines (``{"message_id", "raw"}`` or
    ``{"message_id", "subject", "body"}``; UTF-8, or UTF-16/32 with a byte-order mark) or Parquet
    (``message_id`` and ``text`` columns, or ``message_id`` and ``raw``).

    ``message_id`` is the owner's own id where the input has one (JSON ``message_id``, Parquet column;
    numbers kept as written: 42 stays "42"), else the Message-ID header when present and not seen
    before, else the file's name relative to ``path`` (``name#N`` for the N-th message of an mbox, line
    N of JSON lines, row N of Parquet). Explicit ids must be unique. Raises ``EmailInputError`` (file,
    line or row group, expected, found) for anything that cannot be read as email.

    ``processes`` > 1 parses in that many processes (``default_processes()``: every core this process may
    use), in chunks, a few chunks ahead of the reader: the same emails, ids, flags and refusals, in the same
    order, as one process gives; memory grows with ``processes``, not with the input. The processes are
    spawned: a script that calls this needs the ``if __name__ == "__main__":`` guard.
    """
    jobs = (job for file, name in input_files(Path(path)) for job in _read_file(file, name))
    yield from _finished(jobs, _IdAllocator(), processes)


def default_processes() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Parsed(NamedTuple):
    """What parsing one email gives: its Message-ID header as an id ("" when none or not asked), text, flags,
    and its From, Subject and Date headers (`_headers`; none for text given as subject and body)."""

    header_id: str
    text: str
    flags: tuple[str, ...]
    headers: dict[str, str]


# A module-level function and its arguments (picklable: it runs in any process), `_parse_one` or a reader's own.
_Work = tuple[Callable[..., Any], tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class _Job:
    """One email as read: `work` (runs in any process), then `finish` with its result, in reading order, in the
    reading process (ids are handed out there, so they never depend on timing)."""

    work: _Work
    finish: Callable[[Any, _IdAllocator], Email]


def _parse_one(payload: bytes | str, header_id: bool) -> _Parsed:
    """An RFC 822 message's bytes (`header_id`: its Message-ID is asked for), or text given as subject and body."""
    if isinstance(payload, str):
        return _Parsed("", clean_text(payload), (), {})
    msg, text, flags = _email(payload)
    value = msg.get("Message-ID") if header_id else None
    return _Parsed(_header_id(value) if value is not None else "", text, flags, _headers(msg))


def _run(work: _Work) -> Any:
    function, arguments = work
    return function(*arguments)


def _parse_all(works: list[_Work]) -> list[Any]:
    return [_run(work) for work in works]


_CHUNK = 200  # emails sent to a parsing process at a time
_Chunk = tuple[list[_Job], Exception | None]  # jobs read, and the refusal that ended the reading if any
_AHEAD = 2  # chunks queued per process beyond the one it parses


def _finished(jobs: Iterable[_Job], ids: _IdAllocator, processes: int = 1) -> Iterator[Email]:
    """Each job parsed (here, or in `processes` processes once the input is over one chunk) and finished in order.

    A refusal from the reader comes after every email read before it was finished, as reading one by one
    would have it (a duplicate id among them is refused first)."""
    if processes <= 1:
        for job in jobs:
            yield job.finish(_run(job.work), ids)
        return
    chunks = _chunks(iter(jobs), _CHUNK)
    first = next(chunks, None)
    if first is None:
        return
    if first[1] is not None or len(first[0]) < _CHUNK:  # all of it in one chunk: no processes to start
        yield from _finish_chunk(first, _parse_all([job.work for job in first[0]]), ids)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads and locks
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        queued: deque[tuple[_Chunk, Future[list[Any]]]] = deque()
        pending: Iterator[_Chunk] = _prepend(first, chunks)
        try:
            while True:
                while len(queued) < processes * (1 + _AHEAD):
                    chunk = next(pending, None)
                    if chunk is None:
                        break
                    queued.append((chunk, pool.submit(_parse_all, [job.work for job in chunk[0]])))
                if not queued:
                    return
                chunk, parsed = queued.popleft()
                yield from _finish_chunk(chunk, parsed.result(), ids)
        finally:
            for _, future in queued:
                future.cancel()


def _chunks(jobs: Iterator[_Job], size: int) -> Iterator[_Chunk]:
    """Jobs in lists of `size`; a reader's refusal ends the list it interrupted, and the chunks."""
    while True:
        chunk: list[_Job] = []
        try:
            for job in jobs:
                chunk.append(job)
                if len(chunk) == size:
                    break
        except Exception as exc:  # a refusal (EmailInputError) or a file that went away: after what came before
            yield chunk, exc
            return
        if not chunk:
            return
        yield chunk, None


def _prepend(first: _Chunk, rest: Iterator[_Chunk]) -> Iterator[_Chunk]:
    yield first
    yield from rest


def _finish_chunk(chunk: _Chunk, parsed: list[Any], ids: _IdAllocator) -> Iterator[Email]:
    jobs, refusal = chunk
    for job, result in zip(jobs, parsed, strict=True):
        yield job.finish(result, ids)
    if refusal is not None:
        raise refusal


def input_files(path: Path) -> list[tuple[Path, str]]:
    """The files ``read_emails`` reads, with the names ids and reports use; raises if there are none.

    Skipped: hidden files, and the index files mail programs keep beside their mboxes (Apple Mail's
    ``table_of_contents`` and ``Info.plist`` inside ``*.mbox`` folders, Thunderbird's ``*.msf``).
    """
    if path.is_file():
        return [(path, path.name)]
    if not path.is_dir():
        raise EmailInputError(not_readable(path, f"{_EXPECTED} or a folder of them"))
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _skipped(p.relative_to(path)))
    if not files:
        raise EmailInputError(f"{path}: the folder holds no files; expected {_EXPECTED}")
    return [(file, file.relative_to(path).as_posix()) for file in files]


def _skipped(rel: Path) -> bool:
    if any(part.startswith(".") for part in rel.parts) or rel.suffix == ".msf":
        return True
    return rel.parent.name.endswith(".mbox") and rel.name in ("table_of_contents", "Info.plist")


@dataclass(frozen=True)
class FileReport:
    """What one input file gave: its emails (their count and the flagged ones) or why it was refused."""

    file: str
    emails: int
    flagged: list[Email]
    error: str | None = None


def check_input(path: Path) -> list[FileReport]:
    """Read everything in ``path`` as ``read_emails`` would, without stopping at the first refusal.

    For ``cscore owner submit --dry-run``: one report per file, in reading order. A duplicate id across
    files is reported on the file where it appears the second time.
    """
    ids = _IdAllocator()
    reports = []
    for file, name in input_files(Path(path)):
        count, flagged = 0, []
        try:
            for email in _finished(_read_file(file, name), ids):
                count += 1
                if email.flags:
                    flagged.append(email)
        except EmailInputError as exc:
            reports.append(FileReport(name, count, flagged, str(exc)))
            continue
        reports.append(FileReport(name, count, flagged))
    return reports


def check_emails(emails: Iterable[Email]) -> None:
    """Refuse a batch that cannot be written as it stands (before any key is created or byte uploaded):
    empty or non-Unicode ids (lone surrogates), or texts that are not valid Unicode."""
    for index, email in enumerate(emails):
        check_email(email, index)


def check_email(email: Email, index: int) -> None:
    """`check_emails` for the batch's `index`-th email; raises EmailInputError naming it and the field."""
    where = f"email {index} ({email.source or 'given in code'})"
    if not isinstance(email.message_id, str) or not email.message_id:
        raise EmailInputError(f"{where}: expected a non-empty string message_id, found {email.message_id!r}")
    for name, value in (("message_id", email.message_id), ("text", email.text)):
        problem = _not_unicode(value)
        if problem:
            raise EmailInputError(f"{where}: {name} {problem}; expected valid Unicode")


def _not_unicode(value: str) -> str | None:
    """None if ``value`` encodes as UTF-8, else what is wrong with it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate {value[exc.start]!r} at character {exc.start}"
    return None


class _IdAllocator:
    """Hands out unique message ids: explicit ids must be unique, header ids first come first served,
    then file-relative names."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def from_header(self, header_id: str, fallback: str) -> str:
        """The Message-ID header's id (`_header_id`; "" when none) unless taken, else `fallback` made unique."""
        if header_id and header_id not in self._seen:
            return self._take(header_id)
        candidate, n = fallback, 1
        while candidate in self._seen:  # only if a Message-ID equals a file name: keep ids unique
            n += 1
            candidate = f"{fallback}~{n}"
        return self._take(candidate)

    def explicit(self, message_id: str, where: str) -> str:
        problem = _not_unicode(message_id)
        if problem:
            raise EmailInputError(f"{where}: message_id {problem}; expected valid Unicode "
                                  "(a JSON \\ud800-\\udfff escape must be one of a pair): fix that id")
        if message_id in self._seen:
            raise EmailInputError(f"{where}: duplicate message_id {message_id!r}; ids must be unique")
        return self._take(message_id)

    def _take(self, message_id: str) -> str:
        self._seen.add(message_id)
        return message_id


def _header_id(value: str | Header) -> str:
    """A Message-ID header as text: raw 8-bit bytes (kept as surrogates by the parser) as UTF-8, else cp1252."""
    text = _decode_header_value(value).strip()
    if _not_unicode(text) is None:
        return text
    data = text.encode("utf-8", "surrogateescape")
    return clean_text(_decode_bytes(data, None))


# --- one file: sniff the format, then read it ------------------------------------------------------

_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16"),
)


def _read_file(file: Path, name: str) -> Iterator[_Job]:
    with file.open("rb") as raw:
        head = raw.read(_SNIFF_BYTES)
        if head.startswith(b"PAR1"):
            yield from _read_parquet(file, name)
            return
        if head.startswith(b"PARE"):
            raise NotEmailError(f"{file}: expected {_EXPECTED}, found Parquet encrypted with Parquet Modular "
                                "Encryption (PME); cscore encrypts your emails itself: submit them unencrypted")
        fh = _without_bom(file, raw, head)
        kind = _sniff(file, fh)
        if kind == "jsonl":
            yield from _read_jsonl(fh, file, name)
        elif kind == "mbox":
            yield from _read_mbox(fh, file, name)
        elif kind == "mmdf":
            yield from _numbered(split_mmdf(fh), name)
        else:
            yield _from_raw(_skip_blank_lines(fh.read()), name)


def _without_bom(file: Path, raw: BinaryIO, head: bytes) -> BinaryIO:
    """The file's bytes after its byte-order mark: UTF-16/32 text (what Windows PowerShell's ">" writes)
    is decoded and handed on as UTF-8, so every format below sees the same bytes."""
    for bom, codec, label in _BOMS:
        if head.startswith(bom):
            if codec == "utf-8":
                raw.seek(len(bom))
                return raw
            try:
                text = (head + raw.read())[len(bom):].decode(codec)
            except UnicodeDecodeError as exc:
                raise NotEmailError(f"{file}: found a {label} byte-order mark, but byte {exc.start + len(bom)} "
                                    f"does not decode as {label}; save the file as UTF-8") from None
            return io.BytesIO(text.encode("utf-8", "surrogateescape"))
    raw.seek(0)
    return raw


def _skip_blank_lines(data: bytes) -> bytes:
    stripped = data.lstrip(b"\r\n\t ")
    cut = len(data) - len(stripped)
    return data[data.rfind(b"\n", 0, cut) + 1:] if cut else data  # keep indentation of the first line


def _sniff(file: Path, fh: BinaryIO) -> str:
    """Return "jsonl", "mbox", "mmdf" or "email" and leave ``fh`` at the start (after any BOM); raise
    NotEmailError saying what the file is instead. Looks at the whole header block, not a fixed prefix."""
    start = fh.tell()
    head = fh.read(_SNIFF_BYTES)
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise NotEmailError(f"{file}: expected {_EXPECTED}, found {what}")
    if not head.strip():
        raise NotEmailError(f"{file}: expected {_EXPECTED}, found an empty file")
    if b"\x00" in head:
        found = "binary data (NUL bytes)" + (" or UTF-16 text without a byte-order mark" if _utf16ish(head) else "")
        raise NotEmailError(f"{file}: expected {_EXPECTED}, found {found}")
    text = _skip_blank_lines(head)
    if text.startswith(b"{"):
        kind = "jsonl"
    elif text.startswith(b"[") and file.suffix.lower() in _JSON_SUFFIXES:
        found = "a JSON array (write one JSON object per line)"
        raise NotEmailError(f"{file}: expected {_EXPECTED}, found {found}")
    elif text.startswith(MMDF_SEPARATOR):
        kind = "mmdf"
    else:
        block = _header_block(text, fh)
        if not _looks_like_email(block):
            raise NotEmailError(f"{file}: expected {_EXPECTED}, found {_describe_text(text)}")
        kind = "mbox" if text.startswith(b"From ") else "email"
    fh.seek(start)
    return kind


def _utf16ish(head: bytes) -> bool:
    sample = head[:200]
    return len(sample) >= 4 and (sample[1::2].count(0) > len(sample) // 3 or sample[0::2].count(0) > len(sample) // 3)


def _header_block(text: bytes, fh: BinaryIO) -> bytes:
    """``text`` extended from ``fh`` until it holds the first blank line (at most _HEAD_LIMIT bytes)."""
    while _header_end(text) is None and len(text) < _HEAD_LIMIT:
        more = fh.read(_SNIFF_BYTES * 8)
        if not more:
            break
        text += more
    end = _header_end(text)
    return text[: end[0]] if end else text


def _looks_like_email(head: bytes) -> bool:
    """True if ``head`` (a header block, maybe after an mbox "From " line) holds a well-known header."""
    lines = head.split(b"\n")
    if lines and lines[0].startswith(b"From "):
        lines = lines[1:]
    if not lines or not _HEADER_LINE.match(lines[0]):
        return False
    for line in lines:
        match = _HEADER_LINE.match(line)
        if match:
            name = match.group(1).decode("ascii").lower()
            if name in _KNOWN_HEADERS or name.startswith(_KNOWN_HEADER_PREFIXES):
                return True
    return False


def _describe_text(head: bytes) -> str:
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    if any(len(first.split(sep)) >= 2 for sep in (",", ";", "\t")) and ":" not in first:
        return (f"CSV/TSV-like text (first line: {first[:80]!r}); emails are not read from CSV: write them as JSON "
                'lines, one {"message_id", "subject", "body"} (or {"message_id", "raw"}) object per line')
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML document without email headers"
    return f"text without email headers (first line: {first[:80]!r})"


def _from_raw(raw: bytes, fallback_id: str, source: str | None = None) -> _Job:
    def finish(parsed: _Parsed, ids: _IdAllocator) -> Email:
        return Email(ids.from_header(parsed.header_id, fallback_id), parsed.text, source or fallback_id, parsed.flags,
                     **parsed.headers)

    return _Job((_parse_one, (raw, True)), finish)


def _read_mbox(fh: BinaryIO, file: Path, name: str) -> Iterator[_Job]:
    """Messages of an mbox; fallback ids ``name#N``, or plain ``name`` when the file holds one message."""
    yield from _numbered(split_mbox(fh), name)


def _numbered(messages: Iterator[bytes], name: str) -> Iterator[_Job]:
    first = next(messages, None)
    second = next(messages, None)
    if second is None:
        if first is not None:
            yield _from_raw(first, name)
        return
    assert first is not None  # a second message implies a first
    yield _from_raw(first, f"{name}#1", name)
    yield _from_raw(second, f"{name}#2", name)
    for index, raw in enumerate(messages, start=3):
        yield _from_raw(raw, f"{name}#{index}", name)


# --- JSON lines ------------------------------------------------------------------------------------


class _JsonNumber(str):
    """A JSON number kept as written (42 stays "42", not 42.0): ids are the owner's, exactly."""


def _read_jsonl(fh: BinaryIO, file: Path, name: str) -> Iterator[_Job]:
    for lineno, line in enumerate(fh, start=1):
        if line.strip():
            yield _json_job(line, f"{file}:{lineno}", f"{name}#{lineno}", name)


class _JsonRead(NamedTuple):
    """One JSON line read: a raw message or subject and body, the owner's id if it gave one, and the parse."""

    raw: bool
    chosen: str | None
    given: dict[str, str]
    parsed: _Parsed


def _json_job(line: bytes, where: str, fallback_id: str, source: str) -> _Job:
    """The line's JSON is decoded and parsed with the email (`_read_json_line`, in any process): on a single core
    reading process, decoding 500 MB of JSON was a quarter of a submit's time."""

    def finish(read: _JsonRead | NotEmailError, ids: _IdAllocator) -> Email:
        if isinstance(read, NotEmailError):  # raised here, in reading order: after every email before it
            raise read
        parsed = read.parsed
        if read.chosen is None and read.raw:
            return Email(ids.from_header(parsed.header_id, fallback_id), parsed.text, source, parsed.flags,
                         **parsed.headers)
        return Email(ids.explicit(read.chosen or fallback_id, where), parsed.text, source, parsed.flags,
                     **(parsed.headers if read.raw else read.given))

    return _Job((_read_json_line, (line, where)), finish)


def _read_json_line(line: bytes, where: str) -> _JsonRead | NotEmailError:
    """A JSON line decoded, checked and parsed; a refusal naming `where` is returned, for `finish` to raise."""
    try:
        obj = json.loads(line, parse_int=_JsonNumber, parse_float=_JsonNumber)
    except UnicodeDecodeError as exc:
        return NotEmailError(f"{where}: expected UTF-8 text, found byte {exc.object[exc.start]:#04x} at "
                             f"column {exc.start + 1}; save the file as UTF-8")
    except ValueError as exc:
        return NotEmailError(f"{where}: expected a JSON object per line, found invalid JSON ({exc})")
    if not isinstance(obj, dict):
        return NotEmailError(f"{where}: expected a JSON object, found {_json_type(obj)}")
    raw = _is_text(obj.get("raw"))
    if not raw and not (_is_text(obj.get("subject")) or _is_text(obj.get("body"))):
        return NotEmailError(
            f"{where}: expected keys message_id with raw, or message_id with subject/body (strings); "
            f"found keys {sorted(obj)}"
        )
    explicit = obj.get("message_id")
    if explicit is not None and not isinstance(explicit, str):
        return NotEmailError(f"{where}: message_id: expected a string or an integer, found {_json_type(explicit)}")
    chosen = str.__str__(explicit) if explicit else None  # the owner's id wins over a Message-ID header
    given = {name: str.__str__(obj[key]) if _is_text(obj.get(key)) else ""
             for name, key in (("sender", "from"), ("subject", "subject"), ("date", "date"))}
    if raw:
        return _JsonRead(True, chosen, given, _parse_one(_utf8(obj["raw"]), chosen is None))
    return _JsonRead(False, chosen, given, _parse_one(f"{obj.get('subject') or ''}\n{obj.get('body') or ''}", False))


def _is_text(value: object) -> bool:
    return isinstance(value, str) and not isinstance(value, _JsonNumber)


def _json_type(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return {dict: "an object", list: "an array", float: f"the number {value}"}.get(type(value), type(value).__name__)


def _utf8(text: str) -> bytes:
    """A JSON string as the bytes of the message it holds (lone surrogates from \\udcXX escapes are the
    bytes surrogateescape stands for; other lone surrogates become U+FFFD)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


# --- Parquet ---------------------------------------------------------------------------------------

_EXACT_FLOAT = 2.0**53  # above this a float64 no longer holds every integer: an id may have changed


def _read_parquet(file: Path, name: str) -> Iterator[_Job]:
    import pyarrow.parquet as pq  # only Parquet input needs pyarrow

    try:
        pf = pq.ParquetFile(file)
    except Exception as exc:
        found = _parquet_problem(exc)
        raise NotEmailError(f"{file}: expected {_EXPECTED}, found {found}") from None
    columns = set(pf.schema_arrow.names)
    body = "text" if "text" in columns else "raw" if "raw" in columns else None
    if "message_id" not in columns or body is None:
        raise NotEmailError(
            f"{file}: expected Parquet columns message_id and text (or raw), found columns {sorted(columns)}"
        )
    _check_id_type(file, pf.schema_arrow.field("message_id").type)
    row = 0
    for group in range(pf.metadata.num_row_groups):
        where = f"{file} row group {group} (rows {row + 1}-{row + pf.metadata.row_group(group).num_rows})"
        for message_id, value in _row_group(pf, group, body, where):
            row += 1
            yield _from_parquet_row(message_id, value, body, f"{file} row {row}", f"{name}#{row}", name)


def _row_group(pf: object, group: int, body: str, where: str) -> list[tuple[object, object]]:
    """One row group's (message_id, body) values; a damaged page raises naming the row group."""
    try:
        table = pf.read_row_group(group, columns=["message_id", body])  # type: ignore[attr-defined]
        return list(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))
    except Exception as exc:  # pyarrow's errors (OSError, ArrowInvalid, UnicodeDecodeError) name no file
        raise EmailInputError(f"{where}: cannot be read, found {_parquet_problem(exc)}; the file is damaged or "
                              "cut short: write it again from its source") from None


def _parquet_problem(exc: Exception) -> str:
    text = str(exc)
    if "encrypt" in text.lower():
        return ("Parquet encrypted with Parquet Modular Encryption (PME); cscore encrypts your emails itself: "
                "submit them unencrypted")
    return f"an unreadable Parquet file ({type(exc).__name__}: {text})"


def _check_id_type(file: Path, arrow_type: object) -> None:
    import pyarrow as pa

    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type  # type: ignore[attr-defined]
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
            or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)):
        raise NotEmailError(f"{file}: column message_id: expected strings or integers, found type {t}")


def _parquet_id(value: object, where: str) -> str | None:
    """The id as the owner wrote it; None when missing. Floats that hold an integer lose the ".0"
    (pandas writes integer ids as float64 when one is missing)."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) >= _EXACT_FLOAT:
            raise EmailInputError(f"{where}: message_id {value!r} is a float64 beyond 2**53, where integer ids "
                                  "are no longer exact; write the column as int64 or string")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise EmailInputError(f"{where}: message_id {value[:40]!r}: expected UTF-8 bytes") from None
    return str(value)


def _from_parquet_row(
    message_id: object, value: object, body: str, where: str, fallback_id: str, source: str
) -> _Job:
    work: tuple[bytes | str, bool]
    if body == "raw":
        work = (value if isinstance(value, bytes) else _utf8(str(value or "")), False)
    elif value is None or isinstance(value, str):
        work = (value or "", False)
    else:
        raise NotEmailError(f"{where}: expected column text to hold strings, found {type(value).__name__}")
    chosen = _parquet_id(message_id, where) or fallback_id

    def finish(parsed: _Parsed, ids: _IdAllocator) -> Email:
        return Email(ids.explicit(chosen, where), parsed.text, source, parsed.flags, **parsed.headers)

    return _Job((_parse_one, work), finish)
