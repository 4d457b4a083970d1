"""Signed releases of measurements (`cscore worker release`), the measurements publish/submit allow from them,
and the closure's SBOM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cscore.cli import main
from cscore.release import ReleaseError, measurements_to_allow
from enclave.measurement import code_measurement

MILAN, GENOA = "aa" * 48, "bb" * 48
MEASURE = {"sev_snp": {"EPYC-Milan": MILAN, "EPYC-Genoa": GENOA}, "artifacts": {"kernel": "11" * 32},
           "launch": {"vcpus": 2, "guest_features": "0x1", "vmm": "qemu", "cmdline": "console=ttyS0"}}


def _keys(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    private, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def released(tmp_path: Path) -> tuple[Path, Path]:
    private, public = _keys(tmp_path, "release")
    (tmp_path / "measure.json").write_text(json.dumps(MEASURE))
    (tmp_path / "sbom.json").write_text("{}")
    assert main(["worker", "release", str(tmp_path / "measure.json"), "--name", "0.2.0", "--key", str(private),
                 "--sbom", str(tmp_path / "sbom.json"), "--out", str(tmp_path / "release.json")]) == 0
    return tmp_path / "release.json", public


def test_a_signed_release_gives_its_measurements(released: tuple[Path, Path]) -> None:
    release, key = released
    assert measurements_to_allow(None, release, key) == sorted([MILAN, GENOA])
    body = json.loads(release.read_text())["release"]
    assert body["name"] == "0.2.0" and body["image"]["cmdline"] == "console=ttyS0" and body["tdx"] is None


def test_a_changed_release_is_refused(released: tuple[Path, Path]) -> None:
    release, key = released
    signed = json.loads(release.read_text())
    signed["release"]["sev_snp"]["EPYC-Milan"] = "cc" * 48  # the platform's own image
    release.write_text(json.dumps(signed))
    with pytest.raises(ReleaseError, match="does not verify"):
        measurements_to_allow(None, release, key)


def test_a_release_signed_by_another_key_is_refused(released: tuple[Path, Path], tmp_path: Path) -> None:
    release, _ = released
    _, other = _keys(tmp_path, "other")
    with pytest.raises(ReleaseError, match="signature.key_sha256: expected the pinned release key"):
        measurements_to_allow(None, release, other)


def test_the_sources_of_measurements_are_explicit(released: tuple[Path, Path]) -> None:
    release, key = released
    with pytest.raises(ReleaseError, match="needs --release-key"):
        measurements_to_allow(None, release, None)
    with pytest.raises(ReleaseError, match="not both"):
        measurements_to_allow([MILAN], release, key)
    with pytest.raises(ReleaseError, match="--measurement: expected 96 hex digits"):
        measurements_to_allow(["abc"], None, None)
    assert measurements_to_allow([MILAN.upper()], None, None) == [MILAN]
    assert measurements_to_allow(None, None, None) == [code_measurement().hex()]  # the simulated local stack


def test_the_sbom_lists_the_locked_closure_and_nothing_of_the_platform() -> None:
    from infra.image.closure import locked_closure
    from infra.image.sbom import closure_sbom

    closure = locked_closure()
    text = closure_sbom(closure, project="cscore")
    assert closure_sbom(closure, project="cscore") == text  # same closure, same bytes
    sbom = json.loads(text)
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.6"
    names = {c["name"] for c in sbom["components"]}
    assert {"pyarrow", "onnxruntime", "cryptography", "celery"} <= names
    assert not names & {"apache-airflow", "fastapi", "moto", "boto3-stubs"}
    assert {"scikit-learn", "skl2onnx"} <= names  # confidential training (enclave.training) is measured code
    assert "async-timeout" in names  # redis needs it on the image's Python (3.11.2), whatever runs this test
    pyarrow = next(c for c in sbom["components"] if c["name"] == "pyarrow")
    locked = next(c for c in closure if c.name == "pyarrow")
    assert {h["content"] for h in pyarrow["hashes"]} == set(locked.wheel_hashes) and pyarrow["purl"].startswith(
        "pkg:pypi/pyarrow@")
