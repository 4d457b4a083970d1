"""End to end over HTTP: simulated SEV-SNP enclaves attest to the owner's and the provider's brokers."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from attestation import Evidence
from attestation.snp.report import POLICY_DEBUG_BIT
from enclave.kbs_client import AttestedSession, EnclaveKeys, KbsError
from enclave.tee import SimulatedSnpProvider
from keybroker import BrokerConfig, create_app
from sdk.broker_admin import BrokerAdmin
from tests.keybroker.conftest import MEASUREMENT, OTHER_MEASUREMENT, BrokerProcess
from wire.canonical import canonical_json
from wire.grant import ModelGrant, sign_grant
from wire.keywrap import wrap_key

MODEL = "sha256:" + "11" * 32
CONFIG = bytes.fromhex("cf" * 32)  # the worker configuration digest the simulated guests carry as HOST_DATA


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
    admin.create_key("att-results", kind="result")
    admin.grant("att-batch", MODEL, [MEASUREMENT.hex()], ["att-data", "att-results"], config_digests=[CONFIG.hex()],
                rows=100)
    return admin


@pytest.fixture(scope="module")
def provider(provider_broker: BrokerProcess, broker: BrokerProcess) -> BrokerAdmin:
    admin = provider_broker.admin()
    admin.create_key("att-model", kind="model", measurements=[MEASUREMENT.hex()])
    admin.register_owner("owner", broker.admin().grant_key())
    return admin


def session(broker: BrokerProcess, sim_dir: Path, measurement: bytes = MEASUREMENT,
            cls: type = SimulatedSnpProvider, keys: EnclaveKeys | None = None) -> AttestedSession:
    """A simulated enclave's session with `broker` (verifying its TLS certificate where it has one)."""
    return AttestedSession(broker.url, cls(sim_dir, measurement, host_data=CONFIG), ca_bundle=broker.ca_bundle,
                           keys=keys)


