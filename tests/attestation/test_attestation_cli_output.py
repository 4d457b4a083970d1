"""`cscore attest verify` word for word: each verdict, where it is printed, the claims a person reads, each refusal of
unusable input (field, expected, actual), the file forms it reads. What the command says is what was verified."""

from __future__ import annotations

import argparse
import json
import warnings
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation import Evidence, TrustAnchors, verify_evidence
from attestation.cli import _describe, _load_any_certs, _load_evidence, _parse_time, _read_blob, _split_certs, main
from attestation.errors import ParseError
from attestation.evidence import Claims
from tests.attestation._attestation_data import DATA, PINNED_NOW

GO = DATA / "sev-snp/go-sev-guest"
VT = DATA / "sev-snp/virtee-sev"
TDX_QUOTE = DATA / "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat"
AT = ["--at", "2026-01-01T00:00:00Z"]
GO_ARGS = [str(GO / "attestation.bin"), "--certs", str(GO / "vcek.testcer"), str(GO / "ask_ark_milan.pem"), *AT]


def _claims(rel: list[str]) -> Claims:
    """The claims of go-sev-guest's report, verified here directly (what the command must print)."""
    leaf, chain = _split_certs([GO / name for name in rel])
    assert leaf is not None
    evidence = Evidence(tee="sev-snp", report=(GO / "attestation.bin").read_bytes(), vcek=leaf, cert_chain=chain)
    return verify_evidence(evidence, TrustAnchors.amd(), PINNED_NOW)


SNP = Claims(tee="sev-snp", version=2, product="Milan", measurement="aa", report_data="bb", host_data="cc",
             policy=0x30000, debug=False, tcb={"snp": 8}, chip_id="dd", signing_key="vcek", root="amd")


def test_the_claims_a_person_checks_are_each_on_their_line() -> None:
    assert _describe(SNP) == (
        "  tee sev-snp, version 2, product Milan\n  measurement aa\n  report_data bb\n  policy 0x30000, debug False\n"
        "  tcb {'snp': 8}\n  chip_id dd\n  signing_key vcek, root amd")


def test_tdx_claims_name_their_own_fields_and_say_when_no_tcb_status_was_evaluated() -> None:
    tdx = Claims(tee="tdx", version=4, product="tdx-1.0", measurement="aa", report_data="bb", host_data="cc",
                 policy=0x10, debug=True, tcb={"pce": 11}, chip_id="dd", signing_key="pck", root="intel",
                 rtmrs=["r0", "r1"], fmspc="ee")
    assert _describe(tdx) == (
        "  tee tdx, version 4, product tdx-1.0\n  measurement aa\n  report_data bb\n"
        "  td_attributes 0x10, debug True, mr_config_id cc\n  tcb {'pce': 11}\n  ppid dd, fmspc ee\n"
        "  signing_key pck, root intel\n  rtmr0 r0\n  rtmr1 r1\n  tcb_status not evaluated (no --collateral)")
    rated = Claims(**{**tdx.to_dict(), "tcb_status": "OutOfDate", "advisory_ids": ["INTEL-SA-1", "INTEL-SA-2"]})
    assert _describe(rated).splitlines()[-1] == "  tcb_status OutOfDate, advisories INTEL-SA-1, INTEL-SA-2"
    plain = Claims(**{**tdx.to_dict(), "tcb_status": "UpToDate"})
    assert _describe(plain).splitlines()[-1] == "  tcb_status UpToDate"


