"""A training job over real brokers (HTTP, simulated SEV-SNP evidence): the provider publishes an encrypted
recipe whose key its broker releases only against the owner broker's grant naming the recipe's digest; the
enclave decrypts the owner's rows (data keys from the owner's broker) and the recipe, and trains."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dags.cscore_platform.manifest import ManifestError
from dags.cscore_platform.training import training_spec
from enclave.kbs_client import AttestedSession, EnclaveKeys, KbsError
from enclave.pme import write_encrypted
from enclave.signing import generate_signing_key, sign_json, verify_json
from enclave.tee import SimulatedSnpProvider
from enclave.training import decrypt_recipe, joint_key, train_job
from enclave.worker import Enclave
from keybroker.tls import ensure_local_tls
from sdk.broker_admin import BrokerAdmin
from sdk.owner_training import read_labelled, submit_training
from sdk.party import Party
from sdk.provider import publish_recipe, recipe_key_id
from sdk.storage import ObjectStore
from tests.enclave.test_training import RECIPE, _mail
from tests.keybroker.conftest import MEASUREMENT, BrokerProcess
from wire.errors import FormatError
from wire.recipe import Recipe, verify_recipe_card
from wire.training import TrainingSpec
from wire.worker_config import BrokerIdentity, WorkerConfig

CONFIG = bytes.fromhex("cf" * 32)  # the worker configuration digest the simulated guests carry as HOST_DATA


class MemoryStore:
    """The object store's put/get/keys in memory (S3 is not what this test is about)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.objects[key] = data

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))


class ProviderAt(Party):
    """The provider's party with its broker admin client given (its TLS CA is the test's)."""

    admin: Any = None

    def broker(self) -> BrokerAdmin:
        return cast(BrokerAdmin, self.admin)


@pytest.fixture(scope="module")
def published(provider_broker: BrokerProcess, broker: BrokerProcess,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Party, MemoryStore, str]:
    party = ProviderAt(home=tmp_path_factory.mktemp("provider-home"), broker_url=provider_broker.url,
                       broker_name="provider")
    object.__setattr__(party, "admin", provider_broker.admin())
    provider_broker.admin().register_owner("owner", broker.admin().grant_key())
    store = MemoryStore()
    recipe = publish_recipe(RECIPE, "rc-recipe", provider=party, store=cast(ObjectStore, store),
                            allowed_measurements=[MEASUREMENT.hex()])
    return party, store, recipe.card_key


def _session(broker: BrokerProcess, sim_dir: Path, keys: EnclaveKeys) -> AttestedSession:
    return AttestedSession(broker.url, SimulatedSnpProvider(sim_dir, MEASUREMENT, host_data=CONFIG),
                           ca_bundle=broker.ca_bundle, keys=keys)


def _owner_job(owner: BrokerAdmin, job: str, recipe_digest: str) -> bytes:
    """The owner's side of `cscore owner train`: labelled rows PME-encrypted by its broker, a grant for the job."""
    owner.create_key(f"{job}-data")
    owner.grant(job, recipe_digest, [MEASUREMENT.hex()], [f"{job}-data"], config_digests=[CONFIG.hex()], rows=240)
    texts, labels, holdout = _mail(240)
    table = pa.table({"text": texts, "label": pa.array(labels, pa.int8()), "holdout": holdout})
    return write_encrypted(table, owner, footer_key=f"{job}-data", column_key=f"{job}-data", row_group_size=100)


