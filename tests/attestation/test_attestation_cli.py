"""`cscore attest verify` (attestation.cli): exit 0 accepted, 1 rejected, 2 unusable input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from attestation.cli import add_arguments, main, run
from enclave.tee import SimulatedSnpProvider
from tests.attestation._attestation_data import DATA

GO = DATA / "sev-snp/go-sev-guest"
VT = DATA / "sev-snp/virtee-sev"
AT = ["--at", "2026-01-01T00:00:00Z"]


def test_add_arguments_and_run(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(VT / "report_milan.hex"), "--certs", str(VT / "vcek_milan.der"),
                              str(VT / "cert_chain_milan"), *AT, "--json"])
    assert run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["claims"]["measurement"].startswith("7a1e5c26") and out["claims"]["root"] == "amd"


def test_raw_binary_accepted_and_policy_refuses_debug(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(GO / "attestation.bin"), "--certs", str(GO / "vcek.testcer"), str(GO / "ask_ark_milan.pem"), *AT]
    assert main(argv) == 0
    (tmp_path / "policy.toml").write_text("allow_debug = false\n")
    assert main([*argv, "--policy", str(tmp_path / "policy.toml")]) == 1
    assert "policy.debug" in capsys.readouterr().err


def test_rejections_exit_1(tmp_path: Path) -> None:
    data = bytearray((GO / "attestation.bin").read_bytes())
    data[0x90] ^= 1
    (tmp_path / "bad.bin").write_bytes(bytes(data))
    assert main([str(tmp_path / "bad.bin"), "--certs", str(GO / "vcek.testcer"), *AT]) == 1
    assert main([str(GO / "attestation.bin"), "--certs", str(GO / "vcek.testcer"),
                 "--at", "2035-01-01"]) == 1


def test_unusable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "short.bin").write_bytes(b"\x01" * 100)
    assert main([str(tmp_path / "short.bin"), "--certs", str(GO / "vcek.testcer"), *AT, "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["field"] == "report"
    assert main([str(tmp_path / "missing.bin"), *AT]) == 2
    assert main([str(GO / "attestation.bin"), *AT]) == 2  # no VCEK given
    assert main([str(GO / "attestation.bin"), "--tee", "tdx", *AT]) == 2


@pytest.mark.parametrize(("quote", "version"), [("tdx_prod_quote_SPR_E4.dat", 4), ("quote_v5_sample.dat", 5)])
def test_a_tdx_quote_without_tee_tdx_says_to_pass_it(capsys: pytest.CaptureFixture[str], quote: str,
                                                     version: int) -> None:
    """--tee defaults to sev-snp: a TDX quote was answered with "download the VCEK from AMD's KDS"."""
    path = DATA / "tdx/go-tdx-guest" / quote
    assert main([str(path), *AT]) == 2
    assert capsys.readouterr().err == (f"unusable input: {path}: expected an SEV-SNP attestation report (--tee "
                                       f"sev-snp, the default), got a TDX quote (version {version}); pass --tee tdx\n")


def test_a_tdx_header_alone_without_tee_tdx_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Its first 8 bytes (version, attestation key type, TEE type) are enough to tell a TDX quote; 7 are not."""
    quote = (DATA / "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat").read_bytes()
    (tmp_path / "header.bin").write_bytes(quote[:8])
    assert main([str(tmp_path / "header.bin"), *AT]) == 2
    assert capsys.readouterr().err == (f"unusable input: {tmp_path / 'header.bin'}: expected an SEV-SNP attestation "
                                       "report (--tee sev-snp, the default), got a TDX quote (version 4); pass --tee "
                                       "tdx\n")
    (tmp_path / "short.bin").write_bytes(quote[:7])
    assert main([str(tmp_path / "short.bin"), *AT]) == 2
    err = capsys.readouterr().err
    assert "got a TDX quote" not in err and "got 7 bytes of unrecognised evidence" in err


def test_evidence_json_with_simulated_trust_dir(sim_dir: Path, tmp_path: Path) -> None:
    evidence = SimulatedSnpProvider(sim_dir, bytes(48)).get_evidence(bytes(64))
    (tmp_path / "ev.json").write_text(json.dumps(evidence.to_json()))
    assert main([str(tmp_path / "ev.json")]) == 1  # AMD roots only: simulated root refused
    assert main([str(tmp_path / "ev.json"), "--trust-dir", str(sim_dir)]) == 0


NITRO = DATA / "nitro/evervault"
SUPPORTED = ("an AMD SEV-SNP attestation report (--tee sev-snp) or an Intel TDX quote (--tee tdx), raw, as hex text "
             "or in an Evidence JSON envelope")


@pytest.mark.parametrize("name", ["valid-attestation-doc-bytes", "valid-attestation-doc-base64"])
@pytest.mark.parametrize("extra", [[], ["--tee", "tdx"], ["--certs", str(GO / "vcek.testcer"),
                                                          str(GO / "ask_ark_milan.pem")]])
def test_nitro_evidence_is_refused_by_name(capsys: pytest.CaptureFixture[str], name: str, extra: list[str]) -> None:
    """Before: "--certs: expected the VCEK", an SEV-SNP certificate-chain rejection, or "quote.version"."""
    path = NITRO / name
    assert main([str(path), *extra, *AT]) == 2
    assert capsys.readouterr().err == (
        f"unusable input: {path}: expected evidence of a kind cscore verifies: {SUPPORTED}, got an AWS Nitro Enclaves "
        "attestation document (COSE_Sign1); cscore's workers run in SEV-SNP or TDX confidential VMs: give the "
        "worker's evidence, or check a Nitro document with a Nitro verifier\n")


def test_unrecognised_evidence_is_named_so_before_any_vcek_is_asked_for(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "odd.bin").write_bytes(b"\x01" * 100)
    assert main([str(tmp_path / "odd.bin"), *AT]) == 2
    assert capsys.readouterr().err == (
        f"unusable input: report: expected 1184 bytes (an SEV-SNP ATTESTATION_REPORT); cscore verifies {SUPPORTED}, "
        f"got 100 bytes of unrecognised evidence in {tmp_path / 'odd.bin'}; give the worker's raw SEV-SNP report, or "
        "its TDX quote with --tee tdx\n")
    assert main([str(GO / "ask_ark_milan.pem"), *AT]) == 2  # a certificate given as the evidence
    assert capsys.readouterr().err.endswith("got a PEM file; give the report as FILE and certificates with --certs\n")
