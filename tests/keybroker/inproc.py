"""An in-process broker with the production verifier (simulated SEV-SNP root), and admin and worker clients
for it (fast tests). The enclave is the simulated TEE: its evidence goes through the attestation library
exactly as in production, so every check of the verifier (chain, signature, report_data binding) is live.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from attestation.simulated import SimulatedHierarchy, generate_hierarchy
from attestation.snp.report import POLICY_DEBUG_BIT, SnpReport
from enclave.kbs_client import AttestedSession
from enclave.tee import SimulatedSnpProvider
from keybroker import BrokerConfig, create_app
from sdk.broker_admin import BrokerAdmin

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

GOOD = "ab" * 48
OTHER = "cd" * 48
CONFIG = "cf" * 32  # the worker configuration digest the simulated guests carry as HOST_DATA


@functools.cache
def _hierarchy() -> SimulatedHierarchy:
    """One simulated AMD hierarchy per test process (RSA key generation is the slow part)."""
    return generate_hierarchy()


def write_firmware(folder: Path) -> Path:
    """The simulated firmware files (``attestation.simulated`` layout) in ``folder``; returns it."""
    h = _hierarchy()
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (folder / "vcek.key").write_bytes(h.leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    (folder / "vcek.der").write_bytes(h.leaf.public_bytes(serialization.Encoding.DER))
    (folder / "ask_ark.pem").write_bytes(h.ask.public_bytes(pem) + h.ark.public_bytes(pem))
    (folder / "ark.pem").write_bytes(h.ark.public_bytes(pem))
    return folder


class SimEnclave(SimulatedSnpProvider):
    """The simulated SEV-SNP TEE with a measurement given in hex, optionally launched with debug on."""

    def __init__(self, sim_dir: Path, measurement: str = GOOD, debug: bool = False, host_data: str = CONFIG) -> None:
        super().__init__(sim_dir, bytes.fromhex(measurement), host_data=bytes.fromhex(host_data))
        self.debug = debug

    def _report(self, report_data: bytes) -> SnpReport:
        report = super()._report(report_data)
        return dataclasses.replace(report, policy=report.policy | (1 << POLICY_DEBUG_BIT)) if self.debug else report


def make_config(tmp: Path, **extra: Any) -> BrokerConfig:
    return BrokerConfig.from_dict({"name": "owner", "host": "127.0.0.1", "port": 0, "db_path": str(tmp / "k.db"),
                                   "kek_path": str(tmp / "kek.hex"), "admin_token_path": str(tmp / "admin"),
                                   "accept_simulated": True, "trusted_roots_dir": str(tmp / "sim-tee"),
                                   **({"simulated_key_ids": ["*"]} if extra.get("accept_simulated", True) else {}),
                                   **extra})


class Env:
    """An in-process broker (production verifier, trusting the simulated root) with admin and worker clients."""

    def __init__(self, tmp: Path, **extra: Any) -> None:
        self.sim_dir = write_firmware(tmp / "sim-tee")
        self.config = make_config(tmp, **extra)
        self.app = create_app(self.config)  # no stand-in: the verifier is built from the config, as in production
        self.admin = BrokerAdmin("http://testserver", self.config.load_admin_token(), client=TestClient(self.app))

    def enclave(self, measurement: str = GOOD, debug: bool = False, host_data: str = CONFIG) -> SimEnclave:
        """A simulated TEE whose evidence this broker verifies."""
        return SimEnclave(self.sim_dir, measurement, debug, host_data)

    def worker(self, provider: SimulatedSnpProvider | None = None) -> AttestedSession:
        return AttestedSession("http://testserver", provider or self.enclave(), client=TestClient(self.app))

    def counted(self) -> dict[tuple[str, str, str], float]:
        """The broker's decision counters as /metrics shows them: (operation, outcome, clause) -> count."""
        from prometheus_client.parser import text_string_to_metric_families

        text = TestClient(self.app).get("/metrics").text
        return {(s.labels["operation"], s.labels["outcome"], s.labels["clause"]): s.value
                for family in text_string_to_metric_families(text) if family.name == "cscore_broker_decisions"
                for s in family.samples if s.name.endswith("_total")}

    def data_key(self, key_id: str = "data-1", batch: str = "batch-1", model: str = "sha256:m") -> bytes:
        self.admin.create_key(key_id)
        self.admin.grant(batch, model, [GOOD], [key_id], config_digests=[CONFIG], rows=10)
        return self.admin.wrap(key_id, b"D" * 16)
