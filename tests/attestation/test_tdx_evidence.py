"""TDX through the common path: Evidence -> verify_evidence -> Claims -> appraise, Intel collateral
(TCB Info, QE Identity) verification and TCB status, PCK extensions, and fuzzing of every parser."""

from __future__ import annotations

import dataclasses
import json
import random
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import Claims, Evidence, Policy, TrustAnchors, appraise, verify_evidence
from attestation.anchors import load_pem_certs
from attestation.errors import AppraisalError, ParseError, VerificationError
from attestation.tdx import parse_quote, verify_quote_and_pck
from attestation.tdx.collateral import (
    TCB_STATUSES,
    Level,
    ModuleIdentity,
    TcbResult,
    TdxCollateral,
    VerifiedCollateral,
    parse_qe_identity,
    parse_tcb_info,
    tcb_status,
    verify_collateral,
)
from attestation.tdx.intel_root import pinned_intel_root
from attestation.tdx.pck import PckExtensions, parse_sgx_extensions, pck_extensions
from tests.attestation._attestation_data import read

G = "tdx/go-tdx-guest/"
V4, V5, COS = G + "tdx_prod_quote_SPR_E4.dat", G + "quote_v5_sample.dat", G + "cos-113-tdx-quote.dat"
T2026, T_V5, T_2023 = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC),
                       datetime(2023, 7, 1, tzinfo=UTC))


def _collateral_2023() -> TdxCollateral:
    return TdxCollateral(read(G + "sample_tcbInfo_response"), read(G + "sample_qeIdentity_response"),
                         read(G + "tcbInfoIssuerChain.pem").decode(), read(G + "qeIdentityIssuerChain.pem").decode())


def _claims(name: str = V4, at: datetime = T2026) -> Claims:
    return verify_evidence(Evidence(tee="tdx", report=read(name)), TrustAnchors.amd(), at)


# -- claims ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "at", "version", "product"), [
    (V4, T2026, 4, "tdx-1.0"), (V5, T_V5, 5, "tdx-1.5"), (COS, T2026, 4, "tdx-1.0")])
def test_real_quotes_give_tdx_claims(name: str, at: datetime, version: int, product: str) -> None:
    claims = _claims(name, at)
    quote = parse_quote(read(name))
    assert (claims.tee, claims.version, claims.product) == ("tdx", version, product)
    assert claims.measurement == quote.mr_td.hex() and len(claims.measurement) == 96
    assert claims.rtmrs == [r.hex() for r in quote.rtmrs]
    assert claims.report_data == quote.report_data.hex()
    assert claims.debug is False and claims.policy & 1 == 0
    assert (claims.signing_key, claims.root, claims.tcb_status) == ("pck", "intel", "")
    assert claims.tcb["tdx_module"] == quote.tee_tcb_svn[0] and "pce" in claims.tcb
    assert len(bytes.fromhex(claims.chip_id)) == 16 and len(bytes.fromhex(claims.fmspc)) == 6


def test_tdx_evidence_json_round_trip() -> None:
    evidence = Evidence(tee="tdx", report=read(V4), collateral=_collateral_2023())
    again = Evidence.from_json(evidence.to_json())
    assert again == evidence


def test_tdx_quote_time_outside_pck_validity_is_refused() -> None:
    with pytest.raises(VerificationError, match="validity"):
        _claims(V4, datetime(2030, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("seed", range(6))
def test_flipped_signed_quote_bytes_are_refused(seed: int) -> None:
    data = bytearray(read(V5))
    signed_len = len(parse_quote(bytes(data)).signed)
    offset = random.Random(seed).randrange(signed_len)
    data[offset] ^= 1 << random.Random(seed + 100).randrange(8)
    with pytest.raises((ParseError, VerificationError)):
        verify_evidence(Evidence(tee="tdx", report=bytes(data)), TrustAnchors.amd(), T_V5)


def _with_pck_chain(quote_bytes: bytes, chain: bytes) -> bytes:
    """Re-encode a quote with another PCK chain (sizes fixed up)."""
    q = parse_quote(quote_bytes)
    n = len(q.signed)
    auth = struct.pack("<H", len(q.qe_auth_data)) + q.qe_auth_data
    cert_data = q.qe_report + q.qe_report_signature + auth + struct.pack("<HI", 5, len(chain)) + chain
    sig_data = q.signature + q.attestation_key + struct.pack("<HI", 6, len(cert_data)) + cert_data
    return quote_bytes[:n] + struct.pack("<I", len(sig_data)) + sig_data


def test_swapped_pck_chain_is_refused() -> None:
    other = parse_quote(read(COS)).pck_chain_pem
    with pytest.raises(VerificationError) as err:
        verify_evidence(Evidence(tee="tdx", report=_with_pck_chain(read(V4), other)), TrustAnchors.amd(), T2026)
    assert err.value.field == "quote.qe_report_signature"


def test_pck_chain_to_another_root_is_refused() -> None:
    root_key, root = _self_signed("Not Intel Root")
    chain = parse_quote(read(V4)).pck_chain_pem.split(b"-----END CERTIFICATE-----")
    forged = b"-----END CERTIFICATE-----".join(chain[:2]) + b"-----END CERTIFICATE-----\n"
    forged += root.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(VerificationError) as err:
        verify_evidence(Evidence(tee="tdx", report=_with_pck_chain(read(V4), forged)), TrustAnchors.amd(), T2026)
    assert err.value.field == "quote.pck_chain.root"
    del root_key


def test_unchanged_re_encoding_still_verifies() -> None:  # guards the helper above
    data = _with_pck_chain(read(V4), parse_quote(read(V4)).pck_chain_pem)
    assert _claims_of(data).measurement == _claims().measurement


def _claims_of(data: bytes) -> Claims:
    return verify_evidence(Evidence(tee="tdx", report=data), TrustAnchors.amd(), T2026)


# -- PCK extensions -------------------------------------------------------------------------------

def test_pck_extensions_of_real_certificates() -> None:
    for name, at in ((V4, T2026), (V5, T_V5)):
        _, pck = verify_quote_and_pck(read(name), at)
        ext = pck_extensions(pck)
        assert len(ext.cpu_svn_components) == 16 and ext.pce_id == bytes(2) and len(ext.ppid) == 16


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700))
def test_sgx_extension_parser_only_raises_parse_error(data: bytes) -> None:
    try:
        parse_sgx_extensions(data)
    except ParseError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_truncated_sgx_extensions_raise_parse_error(data: st.DataObject) -> None:
    _, pck = verify_quote_and_pck(read(V4), T2026)
    raw = next(e.value.value for e in pck.extensions if e.oid.dotted_string == "1.2.840.113741.1.13.1")
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ParseError):
        parse_sgx_extensions(raw[:cut])


# -- collateral: verify ---------------------------------------------------------------------------

def test_real_collateral_verifies_at_a_time_inside_validity() -> None:
    verified = verify_collateral(_collateral_2023(), T_2023)
    assert verified.tcb_info.fmspc.hex() == "50806f000000"
    assert verified.qe_identity.isv_prod_id == 2


@pytest.mark.parametrize(("at", "field"), [
    (datetime(2023, 7, 20, tzinfo=UTC), "tcb_info.nextUpdate"),
    (datetime(2023, 6, 1, tzinfo=UTC), "tcb_info.nextUpdate"),
    (datetime(2023, 7, 10, tzinfo=UTC), "qe_identity.nextUpdate"),
    (datetime(2025, 6, 1, tzinfo=UTC), "tcb_info.issuer_chain.signing.validity"),
])
def test_collateral_outside_validity_is_refused(at: datetime, field: str) -> None:
    with pytest.raises(VerificationError) as err:
        verify_collateral(_collateral_2023(), at)
    assert err.value.field == field


def _digit_positions(raw: bytes, key: bytes) -> list[int]:
    start = raw.index(key)
    end = raw.rindex(b',"signature"')
    return [i for i in range(start, end) if raw[i:i + 1].isdigit()]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("which", ["tcb_info", "qe_identity"])
def test_altered_signed_collateral_is_refused(seed: int, which: str) -> None:
    collateral = _collateral_2023()
    raw = bytearray(getattr(collateral, which))
    key = b'"tcbInfo"' if which == "tcb_info" else b'"enclaveIdentity"'
    pos = random.Random(seed).choice(_digit_positions(bytes(raw), key))
    raw[pos] = ord("0") + (raw[pos] - ord("0") + 1) % 10  # still valid JSON, different signed bytes
    with pytest.raises((VerificationError, ParseError)) as err:
        altered = (dataclasses.replace(collateral, tcb_info=bytes(raw)) if which == "tcb_info"
                   else dataclasses.replace(collateral, qe_identity=bytes(raw)))
        verify_collateral(altered, T_2023)
    assert err.value.field.startswith(which)


def test_collateral_chain_swapped_for_the_pck_chain_is_refused() -> None:
    pck_ca_and_root = b"-----BEGIN" + parse_quote(read(V4)).pck_chain_pem.split(b"-----BEGIN", 2)[2]
    collateral = dataclasses.replace(_collateral_2023(), tcb_info_chain=pck_ca_and_root.decode())
    with pytest.raises(VerificationError) as err:
        verify_collateral(collateral, T_2023)
    assert err.value.field == "tcb_info.signature"


