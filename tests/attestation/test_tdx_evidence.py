"""TDX through the common path: Evidence -> verify_evidence -> Claims -> appraise, Intel collateral
(TCB Info, QE Identity) verification and TCB status, PCK extensions, and fuzzing of every parser."""

from __future__ import annotations

import dataclasses
import random
import struct
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import Claims, Evidence, Policy, TrustAnchors, appraise, verify_evidence
from attestation.errors import AppraisalError, ParseError, VerificationError
from attestation.tdx import parse_quote, verify_quote_and_pck
from attestation.tdx.collateral import (
    TCB_STATUSES,
    TdxCollateral,
    VerifiedCollateral,
    parse_qe_identity,
    parse_tcb_info,
    tcb_status,
    verify_collateral,
)
from attestation.tdx.pck import parse_sgx_extensions, pck_extensions
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

