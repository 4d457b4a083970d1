"""Intel TDX quotes v4/v5 from real hardware (google/go-tdx-guest test data)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.errors import AttestationError, ParseError, VerificationError
from attestation.tdx import parse_quote, verify_quote
from tests.attestation._attestation_data import read

V4 = "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat"
V5 = "tdx/go-tdx-guest/quote_v5_sample.dat"
COS = "tdx/go-tdx-guest/cos-113-tdx-quote.dat"
T2026 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("name", "at", "version", "mrtd"), [
    (V4, T2026, 4, ("6363b804", "d7215cbb")),
    (V5, datetime(2026, 6, 1, tzinfo=UTC), 5, ("7348651a", "3bc8f876")),
])
def test_real_quotes_verify_against_pinned_intel_root(name: str, at: datetime, version: int,
                                                      mrtd: tuple[str, str]) -> None:
    quote = verify_quote(read(name), at)
    assert quote.version == version
    assert quote.mr_td.hex().startswith(mrtd[0]) and quote.mr_td.hex().endswith(mrtd[1])
    assert not quote.debug


def test_zero_padded_cloud_quote_verifies() -> None:
    assert verify_quote(read(COS), T2026).report_data == bytes(64)


def test_v5_before_pck_validity_is_refused() -> None:
    with pytest.raises(VerificationError, match="validity"):
        verify_quote(read(V5), T2026)  # its PCK is valid from 2026-01-27


@pytest.mark.parametrize("offset", [0, 20, 48 + 136, 48 + 520, 48 + 583, 636, 700, 900])
def test_flipped_quote_bytes_are_refused(offset: int) -> None:
    data = bytearray(read(V4))
    data[offset] ^= 0x01
    with pytest.raises(AttestationError):
        verify_quote(bytes(data), T2026)


def test_flipped_body_names_the_quote_signature() -> None:
    data = bytearray(read(V4))
    data[48 + 136] ^= 0x01  # MRTD
    with pytest.raises(VerificationError) as err:
        verify_quote(bytes(data), T2026)
    assert err.value.field == "quote.signature"


def test_altered_qe_report_is_refused() -> None:
    quote = parse_quote(read(V4))
    data = bytearray(read(V4))
    pos = bytes(data).index(quote.qe_report) + 10
    data[pos] ^= 0x01
    with pytest.raises(VerificationError) as err:
        verify_quote(bytes(data), T2026)
    assert err.value.field == "quote.qe_report_signature"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1200))
def test_arbitrary_bytes_only_raise_parse_error(data: bytes) -> None:
    try:
        parse_quote(data)
    except ParseError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 4934))
def test_truncated_quotes_raise_parse_error(cut: int) -> None:
    # The quote proper ends at byte 4935; go-tdx-guest appended "extra bytes" after it.
    with pytest.raises(ParseError):
        parse_quote(read(V4)[:cut])


# -- the layout, field by field (Intel TDX DCAP quote format, TD quote body 1.0 and 1.5) ----------------

BODY_FIELDS = [("tee_tcb_svn", 0, 16), ("mr_seam", 16, 48), ("mr_signer_seam", 64, 48), ("seam_attributes", 112, 8),
               ("td_attributes", 120, 8), ("xfam", 128, 8), ("mr_td", 136, 48), ("mr_config_id", 184, 48),
               ("mr_owner", 232, 48), ("mr_owner_config", 280, 48), ("rtmr0", 328, 48), ("rtmr1", 376, 48),
               ("rtmr2", 424, 48), ("rtmr3", 472, 48), ("report_data", 520, 64)]
TD15_FIELDS = [("tee_tcb_svn2", 584, 16), ("mr_servicetd", 600, 48)]


def _painted(name: str, body_at: int, layout: list[tuple[str, int, int]]) -> tuple[bytes, dict[str, bytes]]:
    """The real quote with each body field filled with its own byte value (parsing checks no signature)."""
    data, values = bytearray(read(name)), {}
    for value, (field, offset, size) in enumerate(layout, start=1):
        values[field] = bytes([value]) * size
        data[body_at + offset:body_at + offset + size] = values[field]
    return bytes(data), values


@pytest.mark.parametrize(("name", "body_at", "layout", "body_type"), [
    (V4, 48, BODY_FIELDS, 2), (V5, 48 + 6, BODY_FIELDS + TD15_FIELDS, 3)])
def test_every_field_is_read_from_its_place(name: str, body_at: int, layout: list[tuple[str, int, int]],
                                            body_type: int) -> None:
    data, values = _painted(name, body_at, layout)
    quote = parse_quote(data)
    parsed = {field: getattr(quote, field, None) for field, _, _ in layout}
    parsed.update({f"rtmr{i}": rtmr for i, rtmr in enumerate(quote.rtmrs)})
    assert parsed == values
    assert (quote.body_type, quote.tee_type, quote.qe_vendor_id) == (body_type, 0x81, data[12:28])
    assert quote.signed == data[:body_at + sum(size for _, _, size in layout)]
    if body_type == 2:
        assert (quote.tee_tcb_svn2, quote.mr_servicetd) == (b"", b"")


@pytest.mark.parametrize(("attributes", "debug"), [(b"\x01" + bytes(7), True), (b"\xfe" + bytes(7), False),
                                                   (bytes(7) + b"\x01", False)])
def test_debug_is_bit_0_of_td_attributes(attributes: bytes, debug: bool) -> None:
    data = bytearray(read(V4))
    data[48 + 120:48 + 128] = attributes
    assert parse_quote(bytes(data)).debug is debug


def _set(name: str, offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(read(name))
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


def _quote_sections(name: str) -> tuple[int, int]:
    """(offset of the certification data type, offset of the PCK certification data type) in a real quote."""
    quote, data = parse_quote(read(name)), read(name)
    cert_type_at = len(quote.signed) + 4 + 64 + 64
    pck_type_at = cert_type_at + 2 + 4 + 384 + 64 + 2 + len(quote.qe_auth_data)
    assert struct.unpack_from("<H", data, cert_type_at)[0] == 6 and struct.unpack_from("<H", data, pck_type_at)[0] == 5
    return cert_type_at, pck_type_at


@pytest.mark.parametrize(("mutate", "field", "expected", "actual"), [
    (lambda: _set(V4, 0, "<H", 3), "quote.version", "4 or 5", 3),
    (lambda: _set(V4, 0, "<H", 6), "quote.version", "4 or 5", 6),
    (lambda: _set(V4, 2, "<H", 3), "quote.header", "ECDSA P-256 key (2), TDX (0x81)", "key 3, tee 0x81"),
    (lambda: _set(V4, 4, "<I", 0), "quote.header", "ECDSA P-256 key (2), TDX (0x81)", "key 2, tee 0x0"),
    (lambda: _set(V5, 48, "<H", 4), "quote.body_type", "2 (584 bytes) or 3 (648 bytes)", "4 (648)"),
    (lambda: _set(V5, 50, "<I", 584), "quote.body_type", "2 (584 bytes) or 3 (648 bytes)", "3 (584)"),
    (lambda: _set(V4, _quote_sections(V4)[0], "<H", 5), "quote.certification_data.type", 6, "another type"),
    (lambda: _set(V4, _quote_sections(V4)[1], "<H", 6), "quote.pck_certification_data.type", 5, "another type"),
])
def test_malformed_headers_are_named(mutate: Any, field: str, expected: Any, actual: Any) -> None:
    with pytest.raises(ParseError) as err:
        parse_quote(mutate())
    assert (err.value.field, err.value.expected, err.value.actual) == (field, expected, actual)


def test_a_v5_quote_with_a_td10_body_parses() -> None:
    """Body type 2 in a v5 quote: the 584-byte TDX 1.0 body (read as such, no TDX 1.5 fields)."""
    v5 = parse_quote(read(V5))
    header, body = v5.signed[:48], v5.signed[54:54 + 584]
    rest = read(V5)[len(v5.signed):]
    quote = parse_quote(header + struct.pack("<HI", 2, 584) + body + rest)
    assert (quote.body_type, quote.mr_td, quote.report_data, quote.tee_tcb_svn2) == (2, v5.mr_td, v5.report_data, b"")


def test_truncation_names_what_is_missing() -> None:
    with pytest.raises(ParseError) as err:
        parse_quote(read(V4)[:100])
    assert (err.value.field, err.value.expected, err.value.actual) == ("quote.body", "584 more bytes at offset 48",
                                                                       "52 left")
    assert str(err.value).endswith("; the quote is truncated")


def test_a_naive_time_is_taken_as_utc() -> None:
    assert verify_quote(read(V4), datetime(2026, 1, 1)).mr_td == parse_quote(read(V4)).mr_td  # noqa: DTZ001


def _nested(name: str, *, sig_len: int | None = None, cert: bytes | None = None) -> bytes:
    """The real quote with its signature data cut to `sig_len` bytes (its length field saying so), or with its
    certification data replaced by `cert` (the size fields saying so): a truncation inside a nested part."""
    data, quote = read(name), parse_quote(read(name))
    at = len(quote.signed)
    sig = data[at + 4:at + 4 + struct.unpack_from("<I", data, at)[0]]
    if cert is not None:
        sig = sig[:130] + struct.pack("<I", len(cert)) + cert
    if sig_len is not None:
        sig = sig[:sig_len]
    return quote.signed + struct.pack("<I", len(sig)) + sig


def _cert_data(name: str) -> bytes:
    data, quote = read(name), parse_quote(read(name))
    at = len(quote.signed) + 4 + 128
    return data[at + 6:at + 6 + struct.unpack_from("<I", data, at + 2)[0]]


def _cut_cert(n: int) -> bytes:
    return _nested(V5, cert=_cert_data(V5)[:n])


AUTH = len(parse_quote(read(V5)).qe_auth_data)  # 32 in go-tdx-guest's v5 sample


@pytest.mark.parametrize(("quote", "field"), [
    (lambda: read(V5)[:20], "quote.header"),
    (lambda: read(V5)[:49], "quote.body_type"),
    (lambda: read(V5)[:52], "quote.body_size"),
    (lambda: read(V5)[:100], "quote.body"),
    (lambda: read(V5)[:704], "quote.signature_data_len"),
    (lambda: read(V5)[:800], "quote.signature_data"),
    (lambda: _nested(V5, sig_len=10), "quote.signature"),
    (lambda: _nested(V5, sig_len=100), "quote.attestation_key"),
    (lambda: _nested(V5, sig_len=129), "quote.certification_data.type"),
    (lambda: _nested(V5, sig_len=132), "quote.certification_data.size"),
    (lambda: _nested(V5, sig_len=140), "quote.certification_data"),
    (lambda: _cut_cert(10), "quote.qe_report"),
    (lambda: _cut_cert(400), "quote.qe_report_signature"),
    (lambda: _cut_cert(449), "quote.qe_auth_data.size"),
    (lambda: _cut_cert(460), "quote.qe_auth_data"),
    (lambda: _cut_cert(450 + AUTH + 1), "quote.pck_certification_data.type"),
    (lambda: _cut_cert(450 + AUTH + 4), "quote.pck_certification_data.size"),
    (lambda: _cut_cert(450 + AUTH + 20), "quote.pck_chain"),
])
def test_a_quote_cut_inside_each_part_names_that_part(quote: Any, field: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_quote(quote())
    assert err.value.field == field and str(err.value).endswith("; the quote is truncated")


def test_lengths_and_header_numbers_are_unsigned() -> None:
    """A length or header number with its top bit set is read as the large unsigned number it is."""
    at = len(parse_quote(read(V5)).signed)
    for data, field, expected in [(_set(V5, at, "<I", 0x80000010), "quote.signature_data", "2147483664 more bytes"),
                                  (_set(V5, 50, "<I", 0x80000248), "quote.body_type", None)]:
        with pytest.raises(ParseError) as err:
            parse_quote(data)
        assert err.value.field == field
        if expected:
            assert str(err.value.expected).startswith(expected)
        else:
            assert err.value.actual == f"3 ({0x80000248})"
    cert = bytearray(_cert_data(V5))
    struct.pack_into("<H", cert, 448, 0x8001)
    with pytest.raises(ParseError) as err:
        parse_quote(_nested(V5, cert=bytes(cert)))
    assert (err.value.field, str(err.value.expected).split(" ")[0]) == ("quote.qe_auth_data", "32769")
    for offset, fmt, value, field, actual in [(0, "<H", 0x8004, "quote.version", 0x8004),
                                              (4, "<I", 0x80000081, "quote.header", "key 2, tee 0x80000081")]:
        with pytest.raises(ParseError) as err:
            parse_quote(_set(V5, offset, fmt, value))
        assert (err.value.field, err.value.actual) == (field, actual)


def test_empty_qe_auth_data_parses() -> None:
    """A zero-length field is read as empty, not refused: QE auth data of size 0 (the PCK data follows at once)."""
    cert = _cert_data(V5)
    empty = cert[:448] + struct.pack("<H", 0) + cert[450 + AUTH:]
    quote = parse_quote(_nested(V5, cert=empty))
    assert quote.qe_auth_data == b"" and quote.pck_chain_pem == parse_quote(read(V5)).pck_chain_pem


def test_the_pck_chains_nul_padding_is_stripped() -> None:
    """go-tdx-guest's v5 sample pads its PCK chain with a NUL: the PEM read ends at the last certificate."""
    assert parse_quote(read(V5)).pck_chain_pem.endswith(b"-----END CERTIFICATE-----\n")
