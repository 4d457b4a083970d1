"""Shared fixtures for the attestation tests: real AMD evidence."""

from __future__ import annotations

import pytest
from _attestation_data import read


@pytest.fixture(scope="session")
def go_report() -> bytes:
    return read("sev-snp/go-sev-guest/attestation.bin")


@pytest.fixture(scope="session")
def virtee_report() -> bytes:
    return bytes.fromhex(read("sev-snp/virtee-sev/report_milan.hex").decode().strip())
