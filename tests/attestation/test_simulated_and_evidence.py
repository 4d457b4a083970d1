"""Simulated TEE evidence goes through the same verifier as real evidence; appraisal decides."""

from __future__ import annotations

import base64
import dataclasses
import json
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from attestation import Claims, Evidence, Policy, TrustAnchors, appraise, verify_evidence
from attestation.errors import AppraisalError, AttestationError, ParseError, VerificationError
from attestation.evidence import TCB_COMPONENTS
from attestation.simulated import FILES, SIM_CHIP_ID, SIM_TCB, create_simulated_firmware, main
from attestation.snp.report import encode_report, parse_report
from attestation.tdx.collateral import TCB_STATUSES
from enclave.measurement import code_measurement
from enclave.tee import SimulatedSnpProvider
from tests.attestation._attestation_data import PINNED_NOW, read

MEASUREMENT = bytes(range(48))
NONCE = bytes(range(100, 164))
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def provider(sim_dir: Path) -> SimulatedSnpProvider:
    return SimulatedSnpProvider(sim_dir, MEASUREMENT)


@pytest.fixture(scope="module")
def evidence(provider: SimulatedSnpProvider) -> Evidence:
    return provider.get_evidence(NONCE)


@pytest.fixture(scope="module")
def sim_anchors(sim_dir: Path) -> TrustAnchors:
    return TrustAnchors.from_dir(sim_dir)


@pytest.fixture(scope="module")
def claims(evidence: Evidence, sim_anchors: TrustAnchors) -> Claims:
    return verify_evidence(evidence, sim_anchors, NOW)


DEV_POLICY = Policy.from_dict({"allowed_roots": ["simulated"], "allowed_measurements": [MEASUREMENT.hex()]})


# -- simulated firmware -----------------------------------------------------------------------------

def test_firmware_files_and_names(sim_dir: Path) -> None:
    assert all((sim_dir / f).is_file() for f in FILES)
    assert stat.S_IMODE((sim_dir / "vcek.key").stat().st_mode) == 0o600
    certs = x509.load_pem_x509_certificates((sim_dir / "ask_ark.pem").read_bytes())
    assert [c.subject.rfc4514_string().split(",")[0] for c in certs] == [
        "CN=SIMULATED SEV-Milan NOT AMD", "CN=SIMULATED ARK-Milan NOT AMD"]
    assert certs[1] == x509.load_pem_x509_certificate((sim_dir / "ark.pem").read_bytes())
    vcek = x509.load_der_x509_certificate((sim_dir / "vcek.der").read_bytes())
    assert "NOT AMD" in vcek.subject.rfc4514_string() and "NOT AMD" in vcek.issuer.rfc4514_string()


def test_firmware_is_idempotent(sim_dir: Path) -> None:
    before = {f: (sim_dir / f).read_bytes() for f in FILES}
    create_simulated_firmware(sim_dir)
    assert before == {f: (sim_dir / f).read_bytes() for f in FILES}


def test_partial_firmware_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ark.pem").write_text("x")
    with pytest.raises(FileExistsError, match="remove"):
        create_simulated_firmware(tmp_path)


def test_command_line_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "fw")]) == 0
    assert all((tmp_path / "fw" / f).is_file() for f in FILES)
    assert "NOT AMD" in capsys.readouterr().out


# -- simulated evidence through the real verifier ---------------------------------------------------

def test_simulated_report_is_byte_exact_v3(evidence: Evidence) -> None:
    report = parse_report(evidence.report)
    assert encode_report(report) == evidence.report and report.version == 3
    assert report.measurement == MEASUREMENT and report.report_data == NONCE
    assert not report.debug and report.chip_id == SIM_CHIP_ID and report.reported_tcb == SIM_TCB


def test_simulated_evidence_verifies_as_simulated(claims: Claims) -> None:
    assert (claims.root, claims.product, claims.signing_key, claims.tee) == ("simulated", "Milan", "vcek", "sev-snp")
    assert claims.measurement == MEASUREMENT.hex() and claims.report_data == NONCE.hex()
    assert claims.tcb == SIM_TCB.as_dict() and claims.debug is False
    appraise(claims, DEV_POLICY, report_data=NONCE)


