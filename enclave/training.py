"""Confidential training: decrypt the owner's labelled mail and the provider's recipe in memory, train
deterministically, evaluate on the owner's held-out split, encrypt the model under a key of both parties,
sign a receipt.

What leaves: the tuned model's ciphertext, its digest, the two wrapped key shares, and a receipt with
digests and aggregate metrics (precision, recall, F1 and counts on the held-out split, rounded to
METRIC_DIGITS). Never a weight, a row, a label or a per-row prediction: the recipe holds settings only
(`wire.recipe`), so it cannot ask for more, and a held-out split with fewer than MIN_HOLDOUT_PER_CLASS
rows of a class is refused (on one row, recall would be that row's prediction).

Determinism: the same recipe, rows (in order) and seed give the same ONNX bytes as training in plaintext
with `sdk.training` (single-threaded lbfgs, a fixed converter configuration); a test shows it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc.jwk import OKPKey

from enclave.pme import EncryptedParquet, KeyWrapper, PmeKeys
from enclave.signing import sign_json
from wire.receipt import BrokerSession, sessions_json
from wire.recipe import BaseWeights, Recipe, RecipeCard
from wire.training import (
    MIN_HOLDOUT_PER_CLASS,
    TRAINING_RECEIPT_TYPE,
    TUNED_CARD_TYPE,
    TUNED_PROTECTION,
    TrainingSpec,
)

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

TRAINING_COLUMNS = ("text", "label", "holdout")
METRIC_DIGITS = 3
ONNX_OPSET = 17


class TrainingInputError(ValueError):
    """The data or the recipe is not what the owner chose, or cannot be trained on as it is."""


@dataclass(frozen=True)
class Metrics:
    """Aggregates on the owner's held-out split (rates rounded to METRIC_DIGITS); no row-level value."""

    precision: float
    recall: float
    f1: float
    train_rows: int
    holdout_rows: int
    holdout_spam: int


@dataclass(frozen=True)
class TrainedModel:
    """The tuned model in enclave memory: ONNX bytes (secret), their digest, the held-out metrics."""

    onnx_bytes: bytes
    digest: str
    metrics: Metrics


def spam_pipeline(*, token_pattern: str, max_features: int | None, C: float, max_iter: int,  # noqa: N803
                  seed: int, base: BaseWeights | None = None) -> Pipeline:
    """An unfitted TF-IDF (lowercased, `token_pattern`) + logistic regression pipeline. With `base`, its vocabulary
    is fixed to the base's (max_features then unused) and the solver starts from the base's weights (warm start).
    The one definition the enclave and the provider's plaintext training (`sdk.training`) both fit."""
    # Imported here: scoring workers never load scikit-learn (and its import sets process environment).
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    tfidf = TfidfVectorizer(token_pattern=token_pattern, lowercase=True,
                            max_features=None if base else max_features,
                            vocabulary=list(base.vocabulary) if base else None)
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed, warm_start=base is not None)
    if base is not None:
        clf.coef_ = np.asarray([base.coef], dtype=np.float64)
        clf.intercept_ = np.asarray([base.intercept], dtype=np.float64)
    return Pipeline([("tfidf", tfidf), ("clf", clf)])


def fit(recipe: Recipe, texts: Sequence[str], labels: Sequence[int]) -> Pipeline:
    """TF-IDF + logistic regression as the recipe sets them (from its base weights, if any); single-threaded,
    seeded: deterministic."""
    from threadpoolctl import threadpool_limits

    y = np.asarray(labels, dtype=np.int64)
    if len(texts) != len(y) or set(np.unique(y).tolist()) != {0, 1}:
        raise TrainingInputError(f"training rows: expected texts and labels of equal length with both 0 (ham) and "
                                 f"1 (spam), got {len(texts)} texts, labels {sorted(set(y.tolist()))}")
    pipeline = spam_pipeline(token_pattern=recipe.token_pattern, max_features=recipe.max_features, C=recipe.C,
                             max_iter=recipe.max_iter, seed=recipe.seed, base=recipe.base)
    with threadpool_limits(limits=1):  # a multi-threaded BLAS sums in a load-dependent order: not bit-stable
        pipeline.fit(list(texts), y)
    return pipeline


