"""One training job as the platform hands it to a worker: object keys, digests and names, never a secret.

The owner chooses the data (its sha256) and the recipe (name, version, digest) in its signed training
manifest; the worker trains only if the bytes it is handed match those digests. Shape (`cscore.training-spec/v1`
is not on the wire: the dict is the Celery argument)::

    {"tenant", "job_id", "input_key", "input_sha256": hex, "recipe_name", "recipe_version": int,
     "recipe_digest": "sha256:<hex>", "owner_broker": name in the worker configuration,
     "model_name": name the tuned model is published under, "model_version": int,
     "owner_share_key": owner key id, "owner_share_wrapped": base64 (the owner's half of the tuned model's key,
     wrapped by its broker), "receipt_key": where its receipt goes}

The tuned model is stored under ``tuned/<tenant>/<model_name>/<model_version>/``: its ciphertext, the card the
enclave signs (lineage and both key shares, wrapped) and the receipt. Owners choose it as
``<tenant>/<model_name>:<version>``; that reference is its ciphertext's AAD and its key's HKDF info. Its card
(`cscore.tuned-model-card/v1`, Ed25519 by the training enclave's receipt key, evidence beside it)::

    {"type", "tenant", "name", "version": int, "digest": "sha256:<hex>" (plaintext ONNX), "size": int,
     "object_key": "<prefix>model.onnx.enc", "protection": "aes-256-gcm+2",
     "schema": {"inputs": ["text"], "outputs": ["label", "probabilities"]} (the spam contract),
     "broker", "broker_url": the provider's broker (holds the recipe key, the provider's share),
     "owner_share": {"broker", "key_id", "wrapped": base64}, "provider_share": {"broker", "key_id", "wrapped"},
     "lineage": {"job_id", "input_sha256", "recipe": {"name", "version", "digest"}},
     "metrics": {precision, recall, f1, train_rows, holdout_rows, holdout_spam}, "evidence_sha256"}
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from wire.card import ModelCard
from wire.contract import SPAM_CONTRACT, SPAM_TASK, Contract
from wire.errors import FormatError, refuse_unknown, require, typed_document

TRAINING_RECEIPT_TYPE = "cscore.training-receipt/v2"  # v2 signs `worker` and `sessions` as shard receipts do
TUNED_CARD_TYPE = "cscore.tuned-model-card/v1"
TUNED_PROTECTION = "aes-256-gcm+2"  # AES-256-GCM under HKDF(owner share || provider share)
# Below this many held-out rows of a class, the metrics tell individual rows (on one row, recall is its prediction).
MIN_HOLDOUT_PER_CLASS = 20
METRIC_RATES = ("precision", "recall", "f1")
# In clear on purpose: the owner's manifest beside the receipt already says rows and spam rows (docs/THREAT_MODEL.md).
METRIC_COUNTS = ("train_rows", "holdout_rows", "holdout_spam")

_TEXT = ("tenant", "job_id", "input_key", "input_sha256", "recipe_name", "recipe_digest", "owner_broker",
         "model_name", "owner_share_key", "owner_share_wrapped", "receipt_key")


@dataclass(frozen=True)
class TrainingSpec:
    """One training job (module docstring)."""

    tenant: str
    job_id: str
    input_key: str
    input_sha256: str
    recipe_name: str
    recipe_version: int
    recipe_digest: str
    owner_broker: str
    model_name: str
    model_version: int
    owner_share_key: str
    owner_share_wrapped: str
    receipt_key: str

    @property
    def model(self) -> str:
        """The tuned model's reference, `<tenant>/<name>:<version>` (its ciphertext's AAD, its key's HKDF info)."""
        return f"{self.tenant}/{self.model_name}:{self.model_version}"

    @property
    def prefix(self) -> str:
        return f"tuned/{self.tenant}/{self.model_name}/{self.model_version}/"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Any) -> TrainingSpec:
        """Strict parse; FormatError names the field."""
        if not isinstance(doc, dict):
            raise FormatError("training_spec", "a JSON object", type(doc).__name__)
        refuse_unknown(doc, set(_TEXT) | {"recipe_version", "model_version"}, where="training_spec")
        text = {name: require(doc, name, str, where="training_spec") for name in _TEXT}
        if not re.fullmatch(r"[0-9a-f]{64}", text["input_sha256"]):
            raise FormatError("training_spec.input_sha256", "64 hex digits", text["input_sha256"])
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", text["recipe_digest"]):
            raise FormatError("training_spec.recipe_digest", "sha256:<64 hex>", text["recipe_digest"])
        spec = cls(recipe_version=require(doc, "recipe_version", int, where="training_spec"),
                   model_version=require(doc, "model_version", int, where="training_spec"), **text)
        # The receipt is written beside its model's card (as ShardSpec keys its results under its batch).
        if spec.receipt_key != spec.prefix + "receipt.jws":
            raise FormatError("training_spec.receipt_key", spec.prefix + "receipt.jws", spec.receipt_key)
        return spec


