"""SEV-SNP report parsing and encoding, checked against real Milan reports."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.errors import ParseError
from attestation.snp.report import REPORT_SIZE, TcbVersion, encode_report, parse_report, with_signature


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


# -- every field from its place (AMD 56860, ATTESTATION_REPORT), every refusal word for word -------------

# name -> (offset, size): the ABI's layout restated, little-endian integers
LAYOUT = {"version": (0x00, 4), "guest_svn": (0x04, 4), "policy": (0x08, 8), "family_id": (0x10, 16),
          "image_id": (0x20, 16), "vmpl": (0x30, 4), "platform_info": (0x40, 8), "report_data": (0x50, 64),
          "measurement": (0x90, 48), "host_data": (0xC0, 32), "id_key_digest": (0xE0, 48),
          "author_key_digest": (0x110, 48), "report_id": (0x140, 32), "report_id_ma": (0x160, 32),
          "chip_id": (0x1A0, 64), "current_build": (0x1E8, 1), "current_minor": (0x1E9, 1),
          "current_major": (0x1EA, 1), "committed_build": (0x1EC, 1), "committed_minor": (0x1ED, 1),
          "committed_major": (0x1EE, 1), "cpuid_fam_id": (0x188, 1), "cpuid_mod_id": (0x189, 1),
          "cpuid_step": (0x18A, 1), "launch_mit_vector": (0x1F8, 8), "current_mit_vector": (0x200, 8)}
TCBS = {"current_tcb": 0x38, "reported_tcb": 0x180, "committed_tcb": 0x1E0, "launch_tcb": 0x1F0}


def _painted(version: int = 5) -> bytes:
    """A report whose every field holds bytes of its own (version 5, Genoa's CPUID, signer info 0)."""
    data = bytearray(REPORT_SIZE)
    for i, (offset, size) in enumerate(LAYOUT.values(), 1):
        data[offset:offset + size] = bytes((i * 7 + k) % 251 + 1 for k in range(size))
    for i, offset in enumerate(TCBS.values()):
        data[offset:offset + 8] = bytes([10 + i, 20 + i, 0, 0, 0, 0, 30 + i, 40 + i])
    struct.pack_into("<I", data, 0, version)
    struct.pack_into("<I", data, 0x34, 1)
    data[0x188:0x18A] = b"\x19\x11"
    data[0x2A0:0x2A0 + 144] = bytes(range(1, 145))
    return bytes(data)


def test_every_field_is_read_from_its_place_and_encoded_back_there() -> None:
    data = _painted()
    report = parse_report(data)
    for name, (offset, size) in LAYOUT.items():
        raw = data[offset:offset + size]
        assert getattr(report, name) == (raw if size in (16, 32, 48, 64) else int.from_bytes(raw, "little")), name
    for i, name in enumerate(TCBS):
        assert getattr(report, name) == TcbVersion(bootloader=10 + i, tee=20 + i, snp=30 + i, microcode=40 + i), name
    assert report.signature_r == int.from_bytes(bytes(range(1, 73)), "little")
    assert report.signature_s == int.from_bytes(bytes(range(73, 145)), "little")
    assert (report.product, report.signature_algo, report.raw, report.signed_bytes) == ("Genoa", 1, data, data[:0x2A0])
    assert encode_report(report) == data
    assert replace(report, raw=b"").signed_bytes == data[:0x2A0]


def test_fields_of_later_versions_are_read_only_from_them() -> None:
    """A v2 report has no CPUID (its bytes are reserved), v3 and v4 no mitigation vectors (reserved too)."""
    v4 = bytearray(_painted(4))
    v4[0x1F8:0x208] = bytes(16)
    report = parse_report(bytes(v4))
    assert (report.cpuid_fam_id, report.launch_mit_vector, report.current_mit_vector) == (0x19, None, None)
    assert encode_report(report) == bytes(v4)
    v2 = bytearray(v4)
    struct.pack_into("<I", v2, 0, 2)
    v2[0x188:0x18B] = bytes(3)
    report = parse_report(bytes(v2))
    assert (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step, report.product) == (None, None, None, None)
    assert encode_report(report) == bytes(v2)


@pytest.mark.parametrize(("version", "lo", "hi"), [
    (5, 0x4C, 0x50), (5, 0x18B, 0x1A0), (2, 0x188, 0x1A0), (5, 0x1EB, 0x1EC), (5, 0x1EF, 0x1F0),
    (5, 0x208, 0x2A0), (4, 0x1F8, 0x2A0), (5, 0x2A0 + 144, REPORT_SIZE)])
def test_each_reserved_range_is_named_at_both_ends(version: int, lo: int, hi: int) -> None:
    for offset in (lo, hi - 1):
        data = bytearray(_painted(version))
        if version < 5:
            data[0x1F8:0x208] = bytes(16)
        if version < 3:
            data[0x188:0x18B] = bytes(3)
        data[offset] = 0x80
        with pytest.raises(ParseError) as err:
            parse_report(bytes(data))
        assert (err.value.field, err.value.expected, err.value.actual, err.value.hint) == (
            f"report[0x{lo:03X}:0x{hi:03X}]", "zero (reserved)", bytes(data[lo:hi]),
            "the bytes are not an SEV-SNP report of a known version")


@pytest.mark.parametrize(("info", "fields"), [
    (0b00000, (False, False, "vcek")), (0b00001, (True, False, "vcek")), (0b00010, (False, True, "vcek")),
    (0b00111, (True, True, "vlek")), (0b11100, (False, False, "none"))])
def test_signer_info_bits(info: int, fields: tuple[bool, bool, str]) -> None:
    data = bytearray(_painted())
    struct.pack_into("<I", data, 0x48, info)
    report = parse_report(bytes(data))
    assert (report.author_key_en, report.mask_chip_id, report.signing_key) == fields
    assert encode_report(report) == bytes(data)


@pytest.mark.parametrize(("info", "refusal"), [
    (0b100000, ("report.signer_info", "bits 5..31 zero", "0x00000020")),
    (0x80000000, ("report.signer_info", "bits 5..31 zero", "0x80000000")),
    (0b01000, ("report.signer_info.signing_key", "0 (VCEK), 1 (VLEK) or 7 (none)", 2)),
    (0b11000, ("report.signer_info.signing_key", "0 (VCEK), 1 (VLEK) or 7 (none)", 6)),
])
def test_a_bad_signer_info_is_named_word_for_word(info: int, refusal: tuple[object, ...]) -> None:
    data = bytearray(_painted())
    struct.pack_into("<I", data, 0x48, info)
    with pytest.raises(ParseError) as err:
        parse_report(bytes(data))
    assert (err.value.field, err.value.expected, err.value.actual) == refusal


@pytest.mark.parametrize(("family", "model", "product"), [
    (0x19, 0x00, "Milan"), (0x19, 0x0F, "Milan"), (0x19, 0x10, "Genoa"), (0x19, 0xFF, "Genoa"),
    (0x1A, 0x00, "Turin"), (0x1A, 0x1F, "Turin"), (0x1A, 0x20, None), (0x18, 0x01, None), (0x1B, 0x01, None)])
def test_the_product_is_told_by_cpuid_family_and_model(family: int, model: int, product: str | None) -> None:
    data = bytearray(_painted(3))
    data[0x1F8:0x208] = bytes(16)
    data[0x188:0x18A] = bytes([family, model])
    if product is not None:
        turin = product == "Turin"
        if turin:  # Turin's TCB layout: FMC, boot loader, TEE, SNP, reserved, microcode
            for offset in TCBS.values():
                data[offset:offset + 8] = bytes([1, 2, 3, 4, 0, 0, 0, 5])
        assert parse_report(bytes(data)).product == product
        return
    with pytest.raises(ParseError) as err:
        parse_report(bytes(data))
    assert (err.value.field, err.value.expected, err.value.actual, err.value.hint) == (
        "report.cpuid_fam_id", "an SEV-SNP product (family 0x19 or 0x1A)", f"family 0x{family:02X} model 0x{model:02X}",
        "this product is not supported")


@pytest.mark.parametrize(("chip_id", "product"), [
    (bytes(range(1, 9)) + bytes(56), "Turin"), (b"\x01" + bytes(63), "Turin"),
    (bytes(7) + b"\x01" + bytes(56), "Turin"),
    (bytes(range(1, 10)) + bytes(55), None), (bytes(8) + b"\x01" + bytes(55), None), (bytes(64), None),
    (bytes(range(1, 9)) + bytes(55) + b"\x01", None)])
def test_a_v2_report_is_told_turin_by_its_8_byte_chip_id(go_report: bytes, chip_id: bytes,
                                                        product: str | None) -> None:
    report = replace(parse_report(go_report), chip_id=chip_id, raw=b"")
    if product == "Turin":  # its TCBs in Turin's layout
        tcb = TcbVersion(bootloader=2, tee=0, snp=5, microcode=68, fmc=1)
        report = replace(report, current_tcb=tcb, reported_tcb=tcb, committed_tcb=tcb, launch_tcb=tcb)
    parsed = parse_report(encode_report(report))
    assert (parsed.product, parsed.chip_id) == (product, chip_id)


def test_a_named_product_picks_the_tcb_layout_and_an_unknown_one_is_refused(go_report: bytes) -> None:
    assert parse_report(go_report, product="Genoa").product == "Genoa"
    with pytest.raises(ParseError) as err:
        parse_report(go_report, product="Rome")
    assert (err.value.field, err.value.expected, err.value.actual) == ("product", "one of ('Milan', 'Genoa', 'Turin')",
                                                                       "Rome")


def test_refusals_of_what_is_no_report_word_for_word(go_report: bytes) -> None:
    with pytest.raises(ParseError) as err:
        parse_report(go_report.hex())  # type: ignore[arg-type]
    assert (err.value.field, err.value.expected, err.value.actual) == ("report", "bytes", "str")
    with pytest.raises(ParseError) as err:
        parse_report(go_report + b"\0")
    assert (err.value.field, err.value.expected, err.value.actual, err.value.hint) == (
        "report", "1184 bytes (an SEV-SNP ATTESTATION_REPORT)", "1185 bytes",
        "pass the raw report, not hex or base64 text")
    for form in (bytearray(go_report), memoryview(go_report)):  # what the type check admits
        assert parse_report(form) == parse_report(go_report)  # type: ignore[arg-type]
    with pytest.raises(ParseError) as err:
        parse_report(struct.pack("<I", 6) + go_report[4:])
    assert (err.value.field, err.value.expected, err.value.actual) == ("report.version", "2..5", 6)
    assert parse_report(struct.pack("<I", 5) + go_report[4:], product="Milan").version == 5
    data = bytearray(go_report)
    data[0x34] = 0
    with pytest.raises(ParseError) as err:
        parse_report(bytes(data))
    assert (err.value.field, err.value.expected, err.value.actual) == ("report.signature_algo",
                                                                       "1 (ECDSA P-384 with SHA-384)", 0)


def test_a_tcb_of_the_other_layout_is_named(go_report: bytes) -> None:
    with pytest.raises(ParseError) as err:
        TcbVersion.from_bytes(bytes([1, 2, 3, 4, 0, 0, 1, 5]), turin=True, where="report.launch_tcb")
    assert (err.value.field, err.value.expected, err.value.actual, err.value.hint) == (
        "report.launch_tcb", "zero reserved bytes in TCB_VERSION", "0102030400000105",
        "the TCB layout does not match the product (Turin vs Milan/Genoa)")
    for reserved in (2, 5):
        raw = bytearray(8)
        raw[reserved] = 1
        with pytest.raises(ParseError) as err:
            TcbVersion.from_bytes(bytes(raw), turin=False)
        assert err.value.field == "tcb"
    for reserved in (4, 6):
        raw = bytearray(8)
        raw[reserved] = 1
        with pytest.raises(ParseError):
            TcbVersion.from_bytes(bytes(raw), turin=True)
    assert TcbVersion.from_bytes(bytes([5, 1, 2, 3, 0, 0, 0, 4]), turin=True).as_dict() == {
        "bootloader": 1, "tee": 2, "snp": 3, "microcode": 4, "fmc": 5}


def test_the_debug_bit_is_bit_19_of_the_policy(go_report: bytes) -> None:
    report = parse_report(go_report)
    assert [replace(report, policy=p).debug for p in (1 << 19, 1 << 18, 1 << 20, (1 << 64) - 1 - (1 << 19))] == [
        True, False, False, False]


def test_encoding_refuses_what_does_not_fit_and_signs_in_place(go_report: bytes) -> None:
    report = parse_report(go_report)
    with pytest.raises(ValueError) as err:
        encode_report(replace(report, vmpl=1 << 32))
    assert str(err.value).startswith("report field out of range: ")
    with pytest.raises(ValueError) as err:
        encode_report(replace(report, signature_r=1 << 576))
    assert str(err.value).startswith("report field out of range: ")
    with pytest.raises(ValueError) as err:
        encode_report(replace(report, signing_key="ark"))
    assert str(err.value) == "signing_key must be one of ['none', 'vcek', 'vlek'], got 'ark'"
    with pytest.raises(ValueError) as err:
        encode_report(replace(report, chip_id=bytes(65)))
    assert str(err.value) == "chip_id must be 64 bytes, got 65"
    v3 = encode_report(replace(report, version=3, cpuid_fam_id=None, cpuid_mod_id=None, cpuid_step=None))
    assert v3[0x188:0x18B] == bytes(3)
    v5 = encode_report(replace(report, version=5))
    assert v5[0x1F8:0x208] == bytes(16)
    signed = with_signature(report, 5, 7)
    assert (signed.signature_r, signed.signature_s) == (5, 7) and signed.raw == encode_report(signed)
    assert signed.raw[:0x2A0] == go_report[:0x2A0] and signed.raw[0x2A0:0x2A0 + 144] == (
        (5).to_bytes(72, "little") + (7).to_bytes(72, "little"))


def test_integer_fields_are_unsigned_up_to_their_largest_value() -> None:
    largest = {"guest_svn": (1 << 32) - 1, "policy": (1 << 64) - 1, "vmpl": (1 << 32) - 1,
               "platform_info": (1 << 64) - 1}
    report = replace(parse_report(_painted()), guest_svn=largest["guest_svn"], policy=largest["policy"],
                     vmpl=largest["vmpl"], platform_info=largest["platform_info"], raw=b"")
    data = encode_report(report)
    for name in largest:
        offset, size = LAYOUT[name]
        assert data[offset:offset + size] == b"\xff" * size, name
    assert {name: getattr(parse_report(data), name) for name in largest} == largest


def test_a_v3_report_carries_its_cpuid_and_a_tcb_of_the_other_layout_is_named_in_the_report() -> None:
    v3 = bytearray(_painted(3))
    v3[0x1F8:0x208] = bytes(16)
    report = parse_report(bytes(v3))
    assert (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step) == (0x19, 0x11, v3[0x18A])
    assert encode_report(report) == bytes(v3)
    turin = TcbVersion(bootloader=1, tee=2, snp=3, microcode=4, fmc=5)
    v3[0x38:0x40] = turin.to_bytes()  # Turin's layout in a Genoa report: TEE and SNP in Genoa's reserved bytes
    with pytest.raises(ParseError) as err:
        parse_report(bytes(v3))
    assert (err.value.field, err.value.expected, err.value.actual) == (
        "report.current_tcb", "zero reserved bytes in TCB_VERSION", "0501020300000004")
