"""The owner's email readers and email_text: real corpus mail, MIME corner cases, and non-email input."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import sdk.emails as emails_mod
import sdk.mbox
from sdk.corpus import CorpusEmail
from sdk.emails import (
    _LOOKS_HTML,
    Email,
    EmailInputError,
    NotEmailError,
    check_emails,
    clean_text,
    email_text,
    read_emails,
)
from sdk.mbox import is_from_line


def _msg(headers: str, body: bytes | str = b"") -> bytes:
    body = body.encode() if isinstance(body, str) else body
    return headers.strip().replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


# --- email_text on the real corpus --------------------------------------------------------------


def test_email_text_on_every_corpus_email(corpus: list[CorpusEmail]) -> None:
    texts = {e.message_id: email_text(e.raw) for e in corpus}
    assert all(_valid_utf8(t) for t in texts.values())
    with_body = sum(len(t.split("\n", 1)[1].split()) >= 3 for t in texts.values())
    assert with_body / len(texts) > 0.98  # nearly every email has real body text
    first = texts["easy-ham-1/00001.7c53336b37003a9286aba55d2945844c"]
    assert first.startswith("Re: New Sequences Window\n")
    assert "I can't reproduce this error." in first
    assert "Received:" not in first and "Return-Path" not in first  # headers other than Subject are not text


def test_email_text_strips_html_of_html_only_corpus_spam(corpus: list[CorpusEmail]) -> None:
    top_html = re.compile(rb"^Content-Type:\s*text/html", re.IGNORECASE | re.MULTILINE)
    html_only = [e for e in corpus if top_html.search(e.raw.split(b"\n\n", 1)[0])]
    assert len(html_only) > 100
    for e in html_only:
        text = email_text(e.raw).lower()
        assert "<html" not in text and "<body" not in text and "</p>" not in text and "&nbsp;" not in text
    assert sum(len(email_text(e.raw).split()) > 20 for e in html_only) / len(html_only) > 0.9


def test_html_sent_as_text_plain_is_stripped_too(corpus: list[CorpusEmail]) -> None:
    mislabelled = next(e for e in corpus if e.message_id.startswith("spam-2/00028."))
    assert "<html" not in email_text(mislabelled.raw).lower()
    raw = _msg("Subject: x\nContent-Type: text/plain", "<HTML><BODY>Cheap <b>pills</b></BODY></HTML>")
    assert email_text(raw).split() == ["x", "Cheap", "pills"]


# --- email_text on MIME corner cases -----------------------------------------------------------


def test_multipart_alternative_prefers_text_plain() -> None:
    raw = _msg(
        'Subject: Hello\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="b"',
        "--b\r\nContent-Type: text/plain\r\n\r\nplain words\r\n"
        "--b\r\nContent-Type: text/html\r\n\r\n<p>markup words</p>\r\n--b--\r\n",
    )
    assert email_text(raw) == "Hello\nplain words\r\n" or email_text(raw).split("\n", 1)[1].strip() == "plain words"
    assert "markup" not in email_text(raw)


def test_html_only_falls_back_to_visible_text() -> None:
    raw = _msg(
        "Subject: Offer\nContent-Type: text/html; charset=utf-8",
        "<html><head><style>p {color: red}</style><script>var x = 1;</script></head>"
        "<body><p>Buy&nbsp;now &amp; save</p><!-- hidden comment --></body></html>",
    )
    text = email_text(raw)
    assert text.startswith("Offer\n")
    assert "Buy\xa0now & save" in text
    assert "color" not in text and "var x" not in text and "hidden comment" not in text and "<" not in text


# The blank-run collapse as it was written first (one regex over every position): the reference the faster
# str.replace + literal-run version must equal, on generated text and on every HTML part of the corpus.
_BLANKS_REFERENCE = re.compile(r"[ \t\r\f\v]{2,}|[\t\r\f\v]")


def _strip_html_reference(markup: str) -> str:
    text = emails_mod._TAG.sub(" ", emails_mod._COMMENT.sub(" ", emails_mod._SCRIPT_STYLE.sub(" ", markup)))
    text = _BLANKS_REFERENCE.sub(" ", html.unescape(text))
    return emails_mod._BLANK_LINES.sub("\n", text).strip()


@given(st.text(alphabet=st.sampled_from(" \t\r\f\v\n\xa0a<>&;b/!-"), max_size=200))
def test_html_blank_runs_collapse_as_the_reference_does(markup: str) -> None:
    assert emails_mod._strip_html(markup) == _strip_html_reference(markup)


def test_html_parts_of_the_corpus_strip_as_the_reference_does(corpus: list[CorpusEmail],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    strip = emails_mod._strip_html

    def recorded(markup: str) -> str:
        seen.append(markup)
        return strip(markup)

    monkeypatch.setattr(emails_mod, "_strip_html", recorded)
    for email in corpus:
        email_text(email.raw)
    assert len(seen) > 500  # the corpus's HTML-only spam
    assert [strip(m) for m in seen] == [_strip_html_reference(m) for m in seen]


def test_base64_body_with_declared_charset_and_encoded_subject() -> None:
    body = base64.b64encode("Grüße aus Köln".encode("iso-8859-1"))
    raw = _msg(
        "Subject: =?utf-8?B?" + base64.b64encode("Prüfung ✓".encode()).decode() + "?=\n"
        "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: base64",
        body,
    )
    assert email_text(raw) == "Prüfung ✓\nGrüße aus Köln"


def test_unknown_charset_and_raw_8bit_header_do_not_break() -> None:
    raw = _msg("Subject: caf\xc3\xa9 \xff\nContent-Type: text/plain; charset=x-no-such-charset", b"na\xefve \xe9t\xe9")
    text = email_text(raw.replace(b"caf\xc3\x83\xc2\xa9", b"caf\xc3\xa9"))
    assert _valid_utf8(text)
    assert "ve" in text and "t" in text


def test_broken_mime_still_gives_text() -> None:
    no_boundary = _msg("Subject: broken\nContent-Type: multipart/mixed", "just some words")
    bad_base64 = _msg("Subject: b64\nContent-Transfer-Encoding: base64", "!!!not base64***")
    assert email_text(no_boundary) == "broken\njust some words"
    assert _valid_utf8(email_text(bad_base64)) and email_text(bad_base64).startswith("b64\n")


def test_attachments_are_not_text() -> None:
    raw = _msg(
        'Subject: report\nContent-Type: multipart/mixed; boundary="b"',
        "--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        '--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename="data.txt"\r\n\r\n'
        "secret attachment words\r\n--b--\r\n",
    )
    assert "see attached" in email_text(raw) and "secret attachment" not in email_text(raw)


def test_clean_text_maps_dotted_capital_i_and_nul() -> None:
    assert clean_text("\u0130stanbul\x00x") == "Istanbul x"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_email_text_never_raises_and_is_valid_utf8(raw: bytes) -> None:
    assert _valid_utf8(email_text(raw))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300), st.sampled_from(["utf-8", "latin-1", "koi8-r", "bogus"]))
def test_email_text_round_trips_plain_bodies(subject: str, body: str, charset: str) -> None:
    codec = "utf-8" if charset == "bogus" else charset  # an unknown charset falls back to UTF-8
    try:
        payload = body.encode(codec)
    except UnicodeEncodeError:
        assume(False)
    encoded = base64.b64encode(subject.encode()).decode()
    raw = _msg(
        f"Subject: =?utf-8?b?{encoded}?=\nContent-Type: text/plain; charset={charset}\n"
        "Content-Transfer-Encoding: base64",
        base64.b64encode(payload),
    )
    text = email_text(raw)
    assert _valid_utf8(text)
    if body.strip() and not _LOOKS_HTML.search(body):
        assert text.split("\n", 1)[1] == clean_text(body)


# --- read_emails: the owner's formats ---------------------------------------------------------


def test_folder_of_eml_files_uses_message_ids_then_names(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.eml").write_bytes(_msg("Message-ID: <one@x>\nSubject: A", "alpha"))
    (tmp_path / "b.eml").write_bytes(_msg("Message-ID: <one@x>\nSubject: B", "beta"))  # duplicate id
    (tmp_path / "sub" / "c.txt").write_bytes(_msg("From: x@y\nSubject: C", "gamma"))  # no id
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01binary")  # hidden: ignored
    emails = list(read_emails(tmp_path))
    assert emails == [
        Email("<one@x>", "A\nalpha"),
        Email("b.eml", "B\nbeta"),
        Email("sub/c.txt", "C\ngamma"),
    ]


def test_corpus_folder_reads_as_emails(corpus: list[CorpusEmail], tmp_path: Path) -> None:
    for e in corpus[:40]:
        (tmp_path / f"{e.message_id.split('/')[1]}.eml").write_bytes(e.raw)
    emails = list(read_emails(tmp_path))
    assert len(emails) == 40 and len({e.message_id for e in emails}) == 40
    # Corpus files start with an mbox "From " line: one-message mboxes, whose ">From " quoting is undone.
    unquoted = [re.sub(rb"(?m)^>(>*From )", rb"\1", e.raw) if e.raw.startswith(b"From ") else e.raw
                for e in corpus[:40]]
    assert [e.text for e in emails] == [email_text(raw) for raw in unquoted]


def test_mbox_splits_on_from_lines_after_blank_lines(tmp_path: Path, scan_block: int) -> None:
    mbox = tmp_path / "inbox.mbox"
    mbox.write_bytes(
        b"From a@x Thu Aug 22 12:36:23 2002\nSubject: one\nMessage-ID: <m1@x>\n\nbody one\n"
        b"From here on this line stays in message one\n\n"
        b"From b@x Thu Aug 22 12:36:24 2002\nSubject: two\n\nbody two\n\n"
        b"From c@x Thu Aug 22 12:36:25 2002\nSubject: three\n\nbody three\n"
    )
    emails = list(read_emails(mbox))
    assert [e.message_id for e in emails] == ["<m1@x>", "inbox.mbox#2", "inbox.mbox#3"]
    assert "stays in message one" in emails[0].text
    assert emails[2].text.startswith("three\nbody three")


def test_single_mbox_style_file_keeps_its_name(corpus: list[CorpusEmail], tmp_path: Path) -> None:
    raw = b"From a@x Thu Aug 22 12:36:23 2002\nFrom: a@x\nSubject: alone\n\nFrom now on: one message\n"
    (tmp_path / "only.eml").write_bytes(raw)
    assert list(read_emails(tmp_path / "only.eml")) == [Email("only.eml", "alone\nFrom now on: one message\n")]
    with_id = next(e for e in corpus if e.raw.startswith(b"From "))
    (tmp_path / "corpus.eml").write_bytes(with_id.raw)
    (email,) = read_emails(tmp_path / "corpus.eml")
    assert email.message_id.startswith("<") and email.text == email_text(with_id.raw)


def test_json_lines_both_shapes(tmp_path: Path) -> None:
    path = tmp_path / "mail.jsonl"
    rows = [
        {"message_id": "r1", "raw": "Subject: hi\n\nraw body"},
        {"message_id": "s1", "subject": "Sub", "body": "plain body"},
        {"raw": "Message-ID: <h@x>\nSubject: no explicit id\n\nbody"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert list(read_emails(path)) == [
        Email("r1", "hi\nraw body"),
        Email("s1", "Sub\nplain body"),
        Email("<h@x>", "no explicit id\nbody"),
    ]


def test_json_lines_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"message_id": "a", "raw": "Subject: x\\n\\ny"}\n{not json\n')
    with pytest.raises(NotEmailError, match=r"bad\.jsonl:2: expected a JSON object per line, found invalid JSON"):
        list(read_emails(bad))
    keys = tmp_path / "keys.jsonl"
    keys.write_text('{"id": 1, "content": "x"}\n')
    with pytest.raises(NotEmailError, match=r"keys\.jsonl:1: .*found keys \['content', 'id'\]"):
        list(read_emails(keys))
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"message_id": "a", "body": "x"}\n{"message_id": "a", "body": "y"}\n')
    with pytest.raises(EmailInputError, match=r"dup\.jsonl:2: duplicate message_id 'a'"):
        list(read_emails(dup))


def test_parquet_with_text_or_raw_columns(tmp_path: Path) -> None:
    text_file = tmp_path / "t.parquet"
    pq.write_table(pa.table({"message_id": ["m1", "m2"], "text": ["Hi\nthere", None]}), text_file)
    assert list(read_emails(text_file)) == [Email("m1", "Hi\nthere"), Email("m2", "")]
    raw_file = tmp_path / "r.parquet"
    pq.write_table(pa.table({"message_id": ["m1"], "raw": [_msg("Subject: S", "body")]}), raw_file)
    assert list(read_emails(raw_file)) == [Email("m1", "S\nbody")]


def test_parquet_without_the_columns_says_what_it_found(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"id": [1], "content": ["x"]}), path)
    with pytest.raises(
        NotEmailError, match=r"other\.parquet: expected Parquet columns .*found columns \['content', 'id'\]"
    ):
        list(read_emails(path))


# --- non-email input ----------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 40


@pytest.mark.parametrize(
    ("name", "content", "found"),
    [
        ("photo.png", PNG, "a PNG image"),
        ("scan.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "a PDF document"),
        ("table.csv", b"message_id,subject,body\n1,hello,world\n", "CSV/TSV-like text"),
        ("notes.txt", b"Shopping list\n- milk\n- eggs\n", "text without email headers"),
        ("yaml.eml", b"name: cscore\nversion: 1\n", "text without email headers"),
        ("empty.eml", b"", "an empty file"),
        ("array.json", b'[{"message_id": "a"}]', "a JSON array"),
        ("archive.eml", b"PK\x03\x04" + b"\x00" * 30, "a ZIP archive"),
    ],
)
def test_non_email_files_are_refused_naming_file_expected_and_found(
    tmp_path: Path, name: str, content: bytes, found: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(NotEmailError) as info:
        list(read_emails(path))
    message = str(info.value)
    assert str(path) in message
    assert "expected an email source" in message
    assert f"found {found}" in message


def test_a_csv_export_of_emails_says_what_to_write_instead(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(b"message_id,subject,body\n1,hello,world\n")
    with pytest.raises(NotEmailError) as info:
        list(read_emails(path))
    assert str(info.value).endswith(
        "found CSV/TSV-like text (first line: 'message_id,subject,body'); emails are not read from CSV: write them as "
        'JSON lines, one {"message_id", "subject", "body"} (or {"message_id", "raw"}) object per line')


def test_a_png_in_a_folder_of_emails_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(_msg("Subject: A", "alpha"))
    (tmp_path / "z.png").write_bytes(PNG)
    emails = read_emails(tmp_path)
    assert next(emails) == Email("a.eml", "A\nalpha")
    with pytest.raises(NotEmailError, match=r"z\.png: expected .* found a PNG image"):
        next(emails)


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(EmailInputError, match="no such file"):
        list(read_emails(tmp_path / "nope"))
    with pytest.raises(EmailInputError, match="holds no files"):
        list(read_emails(tmp_path))


@pytest.mark.parametrize("charset", ["", "; charset=utf-8"])
def test_8_bit_bytes_in_a_base64_body_are_flagged_and_skipped_not_a_crash(charset: str) -> None:
    raw = _msg(f"Subject: s\nContent-Type: text/plain{charset}\nContent-Transfer-Encoding: base64",
               b"aGVsbG8g\xc3\xa9\xe9d29ybGQ=")
    _, text, flags = emails_mod._email(raw)
    assert text == "s\nhello world"
    assert flags == ("base64 body: 3 character(s) could not be decoded and were skipped",)


def _full_parse(raw: bytes) -> tuple[str, tuple[str, ...], dict[str, str], list[str]]:
    """What the fast paths of `_parse` must give: the text, flags and headers of the stdlib's full parse, and the
    content type of each part in walk order."""
    msg = emails_mod._PARSER.parsebytes(raw)
    flags: list[str] = []
    text = clean_text(emails_mod._subject(msg, flags) + "\n" + emails_mod._body(msg, flags))
    if any(isinstance(d, emails_mod._BOUNDARY_DEFECTS) for part in msg.walk() for d in part.defects):
        flags.append("multipart message whose boundary is missing: its body was read as one text")
    return text, tuple(flags), emails_mod._headers(msg), [part.get_content_type() for part in msg.walk()]


def _fast(raw: bytes) -> tuple[str, tuple[str, ...], dict[str, str], list[str]]:
    msg, text, flags = emails_mod._email(raw)
    return text, flags, emails_mod._headers(msg), [part.get_content_type() for part in msg.walk()]


def test_fast_paths_give_the_full_parse_on_the_corpus(corpus: list[CorpusEmail]) -> None:
    assert [_fast(e.raw) for e in corpus] == [_full_parse(e.raw) for e in corpus]
    multipart = [e.raw for e in corpus if emails_mod._PARSER.parsebytes(e.raw).is_multipart()]
    cut = [raw for raw in multipart if emails_mod._fast_parse(raw) is not None]
    assert len(multipart) > 400 and len(cut) > 0.8 * len(multipart)  # the corpus's multipart mail is cut, not parsed


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"Subject: s\n",
                b"X-A: 1\n",
                b" folded\n",
                b"Content-Type: text/html\n",
                b"bad line\n",
                b"Content-Transfer-Encoding: base64\n",
                b"\r\n",
                b"From x Thu Aug 22 12:36:23 2002\n",
                b"Content-Type: multipart/mixed; boundary=q\n",
                b"--q\n",
                b"<html>a</html>\n",
                b"aGk=\n",
            ]
        ),
        max_size=20,
    )
)
def test_fast_header_path_matches_full_parse_on_generated_mail(lines: list[bytes]) -> None:
    raw = b"".join(lines)
    assert _fast(raw) == _full_parse(raw)


_PART_HEADERS = [b"Content-Type: text/plain; charset=utf-8", b"Content-Type: text/html", b"Content-Type: text/plain;",
                 b" charset=latin-1", b"Content-Disposition: attachment", b"Content-Transfer-Encoding: base64",
                 b"X-A: 1"]
_ODD_PART_HEADERS = [b"Content-Type: message/rfc822", b" folded", b"bad line", b"From x Thu Aug 22 12:36:23 2002"]
_BODY_LINES = [b"", b"body text", b"caf\xc3\xa9 \xe9", b"aGk=", b"<p>a</p>", b"--qq", b"-- q", b"--r"]
_ODD_BODY_LINES = [b"--q", b"x\ry", b"From x Thu Aug 22 12:36:23 2002"]


def _mostly(usual: list[bytes], odd: list[bytes]) -> st.SearchStrategy[bytes]:
    """One of ``usual``, and about one time in ten one of ``odd``."""
    return st.integers(0, 9).flatmap(lambda n: st.sampled_from(odd if n == 0 else usual))


@st.composite
def _multipart_mail(draw: st.DrawFn, boundary: bytes = b"q", nested: bool = True) -> bytes:
    """A multipart message built the way mailers build one, its boundary lines in each form the parser accepts,
    parts of every kind `_body` reads (maybe a nested multipart), and now and then a line a mailer would not write."""
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    subtype = draw(_mostly([b"mixed", b"alternative", b"related"], [b"digest"]))
    lines = [b"Subject: s", b"Content-Type: multipart/" + subtype + b"; boundary=" + boundary, b""]
    lines += draw(st.lists(st.sampled_from(_BODY_LINES[:3]), max_size=2))  # preamble
    for _ in range(draw(st.integers(1, 3))):
        lines.append(b"--" + boundary + draw(_mostly([b"", b" ", b"\t "], [b"--"])))
        if nested and draw(st.integers(0, 3)) == 0:
            lines.append(draw(_multipart_mail(b"r", nested=False)).rstrip(b"\r\n"))
            continue
        lines += [*draw(st.lists(_mostly(_PART_HEADERS, _ODD_PART_HEADERS), max_size=3)), b""]
        lines += draw(st.lists(_mostly(_BODY_LINES, _ODD_BODY_LINES), max_size=4))
    if draw(st.integers(0, 9)):  # most messages close; some end without the closing line
        lines.append(b"--" + boundary + b"--" + draw(st.sampled_from([b"", b"  "])))
        lines += draw(st.lists(st.sampled_from(_BODY_LINES[:3]), max_size=2))  # epilogue
    raw = eol.join(lines) + draw(st.sampled_from([b"", eol]))
    if draw(st.integers(0, 9)) == 0:  # a stray line break or boundary line anywhere
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\n", b"\r", b"\r\n--" + boundary + b"\r\n", b"\n\n"])) + raw[at:]
    return raw


@settings(max_examples=500, deadline=None)
@given(_multipart_mail())
def test_fast_multipart_path_matches_full_parse_on_generated_mail(raw: bytes) -> None:
    assert _fast(raw) == _full_parse(raw)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_a_well_formed_multipart_message_is_cut_at_its_boundaries_without_the_full_parse(eol: bytes) -> None:
    raw = eol.join([b"Subject: hi", b"Content-Type: multipart/alternative; boundary=b1", b"", b"preamble", b"--b1",
                    b"Content-Type: text/plain", b"", b"plain text", b"", b"--b1  ", b"Content-Type: text/html", b"",
                    b"<p>html</p>", b"--b1--", b"epilogue"])
    msg = emails_mod._fast_parse(raw)
    assert msg is not None
    # the line break before each boundary line is the boundary's (RFC 2046 5.1.1)
    assert [p.get_payload() for p in msg.get_payload() if not isinstance(p, str)] == ["plain text" + eol.decode(),
                                                                                     "<p>html</p>"]
    assert _fast(raw) == _full_parse(raw)


# --- the shared owner-input fixtures: the README's correct outcome for each -----------------------


def test_shared_fixture_outcomes_are_all_covered(owner_inputs: Path) -> None:
    listed = set(re.findall(r"^\| ([\w.-]+\.\w+) \|", (owner_inputs / "README.md").read_text(), re.MULTILINE))
    assert listed == {p.name for p in owner_inputs.iterdir() if p.name != "README.md"} == set(FIXTURE_OUTCOMES)


FIXTURE_OUTCOMES = {
    "mboxo-unescaped.mbox": ["<m1@example.test>", "<m2@example.test>"],
    "body-from-with-time-words.mbox": ["<w1@example.test>", "<w2@example.test>"],
    "mboxrd-escaped.mbox": ["<r1@example.test>", "<r2@example.test>"],
    "leading-blank-line.mbox": ["<lb1@example.test>", "<lb2@example.test>"],
    "b64-padding.eml": ["<b64pad@example.test>"],
    "float-id-pandas-nan.parquet": ["101", "float-id-pandas-nan.parquet#2", "103"],
    "int-message-id.jsonl": ["42", "43"],
    "utf16-powershell.jsonl": ["j1", "j2"],
    "corrupt-page.parquet": r"corrupt-page\.parquet row group 0 \(rows 1-50\): cannot be read",
    "surrogate-message-id.jsonl": r"surrogate-message-id\.jsonl:1: message_id holds a lone surrogate '\\udc80'",
    "already-pme-encrypted.parquet": r"already-pme-encrypted\.parquet: .*found Parquet encrypted with Parquet "
                                     r"Modular Encryption \(PME\)",
}


@pytest.mark.parametrize("name", sorted(FIXTURE_OUTCOMES))
def test_shared_fixture_reads_as_its_readme_says(owner_inputs: Path, name: str) -> None:
    expected = FIXTURE_OUTCOMES[name]
    if isinstance(expected, str):  # a refusal naming the file (and line or row group) and the problem
        with pytest.raises(EmailInputError, match=expected) as info:
            list(read_emails(owner_inputs / name))
        assert "binary data" not in str(info.value) and "no email headers" not in str(info.value)
        return
    emails = list(read_emails(owner_inputs / name))
    assert [e.message_id for e in emails] == expected
    assert not any(e.flags for e in emails) and all(e.source == name for e in emails)


@pytest.fixture(params=[1, 7, 1 << 16], ids=lambda n: f"scan-block-{n}")
def scan_block(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The mbox splitter reading its bodies a byte, 7 bytes or 64 KiB at a time: a separator, a blank line and
    a quoted "From " cut by a block's end are still seen."""
    monkeypatch.setattr(sdk.mbox, "_SCAN_BLOCK", request.param)
    return int(request.param)


