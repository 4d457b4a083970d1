"""Paths and readers for the attestation test data (tests/data/attestation/)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "attestation"
PINNED_NOW = datetime(2026, 1, 1, tzinfo=UTC)  # inside every AMD certificate's validity


def read(rel: str) -> bytes:
    """Bytes of a test data file under tests/data/attestation/."""
    return (DATA / rel).read_bytes()