def test_verified_without_a_policy_says_so_and_prints_the_claims(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(GO_ARGS) == 0
    out = capsys.readouterr()
    claims = _claims(["vcek.testcer", "ask_ark_milan.pem"])
    assert out.out == f"verified (no policy given)\n{_describe(claims)}\n" and out.err == ""
    assert "root amd" in out.out


def test_accepted_by_a_policy_and_refused_by_one_word_for_word(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    claims = _claims(["vcek.testcer", "ask_ark_milan.pem"])
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"allowed_measurements": [claims.measurement], "allow_debug": True}))
    assert main([*GO_ARGS, "--policy", str(good)]) == 0
    out = capsys.readouterr()
    assert out.out == f"accepted\n{_describe(claims)}\n" and out.err == ""
    bad = tmp_path / "bad.toml"
    bad.write_text("allow_debug = false\n")
    assert main([*GO_ARGS, "--policy", str(bad)]) == 1
    out = capsys.readouterr()
    detail = ("policy.debug: expected debugging disallowed (guest policy bit 19 clear), got debug allowed (policy "
              "0xb0000); the host can read this guest's memory; launch it without debug")
    assert out.err == f"rejected by policy: {detail}\n"
    assert out.out == f"{_describe(claims)}\n"  # the claims that were verified, then refused
    assert main([*GO_ARGS, "--policy", str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {
        "verdict": "rejected by policy", "exit": 1, "claims": claims.to_dict(),
        "error": {"kind": "appraisal", "field": "policy.debug", "expected": "debugging disallowed (guest policy bit "
                  "19 clear)", "actual": "debug allowed (policy 0xb0000)", "detail": detail}}


def test_json_verdicts_carry_the_exit_status_and_claims_only_when_verified(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*GO_ARGS, "--json"]) == 0
    claims = _claims(["vcek.testcer", "ask_ark_milan.pem"])
    assert json.loads(capsys.readouterr().out) == {"verdict": "verified (no policy given)", "exit": 0,
                                                   "claims": claims.to_dict()}
    assert main([str(GO / "attestation.bin"), "--certs", str(GO / "vcek.testcer"), "--at", "2035-01-01", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "rejected" and out["exit"] == 1 and "claims" not in out
    assert out["error"]["kind"] == "verification"


def test_a_rejection_names_the_check_on_stderr_and_prints_no_claims(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray((GO / "attestation.bin").read_bytes())
    data[0x90] ^= 1  # inside the measurement: the signature no longer verifies
    (tmp_path / "bad.bin").write_bytes(bytes(data))
    assert main([str(tmp_path / "bad.bin"), "--certs", str(GO / "vcek.testcer"), *AT]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("rejected: report.signature: ")


def test_unusable_input_is_refused_naming_the_field_expected_and_actual(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(GO / "attestation.bin"), *AT, "--json"]) == 2
    assert json.loads(capsys.readouterr().out) == {"verdict": "unusable input", "exit": 2, "error": {
        "kind": "parse", "field": "--certs", "expected": "the VCEK or VLEK certificate (DER or PEM)", "actual": "none",
        "detail": "--certs: expected the VCEK or VLEK certificate (DER or PEM), got none; download it from AMD's KDS "
                  "for this chip and TCB"}}
    assert main([str(tmp_path / "missing.bin"), *AT, "--json"]) == 2
    missing = json.loads(capsys.readouterr().out)
    assert missing["verdict"] == "unusable input" and missing["exit"] == 2
    assert missing["error"] == {"detail": f"[Errno 2] No such file or directory: '{tmp_path / 'missing.bin'}'"}
    assert main([*GO_ARGS, "--at", "yesterday"]) == 2
    out = capsys.readouterr()
    assert out.err == "unusable input: Invalid isoformat string: 'yesterday'\n" and out.out == ""
    (tmp_path / "short.bin").write_bytes(b"\x01" * 100)
    assert main([str(tmp_path / "short.bin"), "--certs", str(GO / "vcek.testcer"), *AT]) == 2
    assert capsys.readouterr().err.startswith("unusable input: report: ")


def test_a_report_that_parses_only_in_verification_is_unusable_not_rejected(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "short.bin").write_bytes(b"\x01" * 100)  # read as a blob, refused by the parser in verify_evidence
    assert main([str(tmp_path / "short.bin"), "--certs", str(GO / "vcek.testcer"), *AT, "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert (out["verdict"], out["exit"], out["error"]["kind"]) == ("unusable input", 2, "parse")


def test_the_time_is_iso_8601_read_as_utc_when_it_names_no_zone() -> None:
    assert _parse_time("2026-01-01T00:00:00Z") == datetime(2026, 1, 1, tzinfo=UTC)
    assert _parse_time("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)
    plus_two = _parse_time("2026-01-01T02:00:00+02:00")
    assert plus_two.utcoffset() == timedelta(hours=2) and plus_two == datetime(2026, 1, 1, tzinfo=UTC)
    before = datetime.now(UTC)
    for empty in (None, ""):
        now = _parse_time(empty)
        assert now.tzinfo is UTC and before <= now <= datetime.now(UTC)
    assert _parse_time("2026-01-01T00:00:00-05:00").tzinfo == timezone(timedelta(hours=-5))


def test_a_blob_is_raw_bytes_or_the_hex_a_text_file_spells(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    for raw, read in ((b"\x00\xff\x10", b"\x00\xff\x10"), (b"ab cd\n\tef\r\n", b"\xab\xcd\xef"),
                      (b"abc", b"abc"), (b"zz", b"zz"), (b"", b""), (b"  \n", b"  \n"), (b"\xe9", b"\xe9")):
        blob.write_bytes(raw)
        assert _read_blob(blob) == read, raw


def test_certificates_are_read_from_pem_or_der_and_split_by_key_type(tmp_path: Path) -> None:
    chain_pem = (GO / "ask_ark_milan.pem").read_bytes()
    assert [c.subject.rfc4514_string() for c in _load_any_certs(GO / "ask_ark_milan.pem")] == [
        c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(chain_pem)]
    vcek_der = (GO / "vcek.testcer").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the command hides cryptography's warnings about AMD's serials
        [vcek] = _load_any_certs(GO / "vcek.testcer")
    assert vcek.public_bytes(serialization.Encoding.DER) == vcek_der
    (tmp_path / "vcek.pem").write_bytes(vcek.public_bytes(serialization.Encoding.PEM))
    for order in ([GO / "ask_ark_milan.pem", tmp_path / "vcek.pem"], [tmp_path / "vcek.pem", GO / "ask_ark_milan.pem"]):
        leaf, chain = _split_certs(order)
        assert leaf == vcek_der
        assert chain == "".join(c.public_bytes(serialization.Encoding.PEM).decode()
                                for c in x509.load_pem_x509_certificates(chain_pem))
    assert _split_certs([]) == (None, "")
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    (tmp_path / "junk.der").write_bytes(b"\x30\x03\x02\x01\x00")
    for junk in ("junk.pem", "junk.der"):
        with pytest.raises(ParseError) as refused:
            _load_any_certs(tmp_path / junk)
        assert (refused.value.field, refused.value.expected) == (str(tmp_path / junk), "a DER or PEM certificate")
        assert str(refused.value.actual).startswith("unreadable (")


def test_evidence_is_read_from_json_an_envelope_with_collateral_or_a_blob(tmp_path: Path) -> None:
    envelope = Evidence(tee="sev-snp", report=b"\x01\x02", vcek=b"\x03", cert_chain="")
    (tmp_path / "ev.json").write_text("\n  " + json.dumps(envelope.to_json()))
    assert _load_evidence(tmp_path / "ev.json", "tdx", []) == envelope  # the envelope names its TEE
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ParseError) as refused:
        _load_evidence(tmp_path / "broken.json", "sev-snp", [])
    assert (refused.value.field, refused.value.expected) == (str(tmp_path / "broken.json"), "Evidence JSON")
    assert refused.value.actual == ("invalid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
                                    "(char 1))")
    tdx = _load_evidence(TDX_QUOTE, "tdx", [])
    assert tdx == Evidence(tee="tdx", report=TDX_QUOTE.read_bytes(), collateral=None)
    with pytest.raises(ParseError) as refused:
        _load_evidence(GO / "attestation.bin", "sev-snp", [], _collateral(tmp_path / "collateral"))
    assert (refused.value.field, refused.value.expected, refused.value.actual) == (
        "--collateral", "only with --tee tdx", str(tmp_path / "collateral"))
    snp = _load_evidence(GO / "attestation.bin", "sev-snp", [GO / "vcek.testcer", GO / "ask_ark_milan.pem"])
    chain = _split_certs([GO / "ask_ark_milan.pem"])[1]
    assert snp == Evidence(tee="sev-snp", report=(GO / "attestation.bin").read_bytes(),
                           vcek=(GO / "vcek.testcer").read_bytes(), cert_chain=chain)


def _collateral(folder: Path) -> Path:
    folder.mkdir()
    for name in ("sample_tcbInfo_response", "sample_qeIdentity_response", "tcbInfoIssuerChain.pem"):
        (folder / name).write_bytes((DATA / "tdx/go-tdx-guest" / name).read_bytes())
    return folder


def test_collateral_is_attached_to_an_envelope(tmp_path: Path) -> None:
    _collateral(tmp_path / "c")
    envelope = Evidence(tee="tdx", report=TDX_QUOTE.read_bytes())
    (tmp_path / "ev.json").write_text(json.dumps(envelope.to_json()))
    loaded = _load_evidence(tmp_path / "ev.json", "tdx", [], tmp_path / "c")
    assert loaded.collateral is not None and loaded.report == envelope.report
    assert _load_evidence(TDX_QUOTE, "tdx", [], tmp_path / "c").collateral == loaded.collateral


def test_the_arguments_and_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from attestation.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["f"])
    assert vars(args) == {"file": Path("f"), "tee": "sev-snp", "certs": [], "collateral": None, "at": None,
                          "policy": None, "trust_dir": None, "json": False}
    with pytest.raises(SystemExit):
        parser.parse_args(["f", "--tee", "sgx"])
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert help_text.startswith("usage: cscore attest verify [-h] [--tee {sev-snp,tdx}]")
    assert "``cscore attest verify FILE``: verify (and optionally appraise) one piece of evidence." in help_text


HELP = (
    "usage: cscore attest verify [-h] [--tee {sev-snp,tdx}] [--certs [CERTS ...]] [--collateral COLLATERAL] [--at AT] "
    "[--policy POLICY] [--trust-dir TRUST_DIR] [--json] file "
    "``cscore attest verify FILE``: verify (and optionally appraise) one piece of evidence. "
    "positional arguments: file report (raw binary or hex text) or Evidence JSON "
    "options: -h, --help show this help message and exit --tee {sev-snp,tdx} "
    "--certs [CERTS ...] VCEK/VLEK (DER or PEM) and ASK/ARK chain (PEM) files "
    "--collateral COLLATERAL TDX: folder with Intel PCS TCB Info, QE Identity and issuer chain (PEM) "
    "--at AT verification time, ISO 8601 (default: now, UTC) "
    "--policy POLICY policy file (.json or .toml) to appraise against "
    "--trust-dir TRUST_DIR also trust the simulated root in this folder (development only) "
    "--json print the verdict and claims as JSON")


def test_the_help_says_what_each_option_takes_word_for_word(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    assert " ".join(capsys.readouterr().out.split()) == HELP


def test_every_path_option_is_read_as_a_path() -> None:
    from attestation.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["f", "--certs", "a", "b", "--collateral", "c", "--at", "2026-01-01", "--policy", "p",
                              "--trust-dir", "t", "--tee", "tdx", "--json"])
    assert vars(args) == {"file": Path("f"), "tee": "tdx", "certs": [Path("a"), Path("b")], "collateral": Path("c"),
                          "at": "2026-01-01", "policy": Path("p"), "trust_dir": Path("t"), "json": True}  # not str


def test_the_json_verdict_is_printed_indented_by_two(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*GO_ARGS, "--json"]) == 0
    claims = _claims(["vcek.testcer", "ask_ark_milan.pem"])
    expected = {"verdict": "verified (no policy given)", "exit": 0, "claims": claims.to_dict()}
    assert capsys.readouterr().out == json.dumps(expected, indent=2) + "\n"


def test_the_collateral_an_envelope_carries_is_appraised_without_the_option(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """An Evidence JSON holding Intel's collateral gets a TCB verdict from it: go-tdx-guest's platform is below every
    TCB level of its sample TCB Info, so it is rejected, as with --collateral, not accepted with the TCB unevaluated."""
    from attestation.errors import AttestationError
    from attestation.tdx.collateral import TdxCollateral

    collateral = TdxCollateral.from_dir(_collateral(tmp_path / "c"))
    envelope = Evidence(tee="tdx", report=TDX_QUOTE.read_bytes(), collateral=collateral)
    (tmp_path / "ev.json").write_text(json.dumps(envelope.to_json()))
    at = datetime(2023, 7, 1, tzinfo=UTC)
    with pytest.raises(AttestationError) as below:
        verify_evidence(envelope, TrustAnchors.amd(), at)
    assert below.value.field == "tcb_info.tcbLevels"
    assert main([str(tmp_path / "ev.json"), "--at", "2023-07-01T00:00:00Z"]) == 1
    out = capsys.readouterr()
    assert out.err == f"rejected: {below.value}\n" and out.out == ""
    assert main([str(tmp_path / "ev.json"), "--at", "2023-07-01T00:00:00Z", "--collateral", str(tmp_path / "c")]) == 1
    assert capsys.readouterr().err == f"rejected: {below.value}\n"


def test_the_trust_folder_named_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--trust-dir is read (an unreadable simulated root there is unusable input, named), and a folder holding AMD's
    own ARK adds nothing: the report still verifies under root amd."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ark.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(ParseError) as unreadable:
        TrustAnchors.from_dir(tmp_path / "bad")
    assert unreadable.value.field == str(tmp_path / "bad" / "ark.pem")
    assert main([*GO_ARGS, "--trust-dir", str(tmp_path / "bad")]) == 2
    out = capsys.readouterr()
    assert out.err == f"unusable input: {unreadable.value}\n" and out.out == ""
    (tmp_path / "amd").mkdir()
    milan_ark = x509.load_pem_x509_certificates((GO / "ask_ark_milan.pem").read_bytes())[-1]
    (tmp_path / "amd" / "ark.pem").write_bytes(milan_ark.public_bytes(serialization.Encoding.PEM))
    assert main([*GO_ARGS, "--trust-dir", str(tmp_path / "amd")]) == 0
    claims = _claims(["vcek.testcer", "ask_ark_milan.pem"])
    assert capsys.readouterr().out == f"verified (no policy given)\n{_describe(claims)}\n" and claims.root == "amd"