def test_shared_mbox_bodies_are_whole_and_mboxrd_quoting_is_undone(owner_inputs: Path, scan_block: int) -> None:
    first = next(read_emails(owner_inputs / "mboxo-unescaped.mbox"))
    assert first.text == "agenda\nHi all,\n\nFrom 9:30 to 10:15 we review the budget.\nbye\n"
    words = next(read_emails(owner_inputs / "body-from-with-time-words.mbox"))
    assert words.text == "shift\nSchedule:\n\nFrom Monday, doors open 8:00 sharp.\nthanks\n"
    quoted = next(read_emails(owner_inputs / "mboxrd-escaped.mbox"))
    assert quoted.text.splitlines()[-2:] == ["From 9:30 to 10:15 we review.", ">From here on"]


def test_shared_base64_in_two_padded_chunks_is_read_whole(owner_inputs: Path) -> None:
    (email,) = read_emails(owner_inputs / "b64-padding.eml")
    assert email.text == "b64\nfirst half of the textSECOND HALF WIN A PRIZE NOW"


# --- mbox: every variant and exporter ------------------------------------------------------------

@pytest.mark.parametrize("separator", [
    b"From ann@example.test Mon Jan  6 09:15:02 2025",  # mutt, Apple Mail
    b"From 1588294213521542066@xxx Mon Jan 06 09:15:02 +0000 2025",  # Gmail Takeout
    b"From - Mon Jan  6 09:15:02 2025",  # Thunderbird
    b"From ???@??? Mon Jan 06 09:15:02 2025",  # Eudora
    b"From MAILER-DAEMON Mon Jan  6 09:15 2025",  # no seconds
    b"From ann@example.test Mon Jan  6 09:15:02 PST 2025 remote from x",  # zone name, UUCP suffix
    b"From ann@example.test Mon, 6 Jan 2025 09:15:02 +0000",  # RFC 2822 date
    b'From "ann smith"@example.test Mon Jan  6 09:15:02 2025',  # quoted local part
])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@pytest.mark.parametrize("blank_before_separator", [True, False])
def test_mbox_separators_as_exporters_write_them(tmp_path: Path, separator: bytes, newline: bytes,
                                                 blank_before_separator: bool, scan_block: int) -> None:
    blank = b"\n" if blank_before_separator else b""
    text = (separator + b"\nMessage-ID: <1@x>\nSubject: one\n\nHi all,\n\nFrom 9:30 to 10:15 we meet.\nbye\n"
            + blank
            + separator + b"\nMessage-ID: <2@x>\nSubject: two\n\n>From the minutes\n>>From the quote\n" + blank
            + separator + b"\nSubject: three\n\nthird\n")
    (tmp_path / "box.mbox").write_bytes(text.replace(b"\n", newline))
    emails = [Email(e.message_id, e.text.replace("\r", "")) for e in read_emails(tmp_path / "box.mbox")]
    assert emails == [Email("<1@x>", "one\nHi all,\n\nFrom 9:30 to 10:15 we meet.\nbye\n"),
                      Email("<2@x>", "two\nFrom the minutes\n>From the quote\n"),  # mboxrd: one ">" less
                      Email("box.mbox#3", "three\nthird\n")]


