"""The model provider's job: publish an ONNX model encrypted, with its key held by its own broker."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import onnx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation import Policy, TrustAnchors
from attestation.errors import AttestationError
from enclave.receipts import USAGE_TYPE, verify_receipt
from enclave.signing import sign_json, unverified_payload
from sdk.contracts import SPAM_CONTRACT, SPAM_TASK, contract_mismatch
from sdk.party import Party
from sdk.storage import ObjectStore
from wire.card import CARD_TYPE, ModelCard
from wire.errors import FormatError
from wire.recipe import RECIPE_CARD_TYPE, Recipe


class ModelError(ValueError):
    """The file cannot be published as a model; the message says why."""


@dataclass(frozen=True)
class PublishedModel:
    name: str
    version: int
    digest: str
    card_key: str


def model_key_id(name: str) -> str:
    return f"model.{name}"


@dataclass(frozen=True)
class Offer:
    """What a card tells owners besides the model: its task and contract, claimed metrics, price.

    `contract` is a `wire.contract` document (default: the spam filter's: email text in, spam_probability
    and label out); `metrics` are the provider's claims (e.g. held-out accuracy); `price` is
    {"currency": "EUR", "per_1000_rows": number} or None.
    """

    task: str = SPAM_TASK
    contract: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None
    price: dict[str, Any] | None = None
    description: str = ""

    def fields(self) -> dict[str, Any]:
        return {"task": self.task, "contract": SPAM_CONTRACT if self.contract is None else self.contract,
                "metrics": self.metrics or {},
                "price": self.price, "description": self.description}


def publish_model(
    onnx_bytes: bytes, name: str, *, provider: Party, store: ObjectStore, allowed_measurements: list[str],
    probability_digits: int | None = None, quota: dict[str, int] | None = None, offer: Offer | None = None,
) -> PublishedModel:
    """Encrypt the model under a fresh data key wrapped by the provider's broker; upload it and its card.

    The card's terms bind every worker: `probability_digits` (None: full float32; 0: labels only; n: rounded
    to n digits) limits what an owner learns per query; `quota` ({"rows", "period_s"}) is metered per owner
    by the provider's broker on every batch's model grant. `offer` (default: the spam filter's contract)
    says what the model takes and gives; ModelError names any mismatch with the ONNX graph, before any key
    is created or any byte uploaded.
    """
    offer = offer or Offer()
    _check_offer(onnx_bytes, name, offer, probability_digits, quota)
    version = _next_version(store, name)
    digest = "sha256:" + hashlib.sha256(onnx_bytes).hexdigest()
    if not allowed_measurements:
        raise ModelError("allowed_measurements: expected at least one enclave measurement, got none")
    dek = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    ciphertext = nonce + AESGCM(dek).encrypt(nonce, onnx_bytes, f"{name}:{version}".encode())
    broker = provider.broker()
    key_id = model_key_id(name)
    broker.create_key(key_id, kind="model", measurements=allowed_measurements, quota=quota)
    broker.set_policy(key_id, None, measurements=allowed_measurements, quota=quota)  # an existing key: today's
    wrapped = broker.wrap(key_id, dek)
    prefix = f"models/{name}/{version}/"
    card: dict[str, Any] = {
        "type": CARD_TYPE, "name": name, "version": version, "digest": digest, "size": len(onnx_bytes),
        **offer.fields(), "object_key": prefix + "model.onnx.enc", "key_id": key_id,
        "wrapped_dek": base64.b64encode(wrapped).decode(), "broker": provider.broker_name or "provider",
        "broker_url": provider.broker_url, "protection": "aes-256-gcm",
        "output": {"probability_digits": probability_digits}, "quota": quota, "published_at": int(time.time()),
    }
    store.put(card["object_key"], ciphertext)
    # The card goes last: a model is listed only once its ciphertext is there.
    store.put(prefix + "card.jws", sign_json(card, provider.signing_key()).encode(), "application/jose")
    return PublishedModel(name, version, digest, prefix + "card.jws")


def recipe_key_id(name: str) -> str:
    return f"recipe.{name}"


def publish_recipe(recipe: Recipe, name: str, *, provider: Party, store: ObjectStore,
                   allowed_measurements: list[str]) -> PublishedModel:
    """Encrypt a training recipe under a fresh data key wrapped by the provider's broker; upload it and its card.

    The key is a `model` key (`recipe.<name>`): the broker unwraps it only for an allowed measurement and
    against an owner broker's grant naming the recipe's digest, as for a model. Raises ModelError.
    """
    if not allowed_measurements:
        raise ModelError("allowed_measurements: expected at least one enclave measurement, got none")
    plain = recipe.canonical()
    version = _next_version(store, name, root="recipes")
    dek = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    ciphertext = nonce + AESGCM(dek).encrypt(nonce, plain, f"recipe:{name}:{version}".encode())
    broker = provider.broker()
    key_id = recipe_key_id(name)
    broker.create_key(key_id, kind="model", measurements=allowed_measurements)
    broker.set_policy(key_id, None, measurements=allowed_measurements)  # an existing key: today's measurements
    prefix = f"recipes/{name}/{version}/"
    card: dict[str, Any] = {
        "type": RECIPE_CARD_TYPE, "name": name, "version": version,
        "digest": "sha256:" + hashlib.sha256(plain).hexdigest(), "object_key": prefix + "recipe.json.enc",
        "protection": "aes-256-gcm", "broker": provider.broker_name or "provider", "broker_url": provider.broker_url,
        "key_id": key_id, "wrapped_dek": base64.b64encode(broker.wrap(key_id, dek)).decode(),
        "published_at": int(time.time())}
    store.put(card["object_key"], ciphertext)
    store.put(prefix + "card.jws", sign_json(card, provider.signing_key()).encode(), "application/jose")
    return PublishedModel(name, version, card["digest"], prefix + "card.jws")


def publish_baseline_model(onnx_bytes: bytes, name: str, *, provider: Party, store: ObjectStore,
                           offer: Offer | None = None) -> PublishedModel:
    """Publish the model UNENCRYPTED, for the benchmark's plaintext baseline only."""
    offer = offer or Offer()
    _check_offer(onnx_bytes, name, offer, None, None)
    version = _next_version(store, name)
    prefix = f"models/{name}/{version}/"
    card: dict[str, Any] = {"type": CARD_TYPE, "name": name, "version": version, "protection": "none",
            "digest": "sha256:" + hashlib.sha256(onnx_bytes).hexdigest(), "size": len(onnx_bytes),
            **offer.fields(), "object_key": prefix + "model.onnx", "published_at": int(time.time())}
    store.put(card["object_key"], onnx_bytes)
    store.put(prefix + "card.jws", sign_json(card, provider.signing_key()).encode(), "application/jose")
    return PublishedModel(name, version, card["digest"], prefix + "card.jws")


def _check_offer(onnx_bytes: bytes, name: str, offer: Offer, digits: int | None,
                 quota: dict[str, int] | None) -> None:
    """The card would parse and its contract describes the graph; ModelError names what does not."""
    try:
        model = onnx.load_from_string(onnx_bytes)
    except Exception as exc:  # onnx raises several unrelated types for garbage
        raise ModelError(f"model: expected an ONNX protobuf, got unreadable bytes ({type(exc).__name__})") from exc
    draft = {"type": CARD_TYPE, "name": name, "version": 1, "digest": "sha256:" + "0" * 64,
             "object_key": "models/draft", "protection": "none", **offer.fields(),
             "output": {"probability_digits": digits}, "quota": quota}
    try:
        contract = ModelCard.parse(draft).contract
    except FormatError as exc:
        raise ModelError(f"model card: {exc}") from None
    mismatch = contract_mismatch(model, contract)
    if mismatch is not None:
        raise ModelError(f"model card contract does not match the ONNX graph: {mismatch}; fix the contract or "
                         "export the model with the tensors it names")


def _next_version(store: ObjectStore, name: str, *, root: str = "models") -> int:
    versions = [int(k.split("/")[2]) for k in store.keys(f"{root}/{name}/") if k.endswith("/card.jws")]
    return max(versions, default=0) + 1


class UsageVerificationError(ValueError):
    """A usage record the enclave did not sign as stored: the message names its key, field, expected and actual."""


@dataclass(frozen=True)
class UsageTotals:
    """A model's verified usage: {tenant: (batches, rows)}, from one record per shard, and the batch ids seen."""

    per_tenant: dict[str, tuple[int, int]]
    records: int
    batches: frozenset[str] = frozenset()


def released_batches(decisions: Iterable[dict[str, Any]], model: str) -> set[str]:
    """The batches this provider's broker released `model`'s key for: the allowed unwraps of `model.<name>` in its
    decision log (`BrokerAdmin.decisions`, chain and checkpoint verified). A batch here without usage records is
    one whose records the platform deleted, or one still being scored."""
    key_id = model_key_id(model)
    return {d["batch_id"] for d in decisions
            if d.get("operation") == "unwrap" and d.get("decision") == "allow" and d.get("key_id") == key_id
            and d.get("batch_id")}


_USAGE_KEY = re.compile(r"usage/[^/]+/(?P<tenant>[^/]+)/(?P<batch>[^/]+)/shard-(?P<shard>\d{5})\.jws")


def usage_records(store: ObjectStore, model: str, *, anchors: TrustAnchors, policy: Policy) -> UsageTotals:
    """Rows per owner (tenant) for one model, from the usage records its workers signed.

    The platform stores the records, so each is verified as the owner verifies a receipt (`enclave.receipts`):
    signed by the enclave key bound into evidence that verifies against `anchors` and `policy` (the launch
    measurements this provider's broker releases the model key to), of type `cscore.usage/v1`, naming this model
    and the tenant, batch and shard its key names; a copy under another key would be counted twice. Raises
    UsageVerificationError naming the record. Records the platform deleted are not seen here: `released_batches`
    names the batches your broker released the key for.
    """
    totals: dict[str, tuple[set[str], int]] = {}
    evidence: dict[str, dict[str, Any]] = {}
    keys = store.keys(f"usage/{model}/")
    for key in keys:
        record = _verified_usage(store, key, model, evidence, anchors, policy)
        batches, rows = totals.get(record["tenant"], (set(), 0))
        totals[record["tenant"]] = (batches | {record["batch_id"]}, rows + int(record["rows"]))
    return UsageTotals({tenant: (len(batches), rows) for tenant, (batches, rows) in totals.items()}, len(keys),
                       frozenset().union(*(batches for batches, _ in totals.values())))


def _verified_usage(store: ObjectStore, key: str, model: str, evidence: dict[str, dict[str, Any]],
                    anchors: TrustAnchors, policy: Policy) -> dict[str, Any]:
    """One record's payload, verified; evidence documents are cached by digest (a batch's shards share few)."""
    named = _USAGE_KEY.fullmatch(key)
    if named is None:  # the listing's prefix fixes the model
        raise UsageVerificationError(f"{key}: expected usage/{model}/TENANT/BATCH/shard-NNNNN.jws, got another name")
    token = store.get(key).decode(errors="replace")
    try:
        unverified = unverified_payload(token, what=f"usage record {key}")
        tenant, batch, digest = unverified["tenant"], unverified["batch_id"], unverified["evidence_sha256"]
        if digest not in evidence:
            evidence_key = f"results/{tenant}/{batch}/evidence/{digest}.json"
            raw = store.get_if_exists(evidence_key)
            if raw is None:
                raise UsageVerificationError(f"evidence: expected the attestation evidence the record names at "
                                             f"{evidence_key}, got nothing")
            evidence[digest] = json.loads(raw)
        payload = verify_receipt(token, evidence[digest], anchors=anchors, policy=policy,
                                 expected_type=USAGE_TYPE).payload
    except AttestationError as exc:  # names the check that failed
        from sdk.results import simulated_advice  # pyarrow and numpy: loaded only for this refusal

        raise UsageVerificationError(f"{key}: {exc}{simulated_advice(exc)}") from exc
    except (ValueError, KeyError, TypeError) as exc:  # each names the check that failed
        raise UsageVerificationError(f"{key}: {exc}") from exc
    expected = {"model.name": model, "tenant": named["tenant"], "batch_id": named["batch"],
                "shard_index": int(named["shard"])}
    actual = {"model.name": payload["model"]["name"], "tenant": payload["tenant"], "batch_id": payload["batch_id"],
              "shard_index": payload["shard_index"]}
    for field, value in expected.items():
        if actual[field] != value:
            raise UsageVerificationError(f"{key}: {field} expected {value!r} (from where it is stored), "
                                         f"got {actual[field]!r}")
    return payload