def test_recipe_is_released_only_against_the_owners_grant_and_trains(
        published: tuple[Party, MemoryStore, str], broker: BrokerProcess, provider_broker: BrokerProcess,
        sim_dir: Path) -> None:
    party, store, card_key = published
    card = verify_recipe_card(store.get(card_key).decode(), [party.public_key()], what=card_key)
    assert card.key_id == recipe_key_id("rc-recipe") and RECIPE.to_json() != {}  # the plaintext is not stored:
    assert b"max_features" not in store.get(card.object_key) and b"max_features" not in store.get(card_key)
    owner = broker.admin()
    data = _owner_job(owner, "rc-job", card.digest)
    keys = EnclaveKeys()
    with_owner, with_provider = _session(broker, sim_dir, keys), _session(provider_broker, sim_dir, keys)
    grant = with_owner.model_grant(batch_id="rc-job", model_digest=card.digest)
    dek = with_provider.unwrap(card.key_id, base64.b64decode(card.wrapped_dek), batch_id="rc-job",
                               model_digest=card.digest, grant=grant)
    assert decrypt_recipe(card, dek, store.get(card.object_key)) == RECIPE

    class OwnerKeys:  # the enclave's PME key client: data keys unwrapped under the job's grant
        def wrap(self, key_id: str, key: bytes) -> bytes:
            raise PermissionError("training never wraps data keys")

        def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
            return with_owner.unwrap(key_id, wrapped, batch_id="rc-job", model_digest=card.digest)

    spec = TrainingSpec("acme", "rc-job", "incoming/acme/rc-job/train.parquet", hashlib.sha256(data).hexdigest(),
                        card.name, card.version, card.digest, "owner", "spam-filter-tuned", 1, "rc-job-data", "",
                        "r")
    trained = train_job(spec, data, OwnerKeys(), card, dek, store.get(card.object_key))
    assert trained.metrics.holdout_rows == 120 and trained.metrics.f1 > 0.5


def test_recipe_key_is_refused_without_a_grant_naming_the_recipe(
        published: tuple[Party, MemoryStore, str], broker: BrokerProcess, provider_broker: BrokerProcess,
        sim_dir: Path) -> None:
    """The platform asks for the recipe under a job the owner granted for another recipe (or under none):
    the owner's broker issues no grant for the recipe's digest, and the provider's broker releases nothing."""
    party, store, card_key = published
    card = verify_recipe_card(store.get(card_key).decode(), [party.public_key()], what=card_key)
    other = Recipe(**{**RECIPE.__dict__, "seed": 99})
    _owner_job(broker.admin(), "rc-other", "sha256:" + hashlib.sha256(other.canonical()).hexdigest())
    keys = EnclaveKeys()
    with_owner, with_provider = _session(broker, sim_dir, keys), _session(provider_broker, sim_dir, keys)
    with pytest.raises(KbsError) as refused:
        with_owner.model_grant(batch_id="rc-other", model_digest=card.digest)
    assert refused.value.problem["field"] == "model_digest"
    with pytest.raises(KbsError) as no_grant:
        with_provider.unwrap(card.key_id, base64.b64decode(card.wrapped_dek), batch_id="rc-other",
                             model_digest=card.digest, grant="")
    assert no_grant.value.problem["field"] in ("grant", "model_grant")


