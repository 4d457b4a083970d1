"""enclave/training.py's refusals word for word, its metrics arithmetic and its canonical export (issue 9: each
input differs from an honest one only in what one check guards; milliseconds a test, one small training)."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import onnx
import pyarrow as pa
import pytest
from cryptography.exceptions import InvalidTag

from enclave.pme import write_encrypted
from enclave.signing import generate_signing_key, verify_json
from enclave.training import (
    TRAINING_COLUMNS,
    Metrics,
    TrainedModel,
    TrainingInputError,
    _metrics,
    canonical_opsets,
    decrypt_recipe,
    fit,
    joint_key,
    read_labelled,
    sign_training_receipt,
    spam_pipeline,
    train,
    train_job,
    tuned_card,
)
from tests.enclave.test_pme import LocalWrapper
from tests.enclave.test_training import RECIPE, _mail, _published, _spec
from wire.receipt import BrokerSession
from wire.recipe import BaseWeights, Recipe, RecipeCard
from wire.training import MIN_HOLDOUT_PER_CLASS


def _encrypted(table: pa.Table) -> tuple[bytes, LocalWrapper]:
    wrapper = LocalWrapper()
    return write_encrypted(table, wrapper, footer_key="owner.f", column_key="owner.c", row_group_size=100), wrapper


def test_decrypt_recipe_returns_the_recipe_and_refuses_a_wrong_tag_and_a_wrong_digest_word_for_word() -> None:
    card, dek, ciphertext = _published()
    assert decrypt_recipe(card, dek, ciphertext) == RECIPE
    altered = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    with pytest.raises(TrainingInputError) as err:
        decrypt_recipe(card, dek, altered)
    assert str(err.value) == ("recipe spam-recipe:1: expected ciphertext authenticated by its key, got a tag mismatch "
                              "(altered, or another recipe's object)")
    assert isinstance(err.value.__cause__, InvalidTag)
    # Same name and version (same AAD, so the tag passes), another digest on the card: the digest refuses.
    other = RecipeCard.parse({**card.raw, "digest": "sha256:" + "0" * 64})
    with pytest.raises(TrainingInputError) as err:
        decrypt_recipe(other, dek, ciphertext)
    assert str(err.value) == (f"recipe spam-recipe:1: expected digest sha256:{'0' * 64} (its card), got "
                              f"{card.digest}")


def test_read_labelled_refuses_another_digest_and_missing_columns_word_for_word() -> None:
    card, _, _ = _published()
    texts, labels, holdout = _mail(8)
    data, wrapper = _encrypted(pa.table({"text": texts, "label": pa.array(labels, pa.int8()), "holdout": holdout,
                                         "note": ["owner only"] * 8}))
    spec = _spec(data, card)
    table = read_labelled(spec, data, wrapper)  # the training columns only: the owner's other columns stay out
    assert table.column_names == list(TRAINING_COLUMNS) and table.column("label").to_pylist() == labels
    other = data + b"\0"
    with pytest.raises(TrainingInputError) as err:
        read_labelled(spec, other, wrapper)
    assert str(err.value) == (f"input {spec.input_key}: expected sha256 {spec.input_sha256} (the owner's training "
                              f"manifest), got {hashlib.sha256(other).hexdigest()}")
    bare, bare_keys = _encrypted(pa.table({"text": texts, "label": pa.array(labels, pa.int8())}))
    with pytest.raises(TrainingInputError) as err:
        read_labelled(_spec(bare, card), bare, bare_keys)
    assert str(err.value) == (f"input {spec.input_key}: expected columns ['text', 'label', 'holdout'], "
                              "missing ['holdout']")


def test_train_job_refuses_another_card_and_labels_other_than_0_and_1_word_for_word() -> None:
    card, dek, ciphertext = _published()
    texts, labels, holdout = _mail(8)
    bad = [2, 11, 9, 10, 0, 1, 1, 0]  # sorted by repr, the first three: 10, 11, 2
    data, wrapper = _encrypted(pa.table({"text": texts, "label": pa.array(bad, pa.int8()), "holdout": holdout}))
    spec = _spec(data, card)
    with pytest.raises(TrainingInputError) as err:
        train_job(spec, data, wrapper, card, dek, ciphertext)
    assert str(err.value) == f"input {spec.input_key}.label: expected 0 (ham) or 1 (spam), got [10, 11, 2]"
    for field, value in (("name", "other-recipe"), ("version", 2), ("digest", "sha256:" + "1" * 64)):
        other = RecipeCard.parse({**card.raw, field: value})
        with pytest.raises(TrainingInputError) as err:
            train_job(spec, data, wrapper, other, dek, ciphertext)
        assert str(err.value) == (f"recipe card {other.reference} ({other.digest}): expected spam-recipe:1 with "
                                  f"digest {card.digest} (the owner's choice)"), field


def test_train_and_fit_refuse_unequal_columns_one_class_and_a_small_split_word_for_word() -> None:
    texts, labels, holdout = _mail(16)
    with pytest.raises(TrainingInputError) as err:
        train(RECIPE, texts[:-1], labels, holdout)
    assert str(err.value) == "columns: expected equal lengths, got text 15, label 16, holdout 16"
    with pytest.raises(TrainingInputError) as err:
        train(RECIPE, texts, labels[:-1], holdout)
    assert str(err.value) == "columns: expected equal lengths, got text 16, label 15, holdout 16"
    with pytest.raises(TrainingInputError) as err:
        train(RECIPE, texts, labels, holdout[:-1])
    assert str(err.value) == "columns: expected equal lengths, got text 16, label 16, holdout 15"
    with pytest.raises(TrainingInputError) as err:
        train(RECIPE, texts, labels, holdout)  # 4 held out of each class
    assert str(err.value) == (f"holdout: expected at least {MIN_HOLDOUT_PER_CLASS} ham rows held out, got 4; "
                              "smaller splits would let the metrics tell individual rows' labels")
    with pytest.raises(TrainingInputError) as err:
        fit(RECIPE, texts, labels[:-1])
    assert str(err.value) == ("training rows: expected texts and labels of equal length with both 0 (ham) and "
                              "1 (spam), got 16 texts, labels [0, 1]")
    with pytest.raises(TrainingInputError) as err:
        fit(RECIPE, texts, [1] * 16)
    assert str(err.value) == ("training rows: expected texts and labels of equal length with both 0 (ham) and "
                              "1 (spam), got 16 texts, labels [1]")


def test_a_split_of_exactly_the_minimum_trains_and_counts_what_it_held_out() -> None:
    """MIN_HOLDOUT_PER_CLASS of each class held out is enough (the bound is inclusive); the metrics count them."""
    texts, labels, _ = _mail(4 * MIN_HOLDOUT_PER_CLASS + 6)
    holdout = [i < 2 * MIN_HOLDOUT_PER_CLASS for i in range(len(texts))]  # alternate classes: MIN of each
    trained = train(RECIPE, texts, labels, holdout)
    m = trained.metrics
    assert (m.train_rows, m.holdout_rows, m.holdout_spam) == (2 * MIN_HOLDOUT_PER_CLASS + 6, 2 * MIN_HOLDOUT_PER_CLASS,
                                                              MIN_HOLDOUT_PER_CLASS)
    assert trained.digest == "sha256:" + hashlib.sha256(trained.onnx_bytes).hexdigest()
    model = onnx.load_from_string(trained.onnx_bytes)
    assert [i.name for i in model.graph.input] == ["text"]
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    assert [(o.domain, o.version) for o in model.opset_import] == sorted((o.domain, o.version)
                                                                        for o in model.opset_import)


def test_a_holdout_column_of_0_and_1_integers_is_read_as_flags_not_as_row_indices() -> None:
    """An owner's Parquet may hold `holdout` as integers: the same split as booleans, the same model and metrics."""
    texts, labels, _ = _mail(4 * MIN_HOLDOUT_PER_CLASS + 6)
    holdout = [i < 2 * MIN_HOLDOUT_PER_CLASS for i in range(len(texts))]
    as_flags = train(RECIPE, texts, labels, holdout)
    assert train(RECIPE, texts, labels, [int(h) for h in holdout]) == as_flags


