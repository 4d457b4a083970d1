"""Scoring with a tuned model over real brokers (HTTP, simulated SEV-SNP evidence): the enclave rebuilds the
model's key from the owner's share (its broker unwraps it only when the batch's grant names it) and the
provider's (the recipe key, released against the owner broker's model grant), for that owner's batches only.
Attacks: another tenant's batch, a grant without the share, a swapped ciphertext, a swapped or forged card."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pytest

from enclave.kbs_client import KbsError
from enclave.pme import PmeKeys, write_encrypted
from enclave.ranged import BytesSource
from enclave.runner import clear_contract_sessions
from enclave.scoring import ModelSession
from enclave.signing import generate_signing_key, sign_json, unverified_payload
from enclave.training import train
from enclave.worker import Enclave, ModelIntegrityError, ShardInputError, TunedModelRefused
from sdk.broker_admin import BrokerAdmin
from sdk.contracts import SPAM_CONTRACT, SPAM_TASK
from sdk.owner import OwnerKeys, decrypt_results, encode_part
from sdk.party import Party
from sdk.provider import publish_recipe
from sdk.storage import ObjectStore
from tests.enclave.test_training import RECIPE, _mail
from tests.keybroker.conftest import MEASUREMENT, BrokerProcess
from tests.keybroker.test_recipe_release import MemoryStore, _worker, published, tls_owner  # noqa: F401 (fixtures)
from wire.card import CARD_TYPE
from wire.recipe import Recipe, verify_recipe_card
from wire.shard import ShardSpec
from wire.training import TrainingSpec, TunedCard


@dataclass
class Tuned:
    worker: Enclave
    store: MemoryStore
    owner: BrokerAdmin
    texts: list[str]
    digests: dict[int, str]  # version -> the tuned model's digest


def _train(worker: Enclave, admin: BrokerAdmin, store: MemoryStore, card_key: str, version: int, seed: int) -> str:
    """The owner's job (as `cscore owner train` makes it) trained by the attested worker; stored as the task does."""
    card = verify_recipe_card(store.get(card_key).decode(), [k for p in worker.config.providers for k in p.card_keys],
                              what=card_key)
    job, share = f"ts-job-{version}", f"ts-share-{version}"
    for key_id in (f"{job}-data", share):
        admin.create_key(key_id)
    admin.grant(job, card.digest, [MEASUREMENT.hex()], [f"{job}-data", share],
                config_digests=[worker.config.digest_hex()], rows=240)
    texts, labels, holdout = _mail(240, seed=seed)
    table = pa.table({"text": texts, "label": pa.array(labels, pa.int8()), "holdout": holdout})
    data = write_encrypted(table, admin, footer_key=f"{job}-data", column_key=f"{job}-data", row_group_size=100)
    spec = TrainingSpec("acme", job, f"incoming/acme/{job}/train.parquet", hashlib.sha256(data).hexdigest(),
                        card.name, card.version, card.digest, "tls-owner", "spam-filter-tuned", version, share,
                        base64.b64encode(admin.wrap(share, secrets.token_bytes(32))).decode(),
                        f"tuned/acme/spam-filter-tuned/{version}/receipt.jws")
    trained = worker.train(spec, data, store.get(card_key).decode(), store.get)
    store.put(trained.model_key, trained.model)
    store.put(spec.prefix + "card.jws", trained.card.encode())
    digest = str(unverified_payload(trained.card, what="tuned card")["digest"])
    # Bit-identical to training the same recipe on the same rows in plaintext.
    assert digest == "sha256:" + hashlib.sha256(train(RECIPE, texts, labels, holdout).onnx_bytes).hexdigest()
    return digest


@pytest.fixture(scope="module")
def tuned(published: tuple[Party, MemoryStore, str], tls_owner: BrokerProcess,  # noqa: F811
          provider_broker: BrokerProcess, sim_dir: Path) -> Tuned:
    party, store, card_key = published
    worker, admin = _worker(sim_dir, tls_owner, provider_broker, party), tls_owner.admin()
    digests = {v: _train(worker, admin, store, card_key, v, seed=v) for v in (1, 2)}
    return Tuned(worker, store, admin, _mail(60, seed=7)[0], digests)


