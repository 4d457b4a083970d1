"""The data owner's email readers: folders of .eml/.txt files, mbox, JSON lines, Parquet -> ``Email``.

``email_text`` is the one function that turns a raw RFC 822 message into the text the spam model
scores (subject, newline, body text); training uses it too, so what is scored matches what was learned.

Speed: ``email.parser`` with ``policy.compat32`` parses ~4x faster than ``policy.default`` (which builds
rich header objects we do not need); measured numbers are in ``bench/scoring.py``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.header import Header, decode_header
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

_PARSER = BytesParser(policy=policy.compat32)
_SNIFF_BYTES = 8192
_JSON_SUFFIXES = {".jsonl", ".ndjson", ".json"}
_EXPECTED = "an email source (.eml/.txt RFC 822 message, mbox, JSON lines or Parquet)"
_KNOWN_HEADERS = frozenset(
    "from to cc bcc subject date message-id received return-path mime-version content-type "
    "content-transfer-encoding delivered-to reply-to sender in-reply-to references x-mailer "
    "list-id envelope-to x-original-to".split()
)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_WELL_FORMED_HEAD = re.compile(rb"(?:(?:[\x21-\x39\x3b-\x7e]+[ \t]*:|[ \t])[^\r\n]*\r?\n)*")
_USED_HEADERS = re.compile(
    rb"^(?:subject|message-id|mime-version|content-type|content-transfer-encoding|content-disposition)"
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
    """The owner's input cannot be read as emails; the message names the file and the problem."""


class NotEmailError(EmailInputError):
    """A file is not an email source; the message names the file, what was expected and what was found."""


@dataclass(frozen=True, slots=True)
class Email:
    """One email to score: a unique ``message_id`` and the model's input ``text``."""

    message_id: str
    text: str


# ---------------------------------------------------------------------------------------------------
# email_text: raw RFC 822 -> model text


def email_text(raw: bytes) -> str:
    """Subject, newline, then the body text: text/plain parts, else text/html parts with tags stripped.

    Never raises on broken MIME, bad transfer encodings or unknown charsets (bytes that cannot be
    decoded become U+FFFD); the result is always valid Unicode (no lone surrogates).
    """
    msg = _parse(raw)
    return clean_text(_subject(msg) + "\n" + _body(msg))


def _parse(raw: bytes) -> Message:
    """Parse like ``BytesParser(policy=compat32).parsebytes``, ~2-3x faster on single-part mail.

    The feed parser walks every header and body line in Python, and corpus mail carries ~27 headers
    (Received chains) of which we read five. So when the header block is well formed, only the
    headers we use go through the parser, and a single-part body is attached as the parser would
    have stored it. Multipart mail, or a header block that is not plainly ``Name: value`` lines,
    takes the full parse.
    """
    end = _HEADER_END.search(raw)
    if end is None:
        return _PARSER.parsebytes(raw)
    head = raw[: end.start() + 1]
    if head.startswith(b"From "):  # mbox separator line: not a header
        head = head[head.find(b"\n") + 1 :]
    if not _WELL_FORMED_HEAD.fullmatch(head):
        return _PARSER.parsebytes(raw)
    msg = _PARSER.parsebytes(b"".join(m.group(0) for m in _USED_HEADERS.finditer(head)), headersonly=True)
    if msg.get_content_maintype() in ("multipart", "message"):
        return _PARSER.parsebytes(raw)
    msg.set_payload(raw[end.end() :].decode("ascii", "surrogateescape"))  # as the feed parser stores it
    return msg


def _subject(msg: Message) -> str:
    value = msg.get("Subject")
    if value is None:
        return ""
    return " ".join(_decode_header_value(value).split())


def _decode_header_value(value: str | Header) -> str:
    """Decode RFC 2047 encoded words; raw 8-bit headers are tried as UTF-8, then cp1252."""
    try:
        parts = decode_header(value)
    except Exception:  # malformed encoded words: fall back to the literal text
        return str(value)
    out = []
    for chunk, charset in parts:
        out.append(_decode_bytes(chunk, charset) if isinstance(chunk, bytes) else chunk)
    return "".join(out)


def _body(msg: Message) -> str:
    plain: list[str] = []
    markup: list[str] = []
    for part in msg.walk():
        if part.is_multipart() or _is_attachment(part):
            continue
        maintype, subtype = part.get_content_maintype(), part.get_content_subtype()
        if maintype not in ("text", "multipart"):  # "multipart" here = broken: no parts found
            continue
        text = _part_text(part)
        is_html = subtype == "html" or _LOOKS_HTML.search(text) is not None  # HTML mislabelled text/plain
        (markup if is_html else plain).append(text)
    body = "\n".join(t for t in plain if t.strip())
    return body if body else "\n".join(_strip_html(t) for t in markup)


