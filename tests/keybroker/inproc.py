"""An in-process broker with a stand-in verifier, and admin and worker clients for it (fast tests)."""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from enclave.kbs_client import AttestedSession
from keybroker import BrokerConfig, create_app
from keybroker.verifier import check_binding
from sdk.broker_admin import BrokerAdmin

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

GOOD = "ab" * 48
OTHER = "cd" * 48


class FakeEvidence:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def to_json(self) -> dict[str, Any]:
        return self.doc


class FakeProvider:
    """Evidence that the stand-in verifier accepts as-is (binding is still checked)."""

    def __init__(self, measurement: str = GOOD, debug: bool = False) -> None:
        self.measurement, self.debug = measurement, debug

    def get_evidence(self, report_data: bytes) -> FakeEvidence:
        return FakeEvidence({"tee": "sev-snp", "measurement": self.measurement, "debug": self.debug,
                             "report_data": report_data.hex()})


def fake_verifier(evidence: dict[str, Any], expected: bytes, at: datetime) -> dict[str, Any]:
    claims = {"tee": "sev-snp", "measurement": evidence["measurement"], "debug": evidence["debug"],
              "report_data": evidence["report_data"], "tcb": {"snp": 3}, "chip_id": "00" * 64, "root": "simulated"}
    check_binding(claims, expected)
    return claims


def make_config(tmp: Path, **extra: Any) -> BrokerConfig:
    return BrokerConfig.from_dict({"name": "owner", "host": "127.0.0.1", "port": 0, "db_path": str(tmp / "k.db"),
                                   "kek_path": str(tmp / "kek.hex"), "admin_token_path": str(tmp / "admin"),
                                   "accept_simulated": True, **extra})


class Env:
    """An in-process broker with admin and worker clients."""

    def __init__(self, tmp: Path, **extra: Any) -> None:
        self.config = make_config(tmp, **extra)
        self.app = create_app(self.config, verifier=fake_verifier)
        self.admin = BrokerAdmin("http://testserver", self.config.load_admin_token(), client=TestClient(self.app))

    def worker(self, provider: FakeProvider | None = None) -> AttestedSession:
        return AttestedSession("http://testserver", provider or FakeProvider(), client=TestClient(self.app))

    def data_key(self, key_id: str = "data-1", batch: str = "batch-1", model: str = "sha256:m") -> bytes:
        self.admin.create_key(key_id)
        self.admin.grant(batch, model, [GOOD], [key_id])
        return self.admin.wrap(key_id, b"D" * 16)
