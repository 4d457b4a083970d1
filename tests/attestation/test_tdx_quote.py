"""Intel TDX quotes v4/v5 from real hardware (google/go-tdx-guest test data)."""

from __future__ import annotations

from datetime import UTC, datetime

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