@pytest.mark.parametrize(("line", "separator"), [
    (b"From ann@example.test Mon Jan  6 09:15:02 2025\n", True),
    (b"From - Thu Jan 30 21:07:37 +0000 2020\r\n", True),
    (b"From 9:30 to 10:15 we review the budget.\n", False),
    (b"From Monday, doors open 8:00 sharp.\n", False),
    (b"From here on Mon Jan this is text\n", False),
    (b"From: ann@example.test\n", False),
    (b">From ann@example.test Mon Jan  6 09:15:02 2025\n", False),
])
def test_is_from_line_wants_a_date(line: bytes, separator: bool) -> None:
    assert is_from_line(line) is separator


def _cl_message(n: int, body: bytes) -> bytes:
    return (f"From ann@example.test Mon Jan  6 09:15:0{n} 2025\nMessage-ID: <cl{n}@x>\nSubject: s{n}\n"
            f"Content-Length: {len(body)}\n\n").encode() + body + b"\n"


def test_mboxcl2_content_length_keeps_unquoted_from_lines_in_the_body(tmp_path: Path) -> None:
    body = b"quoted mail follows\nFrom bob@example.test Tue Jan  7 10:00:00 2025\n>From stays as written\n"
    (tmp_path / "cl2.mbox").write_bytes(_cl_message(1, body) + _cl_message(2, b"two\n"))
    emails = list(read_emails(tmp_path / "cl2.mbox"))
    assert [e.message_id for e in emails] == ["<cl1@x>", "<cl2@x>"]
    assert emails[0].text == "s1\n" + body.decode()