def test_json_round_trip(evidence: Evidence, sim_anchors: TrustAnchors) -> None:
    wire = json.loads(json.dumps(evidence.to_json()))
    assert set(wire) == {"tee", "report", "vcek", "cert_chain"}
    assert Evidence.from_json(wire) == evidence
    assert verify_evidence(Evidence.from_json(wire), sim_anchors, NOW).root == "simulated"


def test_production_anchors_refuse_simulated_root(evidence: Evidence) -> None:
    with pytest.raises(VerificationError) as err:
        verify_evidence(evidence, TrustAnchors.amd(), NOW)
    assert err.value.field == "evidence.cert_chain.ark"


def test_production_policy_refuses_simulated_root(claims: Claims) -> None:
    with pytest.raises(AppraisalError) as err:
        appraise(claims, Policy(), report_data=NONCE)
    assert err.value.field == "root" and err.value.actual == "simulated"


@pytest.mark.parametrize("offset", [0x50, 0x90, 0xC0, 0x180, 0x1A0, 0x2A0])
def test_tampered_simulated_report_is_refused(evidence: Evidence, sim_anchors: TrustAnchors, offset: int) -> None:
    data = bytearray(evidence.report)
    data[offset] ^= 0x01
    with pytest.raises(AttestationError) as err:
        verify_evidence(replace(evidence, report=bytes(data)), sim_anchors, NOW)
    assert err.value.field.startswith("report")


def test_wrong_report_data_binding_is_refused(claims: Claims) -> None:
    with pytest.raises(AppraisalError) as err:
        appraise(claims, DEV_POLICY, report_data=bytes(64))
    assert err.value.field == "report_data" and "not bound" in str(err.value)
    with pytest.raises(AppraisalError):
        appraise(claims, DEV_POLICY, report_data=NONCE[:32])


def test_simulated_evidence_expires_with_its_vcek(evidence: Evidence, sim_anchors: TrustAnchors) -> None:
    with pytest.raises(VerificationError, match="validity"):
        verify_evidence(evidence, sim_anchors, NOW + timedelta(days=365 * 8))


def test_report_signed_by_other_simulated_chip_is_refused(evidence: Evidence, sim_anchors: TrustAnchors,
                                                          tmp_path: Path) -> None:
    create_simulated_firmware(tmp_path)
    other = SimulatedSnpProvider(tmp_path, MEASUREMENT).get_evidence(NONCE)
    with pytest.raises(VerificationError) as err:  # other root: not in these anchors
        verify_evidence(replace(evidence, report=other.report, vcek=other.vcek, cert_chain=other.cert_chain),
                        sim_anchors, NOW)
    assert err.value.field == "evidence.cert_chain.ark"
    with pytest.raises(VerificationError) as err:  # right chain, report signed by another key
        verify_evidence(replace(evidence, report=other.report), sim_anchors, NOW)
    assert err.value.field == "report.signature"


def test_provider_requires_64_byte_report_data(provider: SimulatedSnpProvider) -> None:
    for bad in (b"", bytes(32), bytes(65)):
        with pytest.raises(ValueError, match="64 bytes"):
            provider.get_evidence(bad)


def test_provider_requires_firmware_and_measurement(tmp_path: Path, sim_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="attestation.simulated init"):
        SimulatedSnpProvider(tmp_path, MEASUREMENT)
    with pytest.raises(ValueError, match="48 bytes"):
        SimulatedSnpProvider(sim_dir, bytes(32))


def test_code_measurement_provider_matches_its_claims(sim_dir: Path, sim_anchors: TrustAnchors) -> None:
    m = code_measurement()
    claims = verify_evidence(SimulatedSnpProvider(sim_dir, m).get_evidence(NONCE), sim_anchors, NOW)
    appraise(claims, Policy.from_dict({"allowed_roots": ["simulated"], "allowed_measurements": [m.hex()]}))


