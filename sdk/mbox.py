"""Split an mbox file into raw messages: mboxo, mboxrd, mboxcl, mboxcl2, and MMDF.

Why not Python's ``mailbox.mbox``: it starts a new message at every line that begins with "From ",
so an unescaped body line such as "From 9:30 to 10:15 we meet" (mboxo) splits a message in two, it
ignores Content-Length (mboxcl/mboxcl2) and it does not undo mboxrd's ">From " quoting. No maintained
PyPI package does better. So this follows mutt's reader (``is_from()`` in mutt's from.c and
``mbox_parse_mailbox()``), the reader most exporters are tested against:

- a separator is "From ", an optional sender, and a date in ctime form (weekday, month, day, time,
  optional zones, year), as Gmail Takeout ("From 1234@xxx Mon Jan 06 09:15:02 +0000 2025"),
  Thunderbird ("From - Mon Jan  6 09:15:02 2025"), Apple Mail, Eudora ("From ???@???") and mutt write
  it; a blank line before it is not required (some exporters omit it);
- when the first line of a file has no such date, separators are "From " lines after a blank line;
- a valid Content-Length header is trusted when it ends at the end of the file or at a separator, so
  mboxcl2 bodies may hold unquoted "From " lines;
- ">From ", ">>From " lines lose one ">" (mboxrd, and mboxo's escaping) unless the message also holds
  bare "From " body lines, which shows its writer did not quote (mboxcl2);
- MMDF files: messages between ^A^A^A^A lines (``mailbox.MMDF`` would drop each message's first line,
  expecting a "From " line there that mutt and MMDF do not write).

Never parses or decodes a message: it only cuts the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import BinaryIO

MMDF_SEPARATOR = b"\x01\x01\x01\x01"

_DAY = rb"(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*"
_MONTH = rb"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*"
_TIME = rb"\d{1,2}:\d{2}(?::\d{2})?"
_ZONE = rb"(?:[+-]\d{4}|[a-z]{1,5}(?:[+-]\d{1,4})?)"
_CTIME = rb"%s,?\s+%s\s+\d{1,2},?\s+%s(?:\s+%s){0,2}\s+\d{4}" % (_DAY, _MONTH, _TIME, _ZONE)
_RFC2822 = rb"%s,?\s+\d{1,2}\s+%s\s+\d{4}\s+%s" % (_DAY, _MONTH, _TIME)
_FROM_LINE = re.compile(
    rb'From (?:"[^"\r\n]*"\S*\s+|\S+\s+)?\s*(?:%s|%s)(?:\s.*)?\r?\n?' % (_CTIME, _RFC2822), re.IGNORECASE
)
_CONTENT_LENGTH = re.compile(rb"content-length[ \t]*:[ \t]*(\d{1,12})[ \t]*\r?\n", re.IGNORECASE)
_QUOTED_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)
_BARE_FROM = re.compile(rb"^From ", re.MULTILINE)


def is_from_line(line: bytes) -> bool:
    """True if ``line`` is an mbox separator: "From ", an optional sender, then a ctime-like date."""
    return line.startswith(b"From ") and _FROM_LINE.fullmatch(line) is not None


def split_mbox(fh: BinaryIO) -> Iterator[bytes]:
    """Yield each message of the mbox open in ``fh`` (binary, seekable), without its "From " line.

    The first non-blank line must start with "From " (the caller checked it).
    """
    line = fh.readline()
    while line and not line.strip():
        line = fh.readline()
    strict = is_from_line(line)

    def separator(candidate: bytes, after_blank: bool) -> bool:
        if strict:
            return is_from_line(candidate)
        return after_blank and candidate.startswith(b"From ")

    while line:
        head: list[bytes] = []
        line = fh.readline()
        while line.strip() and not separator(line, False):
            head.append(line)
            line = fh.readline()
        if not line.strip():  # the blank line ending the header block (or the end of the file)
            body, line = _body(fh, head, line, separator)
        else:  # a separator right after the headers: a message without a body
            body = b""
        yield b"".join(head) + body


def _body(fh: BinaryIO, head: list[bytes], blank: bytes,
          separator: Callable[[bytes, bool], bool]) -> tuple[bytes, bytes]:
    """The blank line, the body and the next separator line (b"" at the end of the file)."""
    if not blank:
        return b"", b""
    length = _content_length(head)
    if length is not None:
        counted = _counted_body(fh, length)
        if counted is not None:
            return blank + _unquote(counted[0]), counted[1]
    body, line = _scan_to_separator(fh, separator)
    if line and body:  # the blank line before a separator belongs to it
        last = body[body.rfind(b"\n", 0, len(body) - 1) + 1 :]
        if not last.strip():
            body = body[: len(body) - len(last)]
    return blank + _unquote(body), line


_SCAN_BLOCK = 1 << 16


def _scan_to_separator(fh: BinaryIO, separator: Callable[[bytes, bool], bool]) -> tuple[bytes, bytes]:
    """The bytes from ``fh``'s position (a line start, after a blank line) up to the first line ``separator``
    takes, and that line, ``fh`` left after it; at the end of the file, the rest and b"". Reads a block at a
    time and looks only at lines that start with "From " (a line-by-line loop in Python was a fifth of the
    owner's ingest)."""
    base, done, chunks = fh.tell(), 0, list[bytes]()
    pending, blank_before = b"", True  # `pending` starts at a line start; is the line before it blank?
    while True:
        block = fh.read(_SCAN_BLOCK)
        data, at_end = pending + block, not block
        at = 0 if data.startswith(b"From ") else _next_from_line(data, 0)
        while at >= 0:
            end = data.find(b"\n", at)
            if end < 0 and not at_end:
                break  # the line goes on in the next block
            line = data[at : len(data) if end < 0 else end + 1]
            before = blank_before if at == 0 else not data[data.rfind(b"\n", 0, at - 1) + 1 : at].strip()
            if separator(line, before):
                fh.seek(base + done + at + len(line))
                return b"".join([*chunks, data[:at]]), line
            at = _next_from_line(data, at)
        if at_end:
            return b"".join([*chunks, data]), b""
        keep = at if at >= 0 else data.rfind(b"\n") + 1  # the unfinished "From " line, else the last partial line
        if keep > 0:
            blank_before = not data[data.rfind(b"\n", 0, keep - 1) + 1 : keep].strip()
        chunks.append(data[:keep])
        done += keep
        pending = data[keep:]


def _next_from_line(data: bytes, after: int) -> int:
    """The start of the first line after position ``after`` of ``data`` that begins with "From ", or -1."""
    found = data.find(b"\nFrom ", after)
    return found + 1 if found >= 0 else -1


def _content_length(head: list[bytes]) -> int | None:
    for line in head:
        match = _CONTENT_LENGTH.fullmatch(line)
        if match:
            return int(match.group(1))
    return None


def _counted_body(fh: BinaryIO, length: int) -> tuple[bytes, bytes] | None:
    """The body if Content-Length ends at the end of the file or at a separator; else None, fh unmoved."""
    start = fh.tell()
    data = fh.read(length)
    if len(data) == length:
        following = fh.readline()
        if following and not following.strip():  # one blank line may come before the separator
            following = fh.readline()
        if not following or is_from_line(following):
            return data, following
    fh.seek(start)
    return None


def _unquote(body: bytes) -> bytes:
    """Undo ">From " quoting, unless bare "From " lines show the writer did not quote (mboxcl2)."""
    if b">From " not in body or _BARE_FROM.search(body):
        return body
    return _QUOTED_FROM.sub(rb"\1", body)


def split_mmdf(fh: BinaryIO) -> Iterator[bytes]:
    """Yield each message of the MMDF mailbox open in ``fh``: the lines between a ^A^A^A^A line and the
    next, without an mbox "From " line some writers put first."""
    current: list[bytes] | None = None
    for line in fh:
        if line.rstrip(b"\r\n") == MMDF_SEPARATOR:
            if current is not None:
                yield b"".join(current)
                current = None
            else:
                current = []
        elif current is not None:
            if current or not is_from_line(line):
                current.append(line)
    if current:
        yield b"".join(current)