def test_mboxcl_quoting_is_undone_and_a_wrong_content_length_is_not_trusted(tmp_path: Path, scan_block: int) -> None:
    body = b"line\n>From the quote\n"
    wrong = _cl_message(1, body).replace(b"Content-Length: 22", b"Content-Length: 5")
    (tmp_path / "cl.mbox").write_bytes(wrong + _cl_message(2, b"two\n"))
    emails = list(read_emails(tmp_path / "cl.mbox"))
    assert [e.text for e in emails] == ["s1\nline\nFrom the quote\n", "s2\ntwo\n"]


def test_mbox_whose_first_line_has_no_date_splits_after_blank_lines(tmp_path: Path, scan_block: int) -> None:
    (tmp_path / "lax.mbox").write_bytes(b"From ann\nSubject: a\n\nbody a\nFrom here on\n\n"
                                        b"From bob\nSubject: b\n\nbody b\n")
    assert [e.text for e in read_emails(tmp_path / "lax.mbox")] == ["a\nbody a\nFrom here on\n", "b\nbody b\n"]


def test_mmdf_mailbox(tmp_path: Path) -> None:
    sep = b"\x01\x01\x01\x01\n"
    second = b"From a@x Mon Jan  6 09:15:02 2025\nSubject: b\n\nbee\n"  # a "From " line some writers add
    box = sep + b"Subject: a\n\nFrom 9:30 on\n" + sep + sep + second + sep
    (tmp_path / "box.mmdf").write_bytes(box)
    assert [e.text for e in read_emails(tmp_path / "box.mmdf")] == ["a\nFrom 9:30 on\n", "b\nbee\n"]