def _is_attachment(part: Message) -> bool:
    disposition = part.get("Content-Disposition")
    return disposition is not None and str(disposition).strip().lower().startswith("attachment")


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        charset = part.get_content_charset()
    except Exception:  # a malformed charset parameter
        charset = None
    return _decode_bytes(payload, charset)


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset; unknown or missing charsets: UTF-8 if valid, else cp1252."""
    if charset:
        charset = charset.strip().strip("\"'").lower()
        if charset not in ("us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown", "default"):
            try:
                return data.decode(charset, errors="replace")
            except (LookupError, UnicodeError, ValueError, TypeError):
                pass  # unknown or broken codec name: guess below
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


_LOOKS_HTML = re.compile(r"<(html|body)\b", re.IGNORECASE)
_SCRIPT_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"[ \t\r\f\v]{2,}|[\t\r\f\v]")  # runs only: one-space matches cost
_BLANK_LINES = re.compile(r"\n\s*\n+")


def _strip_html(markup: str) -> str:
    """Visible text of an HTML fragment: drop scripts, styles, comments and tags, unescape entities."""
    text = _TAG.sub(" ", _COMMENT.sub(" ", _SCRIPT_STYLE.sub(" ", markup)))
    text = _SPACES.sub(" ", html.unescape(text))
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


def read_emails(path: Path) -> Iterator[Email]:
    """Yield the emails in ``path``: a folder (recursively; files sorted by name), an mbox file, a single
    .eml/.txt message, JSON lines (``{"message_id", "raw"}`` or ``{"message_id", "subject", "body"}``) or
    Parquet (``message_id`` and ``text`` columns, or ``message_id`` and ``raw``).

    ``message_id`` is the Message-ID header when present and not seen before in this input, else the
    file's name relative to ``path`` (``name#N`` for the N-th message of an mbox). Explicit ids in JSON
    lines or Parquet must be unique. Raises ``NotEmailError`` for anything that is not email.
    """
    path = Path(path)
    ids = _IdAllocator()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
        if not files:
            raise EmailInputError(f"{path}: the folder holds no files; expected {_EXPECTED}")
        for file in files:
            yield from _read_file(file, file.relative_to(path).as_posix(), ids)
    elif path.is_file():
        yield from _read_file(path, path.name, ids)
    else:
        raise EmailInputError(f"{path}: no such file or folder")


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


class _IdAllocator:
    """Hands out unique message ids: header ids first come first served, then file-relative names."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def from_header(self, msg: Message, fallback: str) -> str:
        value = msg.get("Message-ID")
        header_id = _decode_header_value(value).strip() if value is not None else ""
        if header_id and header_id not in self._seen:
            return self._take(header_id)
        candidate, n = fallback, 1
        while candidate in self._seen:  # only if a Message-ID equals a file name: keep ids unique
            n += 1
            candidate = f"{fallback}~{n}"
        return self._take(candidate)

    def explicit(self, message_id: str, where: str) -> str:
        if message_id in self._seen:
            raise EmailInputError(f"{where}: duplicate message_id {message_id!r}; ids must be unique")
        return self._take(message_id)

    def _take(self, message_id: str) -> str:
        self._seen.add(message_id)
        return message_id