# -- collateral: TCB status -----------------------------------------------------------------------

def _status_inputs(name: str, at: datetime, tcb_file: str):  # type: ignore[no-untyped-def]
    quote, pck = verify_quote_and_pck(read(name), at)
    info, qe = parse_tcb_info(read(G + tcb_file)), parse_qe_identity(read(G + "sample_qeIdentity_response"))
    return quote, pck_extensions(pck), info, qe


def test_v5_quote_is_up_to_date_per_its_tcb_info() -> None:
    quote, ext, info, qe = _status_inputs(V5, T_V5, "sample_tcbinfo_response_v5")
    result = tcb_status(quote, ext, VerifiedCollateral(info, qe, ()))
    assert (result.status, result.platform_status, result.module_status, result.qe_status) == ("UpToDate",) * 4


def test_older_module_or_qe_makes_the_status_out_of_date() -> None:
    quote, ext, info, qe = _status_inputs(V5, T_V5, "sample_tcbinfo_response_v5")
    module = info.module_identities[1]
    raised = [dataclasses.replace(level, isv_svn=level.isv_svn + 20) if level.status == "UpToDate" else level
              for level in module.levels]
    older = dataclasses.replace(module, levels=(*raised, dataclasses.replace(raised[-1], isv_svn=0)))
    info = dataclasses.replace(info, module_identities=(info.module_identities[0], older))
    assert tcb_status(quote, ext, VerifiedCollateral(info, qe, ())).status == "OutOfDate"
    qe_levels = (dataclasses.replace(qe.levels[0], isv_svn=50), dataclasses.replace(
        qe.levels[0], isv_svn=0, status="Revoked"))
    revoked = VerifiedCollateral(info, dataclasses.replace(qe, levels=qe_levels), ())
    assert tcb_status(quote, ext, revoked).status == "Revoked"


def test_platform_below_every_level_is_not_supported() -> None:
    quote, ext, info, qe = _status_inputs(V4, T_2023, "sample_tcbInfo_response")
    with pytest.raises(VerificationError) as err:
        tcb_status(quote, ext, VerifiedCollateral(info, qe, ()))
    assert err.value.field == "tcb_info.tcbLevels"


def test_tcb_info_of_another_platform_is_refused() -> None:
    quote, ext, info, qe = _status_inputs(V5, T_V5, "sample_tcbInfo_response")
    with pytest.raises(VerificationError) as err:
        tcb_status(quote, ext, VerifiedCollateral(info, qe, ()))
    assert err.value.field == "tcb_info.fmspc"


# -- full path with collateral signed by a test root (real bodies, test signatures) ------------------

def _self_signed(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _resign(raw: bytes, key_name: bytes, signer: ec.EllipticCurvePrivateKey) -> bytes:
    start = raw.index(b"{", raw.index(key_name))
    end = raw.rindex(b',"signature"')
    r, s = decode_dss_signature(signer.sign(raw[start:end], ec.ECDSA(hashes.SHA256())))
    return raw[:end] + b',"signature":"' + (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex().encode() + b'"}'


@pytest.fixture(scope="module")
def test_signed() -> tuple[TdxCollateral, TrustAnchors, datetime]:
    root_key, root = _self_signed("Test SGX Root CA")
    qe = read(G + "sample_qeIdentity_response").replace(b"2023-06-08T07:24:59Z", b"2026-05-20T00:00:00Z")
    qe = qe.replace(b"2023-07-08T07:24:59Z", b"2026-06-20T00:00:00Z")
    tcb = read(G + "sample_tcbinfo_response_v5").replace(b"2026-03-03T14:49:26Z", b"2026-06-20T00:00:00Z")
    chain = root.public_bytes(serialization.Encoding.PEM).decode() * 2  # the root signs directly
    collateral = TdxCollateral(_resign(tcb, b'"tcbInfo"', root_key), _resign(qe, b'"enclaveIdentity"', root_key),
                               chain)
    anchors = dataclasses.replace(TrustAnchors.amd(), intel_roots=(root,))
    return collateral, anchors, T_V5


def test_full_path_with_collateral_gives_tcb_status(test_signed: tuple[TdxCollateral, TrustAnchors, datetime]) -> None:
    collateral, anchors, at = test_signed
    claims = verify_evidence(Evidence(tee="tdx", report=read(V5), collateral=collateral), anchors, at)
    assert (claims.tcb_status, claims.root) == ("UpToDate", "simulated")
    appraise(claims, Policy.from_dict({"allowed_roots": ["simulated"], "min_tcb_status": "UpToDate"}))
    with pytest.raises(AppraisalError) as err:
        appraise(claims, Policy.from_dict({"allowed_roots": ["intel"]}))
    assert err.value.field == "root"


def test_a_naive_time_is_utc_for_the_quote_and_the_collateral(
        test_signed: tuple[TdxCollateral, TrustAnchors, datetime]) -> None:
    collateral, anchors, at = test_signed
    evidence = Evidence(tee="tdx", report=read(V5), collateral=collateral)
    assert verify_evidence(evidence, anchors, at.replace(tzinfo=None)) == verify_evidence(evidence, anchors, at)


def test_collateral_from_an_untrusted_root_is_refused(
        test_signed: tuple[TdxCollateral, TrustAnchors, datetime]) -> None:
    collateral, _, at = test_signed
    with pytest.raises(VerificationError) as err:
        verify_evidence(Evidence(tee="tdx", report=read(V5), collateral=collateral), TrustAnchors.amd(), at)
    assert err.value.field == "tcb_info.issuer_chain.root"


def test_collateral_checked_at_a_later_time_is_refused(
        test_signed: tuple[TdxCollateral, TrustAnchors, datetime]) -> None:
    collateral, anchors, at = test_signed
    with pytest.raises(VerificationError, match="nextUpdate"):
        verify_evidence(Evidence(tee="tdx", report=read(V5), collateral=collateral), anchors, at + timedelta(days=60))


# -- appraisal ------------------------------------------------------------------------------------

INTEL = {"allowed_roots": ["intel"]}


def test_tdx_policy_accepts_matching_claims() -> None:
    claims = _claims()
    appraise(claims, Policy.from_dict({**INTEL, "allowed_measurements": [claims.measurement],
                                       "rtmrs": {"rtmr0": [claims.rtmrs[0]], "rtmr2": [claims.rtmrs[2]]},
                                       "min_tcb": {"tdx_module": claims.tcb["tdx_module"], "snp": 99},
                                       "chip_ids": [claims.chip_id], "signing_keys": ["pck"],
                                       "allowed_td_attributes": claims.policy, "allowed_policy_bits": 0}),
             report_data=bytes.fromhex(claims.report_data))


@pytest.mark.parametrize(("extra", "field"), [
    ({"allowed_measurements": ["00" * 48]}, "measurement"),
    ({"rtmrs": {"rtmr1": ["00" * 48]}}, "rtmr1"),
    ({"min_tcb": {"tdx_microcode": 200}}, "tcb.tdx_microcode"),
    ({"chip_ids": ["00" * 16]}, "chip_id"),
    ({"allowed_td_attributes": 0}, "td_attributes"),
    ({"min_tcb_status": "OutOfDate"}, "tcb_status"),
    ({"signing_keys": ["vcek", "vlek"]}, "signing_key"),
    ({"host_data": ["11" * 48]}, "host_data"),
])
def test_tdx_policy_mismatch_names_the_field(extra: dict[str, object], field: str) -> None:
    with pytest.raises(AppraisalError) as err:
        appraise(_claims(), Policy.from_dict({**INTEL, **extra}))
    assert err.value.field == field


def test_debug_td_is_refused_by_default() -> None:
    claims = dataclasses.replace(_claims(), debug=True, policy=_claims().policy | 1)
    with pytest.raises(AppraisalError, match="TD_ATTRIBUTES bit 0"):
        appraise(claims, Policy.from_dict(INTEL))
    appraise(claims, Policy.from_dict({**INTEL, "allow_debug": True}))


def test_default_policy_is_amd_only() -> None:
    with pytest.raises(AppraisalError) as err:
        appraise(_claims(), Policy())
    assert err.value.field == "root"


def test_one_toml_policy_for_both_tees(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "policy.toml"
    path.write_text('allowed_roots = ["amd", "intel"]\nallow_debug = false\n'
                    'min_tcb_status = "SWHardeningNeeded"\n[min_tcb]\nsnp = 5\ntdx_module = 1\n'
                    '[rtmrs]\nrtmr3 = ["' + "00" * 48 + '"]\n')
    policy = Policy.from_file(path)
    assert policy.rtmrs == {"rtmr3": ("00" * 48,)} and policy.min_tcb_status == "SWHardeningNeeded"
    with pytest.raises(AppraisalError, match="no collateral"):
        appraise(_claims(), policy)


@pytest.mark.parametrize("bad", [{"rtmrs": {"rtmr4": []}}, {"rtmrs": {"rtmr0": ["zz"]}},
                                 {"min_tcb_status": "Revoked"}, {"allowed_roots": ["intel", "arm"]}])
def test_bad_tdx_policy_keys_are_parse_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ParseError):
        Policy.from_dict(bad)


# -- fuzzing of the collateral parsers ------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_collateral_parsers_only_raise_parse_error(data: bytes) -> None:
    for parse in (parse_tcb_info, parse_qe_identity):
        try:
            parse(data)
        except ParseError:
            pass


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_truncated_or_mangled_collateral_raises_parse_error(data: st.DataObject) -> None:
    raw = read(G + data.draw(st.sampled_from(["sample_tcbInfo_response", "sample_tcbinfo_response_v5"])))
    cut = data.draw(st.integers(0, len(raw) - 2))
    with pytest.raises(ParseError):
        parse_tcb_info(raw[:cut])
    junk = data.draw(st.binary(min_size=1, max_size=8))
    pos = data.draw(st.integers(0, len(raw) - 1))
    try:
        parse_tcb_info(raw[:pos] + junk + raw[pos + len(junk):])
    except ParseError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=10))
