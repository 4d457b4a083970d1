"""End to end over HTTP: simulated SEV-SNP enclaves attest to the owner's and the provider's brokers."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from attestation import Evidence
from attestation.snp.report import POLICY_DEBUG_BIT
from enclave.kbs_client import AttestedSession, KbsError
from enclave.tee import SimulatedSnpProvider
from keybroker import BrokerConfig, create_app
from sdk.broker_admin import BrokerAdmin
from tests.keybroker.conftest import MEASUREMENT, OTHER_MEASUREMENT, BrokerProcess

MODEL = "sha256:" + "11" * 32


class DebugSnpProvider(SimulatedSnpProvider):
    """A simulated guest launched with the debug policy bit set."""

    def _report(self, report_data: bytes) -> Any:
        report = super()._report(report_data)
        return dataclasses.replace(report, policy=report.policy | (1 << POLICY_DEBUG_BIT))


class TamperingProvider(SimulatedSnpProvider):
    """Flips one measurement byte after signing (a host editing the report in transit)."""

    def get_evidence(self, report_data: bytes) -> Evidence:
        doc = super().get_evidence(report_data).to_json()
        raw = bytearray(base64.b64decode(doc["report"]))
        raw[0x90] ^= 0x01  # first byte of MEASUREMENT
        return Evidence.from_json({**doc, "report": base64.b64encode(bytes(raw)).decode()})


@pytest.fixture(scope="module")
def owner(broker: BrokerProcess) -> BrokerAdmin:
    admin = broker.admin()
    admin.create_key("att-data")
    admin.create_key("att-results")
    admin.grant("att-batch", MODEL, [MEASUREMENT.hex()], ["att-data", "att-results"])
    return admin


@pytest.fixture(scope="module")
def provider(provider_broker: BrokerProcess) -> BrokerAdmin:
    admin = provider_broker.admin()
    admin.create_key("att-model", kind="model", measurements=[MEASUREMENT.hex()])
    return admin


def session(broker: BrokerProcess, sim_dir: Path, measurement: bytes = MEASUREMENT,
            cls: type = SimulatedSnpProvider) -> AttestedSession:
    """A simulated enclave's session with `broker` (verifying its TLS certificate where it has one)."""
    return AttestedSession(broker.url, cls(sim_dir, measurement), ca_bundle=broker.ca_bundle)


def test_enclave_gets_data_key_from_owner_and_model_key_from_provider(
        broker: BrokerProcess, provider_broker: BrokerProcess, owner: BrokerAdmin, provider: BrokerAdmin,
        sim_dir: Path) -> None:
    data_dek, model_dek = secrets.token_bytes(16), secrets.token_bytes(32)
    wrapped_data, wrapped_model = owner.wrap("att-data", data_dek), provider.wrap("att-model", model_dek)
    with_owner, with_provider = session(broker, sim_dir), session(provider_broker, sim_dir)
    result = with_owner.attest()
    assert result.claims["measurement"] == MEASUREMENT.hex() and result.claims["root"] == "simulated"
    assert with_owner.unwrap("att-data", wrapped_data, batch_id="att-batch", model_digest=MODEL) == data_dek
    assert with_provider.unwrap("att-model", wrapped_model, batch_id="att-batch", model_digest=MODEL) == model_dek
    # Results: the enclave wraps a fresh key under the owner's result key; only the owner can unwrap it.
    result_dek = secrets.token_bytes(16)
    wrapped_result = with_owner.wrap("att-results", result_dek, batch_id="att-batch", model_digest=MODEL)
    assert owner.unwrap("att-results", wrapped_result) == result_dek
    # The evidence the session kept binds its runtime data (what a receipt verifier recomputes).
    digest = hashlib.sha512(json.dumps(with_owner.runtime_data, sort_keys=True, separators=(",", ":")).encode())
    assert with_owner.evidence is not None and result.claims["report_data"] == digest.hexdigest()
    allowed = [e for e in owner.decisions() if e["operation"] == "unwrap" and e["decision"] == "allow"]
    assert allowed[-1]["measurement"] == MEASUREMENT.hex() and allowed[-1]["claims_digest"]


def test_key_of_another_party_is_unknown_here(broker: BrokerProcess, provider: BrokerAdmin, owner: BrokerAdmin,
                                              sim_dir: Path) -> None:
    wrapped_model = provider.wrap("att-model", b"m" * 32)
    with pytest.raises(KbsError) as refused:
        session(broker, sim_dir).unwrap("att-model", wrapped_model, batch_id="att-batch", model_digest=MODEL)
    assert refused.value.status == 404 and refused.value.problem["field"] == "key_id"


@pytest.mark.parametrize(("batch", "model", "field"), [
    ("att-other-batch", MODEL, "batch_id"), ("att-batch", "sha256:" + "22" * 32, "model_digest")])
def test_batch_or_model_not_granted(broker: BrokerProcess, owner: BrokerAdmin, sim_dir: Path, batch: str,
                                    model: str, field: str) -> None:
    wrapped = owner.wrap("att-data", b"d" * 16)
    with pytest.raises(KbsError) as refused:
        session(broker, sim_dir).unwrap("att-data", wrapped, batch_id=batch, model_digest=model)
    assert refused.value.status == 403 and refused.value.problem["field"] == field