def _read_file(file: Path, name: str, ids: _IdAllocator) -> Iterator[Email]:
    with file.open("rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    kind = _sniff(file, head)
    if kind == "parquet":
        yield from _read_parquet(file, name, ids)
    elif kind == "jsonl":
        yield from _read_jsonl(file, name, ids)
    elif head.startswith(b"From "):  # mbox, or one message with an mbox "From " line
        yield from _read_mbox(file, name, ids)
    else:
        yield _from_raw(file.read_bytes(), name, ids)


def _from_raw(raw: bytes, fallback_id: str, ids: _IdAllocator) -> Email:
    msg = _parse(raw)
    return Email(ids.from_header(msg, fallback_id), clean_text(_subject(msg) + "\n" + _body(msg)))


def _sniff(file: Path, head: bytes) -> str:
    """Return "parquet", "jsonl" or "email"; raise NotEmailError saying what the file is instead."""
    if head.startswith(b"PAR1"):
        return "parquet"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise NotEmailError(f"{file}: expected {_EXPECTED}, found {what}")
    if not head.strip():
        raise NotEmailError(f"{file}: expected {_EXPECTED}, found an empty file")
    if b"\x00" in head:
        raise NotEmailError(f"{file}: expected {_EXPECTED}, found binary data (NUL bytes)")
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        return "jsonl"
    if stripped.startswith(b"[") and file.suffix.lower() in _JSON_SUFFIXES:
        found = "a JSON array (write one JSON object per line)"
        raise NotEmailError(f"{file}: expected {_EXPECTED}, found {found}")
    if _looks_like_email(head):
        return "email"
    raise NotEmailError(f"{file}: expected {_EXPECTED}, found {_describe_text(head)}")


def _looks_like_email(head: bytes) -> bool:
    """True if the text starts with an RFC 822 header block holding at least one well-known header."""
    lines = head.split(b"\n")[:-1] or head.split(b"\n")  # drop the last, maybe truncated, line
    if lines and lines[0].startswith(b"From "):
        lines = lines[1:]
    if not lines or not _HEADER_LINE.match(lines[0]):
        return False
    for line in lines:
        if not line.strip(b"\r"):
            break
        match = _HEADER_LINE.match(line)
        if match and match.group(1).decode("ascii").lower() in _KNOWN_HEADERS:
            return True
    return False


def _describe_text(head: bytes) -> str:
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    if any(len(first.split(sep)) >= 2 for sep in (",", ";", "\t")) and ":" not in first:
        return f"CSV/TSV-like text (first line: {first[:80]!r})"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML document without email headers"
    return f"text without email headers (first line: {first[:80]!r})"


def _read_mbox(file: Path, name: str, ids: _IdAllocator) -> Iterator[Email]:
    """Messages of an mbox; fallback ids ``name#N``, or plain ``name`` when the file holds one message."""
    messages = _mbox_messages(file)
    first = next(messages, None)
    second = next(messages, None)
    if second is None:
        if first is not None:
            yield _from_raw(first, name, ids)
        return
    assert first is not None  # a second message implies a first
    yield _from_raw(first, f"{name}#1", ids)
    yield _from_raw(second, f"{name}#2", ids)
    for index, raw in enumerate(messages, start=3):
        yield _from_raw(raw, f"{name}#{index}", ids)


def _mbox_messages(file: Path) -> Iterator[bytes]:
    """Split an mbox on ``From <sender> <date>`` lines that follow a blank line (or start the file).

    The date (a time of day) must be there: an unescaped body line like "From now on..." is not a
    separator, as in mutt's is_from()."""
    current: list[bytes] = []
    previous_blank = True
    with file.open("rb") as fh:
        for line in fh:
            if previous_blank and current and line.startswith(b"From ") and _MBOX_FROM.match(line):
                yield b"".join(current)
                current = []
            current.append(line)
            previous_blank = not line.strip()
    if current:
        yield b"".join(current)


def _read_jsonl(file: Path, name: str, ids: _IdAllocator) -> Iterator[Email]:
    with file.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{file}:{lineno}"
            try:
                obj = json.loads(line)
            except ValueError as exc:
                found = f"invalid JSON ({exc})"
                raise NotEmailError(f"{where}: expected a JSON object per line, found {found}") from None
            yield _from_json(obj, where, f"{name}#{lineno}", ids)


def _from_json(obj: object, where: str, fallback_id: str, ids: _IdAllocator) -> Email:
    if not isinstance(obj, dict):
        raise NotEmailError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    if isinstance(obj.get("raw"), str):
        msg = _parse(obj["raw"].encode("utf-8", errors="surrogateescape"))
        text = clean_text(_subject(msg) + "\n" + _body(msg))
        header_fallback = fallback_id
    elif isinstance(obj.get("subject"), str) or isinstance(obj.get("body"), str):
        text = clean_text(f"{obj.get('subject') or ''}\n{obj.get('body') or ''}")
        msg, header_fallback = None, fallback_id
    else:
        raise NotEmailError(
            f"{where}: expected keys message_id with raw, or message_id with subject/body (strings); "
            f"found keys {sorted(obj)}"
        )
    explicit = obj.get("message_id")
    if isinstance(explicit, str) and explicit:
        return Email(ids.explicit(explicit, where), text)
    if msg is not None:
        return Email(ids.from_header(msg, header_fallback), text)
    return Email(ids.explicit(header_fallback, where), text)


def _read_parquet(file: Path, name: str, ids: _IdAllocator) -> Iterator[Email]:
    import pyarrow.parquet as pq  # only Parquet input needs pyarrow

    try:
        pf = pq.ParquetFile(file)
    except Exception as exc:
        found = f"an unreadable Parquet file ({exc})"
        raise NotEmailError(f"{file}: expected {_EXPECTED}, found {found}") from None
    columns = set(pf.schema_arrow.names)
    body = "text" if "text" in columns else "raw" if "raw" in columns else None
    if "message_id" not in columns or body is None:
        raise NotEmailError(
            f"{file}: expected Parquet columns message_id and text (or raw), found columns {sorted(columns)}"
        )
    row = 0
    for batch in pf.iter_batches(columns=["message_id", body]):
        for message_id, value in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            row += 1
            yield _from_parquet_row(message_id, value, body, f"{file} row {row}", f"{name}#{row}", ids)


def _from_parquet_row(
    message_id: object, value: object, body: str, where: str, fallback_id: str, ids: _IdAllocator
) -> Email:
    if body == "raw":
        raw = value if isinstance(value, bytes) else str(value or "").encode("utf-8", "surrogateescape")
        text = email_text(raw)
    elif value is None or isinstance(value, str):
        text = clean_text(value or "")
    else:
        raise NotEmailError(f"{where}: expected column text to hold strings, found {type(value).__name__}")
    chosen = str(message_id) if message_id not in (None, "") else fallback_id
    return Email(ids.explicit(chosen, where), text)