# -- real evidence through the contract API ---------------------------------------------------------

def _real_evidence() -> Evidence:
    return Evidence(tee="sev-snp", report=read("sev-snp/go-sev-guest/attestation.bin"),
                    vcek=read("sev-snp/go-sev-guest/vcek.testcer"),
                    cert_chain=read("sev-snp/go-sev-guest/ask_ark_milan.pem").decode())


def _virtee_evidence() -> Evidence:
    return Evidence(tee="sev-snp", report=bytes.fromhex(read("sev-snp/virtee-sev/report_milan.hex").decode()),
                    vcek=read("sev-snp/virtee-sev/vcek_milan.der"),
                    cert_chain=read("sev-snp/virtee-sev/cert_chain_milan").decode())


VIRTEE_MEASUREMENT = ("7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
                      "3e1a0dc39b2c60bd95b9c480cd81841f")
VIRTEE_CHIP_ID = ("d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc"
                  "15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6")


def test_real_evidence_claims_and_production_policy() -> None:
    claims = verify_evidence(_virtee_evidence(), TrustAnchors.amd(), PINNED_NOW)
    assert (claims.root, claims.product, claims.debug, claims.policy) == ("amd", "Milan", False, 0x30000)
    assert claims.tcb == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    appraise(claims, Policy.from_dict({"allowed_measurements": [VIRTEE_MEASUREMENT],
                                       "min_tcb": {"bootloader": 3, "snp": 8, "microcode": 115},
                                       "chip_ids": [claims.chip_id]}))


def test_real_debug_guest_is_refused_by_default() -> None:
    claims = verify_evidence(_real_evidence(), TrustAnchors.from_dir("/nonexistent"), PINNED_NOW)
    assert claims.root == "amd" and claims.debug and claims.report_data.startswith("0102030405")
    with pytest.raises(AppraisalError) as err:
        appraise(claims, Policy())
    assert err.value.field == "policy.debug"
    appraise(claims, Policy(allow_debug=True), report_data=bytes([1, 2, 3, 4, 5]) + bytes(59))


@pytest.mark.parametrize(("policy", "field"), [
    ({"allowed_measurements": ["00" * 48]}, "measurement"),
    ({"allowed_measurements": []}, "measurement"),
    ({"min_tcb": {"snp": 9}}, "tcb.snp"),
    ({"min_tcb": {"microcode": 116}}, "tcb.microcode"),
    ({"chip_ids": ["00" * 64]}, "chip_id"),
    ({"host_data": ["11" * 32]}, "host_data"),
    ({"allowed_policy_bits": 0x10000}, "policy_bits"),
    ({"signing_keys": ["vlek"]}, "signing_key"),
    ({"allowed_roots": ["simulated"]}, "root"),
])
def test_real_evidence_refused_by_mismatching_policy(policy: dict[str, object], field: str) -> None:
    claims = verify_evidence(_virtee_evidence(), TrustAnchors.amd(), PINNED_NOW)
    with pytest.raises(AppraisalError) as err:
        appraise(claims, Policy.from_dict(policy))
    assert err.value.field == field


def test_fmc_minimum_ignored_for_products_without_fmc() -> None:
    claims = verify_evidence(_virtee_evidence(), TrustAnchors.amd(), PINNED_NOW)
    appraise(claims, Policy.from_dict({"min_tcb": {"fmc": 5}}))


# -- envelope and policy parsing ---------------------------------------------------------------------