def test_fit_caps_the_vocabulary_at_the_recipes_max_features_and_reads_labels_as_integers() -> None:
    texts, labels, _ = _mail(40)
    capped = fit(Recipe(**{**RECIPE.__dict__, "max_features": 5}), texts, labels)
    assert len(capped.named_steps["tfidf"].vocabulary_) == 5
    flagged = fit(RECIPE, texts, [bool(y) for y in labels])  # True and False: classes 1 and 0, as in the ONNX labels
    assert flagged.named_steps["clf"].classes_.tolist() == [0, 1]
    assert flagged.named_steps["clf"].classes_.dtype == np.int64


def test_metrics_are_the_held_out_aggregates_rounded_and_zero_where_undefined() -> None:
    truth = np.array([1, 1, 1, 0, 0, 1, 0, 1, 1])
    predicted = np.array([1, 1, 0, 1, 1, 0, 0, 1, 0])  # tp 3, fp 2, fn 3
    m = _metrics(truth, predicted, train_rows=40)
    assert (m.precision, m.recall, m.f1) == (0.6, 0.5, 0.545)  # f1 = 6/11 rounded to 3 digits
    assert (m.train_rows, m.holdout_rows, m.holdout_spam) == (40, 9, 6)
    skewed = _metrics(np.array([1, 1, 1, 0]), np.array([1, 0, 0, 1]), train_rows=1)  # tp 1, fp 1, fn 2
    assert (skewed.precision, skewed.recall, skewed.f1) == (0.5, 0.333, 0.4)
    none = _metrics(np.array([1, 0]), np.array([0, 0]), train_rows=3)  # nothing predicted spam
    assert (none.precision, none.recall, none.f1) == (0.0, 0.0, 0.0)
    no_spam = _metrics(np.array([0, 0]), np.array([1, 0]), train_rows=3)  # no spam held out, one false alarm
    assert (no_spam.precision, no_spam.recall, no_spam.f1, no_spam.holdout_spam) == (0.0, 0.0, 0.0, 0)