def test_apple_mail_and_thunderbird_export_folders(tmp_path: Path) -> None:
    bundle = tmp_path / "Inbox.mbox"
    bundle.mkdir()
    (bundle / "mbox").write_bytes(b"From a@x Mon Jan  6 09:15:02 2025\nSubject: apple\n\nx\n")
    (bundle / "table_of_contents").write_bytes(b"\x00\x01binary index")
    (bundle / "Info.plist").write_bytes(b"<?xml version='1.0'?><plist/>")
    (tmp_path / "Sent").write_bytes(b"From - Mon Jan  6 09:15:02 2025\nSubject: bird\n\ny\n")
    (tmp_path / "Sent.msf").write_bytes(b"// <!-- <mdb:mork:z v=\"1.4\"/> -->\n")
    assert [e.text for e in read_emails(tmp_path)] == ["apple\nx\n", "bird\ny\n"]


# --- transfer encodings decoded whole, or flagged -------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=60).map(lambda b: b"x" + b), min_size=1, max_size=5))
def test_base64_of_separately_padded_chunks_decodes_whole(chunks: list[bytes]) -> None:
    body = b"\r\n".join(base64.b64encode(c) for c in chunks)
    raw = _msg("Subject: s\nContent-Type: text/plain; charset=latin-1\nContent-Transfer-Encoding: base64", body)
    msg, text, flags = emails_mod._email(raw)
    assert text == clean_text("s\n" + b"".join(chunks).decode("latin-1")) and flags == ()