def test_enclave_gets_data_key_from_owner_and_model_key_from_provider(
        broker: BrokerProcess, provider_broker: BrokerProcess, owner: BrokerAdmin, provider: BrokerAdmin,
        sim_dir: Path) -> None:
    data_dek, model_dek = secrets.token_bytes(16), secrets.token_bytes(32)
    wrapped_data, wrapped_model = owner.wrap("att-data", data_dek), provider.wrap("att-model", model_dek)
    keys = EnclaveKeys()  # one enclave: both sessions share its keys, as enclave.worker does
    with_owner, with_provider = session(broker, sim_dir, keys=keys), session(provider_broker, sim_dir, keys=keys)
    result = with_owner.attest()
    assert result.claims["measurement"] == MEASUREMENT.hex() and result.claims["root"] == "simulated"
    assert result.claims["host_data"] == CONFIG.hex()
    assert with_owner.unwrap("att-data", wrapped_data, batch_id="att-batch", model_digest=MODEL) == data_dek
    grant = with_owner.model_grant(batch_id="att-batch", model_digest=MODEL)
    assert with_provider.unwrap("att-model", wrapped_model, batch_id="att-batch", model_digest=MODEL,
                                grant=grant) == model_dek
    # A grant names the session it was issued to: another enclave session cannot use it.
    with pytest.raises(KbsError) as stolen:
        session(provider_broker, sim_dir).unwrap("att-model", wrapped_model, batch_id="att-batch",
                                                 model_digest=MODEL, grant=grant)
    assert stolen.value.problem["field"] == "grant" and "tee_key" in stolen.value.problem["actual"]
    # Results: the owner's broker releases the batch's result key; the enclave wraps under it locally.
    result_dek = secrets.token_bytes(16)
    master, version = with_owner.release("att-results", batch_id="att-batch", model_digest=MODEL)
    assert owner.unwrap("att-results", wrap_key(master, "att-results", result_dek, version)) == result_dek
    # The evidence the session kept binds its runtime data (what a receipt verifier recomputes).
    digest = hashlib.sha512(canonical_json(with_owner.runtime_data))
    assert with_owner.evidence is not None and result.claims["report_data"] == digest.hexdigest()
    allowed = [e for e in owner.decisions() if e["operation"] == "unwrap" and e["decision"] == "allow"]
    assert allowed[-1]["measurement"] == MEASUREMENT.hex() and allowed[-1]["claims_digest"]
    # A release is logged with the claims as attested: the auditor joins it to its attestation by this digest.
    attested = [e for e in owner.decisions() if e["operation"] == "attest" and e["decision"] == "allow"]
    assert allowed[-1]["claims_digest"] in {e["claims_digest"] for e in attested}
    # What the receipt signs (wire.receipt sessions): per broker, the digests this batch's requests carried,
    # which are the digests each broker logged in its release decisions for the batch.
    assert with_owner.claims_digests("att-batch") == (result.claims_digest,)
    for admin, used in ((owner, with_owner), (provider, with_provider)):
        logged = {e["claims_digest"] for e in admin.decisions() if e.get("batch_id") == "att-batch"
                  and e["operation"] == "unwrap" and e["decision"] == "allow"}
        assert len(used.claims_digests("att-batch")) == 1 and set(used.claims_digests("att-batch")) <= logged
    assert with_owner.claims_digests("another-batch") == ()


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
    report_data = hashlib.sha512(canonical_json(runtime)).digest()
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
        provider_broker: BrokerProcess, sim_dir: Path) -> None:
    from enclave.worker import Enclave
    from wire.worker_config import BrokerIdentity, WorkerConfig

    assert provider_broker.ca_bundle is not None  # workers reach brokers over pinned TLS only
    ca = provider_broker.ca_bundle.read_text()
    config = WorkerConfig("simulated-sev-snp", (BrokerIdentity("provider", provider_broker.url, ca),), ())
    enclave = Enclave(SimulatedSnpProvider(sim_dir, MEASUREMENT, host_data=CONFIG), config, name="cscore-worker-7@vm")
    verdicts = enclave.attest(["provider"], "att-batch-9")
    assert verdicts["worker"] == "cscore-worker-7@vm" and verdicts["config_digest"] == config.digest_hex()
    logged = [e for e in provider_broker.admin().decisions() if e["operation"] == "attest" and e["decision"] == "allow"]
    # The auditor joins the broker's attestation (and every release under it) to this worker by this digest.
    assert verdicts["verdicts"][0]["claims_digest"] == logged[-1]["claims_digest"]
    assert logged[-1]["batch_id"] == "att-batch-9"  # the batch it attested for, bound in its evidence


def test_a_worker_reaching_a_broker_under_another_configured_name_is_not_attested(
        provider_broker: BrokerProcess, sim_dir: Path) -> None:
    """A configuration an owner granted may list other brokers (other tenants' owner brokers): the platform lists
    one of its own, "relay", and sends the owner's shards naming it. The worker attests to the relay, which passes
    auth, attestation and unwraps on to the owner's broker (the PoP binds the path only) and answers the result key
    release itself: the worker would wrap the scores under the platform's key. The broker attests only a worker
    that names it: the name is in runtime_data, which the evidence binds (here the relay is transparent: the same
    URL and CA, under another name)."""
    from enclave.worker import Enclave
    from wire.worker_config import BrokerIdentity, WorkerConfig

    assert provider_broker.ca_bundle is not None
    ca = provider_broker.ca_bundle.read_text()
    config = WorkerConfig("simulated-sev-snp", (BrokerIdentity("provider", provider_broker.url, ca),
                                                BrokerIdentity("relay", provider_broker.url, ca)), ())
    enclave = Enclave(SimulatedSnpProvider(sim_dir, MEASUREMENT, host_data=CONFIG), config, name="w@vm")
    with pytest.raises(KbsError) as refused:
        enclave.attest(["relay"], "att-relay")
    assert refused.value.status == 403 and refused.value.problem["field"] == "runtime_data.broker"
    assert (refused.value.problem["expected"], refused.value.problem["actual"]) == ("provider", "relay")
    assert refused.value.problem["detail"] == (
        "the worker attests to broker 'relay' of its configuration, this is broker 'provider': it reached this broker "
        "through another name's URL")
    assert enclave.attest(["provider"], "att-relay")["verdicts"][0]["accepted"]


