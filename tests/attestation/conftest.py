"""Shared fixtures for the attestation tests: real AMD evidence and a simulated firmware folder."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "attestation"


@pytest.fixture(scope="session")
def go_report() -> bytes:
    return (DATA / "sev-snp/go-sev-guest/attestation.bin").read_bytes()


@pytest.fixture(scope="session")
def virtee_report() -> bytes:
    return bytes.fromhex((DATA / "sev-snp/virtee-sev/report_milan.hex").read_text().strip())


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One simulated firmware folder for the whole session (RSA key generation is the slow part)."""
    from attestation.simulated import create_simulated_firmware

    path = tmp_path_factory.mktemp("sim-tee")
    create_simulated_firmware(path)
    return path
