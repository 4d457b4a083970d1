"""`cscore worker measure`: the library's published SEV-SNP vectors, HOST_DATA from the configuration, and a
policy written from the command's output that accepts matching evidence and refuses any other."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from attestation import Policy, TrustAnchors, appraise, verify_evidence
from attestation.errors import AppraisalError
from cscore import worker_measure as wm
from cscore.cli import main
from enclave.tee import SimulatedSnpProvider

DATA = Path(__file__).resolve().parents[1] / "data" / "sev-snp-measure"
VECTORS = json.loads((DATA / "snp_vectors.json").read_text())["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["test"] for v in VECTORS])
def test_the_librarys_published_vectors(vector: dict[str, Any]) -> None:
    launch = wm.SnpLaunch(DATA / vector["firmware"], vector["kernel"] and Path(vector["kernel"]),
                          vector["initrd"] and Path(vector["initrd"]), vector["append"], vector["vcpus"],
                          vector["vcpu_type"], vector["guest_features"], vector["vmm_type"].lower())
    assert wm.snp_measurement(launch).hex() == vector["expected"]


def _measure(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["worker", "measure", "--json", *args]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_the_command_prints_the_published_value_and_the_configuration_digest(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = _config_file(tmp_path)
    out = _measure(capsys, "--ovmf", str(DATA / "ovmf_AmdSev_suffix.bin"), "--kernel", "/dev/null", "--initrd",
                   "/dev/null", "--append", "console=ttyS0 loglevel=7", "--vcpus", "1", "--vcpu-type", "EPYC-v4",
                   "--guest-features", "0x21", "--config", str(config))
    published = next(v["expected"] for v in VECTORS if v["test"] == "test_snp_default")
    assert out["sev_snp"] == {"EPYC-v4": published}
    # RFC 8785: keys sorted, no whitespace, UTF-8 (the document holds no numbers to format)
    canonical = json.dumps(json.loads(config.read_text()), sort_keys=True, separators=(",", ":")).encode()
    assert out["host_data"] == hashlib.sha256(canonical).hexdigest()
    assert out["tdx_mrconfigid"] == out["host_data"] + "00" * 16
    assert out["policy"] == {"allowed_measurements": [published], "allowed_roots": ["amd"], "allow_debug": False,
                             "host_data": [out["host_data"]]}


def test_config_alone_prints_host_data_and_mrconfigid(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """README: `cscore worker measure --config FILE` prints the HOST_DATA / MRCONFIGID to launch a worker with; it
    asked for an OVMF image first, which the configuration's digest does not depend on."""
    config = _config_file(tmp_path)
    canonical = json.dumps(json.loads(config.read_text()), sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(canonical).hexdigest()
    assert _measure(capsys, "--config", str(config)) == {"host_data": digest, "tdx_mrconfigid": digest + "00" * 16}
    assert main(["worker", "measure", "--config", str(config)]) == 0
    assert capsys.readouterr().out == (f"HOST_DATA (SNP)      {digest}\nMRCONFIGID (TDX)     {digest}{'00' * 16}\n"
                                       "(launch measurement: add --ovmf FILE or --image DIR)\n")
    assert main(["worker", "measure"]) == 2  # neither image nor configuration: nothing to measure
    assert "--ovmf: expected the OVMF firmware (or --image DIR with image.json), got neither" in \
        capsys.readouterr().err


def _config_file(tmp_path: Path) -> Path:
    """A worker configuration document as an operator writes it (wire.worker_config)."""
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    doc = {"type": "cscore.worker-config/v1", "tee": "configfs-tsm", "insecure_plaintext_baseline": False,
           "owners": [{"name": "owner", "url": "https://o.example", "ca_pem": ca}],
           "providers": [{"name": "provider", "url": "https://p.example", "ca_pem": ca,
                          "card_keys": [{"kty": "OKP", "crv": "Ed25519", "x": "A" * 43}]}]}
    path = tmp_path / "worker-config.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from attestation.simulated import create_simulated_firmware

    path = tmp_path_factory.mktemp("sim-tee")
    create_simulated_firmware(path)
    return path


def _appraise(sim_dir: Path, policy: dict[str, Any], measurement: str, host_data: str) -> None:
    report_data = bytes(range(64))
    evidence = SimulatedSnpProvider(sim_dir, bytes.fromhex(measurement), host_data=bytes.fromhex(host_data))
    claims = verify_evidence(evidence.get_evidence(report_data), TrustAnchors.from_dir(sim_dir), datetime.now(UTC))
    appraise(claims, Policy.from_dict(policy), report_data=report_data)


def test_a_policy_from_the_output_accepts_only_matching_evidence(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path, sim_dir: Path) -> None:
    config = _config_file(tmp_path)
    out = _measure(capsys, "--ovmf", str(DATA / "ovmf_AmdSev_suffix.bin"), "--vcpus", "2", "--config", str(config))
    # The evidence here is signed by the simulated root; everything else in the policy is the command's.
    policy = {**out["policy"], "allowed_roots": ["simulated"]}
    milan, genoa = out["sev_snp"]["EPYC-Milan"], out["sev_snp"]["EPYC-Genoa"]
    _appraise(sim_dir, policy, milan, out["host_data"])
    _appraise(sim_dir, policy, genoa, out["host_data"])
    with pytest.raises(AppraisalError) as other_measurement:
        _appraise(sim_dir, policy, "ab" * 48, out["host_data"])
    assert other_measurement.value.field == "measurement"
    with pytest.raises(AppraisalError) as other_config:
        _appraise(sim_dir, policy, milan, hashlib.sha256(b'{"version":2}').hexdigest())
    assert other_config.value.field == "host_data"


def test_missing_or_unusable_artifacts_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["worker", "measure", "--ovmf", str(tmp_path / "OVMF.fd")]) == 2
    assert "--ovmf: expected a file" in capsys.readouterr().err
    plain = tmp_path / "OVMF.fd"
    plain.write_bytes(b"\xff" * 4096)  # no SEV metadata: not an SNP-capable firmware
    assert main(["worker", "measure", "--ovmf", str(plain)]) == 2
    assert f"--ovmf {plain}" in capsys.readouterr().err
    (tmp_path / "cfg.json").write_text('{"ratio": 0.5}')
    assert main(["worker", "measure", "--ovmf", str(DATA / "ovmf_AmdSev_suffix.bin"), "--config",
                 str(tmp_path / "cfg.json")]) == 2
    assert "worker_config.ratio" in capsys.readouterr().err  # an unknown field is named, never measured