def aggregate_metrics(doc: Any, *, where: str) -> dict[str, float | int]:
    """A training's metrics as a receipt or tuned card may carry them: exactly the three rates (0..1) and the
    three counts, on a held-out split of at least MIN_HOLDOUT_PER_CLASS rows of each class. Anything per row
    (a list, an extra field) or a split that small is refused: FormatError naming the field."""
    if not isinstance(doc, dict):
        raise FormatError(where, "a JSON object", type(doc).__name__)
    refuse_unknown(doc, {*METRIC_RATES, *METRIC_COUNTS}, where=where)
    rates = {name: require(doc, name, (int, float), where=where) for name in METRIC_RATES}
    for name, value in rates.items():
        if not 0 <= value <= 1:
            raise FormatError(f"{where}.{name}", "a rate in 0..1", value)
    counts = {name: require(doc, name, int, where=where) for name in METRIC_COUNTS}
    for name, held in (("holdout_spam", counts["holdout_spam"]),
                       ("holdout_rows", counts["holdout_rows"] - counts["holdout_spam"])):
        if held < MIN_HOLDOUT_PER_CLASS:
            raise FormatError(f"{where}.{name}", f"at least {MIN_HOLDOUT_PER_CLASS} held-out "
                              f"{'spam' if name == 'holdout_spam' else 'ham'} rows", held,
                              "metrics on a smaller split tell individual rows' labels")
    return {**rates, **counts}


def model_card_key(name: str, version: int) -> str:
    """Where the card of the model a manifest names is: `models/<name>/<version>/card.jws` (a provider's), or
    `tuned/<tenant>/<name>/<version>/card.jws` for a tuned model named `<tenant>/<name>`."""
    return f"tuned/{name}/{version}/card.jws" if "/" in name else f"models/{name}/{version}/card.jws"


_TUNED_FIELDS = {"type", "tenant", "name", "version", "digest", "size", "object_key", "protection", "schema", "broker",
                 "broker_url", "owner_share", "provider_share", "lineage", "metrics", "evidence_sha256"}


@dataclass(frozen=True)
class TunedCard:
    """A tuned model's card (module docstring), parsed; whoever acts on it checks its signature or its key."""

    tenant: str
    name: str
    version: int
    digest: str
    object_key: str
    owner_broker: str
    owner_key_id: str
    owner_wrapped: str
    provider_broker: str
    provider_key_id: str
    provider_wrapped: str
    job_id: str
    metrics: dict[str, Any]
    raw: dict[str, Any]

    @property
    def reference(self) -> str:
        """`<tenant>/<name>:<version>`: how owners choose it, its ciphertext's AAD, its key's HKDF info."""
        return f"{self.tenant}/{self.name}:{self.version}"

    @classmethod
    def parse(cls, doc: Any) -> TunedCard:
        """Strict parse; FormatError names the field (the object key must be the card's own folder's)."""
        doc = typed_document(doc, "tuned_card", TUNED_CARD_TYPE, _TUNED_FIELDS)
        if doc.get("protection") != TUNED_PROTECTION:
            raise FormatError("tuned_card.protection", TUNED_PROTECTION, doc.get("protection"))
        text = {n: require(doc, n, str, where="tuned_card") for n in ("tenant", "name", "digest", "object_key")}
        version = require(doc, "version", int, where="tuned_card")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", text["digest"]):
            raise FormatError("tuned_card.digest", "sha256:<64 hex>", text["digest"])
        own = f"tuned/{text['tenant']}/{text['name']}/{version}/model.onnx.enc"
        if text["object_key"] != own:
            raise FormatError("tuned_card.object_key", own, text["object_key"])
        shares = {f"{side}_{field}": require(doc, f"{side}_share.{field}", str, where="tuned_card")
                  for side in ("owner", "provider") for field in ("broker", "key_id", "wrapped")}
        return cls(**text, version=version, **shares,
                   job_id=require(doc, "lineage.job_id", str, where="tuned_card"),
                   metrics=aggregate_metrics(doc.get("metrics"), where="tuned_card.metrics"), raw=doc)

    def model_card(self) -> ModelCard:
        """The card a scoring worker acts on: the spam contract, the provider's broker and share, full output."""
        return ModelCard(name=f"{self.tenant}/{self.name}", version=self.version, digest=self.digest,
                         object_key=self.object_key, protection="aes-256-gcm", broker=self.provider_broker,
                         key_id=self.provider_key_id, wrapped_dek=self.provider_wrapped, probability_digits=None,
                         quota=None, task=SPAM_TASK, contract=Contract.parse(SPAM_CONTRACT),
                         metrics={k: float(v) for k, v in self.metrics.items() if k in ("precision", "recall", "f1")},
                         price=None, raw=self.raw)