def test_tdx_envelope_only_raises_parse_error(value: object) -> None:
    for obj in ({"tee": "tdx", "report": "", "collateral": value}, {"tee": "tdx", "report": value}):
        try:
            Evidence.from_json(obj)
        except ParseError:
            pass


@pytest.mark.parametrize("floor", TCB_STATUSES[:-1])
def test_a_tcb_status_one_rank_below_the_floor_is_refused(floor: str) -> None:
    """Intel's verdict just below the policy's worst acceptable one (the next in TCB_STATUSES): refused, named."""
    worse = TCB_STATUSES[TCB_STATUSES.index(floor) + 1]
    policy = Policy.from_dict({**INTEL, "min_tcb_status": floor})
    appraise(dataclasses.replace(_claims(), tcb_status=floor), policy)
    with pytest.raises(AppraisalError) as err:
        appraise(dataclasses.replace(_claims(), tcb_status=worse), policy)
    assert (err.value.field, err.value.expected, err.value.actual) == ("tcb_status", f"{floor} or better", worse)


def _refusal(claims: Claims, policy: dict[str, object]) -> tuple[object, ...]:
    with pytest.raises(AppraisalError) as err:
        appraise(claims, Policy.from_dict({**INTEL, **policy}))
    return err.value.field, err.value.expected, err.value.actual, err.value.hint


def test_each_tdx_appraisal_refusal_is_named_word_for_word() -> None:
    """A real quote against a policy wrong in one TDX clause: field, expected, actual and what to do."""
    claims = _claims()
    assert _refusal(claims, {"rtmrs": {"rtmr0": [claims.rtmrs[0]], "rtmr3": ["11" * 48]}}) == (
        "rtmr3", f"one of {['11' * 48]}", claims.rtmrs[3],
        "the TD's runtime measurements (kernel, command line, ...) differ")
    assert _refusal(claims, {"allowed_td_attributes": 0x3FFFFFFF}) == (  # every bit but 30 (PKS), which it sets
        "td_attributes", "only bits in 0x3fffffff", "0x40000000",
        "the TD was launched with an attribute not allowed")
    assert _refusal(claims, {"min_tcb_status": "OutOfDate"}) == (
        "tcb_status", "OutOfDate or better", "unknown (no collateral given)",
        "the platform's TCB is not current enough per Intel; update it or pass collateral")
    revoked = dataclasses.replace(claims, tcb_status="Revoked")
    assert _refusal(revoked, {"min_tcb_status": "OutOfDateConfigurationNeeded"})[:3] == (
        "tcb_status", "OutOfDateConfigurationNeeded or better", "Revoked")
    assert _refusal(dataclasses.replace(claims, debug=True, policy=claims.policy | 1), {}) == (
        "policy.debug", "debugging disallowed (TD_ATTRIBUTES bit 0 (DEBUG) clear)",
        f"debug allowed (policy 0x{claims.policy | 1:x})",
        "the host can read this guest's memory; launch it without debug")


def test_td_attributes_and_tcb_floors_hold_at_their_bounds() -> None:
    """A TD with exactly the allowed attributes and each TDX component at its floor passes; one higher fails;
    SEV-SNP-only clauses (policy bits, VMPL, SEV-SNP components) do not apply to a TD."""
    claims = dataclasses.replace(_claims(), vmpl=3)
    appraise(claims, Policy.from_dict({**INTEL, "allowed_td_attributes": claims.policy, "allowed_policy_bits": 0,
                                       "max_vmpl": 0, "min_tcb": {**claims.tcb, "bootloader": 255, "fmc": 255}}))
    for component, value in claims.tcb.items():
        assert _refusal(claims, {"min_tcb": {component: value + 1}})[:3] == (f"tcb.{component}", f">= {value + 1}",
                                                                            value)


def test_an_rtmr_the_claims_lack_is_compared_as_empty() -> None:
    """Claims built by hand without RTMRs: a policy pinning one refuses them, naming an empty value."""
    claims = dataclasses.replace(_claims(), rtmrs=_claims().rtmrs[:2])
    appraise(claims, Policy.from_dict({**INTEL, "rtmrs": {"rtmr1": [claims.rtmrs[1]]}}))
    assert _refusal(claims, {"rtmrs": {"rtmr2": ["00" * 48]}})[:3] == ("rtmr2", f"one of {['00' * 48]}", "")
    assert _refusal(claims, {"rtmrs": {"rtmr3": ["00" * 48]}})[:3] == ("rtmr3", f"one of {['00' * 48]}", "")


# -- TCB status: each step of Intel's appraisal, on the real v5 quote and its real TCB Info -----------

def _v5_status_inputs():  # type: ignore[no-untyped-def]
    quote, ext, info, qe = _status_inputs(V5, T_V5, "sample_tcbinfo_response_v5")
    return quote, ext, VerifiedCollateral(info, qe, ())


def _status_refusal(quote, ext, collateral) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
    with pytest.raises(VerificationError) as err:
        tcb_status(quote, ext, collateral)
    return err.value.field, err.value.expected, err.value.actual, err.value.hint


def _with_info(collateral: VerifiedCollateral, **changes: Any) -> VerifiedCollateral:
    return dataclasses.replace(collateral, tcb_info=dataclasses.replace(collateral.tcb_info, **changes))


def _with_qe(collateral: VerifiedCollateral, **changes: Any) -> VerifiedCollateral:
    return dataclasses.replace(collateral, qe_identity=dataclasses.replace(collateral.qe_identity, **changes))


def test_the_v5_quotes_tcb_result_in_full() -> None:
    quote, ext, collateral = _v5_status_inputs()
    assert tcb_status(quote, ext, collateral) == TcbResult(
        status="UpToDate", platform_status="UpToDate", module_status="UpToDate", qe_status="UpToDate",
        advisory_ids=(), tcb_date=collateral.tcb_info.levels[0].date, evaluation_data_number=18)


@pytest.mark.parametrize("changes", [{"fmspc": bytes.fromhex("90c06f000001")}, {"pce_id": b"\x00\x01"}])
def test_tcb_info_for_another_platform_type_is_named_word_for_word(changes: dict[str, bytes]) -> None:
    quote, ext, collateral = _v5_status_inputs()
    info = dataclasses.replace(collateral.tcb_info, **changes)
    assert _status_refusal(quote, ext, dataclasses.replace(collateral, tcb_info=info)) == (
        "tcb_info.fmspc", "fmspc 90c06f000000, pceId 0000 (from the PCK)",
        f"fmspc {info.fmspc.hex()}, pceId {info.pce_id.hex()}", "this TCB Info is for another platform type")


def test_a_platform_level_applies_from_its_exact_svns_and_not_one_below() -> None:
    """A first level requiring exactly this platform's SGX SVNs, PCESVN and TEE_TCB_SVN (bytes 2..15: bytes 0-1
    belong to the module identity when the module version is not 0) applies; one more in any component moves
    the platform to the next level, whose status, date and advisories are the result's."""
    quote, ext, collateral = _v5_status_inputs()
    exact = dataclasses.replace(collateral.tcb_info.levels[0], sgx_svns=ext.cpu_svn_components, pce_svn=ext.pce_svn,
                                tdx_svns=bytes([255, 255]) + quote.tee_tcb_svn[2:], date="2030-01-01T00:00:00Z",
                                advisory_ids=("INTEL-SA-1",))
    lower = dataclasses.replace(collateral.tcb_info.levels[1], sgx_svns=(0,) * 16, pce_svn=0, tdx_svns=(0,) * 16,
                                status="SWHardeningNeeded", date="2020-01-01T00:00:00Z", advisory_ids=("INTEL-SA-2",))
    result = tcb_status(quote, ext, _with_info(collateral, levels=(exact, lower)))
    assert (result.platform_status, result.tcb_date, result.advisory_ids) == ("UpToDate", exact.date, ("INTEL-SA-1",))
    sgx = list(ext.cpu_svn_components)
    for higher in (dataclasses.replace(exact, sgx_svns=(*sgx[:15], sgx[15] + 1)),
                   dataclasses.replace(exact, sgx_svns=(sgx[0] + 1, *sgx[1:])),
                   dataclasses.replace(exact, pce_svn=ext.pce_svn + 1),
                   dataclasses.replace(exact, tdx_svns=(*exact.tdx_svns[:2], quote.tee_tcb_svn[2] + 1,
                                                        *exact.tdx_svns[3:])),
                   dataclasses.replace(exact, tdx_svns=(*exact.tdx_svns[:15], quote.tee_tcb_svn[15] + 1))):
        result = tcb_status(quote, ext, _with_info(collateral, levels=(higher, lower)))
        assert (result.status, result.platform_status, result.tcb_date, result.advisory_ids) == (
            "SWHardeningNeeded", "SWHardeningNeeded", lower.date, ("INTEL-SA-2",))