def test_canonical_opsets_sorts_the_imports_by_domain_and_version_in_place() -> None:
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []), opset_imports=[
        onnx.helper.make_opsetid("ai.onnx.ml", 1), onnx.helper.make_opsetid("", 17),
        onnx.helper.make_opsetid("ai.onnx.ml", 3)])
    canonical_opsets(model)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17), ("ai.onnx.ml", 1), ("ai.onnx.ml", 3)]


def test_the_pipeline_lowercases_tokenizes_by_the_recipe_and_caps_features_unless_a_base_fixes_them() -> None:
    texts, labels = ["FREE cash now", "Free prize ok", "meeting notes ok", "Budget review"], [1, 1, 0, 0]
    pipeline = spam_pipeline(token_pattern=r"[a-z]{4,}", max_features=None, C=1.0, max_iter=100, seed=0)
    vocabulary = pipeline.fit(texts, labels).named_steps["tfidf"].vocabulary_
    assert sorted(vocabulary) == ["budget", "cash", "free", "meeting", "notes", "prize", "review"]
    capped = spam_pipeline(token_pattern=r"[a-z]{2,}", max_features=2, C=1.0, max_iter=100, seed=0)
    assert len(capped.fit(texts, labels).named_steps["tfidf"].vocabulary_) == 2
    base = BaseWeights(vocabulary=("free", "cash", "meeting"), coef=(1.0, 1.0, -1.0), intercept=0.0)
    based = spam_pipeline(token_pattern=r"[a-z]{2,}", max_features=2, C=1.0, max_iter=100, seed=0, base=base)
    assert based.named_steps["tfidf"].max_features is None  # the base's vocabulary, not a cap, sets the columns
    assert len(based.fit(texts, labels).named_steps["tfidf"].vocabulary_) == 3