def test_owner_unwrap_names_the_batch_it_reads_in_the_decision_log(owner: BrokerAdmin) -> None:
    wrapped = owner.wrap("att-results", b"r" * 32)
    assert owner.for_batch("att-batch").unwrap("att-results", wrapped) == b"r" * 32
    last = owner.decisions()[-1]
    assert (last["operation"], last["batch_id"], last["key_id"]) == ("admin.unwrap", "att-batch", "att-results")
    assert last["reason"] == "owner unwrap to read batch att-batch's results"
def test_simulated_root_opens_only_keys_opted_in_by_name(tmp_path: Path, sim_dir: Path) -> None:
    from fastapi.testclient import TestClient

    base = {"name": "dev", "host": "127.0.0.1", "port": 0, "db_path": str(tmp_path / "k.db"),
            "kek_path": str(tmp_path / "kek"), "admin_token_path": str(tmp_path / "tok"),
            "trusted_roots_dir": str(sim_dir), "accept_simulated": True}
    with pytest.raises(ValueError, match="simulated_key_ids is empty"):
        BrokerConfig.from_dict(base)  # one flag must not open every key
    app = create_app(BrokerConfig.from_dict({**base, "simulated_key_ids": ["dev.*"]}))
    admin = BrokerAdmin("http://testserver", (tmp_path / "tok").read_text().strip(), client=TestClient(app))
    for key_id in ("dev.data", "prod.data"):
        admin.create_key(key_id)
    admin.grant("b", MODEL, [MEASUREMENT.hex()], ["dev.data", "prod.data"], config_digests=[CONFIG.hex()], rows=1)
    worker = AttestedSession("http://testserver", SimulatedSnpProvider(sim_dir, MEASUREMENT, host_data=CONFIG),
                             client=TestClient(app))
    assert worker.unwrap("dev.data", admin.wrap("dev.data", b"d" * 16), batch_id="b", model_digest=MODEL) == b"d" * 16
    with pytest.raises(KbsError) as refused:
        worker.unwrap("prod.data", admin.wrap("prod.data", b"p" * 16), batch_id="b", model_digest=MODEL)
    assert refused.value.status == 403 and refused.value.problem["field"] == "root"
    assert refused.value.problem["actual"] == "simulated"


def _forged_grant(with_owner: AttestedSession, key: Any, **changes: Any) -> str:
    """A model grant correct in every way (batch, model, measurement, configuration, this session's key) but
    what `changes` alter, signed by `key`."""
    import time as _time

    from joserfc.jwk import ECKey

    fields = {"issuer": "owner", "batch_id": "att-batch", "model_digest": MODEL, "measurement": MEASUREMENT.hex(),
              "config_digest": CONFIG.hex(), "tee_key": ECKey.import_key(with_owner.tee_public_jwk).thumbprint(),
              "rows": 100, "issued_at": int(_time.time()), "expires_at": int(_time.time()) + 300, **changes}
    return sign_grant(ModelGrant(**fields), key)