def _batch(t: Tuned, tenant: str, batch_id: str, *, version: int = 1, grant_share: bool = True,
           digest: str | None = None) -> tuple[ShardSpec, bytes]:
    """An owner's batch naming the tuned model, as `cscore owner submit --model acme/spam-filter-tuned:1` makes it."""
    admin = t.owner
    keys = OwnerKeys.for_batch(tenant, batch_id)
    for key_id in keys.all():
        admin.create_key(key_id, kind="result" if key_id == keys.results else "data")
    key = f"incoming/{tenant}/{batch_id}/part-00000.parquet"
    table = pa.table({"message_id": [f"m{i}" for i in range(len(t.texts))], "text": t.texts})
    data, file_id = encode_part(table, admin, keys, tenant=tenant, batch_id=batch_id, key=key)
    model_digest = digest or t.digests[version]
    admin.grant(batch_id, model_digest, [MEASUREMENT.hex()],
                keys.all() + ([f"ts-share-{version}"] if grant_share else []),
                config_digests=[t.worker.config.digest_hex()], rows=len(t.texts))
    results = f"results/{tenant}/{batch_id}/shard-00000"
    spec = ShardSpec(tenant, batch_id, 0, key, hashlib.sha256(data).hexdigest(), 0, 1, "acme/spam-filter-tuned",
                     version, model_digest, "tls-owner", keys.footer, keys.emails, keys.results,
                     f"{results}.parquet", f"{results}.receipt.jws", input_file_id=file_id)
    return spec, data


def _card(t: Tuned, version: int = 1) -> str:
    return t.store.get(f"tuned/acme/spam-filter-tuned/{version}/card.jws").decode()


def test_tuned_model_scores_its_owners_batch_bit_exact(tuned: Tuned) -> None:
    spec, data = _batch(tuned, "acme", "ts-b1")
    scored = tuned.worker.score_shard(spec, BytesSource(data), _card(tuned), tuned.store.get)
    with PmeKeys(tuned.owner) as keys:
        results = decrypt_results(scored.output, keys)
    texts, labels, holdout = _mail(240, seed=1)
    plain = train(RECIPE, texts, labels, holdout).onnx_bytes  # the same recipe and rows, in plaintext
    expected, _ = ModelSession(plain).score(tuned.texts)
    got = results.column("spam_probability").to_numpy()
    assert got.astype(np.float32).tobytes() == expected.astype(np.float32).tobytes()
    receipt = unverified_payload(scored.receipt, what="receipt")
    assert receipt["model"] == {"name": "acme/spam-filter-tuned", "version": 1, "digest": tuned.digests[1]}


def test_another_tenants_batch_is_refused_by_the_enclave_before_any_key(tuned: Tuned) -> None:
    """The platform (or tenant `other`) names acme's tuned model for other's batch, with a grant naming even
    acme's share (same broker here): the enclave refuses on the card's tenant; no broker is asked for a key."""
    spec, data = _batch(tuned, "other", "ts-other")
    with pytest.raises(TunedModelRefused, match="belongs to tenant 'acme'.*tenant 'other'"):
        tuned.worker.score_shard(spec, BytesSource(data), _card(tuned), tuned.store.get)
    decisions = tuned.owner.decisions()
    assert not [d for d in decisions if d.get("batch_id") == "ts-other" and d.get("operation") != "admin.grant"]


def test_without_the_share_in_the_grant_the_owner_broker_refuses(tuned: Tuned) -> None:
    """The second lock: a batch whose grant does not name the owner's share (another owner's broker would never
    hold it) gets the provider's share but not the owner's: refused by the owner broker's key-granted check."""
    spec, data = _batch(tuned, "acme", "ts-noshare", grant_share=False)
    with pytest.raises(KbsError) as refused:
        tuned.worker.score_shard(spec, BytesSource(data), _card(tuned), tuned.store.get)
    assert refused.value.problem["field"] == "key_id" and "ts-share-1" in str(refused.value)


def test_platform_swaps_the_ciphertext_or_the_card(tuned: Tuned) -> None:
    # Version 2's ciphertext where version 1's is: AAD and key differ, the tag does not verify. (A worker whose
    # cache holds version 1 already never reads the object again: start cold.)
    clear_contract_sessions()
    swapped = MemoryStore()
    swapped.objects = {**tuned.store.objects, "tuned/acme/spam-filter-tuned/1/model.onnx.enc":
                       tuned.store.get("tuned/acme/spam-filter-tuned/2/model.onnx.enc")}
    spec, data = _batch(tuned, "acme", "ts-swap-ct")
    with pytest.raises(ModelIntegrityError, match="tag mismatch"):
        tuned.worker.score_shard(spec, BytesSource(data), _card(tuned), swapped.get)
    # Version 2's card for a batch the owner granted for version 1: not the owner's choice.
    spec, data = _batch(tuned, "acme", "ts-swap-card")
    with pytest.raises(ModelIntegrityError, match="the owner's choice"):
        tuned.worker.score_shard(spec, BytesSource(data), _card(tuned, 2), tuned.store.get)
    # A card the platform wrote: version 1's in all but the owner's share, version 2's: that share's key is
    # not in this batch's grant, so the owner's broker does not unwrap it.
    doc = TunedCard.parse(unverified_payload(_card(tuned), what="card")).raw
    forged = sign_json({**doc, "owner_share": unverified_payload(_card(tuned, 2), what="card")["owner_share"]},
                       generate_signing_key())
    spec, data = _batch(tuned, "acme", "ts-forged")
    with pytest.raises(KbsError) as refused:
        tuned.worker.score_shard(spec, BytesSource(data), forged, tuned.store.get)
    assert refused.value.problem["field"] == "key_id" and "ts-share-2" in str(refused.value)


