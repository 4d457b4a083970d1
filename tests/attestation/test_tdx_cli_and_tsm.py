"""`cscore attest verify --tee tdx` and the configfs-tsm provider for TDX guests."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation import Evidence, TrustAnchors, verify_evidence
from attestation.errors import AttestationError
from attestation.tdx import parse_quote
from enclave.tee import ConfigfsTsmProvider
from tests.attestation._attestation_data import DATA

G = DATA / "tdx/go-tdx-guest"
V4 = G / "tdx_prod_quote_SPR_E4.dat"
TDX = ["--tee", "tdx", "--at", "2026-01-01T00:00:00Z"]


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    return json.loads(capsys.readouterr().out)


def test_raw_and_hex_quotes_are_verified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attestation.cli import main

    (tmp_path / "quote.hex").write_text(V4.read_bytes().hex(" ", 32))
    for path in (V4, tmp_path / "quote.hex"):
        assert main([str(path), *TDX, "--json"]) == 0
        claims = _json(capsys)["claims"]
        assert isinstance(claims, dict) and claims["tee"] == "tdx" and claims["signing_key"] == "pck"
        assert claims["measurement"] == parse_quote(V4.read_bytes()).mr_td.hex()
    assert main([str(V4), *TDX]) == 0
    out = capsys.readouterr().out
    for word in ("tee tdx", "measurement", "report_data", "rtmr0", "tcb_status", "ppid"):
        assert word in out


def test_policy_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attestation.cli import main

    mrtd = parse_quote(V4.read_bytes()).mr_td.hex()
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(f'allowed_roots = ["intel"]\nallowed_measurements = ["{mrtd}"]\n')
    bad.write_text(f'allowed_roots = ["intel"]\nallowed_measurements = ["{"00" * 48}"]\n')
    assert main([str(V4), *TDX, "--policy", str(good)]) == 0
    assert capsys.readouterr().out.startswith("accepted")
    assert main([str(V4), *TDX, "--policy", str(bad), "--json"]) == 1
    assert _json(capsys)["error"]["field"] == "measurement"  # type: ignore[index]


def test_collateral_folder_gives_a_tcb_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attestation.cli import main

    for name in ("sample_tcbInfo_response", "sample_qeIdentity_response", "tcbInfoIssuerChain.pem"):
        shutil.copy(G / name, tmp_path / name)
    argv = [str(V4), "--tee", "tdx", "--collateral", str(tmp_path), "--json"]
    assert main([*argv, "--at", "2023-07-01"]) == 1  # this platform is below every TCB level listed
    assert _json(capsys)["error"]["field"] == "tcb_info.tcbLevels"  # type: ignore[index]
    assert main([*argv, "--at", "2023-08-01"]) == 1  # collateral past nextUpdate
    assert _json(capsys)["error"]["field"] == "tcb_info.nextUpdate"  # type: ignore[index]
    (tmp_path / "sample_qeIdentity_response").unlink()
    assert main([*argv, "--at", "2023-07-01"]) == 2  # incomplete collateral


def test_unusable_and_rejected_inputs(tmp_path: Path) -> None:
    from attestation.cli import main

    (tmp_path / "short").write_bytes(V4.read_bytes()[:700])
    assert main([str(tmp_path / "short"), *TDX]) == 2
    flipped = bytearray(V4.read_bytes())
    flipped[48 + 200] ^= 4
    (tmp_path / "flipped").write_bytes(bytes(flipped))
    assert main([str(tmp_path / "flipped"), *TDX]) == 1
    assert main([str(V4), "--tee", "tdx", "--at", "2031-01-01"]) == 1
    assert main([str(V4), "--tee", "sev-snp", "--collateral", str(tmp_path), "--certs"]) == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=1500) | st.sampled_from([V4.read_bytes()]).flatmap(
    lambda q: st.integers(0, len(q)).map(lambda n: q[:n])))
def test_cli_never_crashes_on_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    from attestation.cli import main

    (tmp_path / "blob").write_bytes(data)
    for tee in ("tdx", "sev-snp"):
        assert main([str(tmp_path / "blob"), "--tee", tee, "--json"]) in (0, 1, 2)


# -- configfs-tsm -----------------------------------------------------------------------------------

def _tsm_entry(path: Path, provider: str, outblob: bytes, generation: int = 1) -> Path:
    """A folder shaped like /sys/kernel/config/tsm/report/<entry> after the kernel answered."""
    path.mkdir(parents=True)
    (path / "provider").write_text(provider + "\n")
    (path / "outblob").write_bytes(outblob)
    (path / "generation").write_text(f"{generation}\n")
    (path / "privlevel_floor").write_text("0\n")
    return path


def test_configfs_tdx_guest_outblob_is_a_verifiable_quote(tmp_path: Path) -> None:
    quote = V4.read_bytes()
    report_data = parse_quote(quote).report_data
    entry = _tsm_entry(tmp_path / "entry", "tdx_guest", quote)
    evidence = ConfigfsTsmProvider(tmp_path)._collect(entry, report_data)
    assert (evidence.tee, evidence.report) == ("tdx", quote)
    assert (entry / "inblob").read_bytes() == report_data
    claims = verify_evidence(evidence, TrustAnchors.amd(), datetime(2026, 1, 1, tzinfo=UTC))
    assert claims.report_data == report_data.hex()


def test_configfs_unknown_provider_and_race_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AttestationError) as err:
        ConfigfsTsmProvider(tmp_path)._collect(_tsm_entry(tmp_path / "a", "arm_cca_guest", b"x"), bytes(64))
    assert err.value.field == "tsm.provider"
    with pytest.raises(AttestationError) as err:
        ConfigfsTsmProvider(tmp_path)._collect(_tsm_entry(tmp_path / "b", "tdx_guest", b"x", 3), bytes(64))
    assert err.value.field == "tsm.generation"


def test_configfs_get_evidence_uses_a_private_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quote = V4.read_bytes()
    seen: list[Path] = []

    def fake_collect(self: ConfigfsTsmProvider, entry: Path, report_data: bytes) -> Evidence:
        seen.append(entry)
        assert entry.parent == tmp_path and entry.is_dir()
        _tsm_entry(entry / "x", "tdx_guest", quote)  # the kernel's files; removed again below
        shutil.rmtree(entry / "x")
        return Evidence(tee="tdx", report=quote)

    monkeypatch.setattr(ConfigfsTsmProvider, "_collect", fake_collect)
    assert ConfigfsTsmProvider(tmp_path).get_evidence(bytes(64)) == Evidence(tee="tdx", report=quote)
    assert seen and not seen[0].exists()  # the entry is removed after use


def test_configfs_tee_is_the_kind_of_this_guests_evidence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Announced at /kbs/v0/auth: learnt from one report when none was requested yet, then remembered."""
    asked: list[bytes] = []

    def kernel(self: ConfigfsTsmProvider, entry: Path, report_data: bytes) -> Evidence:
        asked.append(report_data)
        return Evidence(tee="tdx", report=V4.read_bytes())

    monkeypatch.setattr(ConfigfsTsmProvider, "_collect", kernel)
    provider = ConfigfsTsmProvider(tmp_path)
    assert (provider.tee, provider.tee, asked) == ("tdx", "tdx", [bytes(64)])
    fresh = ConfigfsTsmProvider(tmp_path)
    fresh.get_evidence(b"\x01" * 64)
    assert (fresh.tee, len(asked)) == ("tdx", 2)  # known from the evidence already given: no further report
