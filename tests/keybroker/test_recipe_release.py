"""A training job over real brokers (HTTP, simulated SEV-SNP evidence): the provider publishes an encrypted
recipe whose key its broker releases only against the owner broker's grant naming the recipe's digest; the
enclave decrypts the owner's rows (data keys from the owner's broker) and the recipe, and trains."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pytest

from enclave.kbs_client import AttestedSession, EnclaveKeys, KbsError
from enclave.pme import write_encrypted
from enclave.tee import SimulatedSnpProvider
from enclave.training import decrypt_recipe, train_job
from sdk.broker_admin import BrokerAdmin
from sdk.party import Party
from sdk.provider import publish_recipe, recipe_key_id
from sdk.storage import ObjectStore
from tests.enclave.test_training import RECIPE, _mail
from tests.keybroker.conftest import MEASUREMENT, BrokerProcess
from wire.recipe import Recipe, verify_recipe_card
from wire.training import TrainingSpec

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
                        card.name, card.version, card.digest, "owner", "acme/spam-filter-tuned", "r")
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