def export(pipeline: Pipeline) -> bytes:
    """ONNX bytes of a fitted pipeline in the scoring schema (input `text`; outputs `label`, `probabilities`)."""
    from skl2onnx import convert_sklearn  # heavy import; only training needs it
    from skl2onnx.common.data_types import StringTensorType

    options = {id(pipeline.named_steps["tfidf"]): {"locale": "C.UTF-8"},
               id(pipeline.named_steps["clf"]): {"zipmap": False}}
    model = convert_sklearn(pipeline, initial_types=[("text", StringTensorType([None, 1]))], options=options,
                            target_opset=ONNX_OPSET, name="cscore-spam")
    canonical_opsets(model)
    return bytes(model.SerializeToString())


def canonical_opsets(model: Any) -> None:
    """Sort the model's opset imports by domain, in place: skl2onnx lists them in set order, which follows
    Python's per-process string hashing, so the same model would serialize to different bytes per process."""
    imports = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    for domain, version in imports:
        model.opset_import.add(domain=domain, version=version)


def train(recipe: Recipe, texts: Sequence[str], labels: Sequence[int], holdout: Sequence[bool]) -> TrainedModel:
    """Train on the rows not held out, evaluate on the held-out ones; raises TrainingInputError."""
    held = np.asarray(holdout, dtype=bool)
    y = np.asarray(labels, dtype=np.int64)
    if not len(held) == len(y) == len(texts):
        raise TrainingInputError(f"columns: expected equal lengths, got text {len(texts)}, label {len(y)}, "
                                 f"holdout {len(held)}")
    for cls, name in ((0, "ham"), (1, "spam")):
        count = int(np.sum(held & (y == cls)))
        if count < MIN_HOLDOUT_PER_CLASS:
            raise TrainingInputError(
                f"holdout: expected at least {MIN_HOLDOUT_PER_CLASS} {name} rows held out, got {count}; "
                "smaller splits would let the metrics tell individual rows' labels")
    train_texts = [t for t, h in zip(texts, held, strict=True) if not h]
    pipeline = fit(recipe, train_texts, y[~held])
    onnx_bytes = export(pipeline)
    predicted = pipeline.predict([t for t, h in zip(texts, held, strict=True) if h])
    return TrainedModel(onnx_bytes, "sha256:" + hashlib.sha256(onnx_bytes).hexdigest(),
                        _metrics(y[held], predicted, train_rows=len(train_texts)))