@pytest.mark.parametrize(("obj", "field"), [
    ([], "evidence"),
    ({"tee": "nitro"}, "evidence.tee"),
    ({"tee": "tdx"}, "evidence.report"),
    ({"tee": "tdx", "report": "", "collateral": 5}, "evidence.collateral"),
    ({"tee": "tdx", "report": "", "collateral": {"tcb_info": 5}}, "evidence.collateral.tcb_info"),
    ({"tee": "sev-snp", "report": "!!", "vcek": ""}, "evidence.report"),
    ({"tee": "sev-snp", "report": "", "vcek": 5}, "evidence.vcek"),
    ({"tee": "sev-snp", "report": "", "vcek": "", "cert_chain": 3}, "evidence.cert_chain"),
])
def test_malformed_envelope_names_the_field(obj: object, field: str) -> None:
    with pytest.raises(ParseError) as err:
        Evidence.from_json(obj)  # type: ignore[arg-type]
    assert err.value.field == field


def test_truncated_report_in_envelope_is_parse_error(evidence: Evidence, sim_anchors: TrustAnchors) -> None:
    wire = evidence.to_json() | {"report": base64.b64encode(evidence.report[:1000]).decode()}
    with pytest.raises(ParseError) as err:
        verify_evidence(Evidence.from_json(wire), sim_anchors, NOW)
    assert err.value.field == "report"


