"""SEV-SNP report parsing and encoding, checked against real Milan reports."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.errors import ParseError
from attestation.snp.report import REPORT_SIZE, TcbVersion, encode_report, parse_report


def test_go_sev_guest_report_fields(go_report: bytes) -> None:
    r = parse_report(go_report)
    assert r.version == 2
    assert r.policy == 0xB0000 and r.debug  # bit 19 set: this real report is from a debug guest
    assert r.measurement.hex().startswith("b07af962") and r.measurement.hex().endswith("f2e4872b01")
    assert r.report_data == bytes([1, 2, 3, 4, 5]) + bytes(59)
    assert r.reported_tcb == TcbVersion(bootloader=2, tee=0, snp=5, microcode=68)
    assert r.signing_key == "vcek" and not r.mask_chip_id and not r.author_key_en
    assert r.signature_algo == 1 and r.vmpl == 0
    assert r.report_id_ma == b"\xff" * 32
    assert (r.current_major, r.current_minor, r.current_build) == (1, 49, 3)
    assert r.cpuid_fam_id is None and r.launch_mit_vector is None


def test_virtee_report_fields(virtee_report: bytes) -> None:
    r = parse_report(virtee_report)
    assert r.policy == 0x30000
    assert r.measurement.hex().startswith("7a1e5c26") and r.measurement.hex().endswith("cd81841f")
    assert r.reported_tcb.as_dict() == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}


@pytest.mark.parametrize("fixture", ["go_report", "virtee_report"])
def test_encode_is_byte_exact_inverse(fixture: str, request: pytest.FixtureRequest) -> None:
    data = request.getfixturevalue(fixture)
    assert encode_report(parse_report(data)) == data


def test_v3_and_v5_fields_round_trip(go_report: bytes) -> None:
    base = parse_report(go_report)
    v5 = replace(base, version=5, cpuid_fam_id=0x19, cpuid_mod_id=0x11, cpuid_step=1,
                 launch_mit_vector=0x1234, current_mit_vector=0x5678, raw=b"")
    parsed = parse_report(encode_report(v5))
    assert parsed.product == "Genoa"
    assert (parsed.cpuid_fam_id, parsed.cpuid_mod_id, parsed.cpuid_step) == (0x19, 0x11, 1)
    assert (parsed.launch_mit_vector, parsed.current_mit_vector) == (0x1234, 0x5678)
    assert encode_report(parsed) == encode_report(v5)


def test_turin_tcb_layout(go_report: bytes) -> None:
    tcb = TcbVersion(bootloader=1, tee=2, snp=3, microcode=4, fmc=5)
    assert tcb.to_bytes() == bytes([5, 1, 2, 3, 0, 0, 0, 4])
    report = replace(parse_report(go_report), version=3, cpuid_fam_id=0x1A, cpuid_mod_id=0x02, cpuid_step=1,
                     current_tcb=tcb, reported_tcb=tcb, committed_tcb=tcb, launch_tcb=tcb, raw=b"")
    parsed = parse_report(encode_report(report))
    assert parsed.product == "Turin" and parsed.reported_tcb == tcb
    # The same bytes read as Milan put Turin's SNP/TEE into Milan's reserved bytes: refused.
    with pytest.raises(ParseError, match="TCB"):
        parse_report(encode_report(report), product="Milan")


@pytest.mark.parametrize("size", [0, 1, REPORT_SIZE - 1, REPORT_SIZE + 1, 4000])
def test_wrong_size_is_a_parse_error(size: int) -> None:
    with pytest.raises(ParseError) as err:
        parse_report(bytes(size))
    assert err.value.field == "report"


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_unknown_version_refused(go_report: bytes, version: int) -> None:
    data = struct.pack("<I", version) + go_report[4:]
    with pytest.raises(ParseError) as err:
        parse_report(data)
    assert err.value.field == "report.version" and err.value.actual == version


@pytest.mark.parametrize("offset", [0x4C, 0x190, 0x1EB, 0x250, 0x2A0 + 144, 0x49F])
def test_reserved_bytes_must_be_zero(go_report: bytes, offset: int) -> None:
    data = bytearray(go_report)
    data[offset] = 1
    with pytest.raises(ParseError, match="reserved"):
        parse_report(bytes(data))


def test_unknown_signature_algorithm_refused(go_report: bytes) -> None:
    data = bytearray(go_report)
    data[0x34] = 2
    with pytest.raises(ParseError) as err:
        parse_report(bytes(data))
    assert err.value.field == "report.signature_algo"


def test_reserved_signing_key_refused(go_report: bytes) -> None:
    data = bytearray(go_report)
    data[0x48] = 3 << 2
    with pytest.raises(ParseError) as err:
        parse_report(bytes(data))
    assert err.value.field == "report.signer_info.signing_key"


def test_encode_rejects_wrong_field_length(go_report: bytes) -> None:
    with pytest.raises(ValueError, match="measurement"):
        encode_report(replace(parse_report(go_report), measurement=b"\x00" * 47))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2 * REPORT_SIZE))
def test_arbitrary_bytes_only_raise_parse_error(data: bytes) -> None:
    try:
        parse_report(data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_real_reports_parse_or_raise_parse_error(go_report: bytes, data: st.DataObject) -> None:
    buf = bytearray(go_report)
    for _ in range(data.draw(st.integers(1, 8))):
        buf[data.draw(st.integers(0, REPORT_SIZE - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, REPORT_SIZE))
    for candidate in (bytes(buf), bytes(buf[:cut])):
        try:
            report = parse_report(candidate)
        except ParseError:
            continue
        assert encode_report(report) == candidate  # whatever parses, re-encodes exactly