def test_a_batchs_released_key_does_not_stand_for_another_model_on_a_warm_worker(tuned: Tuned) -> None:
    """The platform warms version 2 with a batch granted it, then sends a batch granted version 1 a first shard
    naming version 1 that fails after the model's release (a row group past the file's end), and a second naming
    version 2, spec and card consistent: version 2 must not score this batch without its owner's grant for it."""
    warm, data = _batch(tuned, "acme", "ts-warm-v2", version=2)
    tuned.worker.score_shard(warm, BytesSource(data), _card(tuned, 2), tuned.store.get)  # version 2 now cached
    spec, data = _batch(tuned, "acme", "ts-mixed")  # the owner granted version 1 only
    with pytest.raises(ShardInputError, match="the file has 1"):  # version 1's key released for this batch
        tuned.worker.score_shard(dataclasses.replace(spec, row_group_end=2), BytesSource(data), _card(tuned),
                                 tuned.store.get)
    other = dataclasses.replace(spec, model_version=2, model_digest=tuned.digests[2])
    with pytest.raises(KbsError) as refused:  # the owner's broker: this batch's grant names version 1's digest
        tuned.worker.score_shard(other, BytesSource(data), _card(tuned, 2), tuned.store.get)
    assert refused.value.problem["field"] == "model_digest"


def test_a_providers_lookalike_card_does_not_reach_another_tenants_warm_tuned_model(
        tuned: Tuned, published: tuple[Party, MemoryStore, str]) -> None:  # noqa: F811
    """A configured provider signs a plain card with acme's tuned model's digest (public in its card), the spam
    contract, full precision and its own recipe key; tenant `other` (or the platform) names it for other's batch
    on a worker whose cache holds acme's tuned model: the cache must not stand in for the bytes the card's key
    opens, else other's mail is scored by a model trained on acme's."""
    party, store, card_key = published
    warm, data = _batch(tuned, "acme", "ts-warm-acme")
    tuned.worker.score_shard(warm, BytesSource(data), _card(tuned), tuned.store.get)  # acme's model now cached
    recipe = unverified_payload(store.get(card_key).decode(), what="recipe card")
    lookalike = sign_json({"type": CARD_TYPE, "name": "lookalike", "version": 1, "protection": "aes-256-gcm",
                           "digest": tuned.digests[1], "object_key": "models/lookalike/1/model.onnx.enc",
                           "broker": "provider", "key_id": recipe["key_id"], "wrapped_dek": recipe["wrapped_dek"],
                           "output": {"probability_digits": None}, "task": SPAM_TASK, "contract": SPAM_CONTRACT},
                          party.signing_key())
    spec, data = _batch(tuned, "other", "ts-lookalike")
    spec = dataclasses.replace(spec, model_name="lookalike")
    objects = {**tuned.store.objects, "models/lookalike/1/model.onnx.enc": tuned.store.get(
        "tuned/acme/spam-filter-tuned/1/model.onnx.enc")}  # the only object hashing to that digest is acme's
    with pytest.raises(ModelIntegrityError):
        tuned.worker.score_shard(spec, BytesSource(data), lookalike, objects.__getitem__)


def test_a_tuned_card_naming_another_provider_key_does_not_reach_the_warm_tuned_model(
        tuned: Tuned, published: tuple[Party, MemoryStore, str]) -> None:  # noqa: F811
    """The platform forges acme's tuned card (the enclave reads it unsigned; its key is the check) naming another
    recipe key of the provider, one its broker releases for this batch, in place of the recipe key the model was
    trained under: on a worker whose cache holds the model, that release must not stand in for the recipe's,
    else the recipe provider's per-batch consent (a revoked recipe) is skipped. The joint key then opens nothing."""
    party, store, _ = published
    other = publish_recipe(Recipe(**{**RECIPE.__dict__, "seed": 99}), "ts-other-recipe", provider=party,
                           store=cast(ObjectStore, store), allowed_measurements=[MEASUREMENT.hex()])
    other_card = unverified_payload(store.get(other.card_key).decode(), what="recipe card")
    warm, data = _batch(tuned, "acme", "ts-warm-recipe")
    tuned.worker.score_shard(warm, BytesSource(data), _card(tuned), tuned.store.get)  # acme's model now cached
    payload = unverified_payload(_card(tuned), what="tuned card")
    forged = sign_json({**payload, "provider_share": {**payload["provider_share"], "key_id": other_card["key_id"],
                                                      "wrapped": other_card["wrapped_dek"]}},
                       generate_signing_key())
    spec, data = _batch(tuned, "acme", "ts-other-recipe")
    with pytest.raises(ModelIntegrityError, match="tag mismatch"):
        tuned.worker.score_shard(spec, BytesSource(data), forged, tuned.store.get)