@pytest.mark.parametrize(("signer", "changes", "expected"), [
    ("platform", {}, "model_grant.kid"),  # the platform's own "owner broker": not registered with the provider
    ("platform", {"issuer": "platform"}, "model_grant.kid"),
    ("owner", {"batch_id": "att-other-batch"}, "grant.batch_id"),  # a grant for another batch
    ("owner", {"model_digest": "sha256:" + "22" * 32}, "grant.model_digest"),
    ("owner", {"measurement": OTHER_MEASUREMENT.hex()}, "grant.measurement"),
    ("owner", {"config_digest": "ee" * 32}, "grant.config_digest"),
    ("owner", {"expires_at": 1}, "model_grant.expires_at"),
])
def test_model_key_refuses_forged_or_mismatched_grants(broker: BrokerProcess, provider_broker: BrokerProcess,
                                                       owner: BrokerAdmin, provider: BrokerAdmin, sim_dir: Path,
                                                       signer: str, changes: dict[str, Any], expected: str) -> None:
    from joserfc.jwk import ECKey

    keys = EnclaveKeys()
    with_owner, with_provider = session(broker, sim_dir, keys=keys), session(provider_broker, sim_dir, keys=keys)
    with_owner.attest()
    # The owner broker's real grant key lives in its store; for "owner" forge with it read from there.
    key = (ECKey.generate_key("P-256", private=True) if signer == "platform"
           else _owner_grant_key(broker))
    grant = _forged_grant(with_owner, key, **changes)
    wrapped = provider.wrap("att-model", b"m" * 32)
    with pytest.raises(KbsError) as refused:
        with_provider.unwrap("att-model", wrapped, batch_id="att-batch", model_digest=MODEL, grant=grant)
    problem = refused.value.problem
    assert refused.value.status == 403 and problem["field"] == "grant" and expected in problem["actual"]
    assert "(field grant;" in str(refused.value) and expected in str(refused.value)  # what a worker reports
    # The same request with the owner broker's genuine grant goes through: only the forgery was refused.
    genuine = with_owner.model_grant(batch_id="att-batch", model_digest=MODEL)
    assert with_provider.unwrap("att-model", wrapped, batch_id="att-batch", model_digest=MODEL,
                                grant=genuine) == b"m" * 32


def _owner_grant_key(broker: BrokerProcess) -> Any:
    from joserfc.jwk import ECKey

    from keybroker.store import KeyStore

    store = KeyStore(Path(broker.config["db_path"]), bytes.fromhex(Path(broker.config["kek_path"]).read_text()))
    try:
        return ECKey.import_key(store.broker_secret("grant-signing", lambda: b""))
    finally:
        store.close()


def test_the_providers_quota_meters_granted_rows_per_owner_once_per_batch(
        broker: BrokerProcess, provider_broker: BrokerProcess, owner: BrokerAdmin, provider: BrokerAdmin,
        sim_dir: Path) -> None:
    provider.create_key("att-quota", kind="model", measurements=[MEASUREMENT.hex()],
                        quota={"rows": 150, "period_s": 3600})
    wrapped = provider.wrap("att-quota", b"q" * 32)
    for batch in ("att-quota-1", "att-quota-2"):
        owner.grant(batch, MODEL, [MEASUREMENT.hex()], ["att-data"], config_digests=[CONFIG.hex()], rows=100)
    keys = EnclaveKeys()
    with_owner, with_provider = session(broker, sim_dir, keys=keys), session(provider_broker, sim_dir, keys=keys)

    def unwrap(batch: str) -> bytes:
        grant = with_owner.model_grant(batch_id=batch, model_digest=MODEL)
        return with_provider.unwrap("att-quota", wrapped, batch_id=batch, model_digest=MODEL, grant=grant)

    assert unwrap("att-quota-1") == b"q" * 32
    assert unwrap("att-quota-1") == b"q" * 32  # the same batch on another worker or shard: counted once
    with pytest.raises(KbsError) as over:
        unwrap("att-quota-2")  # 100 + 100 > 150 in the period
    problem = over.value.problem
    assert over.value.status == 429 and problem["type"].endswith("quota-exceeded")
    assert (problem["field"], problem["expected"], problem["actual"]) == ("rows", "<= 50", 100)
    metered = [e for e in provider.decisions() if e["operation"] in ("meter", "unwrap") and e["key_id"] == "att-quota"]
    assert [e["decision"] for e in metered][-1] == "deny" and "quota" in metered[-1]["reason"]