def test_undecodable_transfer_encodings_are_flagged(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(_msg("Subject: a\nContent-Transfer-Encoding: base64", "aGVsbG8gd29ybGQ=\r\nx!"))
    (tmp_path / "b.eml").write_bytes(_msg("Subject: b\nContent-Transfer-Encoding: x-gzip64", "H4sI"))
    (tmp_path / "c.eml").write_bytes(_msg("Subject: c\nContent-Type: multipart/mixed", "no parts"))
    a, b, c = read_emails(tmp_path)
    assert a.text == "a\nhello world" and a.flags == ("base64 body: 2 character(s) could not be decoded and were "
                                                      "skipped",)
    assert b.flags == ("unknown Content-Transfer-Encoding 'x-gzip64': the body was read undecoded",)
    assert "boundary is missing" in c.flags[0] and c.text == "c\nno parts"


# --- format detection reads the header block, not a prefix ----------------------------------------


@pytest.mark.parametrize("content", [
    b"X-Long: " + b"a" * 20000 + b"\nSubject: long first header\n\nbody\n",
    b"ARC-Seal: i=1; a=rsa-sha256\nX-Custom: 1\n\nbody\n",
    b"\xef\xbb\xbfFrom: a@x\nSubject: BOM\n\nbody\n",
    b"\n\n  \nFrom: a@x\nSubject: blank lines first\n\nbody\n",
    "\ufeffFrom: a@x\nSubject: UTF-16\n\nbody\n".encode("utf-16-le"),
])
def test_valid_email_is_not_refused_for_its_first_kilobytes(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "m.eml").write_bytes(content)
    (email,) = read_emails(tmp_path / "m.eml")
    assert email.text.endswith("\nbody\n")


def test_utf8_bom_jsonl_and_mbox(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b'\xef\xbb\xbf{"message_id": "j", "body": "b"}\n')
    (tmp_path / "b.mbox").write_bytes(b"\xef\xbb\xbfFrom a@x Mon Jan  6 09:15:02 2025\nSubject: m\n\nx\n")
    assert [e.message_id for e in read_emails(tmp_path)] == ["j", "b.mbox"]


def test_utf16_without_bom_is_named(tmp_path: Path) -> None:
    (tmp_path / "u.jsonl").write_bytes('{"message_id": "j", "body": "b"}\n'.encode("utf-16-le"))
    with pytest.raises(NotEmailError, match="UTF-16"):
        list(read_emails(tmp_path / "u.jsonl"))


# --- ids kept exactly as the owner gave them --------------------------------------------------------


def test_json_ids_are_kept_as_written_and_win_over_headers(tmp_path: Path) -> None:
    rows = ['{"message_id": 7, "raw": "Message-ID: <h@x>\\n\\nb"}', '{"message_id": 1.50, "body": "b"}',
            '{"message_id": 12345678901234567890, "body": "b"}',
            '{"message_id": null, "raw": "Message-ID: <n@x>\\n\\nb"}']
    (tmp_path / "ids.jsonl").write_text("\n".join(rows) + "\n")
    ids = [e.message_id for e in read_emails(tmp_path / "ids.jsonl")]
    assert ids == ["7", "1.50", "12345678901234567890", "<n@x>"]


@pytest.mark.parametrize("value", ["true", "[1]", '{"a": 1}', "NaN"])
def test_json_ids_of_other_types_are_refused_naming_the_line(tmp_path: Path, value: str) -> None:
    lines = ['{"message_id": "ok", "body": "b"}', '{"message_id": ' + value + ', "body": "b"}']
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(NotEmailError, match=r"bad\.jsonl:2: message_id: expected a string or an integer, found"):
        list(read_emails(tmp_path / "bad.jsonl"))


@pytest.mark.parametrize(("column", "ids"), [
    (pa.array([101, 102], pa.int64()), ["101", "102"]),
    (pa.array([101.0, float("nan")], pa.float64()), ["101", "t.parquet#2"]),
    (pa.array([1.5, None], pa.float32()), ["1.5", "t.parquet#2"]),
    (pa.array(["a", "b"]).dictionary_encode(), ["a", "b"]),
    (pa.array([b"x1", b"x2"], pa.binary()), ["x1", "x2"]),
])
def test_parquet_ids_of_every_column_type(tmp_path: Path, column: pa.Array, ids: list[str]) -> None:
    pq.write_table(pa.table({"message_id": column, "text": ["a", "b"]}), tmp_path / "t.parquet")
    assert [e.message_id for e in read_emails(tmp_path / "t.parquet")] == ids


def test_parquet_float_ids_beyond_exact_integers_and_odd_types_are_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"message_id": [2.0**60], "text": ["a"]}), tmp_path / "big.parquet")
    with pytest.raises(EmailInputError, match=r"big\.parquet row 1: message_id .* beyond 2\*\*53"):
        list(read_emails(tmp_path / "big.parquet"))
    pq.write_table(pa.table({"message_id": pa.array([[1]]), "text": ["a"]}), tmp_path / "list.parquet")
    with pytest.raises(NotEmailError, match=r"list\.parquet: column message_id: expected strings or integers"):
        list(read_emails(tmp_path / "list.parquet"))