def test_without_a_module_version_the_first_two_tee_tcb_svn_bytes_count_for_the_platform() -> None:
    """A TDX 1.0 quote (module version 0): the TDX module is checked against ``tdxModule`` and has no status;
    TEE_TCB_SVN bytes 0 and 1 are the platform's, so a level requiring more in either does not apply."""
    quote, ext, collateral = _v5_status_inputs()
    tdx10 = dataclasses.replace(quote, tee_tcb_svn=bytes([7, 0]) + quote.tee_tcb_svn[2:])
    exact = dataclasses.replace(collateral.tcb_info.levels[0], tdx_svns=tuple(tdx10.tee_tcb_svn))
    result = tcb_status(tdx10, ext, _with_info(collateral, levels=(exact,)))
    assert (result.status, result.module_status) == ("UpToDate", "")
    for index in (0, 1):
        svns = list(exact.tdx_svns)
        svns[index] += 1
        refusal = _status_refusal(tdx10, ext, _with_info(collateral, levels=(dataclasses.replace(
            exact, tdx_svns=tuple(svns)),)))
        assert refusal == ("tcb_info.tcbLevels", "a level at or below this platform's TCB",
                           f"none for SGX {list(ext.cpu_svn_components)} PCESVN {ext.pce_svn}, "
                           f"TEE_TCB_SVN {tdx10.tee_tcb_svn.hex()}", "TCB not supported: the platform is too old")


def test_the_module_identity_is_found_by_version_and_checked_word_for_word() -> None:
    """The module of version 1 is looked up as TDX_01 (in any case); its signer and masked SEAM attributes must be
    Intel's; its ISVSVN picks the first level at or below it."""
    quote, ext, collateral = _v5_status_inputs()
    tdx03, tdx01 = collateral.tcb_info.module_identities
    lower = dataclasses.replace(tdx01, id="tdx_01")
    assert tcb_status(quote, ext, _with_info(collateral, module_identities=(tdx03, lower))).module_status == "UpToDate"
    assert _status_refusal(quote, ext, _with_info(collateral, module_identities=(tdx03,))) == (
        "tcb_info.tdxModuleIdentities", "an identity TDX_01", "none", "Intel does not know this TDX module version")
    other = dataclasses.replace(tdx01, mrsigner=bytes([1]) * 48)
    assert _status_refusal(quote, ext, _with_info(collateral, module_identities=(tdx03, other))) == (
        "quote.mr_signer_seam", "01" * 48, "00" * 48, "the TDX module was not signed by Intel")
    seam = dataclasses.replace(quote, seam_attributes=bytes([0x81]) + bytes(7))
    masked = dataclasses.replace(tdx01, attributes=bytes([0x80]) + bytes(7), attributes_mask=bytes([0xFE]) + bytes(7))
    assert tcb_status(seam, ext, _with_info(collateral, module_identities=(tdx03, masked))).module_status == "UpToDate"
    strict = dataclasses.replace(masked, attributes_mask=bytes([0xFF]) * 8)
    assert _status_refusal(seam, ext, _with_info(collateral, module_identities=(tdx03, strict))) == (
        "quote.seam_attributes", "8000000000000000", "8100000000000000", "")


def test_a_module_of_version_0_is_checked_against_the_tdx_module_entry() -> None:
    quote, ext, collateral = _v5_status_inputs()
    tdx10 = dataclasses.replace(quote, tee_tcb_svn=bytes([7, 0]) + quote.tee_tcb_svn[2:])
    levels = (dataclasses.replace(collateral.tcb_info.levels[0], tdx_svns=(0,) * 16),)
    module = dataclasses.replace(collateral.tcb_info.module, mrsigner=bytes([2]) * 48)
    assert _status_refusal(tdx10, ext, _with_info(collateral, levels=levels, module=module))[:3] == (
        "quote.mr_signer_seam", "02" * 48, "00" * 48)


@pytest.mark.parametrize(("isv_svn", "status"), [(11, "UpToDate"), (6, "UpToDate"), (5, "OutOfDate"), (4, "OutOfDate"),
                                                 (2, "OutOfDate")])
def test_the_module_level_is_the_first_at_or_below_its_isvsvn(isv_svn: int, status: str) -> None:
    quote, ext, collateral = _v5_status_inputs()
    module = dataclasses.replace(quote, tee_tcb_svn=bytes([isv_svn]) + quote.tee_tcb_svn[1:])
    levels = (dataclasses.replace(collateral.tcb_info.levels[0], tdx_svns=(0,) * 16),)
    result = tcb_status(module, ext, _with_info(collateral, levels=levels))
    assert (result.status, result.module_status) == (status, status)
    assert result.advisory_ids == (() if status == "UpToDate" else ("INTEL-SA-01036", "INTEL-SA-01099"))


def test_a_module_below_every_level_is_named_with_the_lowest() -> None:
    quote, ext, collateral = _v5_status_inputs()
    module = dataclasses.replace(quote, tee_tcb_svn=bytes([1]) + quote.tee_tcb_svn[1:])
    assert _status_refusal(module, ext, collateral) == ("tcb_info.TDX_01.isvsvn", ">= 2", 1, "TCB not supported")
    tdx03, tdx01 = collateral.tcb_info.module_identities
    empty = _with_info(collateral, module_identities=(tdx03, dataclasses.replace(tdx01, levels=())))
    assert _status_refusal(quote, ext, empty) == ("tcb_info.TDX_01.isvsvn", ">= a listed level", 11,
                                                  "TCB not supported")


def _qe_report(quote, offset: int, value: bytes):  # type: ignore[no-untyped-def]
    report = quote.qe_report[:offset] + value + quote.qe_report[offset + len(value):]
    return dataclasses.replace(quote, qe_report=report)


@pytest.mark.parametrize(("offset", "value", "name", "expected", "actual"), [
    (16, b"\x01\x00\x00\x00", "miscselect", bytes(4), b"\x01\x00\x00\x00"),
    (48, b"\x15\x00\x00\x00\x00\x00\x00\x00\xe7\x00\x00\x00\x00\x00\x00\x01", "attributes",
     bytes.fromhex("11" + "00" * 15), bytes.fromhex("11" + "00" * 15)),  # bit 127 is outside the mask: passes
    (48, b"\x13" + bytes(15), "attributes", bytes.fromhex("11" + "00" * 15), bytes.fromhex("13" + "00" * 15)),
    (128, bytes(32), "mrsigner", bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"),
     bytes(32)),
    (256, b"\x03\x00", "isvprodid", 2, 3),
    (256, b"\x02\x01", "isvprodid", 2, 258),
])
def test_a_quoting_enclave_other_than_intels_is_named_word_for_word(offset: int, value: bytes, name: str,
                                                                    expected: object, actual: object) -> None:
    """The QE report's fields read from their offsets, masked as the QE Identity says, against Intel's values."""
    quote, ext, collateral = _v5_status_inputs()
    forged = _qe_report(quote, offset, value)
    if expected == actual:
        assert tcb_status(forged, ext, collateral).qe_status == "UpToDate"
        return
    assert _status_refusal(forged, ext, collateral) == (f"quote.qe_report.{name}", expected, actual,
                                                        "the quoting enclave is not Intel's TD QE")


def test_the_qe_level_is_read_from_its_isvsvn_little_endian() -> None:
    quote, ext, collateral = _v5_status_inputs()
    levels = (dataclasses.replace(collateral.qe_identity.levels[0], isv_svn=0x0107),
              dataclasses.replace(collateral.qe_identity.levels[0], isv_svn=7, status="OutOfDate",
                                  advisory_ids=("INTEL-SA-3",)))
    result = tcb_status(quote, ext, _with_qe(collateral, levels=levels))
    assert (result.status, result.qe_status, result.advisory_ids) == ("OutOfDate", "OutOfDate", ("INTEL-SA-3",))
    assert tcb_status(_qe_report(quote, 258, b"\x07\x01"), ext, _with_qe(collateral, levels=levels)).qe_status == (
        "UpToDate")
    assert _status_refusal(_qe_report(quote, 258, b"\x06\x00"), ext, _with_qe(collateral, levels=levels)) == (
        "quote.qe_report.isvsvn", ">= 7", 6, "TCB not supported")


