"""Simulated TEE evidence goes through the same verifier as real evidence; appraisal decides."""

from __future__ import annotations

import base64
import json
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from attestation import Claims, Evidence, Policy, TrustAnchors, appraise, verify_evidence
from attestation.errors import AppraisalError, AttestationError, ParseError, VerificationError
from attestation.simulated import FILES, SIM_CHIP_ID, SIM_TCB, create_simulated_firmware, main
from attestation.snp.report import encode_report, parse_report
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