def test_check_emails_refuses_what_cannot_be_written(tmp_path: Path) -> None:
    check_emails([Email("a", "text"), Email("b", "")])
    with pytest.raises(EmailInputError, match=r"email 1 \(x\.jsonl\): message_id holds a lone surrogate"):
        check_emails([Email("a", "t"), Email("b\udc80", "t", source="x.jsonl")])
    with pytest.raises(EmailInputError, match="non-empty string message_id"):
        check_emails([Email("", "t")])


# --- a charset that is unknown, or that the bytes do not fit: decoded as far as it goes, and flagged ----------


@pytest.mark.parametrize("head, body, text, flag", [
    ("Content-Type: text/plain; charset=utf-8", "caf\xe9 ol\xe9 ok".encode("latin-1"), "s\ncaf\ufffd ol\ufffd ok",
     "body: 2 byte sequence(s) not valid in its declared charset 'utf-8' were replaced with U+FFFD"),
    ("Content-Type: text/plain; charset=x-mac-klingon", "Grüße".encode(), "s\nGrüße",
     "body: unknown charset 'x-mac-klingon': read as UTF-8"),
    ("Content-Type: text/plain; charset=default_charset", "Grüße".encode("cp1252"), "s\nGrüße",
     "body: unknown charset 'default_charset': read as cp1252"),
    ("Content-Type: text/plain; charset=us-ascii", "naïve".encode(), "s\nnaïve",
     "body: declared us-ascii but has 8-bit bytes: read as UTF-8"),
    ("Content-Type: text/plain", b"a\x81b\xe9", "s\na\ufffdbé",
     "body: no charset declared and not UTF-8: read as cp1252 (1 undefined byte(s) replaced with U+FFFD)"),
], ids=["wrong-declared", "unknown-utf8", "unknown-cp1252", "ascii-with-8bit", "undeclared-undefined-byte"])
def test_a_bad_charset_is_decoded_as_far_as_it_goes_and_flagged(tmp_path: Path, head: str, body: bytes, text: str,
                                                                  flag: str) -> None:
    (tmp_path / "m.eml").write_bytes(_msg("Subject: s\n" + head, body))
    (email,) = read_emails(tmp_path)
    assert (email.text, email.flags) == (text, (flag,))