def test_the_joint_key_is_hkdf_sha256_of_both_shares_under_the_models_name() -> None:
    """A known answer: the key the owner's SDK derives from the same shares must be this one, byte for byte."""
    key = joint_key(bytes(range(32)), bytes(range(32, 64)), model="acme/spam-filter-tuned:1")
    assert key.hex() == "a6b9ea406d8d00300cf7dea227e2a143cae0e7816de0a0d61eb7a3f33c93dc21"


def _trained() -> TrainedModel:
    return TrainedModel(b"onnx", "sha256:" + "d" * 64, Metrics(0.9, 0.8, 0.847, 100, 40, 20))


def test_the_tuned_card_names_its_lineage_shares_and_metrics_exactly() -> None:
    card, _, _ = _published()
    spec = _spec(b"owner rows", card)
    assert tuned_card(spec, _trained(), card, evidence_sha256="e" * 64) == {
        "type": "cscore.tuned-model-card/v1", "tenant": "acme", "name": "spam-filter-tuned", "version": 1,
        "digest": "sha256:" + "d" * 64, "size": 4, "object_key": "tuned/acme/spam-filter-tuned/1/model.onnx.enc",
        "protection": "aes-256-gcm+2", "schema": {"inputs": ["text"], "outputs": ["label", "probabilities"]},
        "broker": "provider", "broker_url": "https://provider",
        "owner_share": {"broker": "owner", "key_id": "acme.tuned", "wrapped": ""},
        "provider_share": {"broker": "provider", "key_id": "recipe.spam-recipe", "wrapped": "AA=="},
        "lineage": {"job_id": "job-1", "input_sha256": hashlib.sha256(b"owner rows").hexdigest(),
                    "recipe": {"name": "spam-recipe", "version": 1, "digest": card.digest}},
        "metrics": {"precision": 0.9, "recall": 0.8, "f1": 0.847, "train_rows": 100, "holdout_rows": 40,
                    "holdout_spam": 20},
        "evidence_sha256": "e" * 64}
    unsigned = RecipeCard.parse({k: v for k, v in card.raw.items() if k != "broker_url"})
    assert tuned_card(spec, _trained(), unsigned, evidence_sha256="e" * 64)["broker_url"] == ""


def test_the_training_receipt_signs_exactly_the_jobs_digests_metrics_and_sessions() -> None:
    card, _, _ = _published()
    spec = _spec(b"owner rows", card)
    key = generate_signing_key()
    before = int(time.time())
    token = sign_training_receipt(key, spec=spec, trained=_trained(), evidence_sha256="e" * 64, worker="w1",
                                  sessions=[BrokerSession("owner", ("a" * 64,))])
    receipt = verify_json(token, key.as_dict(private=False), what="training receipt")
    assert before <= receipt.pop("issued_at") <= int(time.time())
    assert receipt == {
        "type": "cscore.training-receipt/v2", "tenant": "acme", "job_id": "job-1",
        "input": {"key": "incoming/acme/job-1/train.parquet", "sha256": hashlib.sha256(b"owner rows").hexdigest()},
        "recipe": {"name": "spam-recipe", "version": 1, "digest": card.digest},
        "model": {"name": "spam-filter-tuned", "version": 1, "digest": "sha256:" + "d" * 64, "size": 4,
                  "object_key": "tuned/acme/spam-filter-tuned/1/model.onnx.enc"},
        "metrics": {"precision": 0.9, "recall": 0.8, "f1": 0.847, "train_rows": 100, "holdout_rows": 40,
                    "holdout_spam": 20},
        "evidence_sha256": "e" * 64, "worker": "w1",
        "sessions": [{"broker": "owner", "claims_digests": ["a" * 64]}]}