@pytest.fixture(scope="module")
def tls_owner(provider_broker: BrokerProcess, sim_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """An owner broker over TLS (its own CA), as a worker's measured configuration requires."""
    tls = ensure_local_tls(tmp_path_factory.mktemp("owner-ca"), tmp_path_factory.mktemp("owner-tls"), "tls-owner")
    owner = BrokerProcess(tmp_path_factory.mktemp("tls-owner"), name="tls-owner", tls=tls,
                          trusted_roots_dir=str(sim_dir), rate_limit_rps=1000, rate_limit_burst=1000,
                          shutdown_timeout_s=1).spawn()
    try:
        owner.wait_ready()
        provider_broker.admin().register_owner("tls-owner", owner.admin().grant_key())
        yield owner
    finally:
        owner.stop()


def _worker(sim_dir: Path, owner: BrokerProcess, provider: BrokerProcess, party: Party) -> Enclave:
    assert owner.ca_bundle is not None and provider.ca_bundle is not None
    config = WorkerConfig("simulated-sev-snp", (BrokerIdentity("tls-owner", owner.url, owner.ca_bundle.read_text()),),
                          (BrokerIdentity("provider", provider.url, provider.ca_bundle.read_text(),
                                          (party.public_key(),)),))
    return Enclave(SimulatedSnpProvider(sim_dir, MEASUREMENT, host_data=config.digest()), config, name="w@test")


def test_attested_worker_trains_and_publishes_under_both_shares(
        published: tuple[Party, MemoryStore, str], tls_owner: BrokerProcess, provider_broker: BrokerProcess,
        sim_dir: Path) -> None:
    party, store, card_key = published
    card = verify_recipe_card(store.get(card_key).decode(), [party.public_key()], what=card_key)
    worker = _worker(sim_dir, tls_owner, provider_broker, party)
    owner = tls_owner.admin()
    owner.create_key("wk-data")
    owner.create_key("wk-share")
    owner.grant("wk-job", card.digest, [MEASUREMENT.hex()], ["wk-data", "wk-share"],
                config_digests=[worker.config.digest_hex()], rows=240)
    texts, labels, holdout = _mail(240)
    table = pa.table({"text": texts, "label": pa.array(labels, pa.int8()), "holdout": holdout})
    data = write_encrypted(table, owner, footer_key="wk-data", column_key="wk-data", row_group_size=100)
    owner_share = secrets.token_bytes(32)
    spec = TrainingSpec("acme", "wk-job", "incoming/acme/wk-job/train.parquet", hashlib.sha256(data).hexdigest(),
                        card.name, card.version, card.digest, "tls-owner", "spam-filter-tuned", 1, "wk-share",
                        base64.b64encode(owner.wrap("wk-share", owner_share)).decode(),
                        "tuned/acme/spam-filter-tuned/1/receipt.jws")
    job = worker.train(spec, data, store.get(card_key).decode(), store.get)
    tuned = verify_json(job.card, job.evidence["runtime_data"]["receipt_pubkey"], what="tuned card")
    receipt = verify_json(job.receipt, job.evidence["runtime_data"]["receipt_pubkey"], what="receipt")
    assert tuned["lineage"]["input_sha256"] == spec.input_sha256 and tuned["lineage"]["recipe"]["digest"] == card.digest
    assert receipt["model"]["digest"] == tuned["digest"] and receipt["metrics"] == job.metrics
    assert job.metrics["holdout_rows"] == 120 and "wk-share" in json.dumps(tuned)
    # The weights open only with both shares: the owner's (which it knows) and the recipe key (the provider's).
    recipe_dek = provider_broker.admin().unwrap(card.key_id, base64.b64decode(card.wrapped_dek))
    model = AESGCM(joint_key(owner_share, recipe_dek, model=spec.model)).decrypt(job.model[:12], job.model[12:],
                                                                                   spec.model.encode())
    assert "sha256:" + hashlib.sha256(model).hexdigest() == tuned["digest"]
    with pytest.raises(InvalidTag):  # the owner alone (guessing the other share) cannot
        AESGCM(joint_key(owner_share, secrets.token_bytes(32), model=spec.model)).decrypt(
            job.model[:12], job.model[12:], spec.model.encode())
    assert texts[0].encode() not in job.model + job.card.encode() + job.receipt.encode()


def test_worker_refuses_a_recipe_card_the_platform_signed(
        published: tuple[Party, MemoryStore, str], tls_owner: BrokerProcess, provider_broker: BrokerProcess,
        sim_dir: Path) -> None:
    """The platform re-signs the card (e.g. to point at a recipe of its own): refused before any key request."""
    party, store, card_key = published
    card = verify_recipe_card(store.get(card_key).decode(), [party.public_key()], what=card_key)
    forged = sign_json(card.raw, generate_signing_key())
    spec = TrainingSpec("acme", "wk-forged", "k", "0" * 64, card.name, card.version, card.digest, "tls-owner",
                        "t", 1, "wk-share", "", "r")
    worker = _worker(sim_dir, tls_owner, provider_broker, party)
    with pytest.raises(FormatError, match="card.signature"):
        worker.train(spec, b"", forged, store.get)
    assert not any(e.get("batch_id") == "wk-forged" for e in tls_owner.admin().decisions())


def test_platform_labels_under_the_owners_key_names_do_not_decrypt(
        published: tuple[Party, MemoryStore, str], tls_owner: BrokerProcess, provider_broker: BrokerProcess,
        sim_dir: Path) -> None:
    """The platform writes its own labelled rows, PME-encrypted under its own master key but naming the owner's
    granted key id, and a spec whose digest matches them: it hopes for a model trained on its labels in the
    owner's list. The owner's broker does not authenticate the wrapped keys: no rows, no model, no receipt.
    (The job's grant names its key ids, so the owner's other files, under other keys, are refused likewise.)"""
    party, store, card_key = published
    card = verify_recipe_card(store.get(card_key).decode(), [party.public_key()], what=card_key)
    worker = _worker(sim_dir, tls_owner, provider_broker, party)
    owner = tls_owner.admin()
    owner.create_key("pl-data")
    owner.grant("pl-job", card.digest, [MEASUREMENT.hex()], ["pl-data"], config_digests=[worker.config.digest_hex()],
                rows=240)
    texts, labels, holdout = _mail(240)
    table = pa.table({"text": texts, "label": pa.array([1 - y for y in labels], pa.int8()), "holdout": holdout})
    forged = write_encrypted(table, MemoryWrapper(), footer_key="pl-data", column_key="pl-data", row_group_size=100)
    spec = TrainingSpec("acme", "pl-job", "k", hashlib.sha256(forged).hexdigest(), card.name, card.version,
                        card.digest, "tls-owner", "t", 1, "pl-data", "", "r")
    with pytest.raises(KbsError, match="does not authenticate under key 'pl-data'"):
        worker.train(spec, forged, store.get(card_key).decode(), store.get)


class MemoryWrapper:
    """The platform's own master keys: wraps anything, under any key id it likes."""

    def __init__(self) -> None:
        self.master = secrets.token_bytes(32)

    def wrap(self, key_id: str, key: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(self.master).encrypt(nonce, key, key_id.encode())

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        return AESGCM(self.master).decrypt(wrapped[:12], wrapped[12:], key_id.encode())


def test_owner_train_to_tuned_model(published: tuple[Party, MemoryStore, str], tls_owner: BrokerProcess,
                                    provider_broker: BrokerProcess, sim_dir: Path, tmp_path: Path) -> None:
    """`cscore owner train`'s path: folders spam/ and ham/, the owner's split and keys, a signed training
    manifest; the worker's spec from it; the attested worker trains; the tuned card names the owner's digests."""
    party, store, card_key = published
    card = verify_recipe_card(store.get(card_key).decode(), [party.public_key()], what=card_key)
    texts, labels, _ = _mail(240)
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        folder = tmp_path / ("spam" if label else "ham")
        folder.mkdir(exist_ok=True)
        (folder / f"{i:04d}.eml").write_text(f"Subject: m{i}\n\n{text}\n")
    worker = _worker(sim_dir, tls_owner, provider_broker, party)
    owner = ProviderAt(home=tmp_path / "owner-home", broker_url=tls_owner.url, broker_name="tls-owner")
    object.__setattr__(owner, "admin", tls_owner.admin())
    labelled = read_labelled(tmp_path)
    assert len(labelled) == 240 and sum(y for _, y in labelled) == 120
    job = submit_training(labelled, card, tenant="acme", owner=owner, store=cast(ObjectStore, store),
                          measurements=[MEASUREMENT.hex()], config_digests=[worker.config.digest_hex()],
                          model_name="spam-filter-tuned", job_id="ot-job")
    manifest = store.get(job.manifest_key)  # the platform's DAG makes the worker's spec from it
    spec = TrainingSpec.from_dict(training_spec(job.manifest_key, manifest, owner.public_key()))
    assert spec.owner_broker == "tls-owner"
    assert b"viagra" not in store.get(spec.input_key) and b"m17" not in store.get(spec.input_key)
    trained = worker.train(spec, store.get(spec.input_key), store.get(card_key).decode(), store.get)
    tuned = verify_json(trained.card, trained.evidence["runtime_data"]["receipt_pubkey"], what="tuned card")
    assert tuned["tenant"] == "acme" and tuned["lineage"]["input_sha256"] == spec.input_sha256
    metrics = trained.metrics
    assert (metrics["holdout_rows"], metrics["train_rows"]) == (job.holdout_rows, 240 - job.holdout_rows)
    with pytest.raises(ManifestError, match="signed by tenant acme's registered key"):  # the platform's own
        training_spec(job.manifest_key, sign_json({"type": "cscore.training-manifest/v1"},
                                                  generate_signing_key()).encode(), owner.public_key())