def test_a_subject_in_a_charset_its_bytes_do_not_fit_is_flagged(tmp_path: Path) -> None:
    subject = "=?utf-8?B?" + base64.b64encode("Grüße".encode("latin-1")).decode() + "?="
    (tmp_path / "m.eml").write_bytes(_msg(f"Subject: {subject}\nContent-Type: text/plain; charset=utf-8", b"ok"))
    (email,) = read_emails(tmp_path)
    assert email.text == "Gr\ufffd\ufffde\nok"
    assert email.flags == ("subject: 2 byte sequence(s) not valid in its declared charset 'utf-8' were replaced "
                           "with U+FFFD",)


@pytest.mark.parametrize("charset, body", [("utf-8", "Grüße ✓".encode()), ("iso-8859-1", "Grüße".encode("latin-1")),
                                           ("windows-1252", "€ 5".encode("cp1252")), ("us-ascii", b"plain"),
                                           ("shift_jis", "日本".encode("shift_jis")), (None, "Grüße".encode())])
def test_a_charset_that_fits_is_not_flagged(tmp_path: Path, charset: str | None, body: bytes) -> None:
    head = f"Content-Type: text/plain; charset={charset}" if charset else "Content-Type: text/plain"
    (tmp_path / "m.eml").write_bytes(_msg("Subject: s\n" + head, body))
    (email,) = read_emails(tmp_path)
    assert email.flags == () and "\ufffd" not in email.text