def test_policy_from_toml_and_json_files(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text('allowed_measurements = ["AA"]\nallow_debug = false\n'
                                     'allowed_roots = ["amd", "simulated"]\n[min_tcb]\nsnp = 8\n')
    (tmp_path / "p.json").write_text(json.dumps({"allowed_measurements": ["aa"], "min_tcb": {"snp": 8},
                                                 "allowed_roots": ["amd", "simulated"]}))
    toml_policy, json_policy = Policy.from_file(tmp_path / "p.toml"), Policy.from_file(tmp_path / "p.json")
    assert toml_policy == json_policy
    assert toml_policy.allowed_measurements == ("aa",) and toml_policy.min_tcb == {"snp": 8}


def test_default_policy_is_production() -> None:
    policy = Policy.from_dict({})
    assert policy.allowed_roots == ("amd",) and policy.allow_debug is False


@pytest.mark.parametrize(("d", "field"), [
    ({"allowed_measurement": ["aa"]}, "policy.allowed_measurement"),
    ({"allowed_measurements": ["xyz"]}, "policy.allowed_measurements"),
    ({"allow_debug": "no"}, "policy.allow_debug"),
    ({"min_tcb": {"snpp": 1}}, "policy.min_tcb"),
    ({"min_tcb": {"snp": 300}}, "policy.min_tcb"),
    ({"allowed_roots": ["anything"]}, "policy.allowed_roots"),
    ({"allowed_policy_bits": True}, "policy.allowed_policy_bits"),
])
def test_bad_policy_is_refused(d: dict[str, object], field: str) -> None:
    with pytest.raises(ParseError) as err:
        Policy.from_dict(d)
    assert err.value.field == field


def test_unreadable_policy_file(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text("not = = toml")
    with pytest.raises(ParseError):
        Policy.from_file(tmp_path / "p.toml")


# -- each refusal word for word: field, expected, actual, what to do -------------------------------

def _refusal(err: pytest.ExceptionInfo[AttestationError]) -> tuple[object, ...]:
    return err.value.field, err.value.expected, err.value.actual, err.value.hint


@pytest.fixture(scope="module")
def real_claims() -> Claims:
    return verify_evidence(_virtee_evidence(), TrustAnchors.amd(), PINNED_NOW)


@pytest.mark.parametrize(("obj", "refusal"), [
    ("x", ("evidence", "a JSON object", "str")),
    ({"tee": "nitro"}, ("evidence.tee", "one of ['sev-snp', 'tdx']", "nitro")),
    ({"tee": "sev-snp", "report": 5}, ("evidence.report", "a base64 string", "int")),
    ({"tee": "sev-snp", "report": "", "cert_chain": b""}, ("evidence.cert_chain", "PEM text", "bytes")),
])
def test_a_malformed_envelope_is_refused_word_for_word(obj: object, refusal: tuple[str, str, str]) -> None:
    with pytest.raises(ParseError) as err:
        Evidence.from_json(obj)  # type: ignore[arg-type]
    assert _refusal(err) == (*refusal, "")


def test_undecodable_base64_is_named_with_the_decoders_reason() -> None:
    with pytest.raises(ParseError) as err:
        Evidence.from_json({"tee": "sev-snp", "report": "AAAA", "vcek": "AA=A"})
    assert (err.value.field, err.value.expected) == ("evidence.vcek", "standard base64")
    assert err.value.actual.startswith("undecodable text (") and err.value.actual.endswith(")")


def test_an_envelope_without_chain_or_collateral_reads_as_empty(evidence: Evidence) -> None:
    """SEV-SNP evidence may leave out its chain (the verifier knows AMD's intermediates); TDX its collateral."""
    wire = evidence.to_json()
    del wire["cert_chain"]
    assert Evidence.from_json(wire) == replace(evidence, cert_chain="")
    tdx = Evidence.from_json({"tee": "tdx", "report": wire["report"]})
    assert (tdx.collateral, tdx.vcek, tdx.cert_chain) == (None, b"", "")
    assert tdx.to_json() == {"tee": "tdx", "report": wire["report"], "vcek": "", "cert_chain": ""}


def test_evidence_of_another_tee_built_in_code_is_refused(sim_anchors: TrustAnchors, evidence: Evidence) -> None:
    with pytest.raises(ParseError) as err:
        verify_evidence(replace(evidence, tee="nitro"), sim_anchors, NOW)
    assert _refusal(err) == ("evidence.tee", "one of ['sev-snp', 'tdx']", "nitro", "")


def test_policy_hex_lists_take_one_string_and_any_case() -> None:
    policy = Policy.from_dict({"allowed_measurements": "AB" * 48, "chip_ids": ["Cd"], "host_data": ("EF",)})
    assert (policy.allowed_measurements, policy.chip_ids, policy.host_data) == (("ab" * 48,), ("cd",), ("ef",))
    assert Policy.from_dict({"rtmrs": {"rtmr1": []}}).rtmrs == {"rtmr1": ()}


def test_a_policy_may_name_every_rtmr_and_every_tcb_component() -> None:
    every = {f"rtmr{i}": ["aa"] for i in range(4)}
    assert Policy.from_dict({"rtmrs": every}).rtmrs == {name: ("aa",) for name in every}
    floors = dict.fromkeys(TCB_COMPONENTS, 1)
    assert Policy.from_dict({"min_tcb": floors}).min_tcb == floors


@pytest.mark.parametrize(("d", "refusal"), [
    ({"chip_ids": 5}, ("policy.chip_ids", "a list of hex strings", 5)),
    ({"host_data": ["aa", 1]}, ("policy.host_data", "a list of hex strings", ["aa", 1])),
    ({"host_data": ["a"]}, ("policy.host_data", "hex strings", ["a"])),
    ({"allowed_measurment": [], "max_vmp": 1}, ("policy.allowed_measurment", "one of " + str(sorted(
        f.name for f in dataclasses.fields(Policy))), "allowed_measurment")),
    ({"allow_debug": 1}, ("policy.allow_debug", "bool", 1)),
    ({"max_vmpl": True}, ("policy.max_vmpl", "int", True)),
    ({"allowed_td_attributes": "1"}, ("policy.allowed_td_attributes", "int", "1")),
    ({"signing_keys": ["vcek", "ark"]}, ("policy.signing_keys", "a list drawn from ['pck', 'vcek', 'vlek']",
                                         ["vcek", "ark"])),
    ({"allowed_roots": "amd"}, ("policy.allowed_roots", "a list drawn from ['amd', 'intel', 'simulated']", "amd")),
    ({"rtmrs": [1]}, ("policy.rtmrs", "a table with keys from ['rtmr0', 'rtmr1', 'rtmr2', 'rtmr3']", [1])),
    ({"rtmrs": {"rtmr2": ["zz"]}}, ("policy.rtmrs.rtmr2", "hex strings", ["zz"])),
    ({"min_tcb_status": "Revoked"}, ("policy.min_tcb_status", f"one of {list(TCB_STATUSES[:-1])}", "Revoked")),
    ({"min_tcb": [1]}, ("policy.min_tcb", f"a table with keys from {list(TCB_COMPONENTS)}", [1])),
    ({"min_tcb": {"snp": 256}}, ("policy.min_tcb", "integers 0..255", {"snp": 256})),
    ({"min_tcb": {"snp": -1}}, ("policy.min_tcb", "integers 0..255", {"snp": -1})),
    ({"min_tcb": {"snp": True}}, ("policy.min_tcb", "integers 0..255", {"snp": True})),
    ({"min_tcb": {"snp": "8"}}, ("policy.min_tcb", "integers 0..255", {"snp": "8"})),
])
def test_a_bad_policy_is_refused_word_for_word(d: dict[str, object], refusal: tuple[object, ...]) -> None:
    with pytest.raises(ParseError) as err:
        Policy.from_dict(d)
    assert _refusal(err) == (*refusal, "")


def test_a_policy_that_is_no_table_is_named() -> None:
    with pytest.raises(ParseError) as err:
        Policy.from_dict(["allow_debug"])  # type: ignore[arg-type]
    assert _refusal(err) == ("policy", "a table/object", "list", "")


def test_every_policy_key_is_read_into_its_attribute() -> None:
    d = {"allowed_measurements": ["aa"], "allow_debug": True, "min_tcb": {"snp": 0, "microcode": 255},
         "allowed_roots": ("intel", "simulated"), "chip_ids": ["bb"], "host_data": ["cc"], "allowed_policy_bits": 7,
         "signing_keys": ["pck"], "max_vmpl": 2, "rtmrs": {"rtmr3": ["dd"]}, "allowed_td_attributes": 0x10,
         "min_tcb_status": "OutOfDate"}
    assert Policy.from_dict(d) == Policy(
        allowed_measurements=("aa",), allow_debug=True, min_tcb={"snp": 0, "microcode": 255},
        allowed_roots=("intel", "simulated"), chip_ids=("bb",), host_data=("cc",), allowed_policy_bits=7,
        signing_keys=("pck",), max_vmpl=2, rtmrs={"rtmr3": ("dd",)}, allowed_td_attributes=0x10,
        min_tcb_status="OutOfDate")
    assert Policy.from_dict({}) == Policy()
    assert Policy().signing_keys == ("vcek", "vlek", "pck") and Policy().min_tcb_status is None


def test_a_policy_file_is_read_by_its_suffix(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{"max_vmpl": 1}')
    assert Policy.from_file(str(tmp_path / "p.json")).max_vmpl == 1
    (tmp_path / "p.toml").write_text('{"max_vmpl": 1}')  # JSON text is not TOML
    with pytest.raises(ParseError) as err:
        Policy.from_file(tmp_path / "p.toml")
    assert (err.value.field, err.value.expected) == (str(tmp_path / "p.toml"), "a JSON or TOML policy")
    assert err.value.actual.startswith("unreadable (")


@pytest.mark.parametrize(("policy", "refusal"), [
    ({"allowed_roots": ["simulated"]}, ("root", "one of ['simulated']", "amd",
                                        "simulated evidence is for development; production policies accept AMD "
                                        "roots only")),
    ({"signing_keys": ["vlek"]}, ("signing_key", "one of ['vlek']", "vcek", "")),
    ({"allowed_measurements": ["00" * 48]}, ("measurement", f"one of {['00' * 48]}", VIRTEE_MEASUREMENT,
                                             "this is not an approved build of the worker")),
    ({"min_tcb": {"snp": 9}}, ("tcb.snp", ">= 9", 8,
                               "the platform firmware is older than the policy allows; update it")),
    ({"chip_ids": ["00" * 64]}, ("chip_id", f"one of {['00' * 64]}", VIRTEE_CHIP_ID,
                                 "the evidence comes from another machine")),
    ({"host_data": ["11" * 32]}, ("host_data", f"one of {['11' * 32]}", "00" * 32, "")),
    ({"allowed_policy_bits": 0x10000}, ("policy_bits", "only bits in 0x10000", "0x30000",
                                        "the guest was launched with a policy bit not allowed")),
])
def test_each_appraisal_refusal_is_named_word_for_word(real_claims: Claims, policy: dict[str, object],
                                                       refusal: tuple[object, ...]) -> None:
    """Real AMD evidence against a policy wrong in one clause: that clause's refusal, word for word."""
    with pytest.raises(AppraisalError) as err:
        appraise(real_claims, Policy.from_dict(policy))
    assert _refusal(err) == refusal


def test_a_guest_above_the_highest_vmpl_is_refused_and_one_at_it_with_allowed_bits_is_not(real_claims: Claims) -> None:
    claims = replace(real_claims, vmpl=1)
    appraise(claims, Policy(max_vmpl=1, allowed_policy_bits=0x30000))  # exactly the guest's policy bits
    with pytest.raises(AppraisalError) as err:
        appraise(claims, Policy(max_vmpl=0))
    assert _refusal(err) == ("vmpl", "<= 0", 1, "")


def test_a_debug_guest_is_refused_naming_its_policy_word() -> None:
    claims = verify_evidence(_real_evidence(), TrustAnchors.amd(), PINNED_NOW)
    with pytest.raises(AppraisalError) as err:
        appraise(claims, Policy())
    assert _refusal(err) == ("policy.debug", "debugging disallowed (guest policy bit 19 clear)",
                             "debug allowed (policy 0xb0000)",
                             "the host can read this guest's memory; launch it without debug")


def test_report_data_must_equal_the_nonce_in_every_byte_and_length(real_claims: Claims) -> None:
    nonce = bytes.fromhex(real_claims.report_data)
    appraise(real_claims, Policy(), report_data=nonce)
    for other in (nonce[:-1] + bytes([nonce[-1] ^ 1]), nonce[:32], nonce + b"\0"):
        with pytest.raises(AppraisalError) as err:
            appraise(real_claims, Policy(), report_data=other)
        assert _refusal(err) == ("report_data", other.hex(), real_claims.report_data,
                                 "the evidence is not bound to this nonce and key (replayed or for another session)")


@pytest.mark.parametrize("floor", [{"fmc": 200}, {"tdx_module": 200, "pce": 200}])
def test_a_floor_of_a_component_the_platform_lacks_is_not_applied(real_claims: Claims,
                                                                  floor: dict[str, int]) -> None:
    """Milan has no FMC, SEV-SNP no TDX components: their floors apply to other evidence only."""
    appraise(real_claims, Policy(min_tcb=floor))
    with pytest.raises(AppraisalError) as err:
        appraise(replace(real_claims, tcb={**real_claims.tcb, "fmc": 199}), Policy(min_tcb={"fmc": 200}))
    assert (err.value.field, err.value.expected, err.value.actual) == ("tcb.fmc", ">= 200", 199)


def test_floors_of_components_the_platform_lacks_are_skipped_not_the_rest(real_claims: Claims) -> None:
    """Floors for TDX components and for an FMC Milan lacks, listed first, do not end the check early."""
    with pytest.raises(AppraisalError) as err:
        appraise(real_claims, Policy(min_tcb={"tdx_module": 200, "fmc": 200, "snp": 9}))
    assert (err.value.field, err.value.expected, err.value.actual) == ("tcb.snp", ">= 9", 8)


def test_a_component_missing_from_claims_built_in_code_is_below_every_floor(real_claims: Claims) -> None:
    """Claims built by hand without a component of their TEE fail closed, even at a floor of 0, naming it absent."""
    claims = replace(real_claims, tcb={k: v for k, v in real_claims.tcb.items() if k != "snp"})
    with pytest.raises(AppraisalError) as err:
        appraise(claims, Policy(min_tcb={"snp": 0}))
    assert _refusal(err) == ("tcb.snp", ">= 0", None,
                             "the platform firmware is older than the policy allows; update it")