def test_measurement_not_in_policy(broker: BrokerProcess, provider_broker: BrokerProcess, owner: BrokerAdmin,
                                   provider: BrokerAdmin, sim_dir: Path) -> None:
    wrapped_model = provider.wrap("att-model", b"m" * 32)
    with pytest.raises(KbsError) as refused:
        session(provider_broker, sim_dir, OTHER_MEASUREMENT).unwrap(
            "att-model", wrapped_model, batch_id="att-batch", model_digest=MODEL)
    assert refused.value.problem["field"] == "measurement"
    assert refused.value.problem["actual"] == OTHER_MEASUREMENT.hex()
    wrapped = owner.wrap("att-data", b"d" * 16)
    with pytest.raises(KbsError):
        session(broker, sim_dir, OTHER_MEASUREMENT).unwrap("att-data", wrapped, batch_id="att-batch",
                                                               model_digest=MODEL)


def test_debug_guest_is_refused(broker: BrokerProcess, owner: BrokerAdmin, sim_dir: Path) -> None:
    wrapped = owner.wrap("att-data", b"d" * 16)
    worker = session(broker, sim_dir, cls=DebugSnpProvider)
    assert worker.attest().claims["debug"] is True
    with pytest.raises(KbsError) as refused:
        worker.unwrap("att-data", wrapped, batch_id="att-batch", model_digest=MODEL)
    assert refused.value.problem["field"] == "debug" and refused.value.problem["actual"] is True


def test_tampered_evidence_is_refused(broker: BrokerProcess, sim_dir: Path) -> None:
    with pytest.raises(KbsError) as refused:
        session(broker, sim_dir, cls=TamperingProvider).attest()
    assert refused.value.status == 403 and refused.value.type.endswith("evidence-rejected")
    assert refused.value.problem.get("field")


def test_reused_nonce_is_refused(broker: BrokerProcess, sim_dir: Path) -> None:
    worker = session(broker, sim_dir)
    challenge = httpx.post(f"{broker.url}/kbs/v0/auth", json={"tee": "sev-snp"}).json()
    runtime = {"nonce": challenge["nonce"], "tee_pubkey": worker.tee_public_jwk,
               "receipt_pubkey": worker.receipt_public_jwk}
    report_data = hashlib.sha512(json.dumps(runtime, sort_keys=True, separators=(",", ":")).encode()).digest()
    evidence = SimulatedSnpProvider(sim_dir, MEASUREMENT).get_evidence(report_data).to_json()
    body = {"session": challenge["session"], "runtime_data": runtime, "evidence": evidence}
    assert httpx.post(f"{broker.url}/kbs/v0/attest", json=body).status_code == 200
    again = httpx.post(f"{broker.url}/kbs/v0/attest", json=body)
    assert again.status_code == 401 and again.json()["field"] == "runtime_data.nonce"


def test_token_with_another_public_key_and_missing_token(broker: BrokerProcess, owner: BrokerAdmin,
                                                         sim_dir: Path) -> None:
    wrapped = owner.wrap("att-data", b"d" * 16)
    victim, thief = session(broker, sim_dir), session(broker, sim_dir)
    thief._result = victim.attest()  # the thief holds the victim's token but not its tee private key
    with pytest.raises(KbsError) as refused:
        thief.unwrap("att-data", wrapped, batch_id="att-batch", model_digest=MODEL)
    assert refused.value.status == 401 and refused.value.type.endswith("pop-key-mismatch")
    r = httpx.post(f"{broker.url}/kbs/v0/unwrap", json={"key_id": "att-data", "wrapped": "AAAA"})
    assert r.status_code == 401 and r.json()["type"].endswith("token-missing")


def test_production_broker_refuses_the_simulated_root(tmp_path: Path, sim_dir: Path) -> None:
    from fastapi.testclient import TestClient

    config = BrokerConfig.from_dict({"name": "prod", "host": "127.0.0.1", "port": 0,
                                     "db_path": str(tmp_path / "k.db"), "kek_path": str(tmp_path / "kek"),
                                     "admin_token_path": str(tmp_path / "tok"), "trusted_roots_dir": str(sim_dir),
                                     "accept_simulated": False})
    worker = AttestedSession("http://testserver", SimulatedSnpProvider(sim_dir, MEASUREMENT),
                             client=TestClient(create_app(config)))
    with pytest.raises(KbsError) as refused:
        worker.attest()
    assert refused.value.status == 403 and refused.value.type.endswith("evidence-rejected")


def test_worker_verdict_names_the_worker_and_the_claims_digest_the_broker_logged(
        broker: BrokerProcess, owner: BrokerAdmin, sim_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from enclave.worker import Enclave

    if broker.ca_bundle:
        monkeypatch.setenv("CSCORE_BROKER_CA", str(broker.ca_bundle))
    verdicts = Enclave(SimulatedSnpProvider(sim_dir, MEASUREMENT), name="cscore-worker-7@vm").attest([broker.url])
    assert verdicts["worker"] == "cscore-worker-7@vm"
    logged = [e for e in owner.decisions() if e["operation"] == "attest" and e["decision"] == "allow"]
    # The auditor joins the broker's attestation (and every release under it) to this worker by this digest.
    assert verdicts["verdicts"][0]["claims_digest"] == logged[-1]["claims_digest"]


def test_owner_unwrap_names_the_batch_it_reads_in_the_decision_log(owner: BrokerAdmin) -> None:
    wrapped = owner.wrap("att-results", b"r" * 32)
    assert owner.for_batch("att-batch").unwrap("att-results", wrapped) == b"r" * 32
    last = owner.decisions()[-1]
    assert (last["operation"], last["batch_id"], last["key_id"]) == ("admin.unwrap", "att-batch", "att-results")
    assert last["reason"] == "owner unwrap to read batch att-batch's results"