def _metrics(truth: np.ndarray, predicted: np.ndarray, *, train_rows: int) -> Metrics:
    tp = int(np.sum((predicted == 1) & (truth == 1)))
    fp = int(np.sum((predicted == 1) & (truth == 0)))
    fn = int(np.sum((predicted == 0) & (truth == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(round(precision, METRIC_DIGITS), round(recall, METRIC_DIGITS), round(f1, METRIC_DIGITS),
                   train_rows, len(truth), int(np.sum(truth == 1)))


def decrypt_recipe(card: RecipeCard, dek: bytes, ciphertext: bytes) -> Recipe:
    """The recipe behind a verified card: AES-GCM under its released key, digest checked, strictly parsed."""
    try:
        plain = AESGCM(dek).decrypt(ciphertext[:12], ciphertext[12:], card.aad)
    except InvalidTag as exc:
        raise TrainingInputError(f"recipe {card.reference}: expected ciphertext authenticated by its key, got a tag "
                                 "mismatch (altered, or another recipe's object)") from exc
    digest = "sha256:" + hashlib.sha256(plain).hexdigest()
    if digest != card.digest:
        raise TrainingInputError(f"recipe {card.reference}: expected digest {card.digest} (its card), got {digest}")
    return Recipe.parse(json.loads(plain))


def read_labelled(spec: TrainingSpec, data: bytes, keys: KeyWrapper | PmeKeys) -> pa.Table:
    """The owner's labelled rows (`text`, `label` 0/1, `holdout` bool), decrypted in memory after the digest
    check against the owner's choice; raises TrainingInputError."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.input_sha256:
        raise TrainingInputError(f"input {spec.input_key}: expected sha256 {spec.input_sha256} (the owner's "
                                 f"training manifest), got {actual}")
    with EncryptedParquet(data, keys) as source:
        missing = sorted(set(TRAINING_COLUMNS) - set(source.schema.names))
        if missing:
            raise TrainingInputError(f"input {spec.input_key}: expected columns {list(TRAINING_COLUMNS)}, "
                                     f"missing {missing}")
        return source.read_row_groups(range(source.num_row_groups), TRAINING_COLUMNS)


def train_job(spec: TrainingSpec, data: bytes, data_keys: KeyWrapper | PmeKeys, card: RecipeCard,
              recipe_dek: bytes, recipe_ciphertext: bytes) -> TrainedModel:
    """One job: check the recipe card is the owner's choice, decrypt recipe and rows, train, evaluate."""
    if (card.name, card.version, card.digest) != (spec.recipe_name, spec.recipe_version, spec.recipe_digest):
        raise TrainingInputError(f"recipe card {card.reference} ({card.digest}): expected {spec.recipe_name}:"
                                 f"{spec.recipe_version} with digest {spec.recipe_digest} (the owner's choice)")
    recipe = decrypt_recipe(card, recipe_dek, recipe_ciphertext)
    table = read_labelled(spec, data, data_keys)
    labels = table.column("label").to_pylist()
    if not set(labels) <= {0, 1}:
        raise TrainingInputError(f"input {spec.input_key}.label: expected 0 (ham) or 1 (spam), got "
                                 f"{sorted({v for v in labels if v not in (0, 1)}, key=repr)[:3]}")
    return train(recipe, table.column("text").to_pylist(), labels, table.column("holdout").to_pylist())


def joint_key(owner_share: bytes, provider_share: bytes, *, model: str) -> bytes:
    """The tuned model's AES-256 key: HKDF-SHA256 over both shares, bound to the model's name:version.

    The owner's share is a random key the owner wrapped with its broker (in its training manifest); the
    provider's share is the recipe's data key, released by the provider's broker. Each broker releases its
    share only to an attested worker under that owner's grant, so neither party, nor the platform, holds both.
    """
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"cscore tuned model " + model.encode()).derive(
        owner_share + provider_share)


def encrypt_model(onnx_bytes: bytes, key: bytes, *, model: str) -> bytes:
    """nonce || AES-256-GCM(key, onnx, AAD=name:version), the layout of every published model."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, onnx_bytes, model.encode())


def tuned_card(spec: TrainingSpec, trained: TrainedModel, card: RecipeCard, *, evidence_sha256: str) -> dict[str, Any]:
    """The tuned model's card (`cscore.tuned-model-card/v1`), signed by the enclave: lineage and where both
    key shares are; no weight. Only the tenant's batches may name it (its `tenant`)."""
    return {"type": TUNED_CARD_TYPE, "tenant": spec.tenant, "name": spec.model_name, "version": spec.model_version,
            "digest": trained.digest, "size": len(trained.onnx_bytes), "object_key": spec.prefix + "model.onnx.enc",
            "protection": TUNED_PROTECTION, "schema": {"inputs": ["text"], "outputs": ["label", "probabilities"]},
            "broker": card.broker, "broker_url": str(card.raw.get("broker_url", "")),
            "owner_share": {"broker": spec.owner_broker, "key_id": spec.owner_share_key,
                            "wrapped": spec.owner_share_wrapped},
            "provider_share": {"broker": card.broker, "key_id": card.key_id, "wrapped": card.wrapped_dek},
            "lineage": {"job_id": spec.job_id, "input_sha256": spec.input_sha256,
                        "recipe": {"name": card.name, "version": card.version, "digest": card.digest}},
            "metrics": asdict(trained.metrics), "evidence_sha256": evidence_sha256}


def sign_training_receipt(key: OKPKey, *, spec: TrainingSpec, trained: TrainedModel, evidence_sha256: str,
                          worker: str, sessions: Sequence[BrokerSession]) -> str:
    """The job's receipt: input and recipe digests, the output model's digest (lineage), the metrics, and the
    broker sessions the job's keys came through (`wire.receipt`: the auditor ties those releases to `worker`)."""
    payload: dict[str, Any] = {
        "type": TRAINING_RECEIPT_TYPE, "tenant": spec.tenant, "job_id": spec.job_id,
        "input": {"key": spec.input_key, "sha256": spec.input_sha256},
        "recipe": {"name": spec.recipe_name, "version": spec.recipe_version, "digest": spec.recipe_digest},
        "model": {"name": spec.model_name, "version": spec.model_version, "digest": trained.digest,
                  "size": len(trained.onnx_bytes), "object_key": spec.prefix + "model.onnx.enc"},
        "metrics": asdict(trained.metrics), "evidence_sha256": evidence_sha256, "worker": worker,
        "sessions": sessions_json(sessions), "issued_at": int(time.time())}
    return sign_json(payload, key)