@pytest.mark.parametrize(("status", "other", "converged"), [
    (s, "Revoked", "Revoked") for s in TCB_STATUSES] + [
    ("UpToDate", "OutOfDate", "OutOfDate"), ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
    ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
    ("ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
    ("OutOfDate", "OutOfDate", "OutOfDate"),
    ("OutOfDateConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
    ("Revoked", "OutOfDate", "Revoked")] + [
    (s, other, s) for s in TCB_STATUSES for other in ("UpToDate", "SWHardeningNeeded", "")])
def test_statuses_converge_as_intels_library_does(status: str, other: str, converged: str) -> None:
    """The platform level's status combined with the module's, then the QE's (as a TcbResult shows them)."""
    quote, ext, collateral = _v5_status_inputs()
    levels = (dataclasses.replace(collateral.tcb_info.levels[0], status=status),)
    qe = (dataclasses.replace(collateral.qe_identity.levels[0], status=other),) if other else ()
    if other:
        result = tcb_status(quote, ext, _with_qe(_with_info(collateral, levels=levels), levels=qe))
        assert (result.status, result.platform_status, result.qe_status) == (converged, status, other)
    tdx03, tdx01 = collateral.tcb_info.module_identities
    module = dataclasses.replace(tdx01, levels=(dataclasses.replace(tdx01.levels[0], status=other or "UpToDate"),))
    result = tcb_status(quote, ext, _with_info(collateral, levels=levels, module_identities=(tdx03, module)))
    assert (result.status, result.module_status) == (converged, other or "UpToDate")


# -- collateral parsing: every field from its place, every malformed member named ------------------------

def test_the_v5_tcb_info_and_qe_identity_are_read_field_by_field() -> None:
    info = parse_tcb_info(read(G + "sample_tcbinfo_response_v5"))
    raw = read(G + "sample_tcbinfo_response_v5")
    assert info.signed == raw[raw.index(b"{", 1):raw.rindex(b',"signature"')]
    assert info.signature == bytes.fromhex(raw[raw.rindex(b'"signature":"') + 13:-2].decode())
    assert (info.issue_date, info.next_update, info.fmspc, info.pce_id, info.evaluation_data_number) == (
        datetime(2026, 2, 1, 14, 49, 26, tzinfo=UTC), datetime(2026, 3, 3, 14, 49, 26, tzinfo=UTC),
        bytes.fromhex("90c06f000000"), bytes(2), 18)
    assert info.module == ModuleIdentity("", bytes(48), bytes(8), b"\xff" * 8, ())
    assert [(m.id, m.mrsigner, m.attributes, m.attributes_mask) for m in info.module_identities] == [
        ("TDX_03", bytes(48), bytes(8), b"\xff" * 8), ("TDX_01", bytes(48), bytes(8), b"\xff" * 8)]
    assert [(lv.isv_svn, lv.status, lv.advisory_ids) for lv in info.module_identities[1].levels] == [
        (6, "UpToDate", ()), (4, "OutOfDate", ("INTEL-SA-01036", "INTEL-SA-01099")),
        (2, "OutOfDate", ("INTEL-SA-01036", "INTEL-SA-01099"))]
    first, second = info.levels[0], info.levels[1]
    assert (first.status, first.date, first.advisory_ids, first.sgx_svns, first.pce_svn, first.tdx_svns) == (
        "UpToDate", "2024-11-13T00:00:00Z", (), (3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0), 13,
        (5, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    assert (second.status, second.advisory_ids[:2], len(info.levels)) == ("OutOfDate",
                                                                         ("INTEL-SA-01036", "INTEL-SA-01079"), 3)
    qe = parse_qe_identity(read(G + "sample_qeIdentity_response"))
    assert (qe.issue_date, qe.next_update, qe.miscselect, qe.miscselect_mask, qe.attributes, qe.attributes_mask,
            qe.mrsigner, qe.isv_prod_id) == (
        datetime(2023, 6, 8, 7, 24, 59, tzinfo=UTC), datetime(2023, 7, 8, 7, 24, 59, tzinfo=UTC), bytes(4),
        b"\xff" * 4, bytes.fromhex("11" + "00" * 15), bytes.fromhex("fbffffffffffffff" + "00" * 8),
        bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"), 2)
    assert qe.levels == (Level("UpToDate", "2023-02-15T00:00:00Z", (), isv_svn=4),)


def _tcb_doc(change: Any = None, raw: bytes | None = None) -> bytes:
    """The v5 TCB Info (or ``raw``) as compact JSON, ``change`` applied to the parsed document first."""
    doc = json.loads(raw or read(G + "sample_tcbinfo_response_v5"))
    if change:
        change(doc)
    return json.dumps(doc, separators=(",", ":")).encode()


def _set(path: str, value: Any) -> Any:
    """A change setting (or, for ``...``, deleting) the member at a dotted ``path`` (list items by number)."""
    def change(doc: Any) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parents:
            doc = doc[p]
        if value is ...:
            del doc[last]
        else:
            doc[last] = value
    return change


T = "tcb_info.tcbInfo"
_LEVEL = f"{T}.tcbLevels[0]"
_MODULE = f"{T}.tdxModuleIdentities[1]"


@pytest.mark.parametrize(("path", "value", "refusal"), [
    ("tcbInfo", [], ("tcb_info.tcbInfo", "an object", "list")),
    ("signature", ..., ("tcb_info", "members 'tcbInfo' and 'signature'", ["tcbInfo"])),
    ("signature", "00" * 63, ("tcb_info.signature", "64 bytes as hex", "00" * 63)),
    ("signature", "zz" * 64, ("tcb_info.signature", "64 bytes as hex", "zz" * 64)),
    ("signature", 5, ("tcb_info.signature", "64 bytes as hex", 5)),
    ("tcbInfo.id", "SGX", (f"{T}.id", "id TDX, version 3", "id SGX, version 3")),
    ("tcbInfo.version", 2, (f"{T}.id", "id TDX, version 3", "id TDX, version 2")),
    ("tcbInfo.tdxModuleIdentities", {}, (f"{T}.tdxModuleIdentities", "a list", "dict")),
    ("tcbInfo.tcbLevels", ..., (f"{T}.tcbLevels", "list", "missing")),
    ("tcbInfo.tcbLevels", {}, (f"{T}.tcbLevels", "list", "dict")),
    ("tcbInfo.issueDate", "yesterday", (f"{T}.issueDate", "an ISO 8601 time", "yesterday")),
    ("tcbInfo.nextUpdate", 20260303, (f"{T}.nextUpdate", "str", "int")),
    ("tcbInfo.fmspc", "90c06f", (f"{T}.fmspc", "6 bytes as hex", "90c06f")),
    ("tcbInfo.pceId", "000000", (f"{T}.pceId", "2 bytes as hex", "000000")),
    ("tcbInfo.tcbEvaluationDataNumber", 65536, (f"{T}.tcbEvaluationDataNumber", "0..65535", 65536)),
    ("tcbInfo.tcbEvaluationDataNumber", -1, (f"{T}.tcbEvaluationDataNumber", "0..65535", -1)),
    ("tcbInfo.tcbEvaluationDataNumber", True, (f"{T}.tcbEvaluationDataNumber", "int", "bool")),
    ("tcbInfo.tdxModule", ..., (f"{T}.tdxModule", "dict", "missing")),
    ("tcbInfo.tdxModule.mrsigner", "00" * 47, (f"{T}.tdxModule.mrsigner", "48 bytes as hex", "00" * 47)),
    ("tcbInfo.tdxModule.attributes", "00", (f"{T}.tdxModule.attributes", "8 bytes as hex", "00")),
    ("tcbInfo.tdxModule.attributesMask", "ff", (f"{T}.tdxModule.attributesMask", "8 bytes as hex", "ff")),
    ("tcbInfo.tdxModuleIdentities.1", 7, (_MODULE, "an object", "int")),
    ("tcbInfo.tdxModuleIdentities.1.tcbLevels", "x", (f"{_MODULE}.tcbLevels", "a list", "str")),
    ("tcbInfo.tdxModuleIdentities.1.tcbLevels.2", 7, (f"{_MODULE}.tcbLevels[2]", "an object", "int")),
    ("tcbInfo.tdxModuleIdentities.1.tcbLevels.2.tcb", [], (f"{_MODULE}.tcbLevels[2].tcb", "dict", "list")),
    ("tcbInfo.tdxModuleIdentities.1.tcbLevels.2.tcb.isvsvn", "2", (f"{_MODULE}.tcbLevels[2].tcb.isvsvn", "int", "str")),
    ("tcbInfo.tdxModuleIdentities.1.tcbLevels.1.tcbStatus", "Fine", (
        f"{_MODULE}.tcbLevels[1].tcbStatus", f"one of {list(TCB_STATUSES)}", "Fine")),
    ("tcbInfo.tdxModuleIdentities.1.tcbLevels.1.tcbDate", 1, (f"{_MODULE}.tcbLevels[1].tcbDate", "str", "int")),
    ("tcbInfo.tdxModuleIdentities.1.tcbLevels.1.advisoryIDs", "INTEL-SA-1", (
        f"{_MODULE}.tcbLevels[1].advisoryIDs", "a list of strings", "INTEL-SA-1")),
    ("tcbInfo.tdxModuleIdentities.1.tcbLevels.1.advisoryIDs", ["INTEL-SA-1", 2], (
        f"{_MODULE}.tcbLevels[1].advisoryIDs", "a list of strings", ["INTEL-SA-1", 2])),
    ("tcbInfo.tcbLevels.0", "x", (_LEVEL, "an object", "str")),
    ("tcbInfo.tcbLevels.0.tcb", ..., (f"{_LEVEL}.tcb", "dict", "missing")),
    ("tcbInfo.tcbLevels.0.tcbStatus", ..., (f"{_LEVEL}.tcbStatus", "str", "missing")),
    ("tcbInfo.tcbLevels.0.tcbDate", 5, (f"{_LEVEL}.tcbDate", "str", "int")),
    ("tcbInfo.tcbLevels.1.advisoryIDs", 5, (f"{T}.tcbLevels[1].advisoryIDs", "a list of strings", 5)),
    ("tcbInfo.tcbLevels.0.tcb.sgxtcbcomponents", [{"svn": 1}] * 15, (f"{_LEVEL}.tcb.sgxtcbcomponents", "16 components",
                                                                     15)),
    ("tcbInfo.tcbLevels.0.tcb.tdxtcbcomponents", [{"svn": 1}] * 17, (f"{_LEVEL}.tcb.tdxtcbcomponents", "16 components",
                                                                     17)),
    ("tcbInfo.tcbLevels.0.tcb.sgxtcbcomponents", ..., (f"{_LEVEL}.tcb.sgxtcbcomponents", "list", "missing")),
    ("tcbInfo.tcbLevels.0.tcb.tdxtcbcomponents", {}, (f"{_LEVEL}.tcb.tdxtcbcomponents", "list", "dict")),
    ("tcbInfo.tcbLevels.0.tcb.sgxtcbcomponents.15", 1, (f"{_LEVEL}.tcb.sgxtcbcomponents[15]", "an object", "int")),
    ("tcbInfo.tcbLevels.0.tcb.tdxtcbcomponents.3.svn", 65536, (f"{_LEVEL}.tcb.tdxtcbcomponents[3].svn", "0..65535",
                                                               65536)),
    ("tcbInfo.tcbLevels.0.tcb.pcesvn", None, (f"{_LEVEL}.tcb.pcesvn", "int", "missing")),
])
def test_a_malformed_tcb_info_member_is_named_word_for_word(path: str, value: Any,
                                                             refusal: tuple[object, ...]) -> None:
    with pytest.raises(ParseError) as err:
        parse_tcb_info(_tcb_doc(_set(path, value)))
    assert (err.value.field, err.value.expected, err.value.actual) == refusal


def test_tcb_info_bounds_and_defaults_that_parse() -> None:
    """SVNs 0 and 65535, dates without a zone (read as UTC) or in another zone (that instant), no advisories, no
    module identities, a module without an id or levels: all parse, to these values."""
    def change(doc: Any) -> None:
        body = doc["tcbInfo"]
        body["tcbEvaluationDataNumber"], body["issueDate"] = 65535, "2026-02-01T14:49:26"
        body["tcbLevels"][0]["tcb"]["pcesvn"] = 0
        body["tcbLevels"][0]["tcb"]["sgxtcbcomponents"][0]["svn"] = 65535
        del body["tcbLevels"][1]["advisoryIDs"], body["tdxModuleIdentities"]
    info = parse_tcb_info(_tcb_doc(change))
    assert (info.evaluation_data_number, info.issue_date, info.levels[0].pce_svn, info.levels[0].sgx_svns[0],
            info.levels[1].advisory_ids, info.module_identities) == (
        65535, datetime(2026, 2, 1, 14, 49, 26, tzinfo=UTC), 0, 65535, (), ())
    assert parse_tcb_info(_tcb_doc(_set("tcbInfo.tdxModuleIdentities.1.tcbLevels", ...))).module_identities[1].levels \
        == ()
    in_another_zone = parse_tcb_info(_tcb_doc(_set("tcbInfo.nextUpdate", "2026-03-03T16:49:26+02:00")))
    assert in_another_zone.next_update == datetime(2026, 3, 3, 14, 49, 26, tzinfo=UTC)  # the same instant


@pytest.mark.parametrize(("raw", "refusal"), [
    (b"\xff{}", ("tcb_info", "UTF-8 JSON", "undecodable bytes (invalid start byte)")),
    (b'["tcbInfo"]', ("tcb_info", "a JSON object", "invalid JSON (not an object)")),
    (b'{"tcbInfo" {}}', ("tcb_info", "a JSON object",
                         "invalid JSON (':' expected at 11, or duplicate member 'tcbInfo')")),
    (b'{"a":1,"a":2}', ("tcb_info", "a JSON object", "invalid JSON (':' expected at 10, or duplicate member 'a')")),
    (b'{"a":1 "b":2}', ("tcb_info", "a JSON object", "invalid JSON (',' or '}' expected at 7)")),
    (b'{"a":1,5:2}', ("tcb_info", "a JSON object", "invalid JSON (a member name expected at 7)")),
    (b'{"a":1} {}', ("tcb_info", "a JSON object", "invalid JSON (trailing data after the object)")),
    (b'{"a":1}\x0c', ("tcb_info", "a JSON object", "invalid JSON (trailing data after the object)")),  # not JSON space
    (b'{"a":1}X', ("tcb_info", "a JSON object", "invalid JSON (trailing data after the object)")),
    (b'{"a":1}', ("tcb_info", "members 'tcbInfo' and 'signature'", ["a"])),
    (b'{"a":[' * 2000, ("tcb_info", "a JSON object", None)),
])
def test_collateral_that_is_no_json_object_is_named(raw: bytes, refusal: tuple[object, ...]) -> None:
    with pytest.raises(ParseError) as err:
        parse_tcb_info(raw)
    assert (err.value.field, err.value.expected) == refusal[:2]
    if refusal[2] is not None:
        assert err.value.actual == refusal[2]


def test_the_signed_bytes_are_the_members_exact_text_whatever_the_white_space() -> None:
    """Intel signs the bytes of the ``tcbInfo`` value as served: white space between tokens (space, tab, CR, LF)
    is skipped around it, never inside it; text after the object may only be white space."""
    raw = read(G + "sample_tcbinfo_response_v5")
    body = raw[raw.index(b"{", 1):raw.rindex(b',"signature"')]
    signature = raw[raw.rindex(b'"signature"'):-1]
    spaced = b' \t\r\n{ \t\r\n"tcbInfo" \t\r\n: \t\r\n' + body + b' \t\r\n, \t\r\n' + signature + b' \t\r\n} \t\r\n'
    info = parse_tcb_info(spaced)
    assert info.signed == body and info == parse_tcb_info(raw)
    assert parse_tcb_info(b'{"tcbInfo":' + body + b',' + signature + b'}').signed == body
    assert parse_qe_identity(b'{ "signature":"' + b"00" * 64 + b'","enclaveIdentity":' + read(
        G + "sample_qeIdentity_response")[19:read(G + "sample_qeIdentity_response").rindex(b',"signature"')]
        + b'}').signature == bytes(64)


Q = "qe_identity.enclaveIdentity"


@pytest.mark.parametrize(("path", "value", "refusal"), [
    ("enclaveIdentity.id", "QE", (f"{Q}.id", "id TD_QE, version 2", "id QE, version 2")),
    ("enclaveIdentity.version", 3, (f"{Q}.id", "id TD_QE, version 2", "id TD_QE, version 3")),
    ("enclaveIdentity.tcbLevels", ..., (f"{Q}.tcbLevels", "list", "missing")),
    ("enclaveIdentity.issueDate", "2023-13-01", (f"{Q}.issueDate", "an ISO 8601 time", "2023-13-01")),
    ("enclaveIdentity.nextUpdate", None, (f"{Q}.nextUpdate", "str", "missing")),
    ("enclaveIdentity.miscselect", "00", (f"{Q}.miscselect", "4 bytes as hex", "00")),
    ("enclaveIdentity.miscselectMask", "ff", (f"{Q}.miscselectMask", "4 bytes as hex", "ff")),
    ("enclaveIdentity.attributes", "11", (f"{Q}.attributes", "16 bytes as hex", "11")),
    ("enclaveIdentity.attributesMask", "fb", (f"{Q}.attributesMask", "16 bytes as hex", "fb")),
    ("enclaveIdentity.mrsigner", "dc", (f"{Q}.mrsigner", "32 bytes as hex", "dc")),
    ("enclaveIdentity.isvprodid", 70000, (f"{Q}.isvprodid", "0..65535", 70000)),
    ("enclaveIdentity.tcbLevels.0.tcb.isvsvn", -4, (f"{Q}.tcbLevels[0].tcb.isvsvn", "0..65535", -4)),
    ("enclaveIdentity", "x", (f"{Q}", "an object", "str")),
    ("signature", ..., ("qe_identity", "members 'enclaveIdentity' and 'signature'", ["enclaveIdentity"])),
])
def test_a_malformed_qe_identity_member_is_named_word_for_word(path: str, value: Any,
                                                               refusal: tuple[object, ...]) -> None:
    with pytest.raises(ParseError) as err:
        parse_qe_identity(_tcb_doc(_set(path, value), read(G + "sample_qeIdentity_response")))
    assert (err.value.field, err.value.expected, err.value.actual) == refusal


# -- collateral: verification at a time, the folder and JSON forms -------------------------------------

def test_real_collateral_holds_from_its_issue_date_to_its_next_update_inclusive() -> None:
    """Intel's real collateral: TCB Info issued 2023-06-18T08:42:58Z, QE Identity next updated 2023-07-08T07:24:59Z.
    Valid on the first second of one and the last of the other, not a second outside; a naive time is UTC."""
    collateral = _collateral_2023()
    first, last = datetime(2023, 6, 18, 8, 42, 58, tzinfo=UTC), datetime(2023, 7, 8, 7, 24, 59, tzinfo=UTC)
    root = pinned_intel_root()
    assert verify_collateral(collateral, first).roots == verify_collateral(collateral, last).roots == (root, root)
    assert verify_collateral(collateral, last.replace(tzinfo=None)).qe_identity.next_update == last
    for at, where, window in (
            (first - timedelta(seconds=1), "tcb_info", f"{first.isoformat()} .. 2023-07-18T08:42:58+00:00"),
            (last + timedelta(seconds=1), "qe_identity", f"2023-06-08T07:24:59+00:00 .. {last.isoformat()}")):
        with pytest.raises(VerificationError) as err:
            verify_collateral(collateral, at)
        assert (err.value.field, err.value.expected, err.value.actual, err.value.hint) == (
            f"{where}.nextUpdate", window, at.isoformat(),
            "the collateral is stale or not yet issued at that time; fetch it again")


def test_qe_identity_is_checked_under_its_own_chain_when_one_is_given() -> None:
    collateral = _collateral_2023()
    own = dataclasses.replace(collateral, qe_identity_chain=collateral.tcb_info_chain)
    assert verify_collateral(own, T_2023).qe_identity == verify_collateral(collateral, T_2023).qe_identity
    pck_ca_and_root = b"-----BEGIN" + parse_quote(read(V4)).pck_chain_pem.split(b"-----BEGIN", 2)[2]
    with pytest.raises(VerificationError) as err:
        verify_collateral(dataclasses.replace(collateral, qe_identity_chain=pck_ca_and_root.decode()), T_2023)
    assert err.value.field == "qe_identity.signature"


def test_a_collateral_folder_is_read_by_content(tmp_path: Any) -> None:
    """Any file names; JSON recognised by its first member (with or without a space, after white space), the
    chain by its PEM header; other files ignored; a kind missing or twice is named with the count."""
    from pathlib import Path

    folder = Path(str(tmp_path))
    collateral = _collateral_2023()
    (folder / "a").write_bytes(b"\n " + collateral.tcb_info)
    (folder / "b").write_bytes(b'{ "enclaveIdentity"' + collateral.qe_identity[len(b'{"enclaveIdentity"'):])
    (folder / "c").write_text(collateral.tcb_info_chain)
    (folder / "notes.txt").write_text('not collateral: {"tcbInfo"')
    (folder / "sub").mkdir()
    read_back = TdxCollateral.from_dir(folder)
    assert read_back.tcb_info == b"\n " + collateral.tcb_info and read_back.tcb_info_chain == collateral.tcb_info_chain
    assert read_back.qe_identity.startswith(b'{ "enclaveIdentity"') and read_back.qe_identity_chain == ""
    verify_collateral(read_back, T_2023)
    (folder / "d").write_text(collateral.tcb_info_chain)
    with pytest.raises(ParseError) as err:
        TdxCollateral.from_dir(folder)
    assert (err.value.field, err.value.expected, err.value.actual) == (
        "collateral.pem", f"exactly one file holding an issuer chain PEM in {folder}", "2 found: c, d")
    assert err.value.hint == "keep only the one for this quote in the folder"
    (folder / "d").unlink()
    (folder / "b").unlink()
    with pytest.raises(ParseError) as err:
        TdxCollateral.from_dir(folder)
    assert (err.value.field, err.value.expected, err.value.actual) == (
        "collateral.enclaveIdentity", f"exactly one file holding a QE Identity JSON in {folder}", "0 found")
    assert err.value.hint == "fetch it from Intel PCS"
    (folder / "a").unlink()
    with pytest.raises(ParseError) as err:
        TdxCollateral.from_dir(folder)
    assert (err.value.field, err.value.expected, err.value.actual) == (
        "collateral.tcbInfo", f"exactly one file holding a TCB Info JSON in {folder}", "0 found")


def test_collateral_in_json_form_names_a_bad_member_and_reads_missing_ones_as_empty() -> None:
    collateral = _collateral_2023()
    assert collateral.to_json() == {"tcb_info": collateral.tcb_info.decode(),
                                    "qe_identity": collateral.qe_identity.decode(),
                                    "tcb_info_chain": collateral.tcb_info_chain,
                                    "qe_identity_chain": collateral.qe_identity_chain}
    assert TdxCollateral.from_json({"tcb_info": "x"}) == TdxCollateral(b"x", b"", "", "")
    for bad in ("tcb_info", "qe_identity", "tcb_info_chain", "qe_identity_chain"):
        with pytest.raises(ParseError) as err:
            TdxCollateral.from_json({**collateral.to_json(), bad: b"x"})
        assert (err.value.field, err.value.expected, err.value.actual) == (f"evidence.collateral.{bad}", "text",
                                                                           "bytes")
    with pytest.raises(ParseError) as err:
        TdxCollateral.from_json("x")
    assert (err.value.field, err.value.expected, err.value.actual) == ("evidence.collateral", "a JSON object", "str")


# -- PCK extensions: every field from its entry, every malformed entry named ------------------------------

def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | (n.bit_length() + 7) // 8]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def _oid_der(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = b""
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | arc & 0x7F)
        out += bytes(reversed(chunk))
    return _der(0x06, out)


def _entry(oid: str, tag: int, content: bytes) -> bytes:
    return _der(0x30, _oid_der(oid) + _der(tag, content))


SGX = "1.2.840.113741.1.13.1"


def _sgx_extensions(*, skip: str = "", replace: dict[str, bytes] | None = None, comps: tuple[int, ...] = tuple(
        range(1, 17)), pce_svn: bytes = b"\x0b", instance: bytes | None = bytes(range(16))) -> bytes:
    """The SGX extensions' DER as Intel lays them out (PPID, TCB, PCE-ID, FMSPC, SGX type, instance id), each
    top-level entry (by its last arc) left out with ``skip`` or its whole DER replaced from ``replace``."""
    tcb = b"".join(_entry(f"{SGX}.2.{i}", 0x02, bytes([c])) for i, c in enumerate(comps, 1))
    tcb += _entry(f"{SGX}.2.17", 0x02, pce_svn) + _entry(f"{SGX}.2.18", 0x04, bytes(comps))
    entries = {"1": _entry(f"{SGX}.1", 0x04, bytes([0xAA]) * 16), "2": _entry(f"{SGX}.2", 0x30, tcb),
               "3": _entry(f"{SGX}.3", 0x04, b"\x00\x01"), "4": _entry(f"{SGX}.4", 0x04, bytes.fromhex("90c06f000000")),
               "5": _entry(f"{SGX}.5", 0x0A, b"\x01")}
    if instance is not None:
        entries["6"] = _entry(f"{SGX}.6", 0x04, instance)
    entries.update(replace or {})
    return _der(0x30, b"".join(der for arc, der in entries.items() if arc != skip))


def test_the_real_pck_certificates_extensions_in_full() -> None:
    _, pck = verify_quote_and_pck(read(V5), T_V5)
    assert pck_extensions(pck) == PckExtensions(
        ppid=bytes.fromhex("2734b654f553596897eaadfb5667a954"), cpu_svn_components=(4, 4, 2, 2, 4, 1, 0, 5) + (0,) * 8,
        pce_svn=13, cpu_svn=bytes([4, 4, 2, 2, 4, 1, 0, 5]) + bytes(8), pce_id=bytes(2),
        fmspc=bytes.fromhex("90c06f000000"), sgx_type=1,
        platform_instance_id=bytes.fromhex("056d0350250988808a9d09103f3e54d5"))


def test_sgx_extensions_built_to_intels_layout_read_back_field_by_field() -> None:
    """Each TCB component from its own arc (1..16), the PCESVN from 17, CPUSVN from 18; a platform instance id
    only when it is an OCTET STRING; long DER lengths read as well as short ones."""
    comps = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 127)
    assert parse_sgx_extensions(_sgx_extensions(comps=comps, pce_svn=b"\x01\x00\x00")) == PckExtensions(
        ppid=bytes([0xAA]) * 16, cpu_svn_components=comps, pce_svn=0x10000, cpu_svn=bytes(comps), pce_id=b"\x00\x01",
        fmspc=bytes.fromhex("90c06f000000"), sgx_type=1, platform_instance_id=bytes(range(16)))
    assert parse_sgx_extensions(_sgx_extensions(instance=None)).platform_instance_id == b""
    assert parse_sgx_extensions(_sgx_extensions(replace={"6": _entry(f"{SGX}.6", 0x02, b"\x01")})) \
        .platform_instance_id == b""
    assert parse_sgx_extensions(_sgx_extensions(pce_svn=b"\x00")).pce_svn == 0


W = "pck.sgx_extensions"


@pytest.mark.parametrize(("der", "refusal"), [
    (b"", (W, "a DER element", "0 bytes left")),
    (b"\x30", (W, "a DER element", "1 bytes left")),
    (b"\x30\x80", (W, "a DER length", "length-of-length 0")),
    (b"\x30\x85\x00\x00\x00\x00\x01", (W, "a DER length", "length-of-length 5")),
    (b"\x30\x82\x00", (W, "a DER length", "length-of-length 2")),
    (b"\x30\x81\x05\x00", (W, "5 content bytes", "1 left")),
    (b"\x30\x03\x00", (W, "3 content bytes", "1 left")),
    (b"\x04\x00", (W, "one DER SEQUENCE", "tag 0x04, 0 trailing bytes")),
    (b"\x30\x00\x00\x00", (W, "one DER SEQUENCE", "tag 0x30, 2 trailing bytes")),
    (_der(0x30, _der(0x04, b"")), (W, "SEQUENCE {OID, value}", "tag 0x04 with 0 parts")),
    (_der(0x30, b"\x04\x00\x04"), (W, "a DER element", "1 bytes left")),  # the second element, 2 bytes in
    (_der(0x30, _der(0x30, b"\x06")), (W, "a DER element", "1 bytes left")),  # inside an entry
    (_der(0x30, _der(0x31, _oid_der(f"{SGX}.1") + _der(0x04, bytes(16)))), (W, "SEQUENCE {OID, value}",
                                                                          "tag 0x31 with 0 parts")),  # a SET
    (b"\x30\x84\x00\x00\x00\x00", (f"{W}.tcb", f"an entry {SGX}.2", "none")),  # a 4-byte length of 0 is DER
    (b"\x30\x81\x00", (f"{W}.tcb", f"an entry {SGX}.2", "none")),  # its length byte the last one
    (_der(0x30, _der(0x30, _oid_der(f"{SGX}.1"))), (W, "SEQUENCE {OID, value}", "tag 0x30 with 1 parts")),
    (_der(0x30, _der(0x30, _der(0x04, b"\x01") * 2)), (W, "SEQUENCE {OID, value}", "tag 0x30 with 2 parts")),
    (_der(0x30, _der(0x30, _der(0x06, b"") + _der(0x04, b""))), (W, "an object identifier", "")),
    (_der(0x30, _der(0x30, _der(0x06, b"\x2a\x86") + _der(0x04, b""))), (W, "an object identifier", "2a86")),
    (_sgx_extensions(skip="2"), (f"{W}.tcb", f"an entry {SGX}.2", "none")),
    (_sgx_extensions(skip="1"), (f"{W}.ppid", f"an entry {SGX}.1", "none")),
    (_sgx_extensions(skip="3"), (f"{W}.pceid", f"an entry {SGX}.3", "none")),
    (_sgx_extensions(skip="4"), (f"{W}.fmspc", f"an entry {SGX}.4", "none")),
    (_sgx_extensions(skip="5"), (f"{W}.sgx_type", f"an entry {SGX}.5", "none")),
    (_sgx_extensions(replace={"1": _entry(f"{SGX}.1", 0x04, bytes(15))}), (f"{W}.ppid", "tag 0x04, 16 bytes",
                                                                           "tag 0x04, 15 bytes")),
    (_sgx_extensions(replace={"1": _entry(f"{SGX}.1", 0x02, bytes(16))}), (f"{W}.ppid", "tag 0x04, 16 bytes",
                                                                           "tag 0x02, 16 bytes")),
    (_sgx_extensions(replace={"2": _entry(f"{SGX}.2", 0x04, b"")}), (f"{W}.tcb", "tag 0x30", "tag 0x04, 0 bytes")),
    (_sgx_extensions(replace={"3": _entry(f"{SGX}.3", 0x04, bytes(3))}), (f"{W}.pceid", "tag 0x04, 2 bytes",
                                                                          "tag 0x04, 3 bytes")),
    (_sgx_extensions(replace={"4": _entry(f"{SGX}.4", 0x04, bytes(5))}), (f"{W}.fmspc", "tag 0x04, 6 bytes",
                                                                          "tag 0x04, 5 bytes")),
    (_sgx_extensions(replace={"5": _entry(f"{SGX}.5", 0x02, b"\x01")}), (f"{W}.sgx_type", "tag 0x0a",
                                                                         "tag 0x02, 1 bytes")),
    (_sgx_extensions(replace={"5": _entry(f"{SGX}.5", 0x0A, b"")}), (f"{W}.sgx_type", "a small non-negative INTEGER",
                                                                     "")),
    (_sgx_extensions(pce_svn=b"\x01\x00\x00\x00"), (f"{W}.tcb.pcesvn", "a small non-negative INTEGER", "01000000")),
    (_sgx_extensions(pce_svn=b"\xff"), (f"{W}.tcb.pcesvn", "a non-negative INTEGER", -1)),
])
def test_malformed_sgx_extensions_are_named_word_for_word(der: bytes, refusal: tuple[object, ...]) -> None:
    with pytest.raises(ParseError) as err:
        parse_sgx_extensions(der)
    assert (err.value.field, err.value.expected, err.value.actual) == refusal


@pytest.mark.parametrize("arc", [1, 9, 16, 17, 18])
def test_a_tcb_without_one_of_its_entries_is_named(arc: int) -> None:
    tcb = b"".join(_entry(f"{SGX}.2.{i}", 0x02, b"\x01") for i in range(1, 18) if i != arc)
    tcb += _entry(f"{SGX}.2.18", 0x04, bytes(16)) if arc != 18 else b""
    name = {17: "pcesvn", 18: "cpusvn"}.get(arc, f"comp{arc:02d}")
    with pytest.raises(ParseError) as err:
        parse_sgx_extensions(_sgx_extensions(replace={"2": _entry(f"{SGX}.2", 0x30, tcb)}))
    assert (err.value.field, err.value.expected, err.value.actual) == (f"{W}.tcb.{name}", f"an entry {SGX}.2.{arc}",
                                                                       "none")


def test_a_certificate_without_sgx_extensions_is_not_a_pck() -> None:
    _, pck = verify_quote_and_pck(read(V5), T_V5)
    ca = load_pem_certs(parse_quote(read(V5)).pck_chain_pem, "chain")[1]
    with pytest.raises(ParseError) as err:
        pck_extensions(ca)
    assert (err.value.field, err.value.expected, err.value.actual, err.value.hint) == (
        W, f"extension {SGX}", "none", "this is not an Intel PCK certificate")
    assert pck_extensions(pck).fmspc == bytes.fromhex("90c06f000000")


def test_collateral_bytes_that_are_not_text_are_carried_replaced_not_refused(tmp_path: Any) -> None:
    """The JSON form and a folder's chain keep bytes that are not UTF-8 (ASCII for PEM) as U+FFFD: the parser or
    the signature check refuses such collateral later, naming it, rather than a decoding error here."""
    from pathlib import Path

    assert TdxCollateral(b"\xff{", b"\xfe", "").to_json() == {"tcb_info": "\ufffd{", "qe_identity": "\ufffd",
                                                              "tcb_info_chain": "", "qe_identity_chain": ""}
    collateral, folder = _collateral_2023(), Path(str(tmp_path))
    (folder / "tcb.json").write_bytes(collateral.tcb_info)
    (folder / "qe.json").write_bytes(collateral.qe_identity)
    (folder / "chain.pem").write_bytes(b"\xe9\n" + collateral.tcb_info_chain.encode())
    assert TdxCollateral.from_dir(folder).tcb_info_chain == "\ufffd\n" + collateral.tcb_info_chain


def test_the_qe_isvsvn_is_two_bytes_and_the_reserved_byte_after_it_does_not_count() -> None:
    quote, ext, collateral = _v5_status_inputs()
    levels = (dataclasses.replace(collateral.qe_identity.levels[0], isv_svn=8),
              dataclasses.replace(collateral.qe_identity.levels[0], isv_svn=0, status="OutOfDate"))
    assert tcb_status(_qe_report(quote, 260, b"\x01"), ext, _with_qe(collateral, levels=levels)).qe_status == (
        "OutOfDate")


def test_a_malformed_tcb_entry_is_named_inside_the_tcb() -> None:
    def tcb_with(comp5: bytes, cpu_svn: bytes = bytes(16)) -> bytes:
        tcb = b"".join(_entry(f"{SGX}.2.{i}", 0x02, comp5 if i == 5 else b"\x01") for i in range(1, 18))
        return _sgx_extensions(replace={"2": _entry(f"{SGX}.2", 0x30, tcb + _entry(f"{SGX}.2.18", 0x04, cpu_svn))})
    with pytest.raises(ParseError) as err:
        parse_sgx_extensions(tcb_with(b"\x01", bytes(15)))
    assert (err.value.field, err.value.expected, err.value.actual) == (
        f"{W}.tcb.cpusvn", "tag 0x04, 16 bytes", "tag 0x04, 15 bytes")
    with pytest.raises(ParseError) as err:
        parse_sgx_extensions(tcb_with(b""))
    assert (err.value.field, err.value.expected, err.value.actual) == (
        f"{W}.tcb.comp05", "a small non-negative INTEGER", "")
    with pytest.raises(ParseError) as err:
        parse_sgx_extensions(_sgx_extensions(replace={"2": _entry(f"{SGX}.2", 0x30, _der(0x04, b""))}))
    assert (err.value.field, err.value.expected, err.value.actual) == (f"{W}.tcb", "SEQUENCE {OID, value}",
                                                                       "tag 0x04 with 0 parts")
