"""Confidential training (issue 16): recipe format, deterministic enclave training, receipt, and the attacks
a platform or a provider can mount on a training job (each with what it obtains)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random

import numpy as np
import pyarrow as pa
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sklearn.exceptions import ConvergenceWarning

from enclave.pme import write_encrypted
from enclave.signing import generate_signing_key, sign_json, verify_json
from enclave.training import (
    MIN_HOLDOUT_PER_CLASS,
    TRAINING_RECEIPT_TYPE,
    TrainingInputError,
    decrypt_recipe,
    encrypt_model,
    joint_key,
    sign_training_receipt,
    train,
    train_job,
)
from sdk.training import export_onnx, train_spam_model
from tests.enclave.test_pme import LocalWrapper
from wire.errors import FormatError
from wire.receipt import BrokerSession
from wire.recipe import RECIPE_CARD_TYPE, Recipe, RecipeCard, verify_recipe_card
from wire.training import TrainingSpec

RECIPE = Recipe(token_pattern=r"[a-zA-Z0-9_]{2,}", max_features=500, C=10.0, max_iter=500, seed=7)
SPAM_WORDS = "viagra winner prize free offer click cash credit loan casino bonus unsubscribe".split()
HAM_WORDS = "meeting agenda report budget review minutes project deadline lunch invoice draft patch".split()
COMMON = "the a of and to in for on with this that please thanks regards".split()


def _mail(n: int, seed: int = 1) -> tuple[list[str], list[int], list[bool]]:
    """n labelled emails (half spam), every fourth one held out; noisy enough that metrics are not all 1."""
    rng = random.Random(seed)
    texts, labels, holdout = [], [], []
    for i in range(n):
        spam = i % 2
        own, other = (SPAM_WORDS, HAM_WORDS) if spam else (HAM_WORDS, SPAM_WORDS)
        words = rng.choices(own, k=6) + rng.choices(other, k=3) + rng.choices(COMMON, k=10)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(spam)
        holdout.append(i % 4 >= 2)
    return texts, labels, holdout


def _published(recipe: Recipe = RECIPE, name: str = "spam-recipe", version: int = 1) -> tuple[RecipeCard, bytes,
                                                                                                bytes]:
    """A recipe as `sdk.provider.publish_recipe` stores it: card, data key, ciphertext."""
    plain = recipe.canonical()
    dek = AESGCM.generate_key(256)
    nonce = os.urandom(12)
    card = RecipeCard.parse({
        "type": RECIPE_CARD_TYPE, "name": name, "version": version,
        "digest": "sha256:" + hashlib.sha256(plain).hexdigest(),
        "object_key": f"recipes/{name}/{version}/recipe.json.enc",
        "protection": "aes-256-gcm", "broker": "provider", "broker_url": "https://provider", "key_id": f"recipe.{name}",
        "wrapped_dek": "AA==", "published_at": 0})
    return card, dek, nonce + AESGCM(dek).encrypt(nonce, plain, card.aad)


def _owner_data(n: int = 240) -> tuple[bytes, LocalWrapper]:
    texts, labels, holdout = _mail(n)
    wrapper = LocalWrapper()
    table = pa.table({"text": texts, "label": pa.array(labels, pa.int8()), "holdout": holdout})
    return write_encrypted(table, wrapper, footer_key="owner.f", column_key="owner.c", row_group_size=100), wrapper


def _spec(data: bytes, card: RecipeCard) -> TrainingSpec:
    return TrainingSpec(tenant="acme", job_id="job-1", input_key="incoming/acme/job-1/train.parquet",
                        input_sha256=hashlib.sha256(data).hexdigest(), recipe_name=card.name,
                        recipe_version=card.version, recipe_digest=card.digest, owner_broker="owner",
                        model_name="spam-filter-tuned", model_version=1, owner_share_key="acme.tuned",
                        owner_share_wrapped="", receipt_key="tuned/acme/spam-filter-tuned/1/receipt.jws")


def _plaintext(recipe: Recipe, texts: list[str], labels: list[int], holdout: list[bool]) -> bytes:
    """ONNX bytes of the provider's plaintext training (`sdk.training`) of `recipe` on the rows not held out."""
    kept = [not h for h in holdout]
    return export_onnx(train_spam_model([t for t, k in zip(texts, kept, strict=True) if k],
                                        [y for y, k in zip(labels, kept, strict=True) if k],
                                        max_features=recipe.max_features, seed=recipe.seed,
                                        token_pattern=recipe.token_pattern, C=recipe.C, max_iter=recipe.max_iter,
                                        base=recipe.base))


def test_enclave_model_is_bit_identical_to_plaintext_training() -> None:
    """Same recipe, data and seed: the enclave's ONNX bytes equal the provider's plaintext training path."""
    texts, labels, holdout = _mail(240)
    trained = train(RECIPE, texts, labels, holdout)
    plain = _plaintext(RECIPE, texts, labels, holdout)
    assert trained.onnx_bytes == plain
    assert trained.digest == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert train(RECIPE, texts, labels, holdout).onnx_bytes == plain  # and again: deterministic run to run
    other = train(Recipe(**{**RECIPE.__dict__, "C": 0.5}), texts, labels, holdout)
    assert other.digest != trained.digest  # the recipe matters: the test can fail


def test_job_decrypts_recipe_and_rows_and_reports_metrics_only() -> None:
    card, dek, ciphertext = _published()
    data, wrapper = _owner_data()
    trained = train_job(_spec(data, card), data, wrapper, card, dek, ciphertext)
    m = trained.metrics
    assert (m.train_rows, m.holdout_rows, m.holdout_spam) == (120, 120, 60)
    assert 0.5 < m.f1 <= 1.0 and 0 < m.precision <= 1 and 0 < m.recall <= 1
    assert all(len(str(v).split(".")[-1]) <= 3 for v in (m.precision, m.recall, m.f1))  # rounded


def test_receipt_names_inputs_recipe_output_and_metrics() -> None:
    card, dek, ciphertext = _published()
    data, wrapper = _owner_data()
    spec = _spec(data, card)
    trained = train_job(spec, data, wrapper, card, dek, ciphertext)
    key = generate_signing_key()
    sessions = [BrokerSession("provider", ("b" * 64,)), BrokerSession("owner", ("a" * 64, "c" * 64))]
    token = sign_training_receipt(key, spec=spec, trained=trained, evidence_sha256="e" * 64, worker="w1",
                                  sessions=sessions)
    receipt = verify_json(token, key.as_dict(private=False), what="training receipt")
    assert receipt["type"] == TRAINING_RECEIPT_TYPE
    assert receipt["input"] == {"key": spec.input_key, "sha256": spec.input_sha256}
    assert receipt["recipe"] == {"name": card.name, "version": 1, "digest": card.digest}
    assert receipt["model"]["digest"] == trained.digest and receipt["model"]["version"] == 1
    assert receipt["metrics"]["f1"] == trained.metrics.f1
    assert receipt["worker"] == "w1" and receipt["sessions"] == [  # sorted: one signed byte string per content
        {"broker": "owner", "claims_digests": ["a" * 64, "c" * 64]},
        {"broker": "provider", "claims_digests": ["b" * 64]}]
    assert trained.onnx_bytes not in token.encode() and b"viagra" not in token.encode()


def test_tuned_model_key_needs_both_shares() -> None:
    owner_share, provider_share = os.urandom(32), os.urandom(32)
    key = joint_key(owner_share, provider_share, model="acme/spam-filter-tuned:1")
    blob = encrypt_model(b"onnx-bytes", key, model="acme/spam-filter-tuned:1")
    assert AESGCM(key).decrypt(blob[:12], blob[12:], b"acme/spam-filter-tuned:1") == b"onnx-bytes"
    for guess in (joint_key(owner_share, os.urandom(32), model="acme/spam-filter-tuned:1"),
                  joint_key(os.urandom(32), provider_share, model="acme/spam-filter-tuned:1"),
                  joint_key(owner_share, provider_share, model="other/tuned:1")):
        with pytest.raises(InvalidTag):
            AESGCM(guess).decrypt(blob[:12], blob[12:], b"acme/spam-filter-tuned:1")


# --- attacks -------------------------------------------------------------------------------------------------


def test_platform_labels_are_refused_before_any_training() -> None:
    """The platform builds its own labelled Parquet (its own keys) and hands it in place of the owner's data,
    to make a model that lands in the owner's list. Obtains: a refusal naming the digest, no model."""
    card, dek, ciphertext = _published()
    data, _ = _owner_data()
    spec = _spec(data, card)
    forged, platform_keys = _owner_data(200)  # the platform's rows and labels, well-formed
    with pytest.raises(TrainingInputError, match=r"expected sha256 .* \(the owner's training manifest\)"):
        train_job(spec, forged, platform_keys, card, dek, ciphertext)
    # Nor by flipping the owner's labels in place: the ciphertext no longer matches the owner's digest.
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(TrainingInputError, match="expected sha256"):
        train_job(spec, bytes(tampered), platform_keys, card, dek, ciphertext)


def test_platform_cannot_swap_the_recipe() -> None:
    """A validly signed but different recipe (e.g. another provider's or an older version): refused."""
    card, dek, ciphertext = _published()
    data, wrapper = _owner_data()
    other_card, other_dek, other_ct = _published(Recipe(**{**RECIPE.__dict__, "C": 0.01}), version=2)
    with pytest.raises(TrainingInputError, match="the owner's choice"):
        train_job(_spec(data, card), data, wrapper, other_card, other_dek, other_ct)
    # The right card with another recipe's ciphertext: the AAD/tag refuses it.
    with pytest.raises(TrainingInputError, match="tag mismatch"):
        decrypt_recipe(card, dek, other_ct)


def test_recipe_cannot_ask_for_per_row_outputs() -> None:
    """A provider's recipe that asks the enclave to evaluate per row (or to run code): refused at parse, so
    it obtains nothing; the only evaluation is the enclave's own aggregates."""
    doc = RECIPE.to_json()
    for extra in ({"evaluation": {"per_row": True}}, {"metrics": ["predictions"]}, {"code": "import os"}):
        with pytest.raises(FormatError, match="unknown field"):
            Recipe.parse({**doc, **extra})
    with pytest.raises(FormatError, match="token_pattern"):
        Recipe.parse({**doc, "features": {**doc["features"], "token_pattern": "(?P<secret>.*)"}})
    card, dek, _ = _published()
    plain = json.dumps({**doc, "evaluation": {"per_row": True}}).encode()
    leaky = RecipeCard.parse({**card.raw, "digest": "sha256:" + hashlib.sha256(plain).hexdigest()})
    nonce = os.urandom(12)
    with pytest.raises(FormatError, match="recipe.evaluation"):
        decrypt_recipe(leaky, dek, nonce + AESGCM(dek).encrypt(nonce, plain, leaky.aad))


def test_tiny_holdout_that_would_reveal_a_row_is_refused() -> None:
    """A held-out split of one spam row makes recall that row's prediction: refused below the minimum."""
    texts, labels, holdout = _mail(240)
    spam_held = [i for i, (y, h) in enumerate(zip(labels, holdout, strict=True)) if y == 1 and h]
    for i in spam_held[MIN_HOLDOUT_PER_CLASS - 1:]:
        holdout[i] = False
    with pytest.raises(TrainingInputError, match=f"at least {MIN_HOLDOUT_PER_CLASS} spam rows held out"):
        train(RECIPE, texts, labels, holdout)
    holdout[spam_held[-1]] = True  # exactly the minimum passes
    assert train(RECIPE, texts, labels, holdout).metrics.holdout_spam == MIN_HOLDOUT_PER_CLASS


def test_recipe_card_must_be_signed_by_a_pinned_provider() -> None:
    card, _, _ = _published()
    provider, platform = generate_signing_key(), generate_signing_key()
    pinned = [provider.as_dict(private=False)]
    assert verify_recipe_card(sign_json(card.raw, provider), pinned, what="card").digest == card.digest
    with pytest.raises(FormatError, match="card.signature"):
        verify_recipe_card(sign_json(card.raw, platform), pinned, what="card")
    with pytest.raises(FormatError, match="recipe_card.protection"):
        verify_recipe_card(sign_json({**card.raw, "protection": "none"}, provider), pinned, what="card")


def test_the_same_training_gives_the_same_bytes_in_every_process() -> None:
    """skl2onnx orders opset imports by string hash (per process): the export sorts them, or digests vary."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("from tests.enclave.test_training import RECIPE, _mail\nfrom enclave.training import train\n"
            "t, l, h = _mail(120)\nprint(train(RECIPE, t, l, h).digest)")
    root = Path(__file__).resolve().parents[2]
    digests = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                              env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": seed}).stdout.strip()
               for seed in ("1", "3", "4")}
    assert len(digests) == 1 and next(iter(digests)).startswith("sha256:")


def _based(texts: list[str], labels: list[int]) -> Recipe:
    """RECIPE starting from a generic model the provider trained on other mail (its vocabulary and weights)."""
    from sdk.training import base_weights

    generic = base_weights(train_spam_model(texts, labels, max_features=300, seed=3, C=5.0, max_iter=300))
    # and a token the owner's mail never has: the tuned model keeps the base's columns, not its own data's
    base = dataclasses.replace(generic, vocabulary=(*generic.vocabulary, "zzbase"), coef=(*generic.coef, 0.0))
    return Recipe(**{**RECIPE.__dict__, "base": base})


def test_a_recipe_with_base_weights_trains_from_them_bit_identical_to_plaintext() -> None:
    """The enclave keeps the base's vocabulary and starts from its weights, exactly as the provider's plaintext
    training of the same recipe does; the base changes the model (the test can fail)."""
    from enclave.training import fit

    other_texts, other_labels, _ = _mail(200, seed=9)
    recipe = _based(other_texts, other_labels)
    assert recipe.base is not None and Recipe.parse(json.loads(recipe.canonical())) == recipe  # round trip
    texts, labels, holdout = _mail(240)
    trained = train(recipe, texts, labels, holdout)
    assert trained.onnx_bytes == _plaintext(recipe, texts, labels, holdout)
    assert trained.digest != train(RECIPE, texts, labels, holdout).digest
    tuned = fit(recipe, texts, labels)
    vocabulary = tuned.named_steps["tfidf"].vocabulary_
    assert sorted(vocabulary, key=vocabulary.__getitem__) == list(recipe.base.vocabulary)
    card, dek, ciphertext = _published(recipe)
    assert decrypt_recipe(card, dek, ciphertext) == recipe  # published encrypted like any recipe
    # The solver starts from the base's weights: stopped early, it is elsewhere than from zero weights.
    zero = dataclasses.replace(recipe.base, coef=(0.0,) * len(recipe.base.coef), intercept=0.0)
    early = dataclasses.replace(recipe, max_iter=10)
    with pytest.warns(ConvergenceWarning):  # both stopped before converging: where they start shows
        warm, cold = fit(early, texts, labels), fit(dataclasses.replace(early, base=zero), texts, labels)
    assert not np.allclose(warm.named_steps["clf"].coef_, cold.named_steps["clf"].coef_)


def test_a_recipe_base_must_be_a_vocabulary_the_tokenizer_yields_and_a_finite_weight_each() -> None:
    base = {"vocabulary": ["free", "meeting"], "coef": [1.5, -2.0], "intercept": 0.25}
    doc = {**RECIPE.to_json(), "base": base}
    assert Recipe.parse(doc).base is not None
    cases = [
        ({"vocabulary": ["free", "Meeting"]}, "recipe.base.vocabulary", "Meeting"),
        ({"vocabulary": ["free", "a"]}, "recipe.base.vocabulary", "a"),  # shorter than the pattern's {2,}
        ({"vocabulary": ["free", "free"]}, "recipe.base.vocabulary", "free"),
        ({"vocabulary": []}, "recipe.base.vocabulary", 0),
        ({"coef": [1.5]}, "recipe.base.coef", 1),
        ({"coef": [1.5, float("inf")]}, "recipe.base.coef", float("inf")),
        ({"coef": [1.5, True]}, "recipe.base.coef", True),
        ({"intercept": float("nan")}, "recipe.base.intercept", None),
        ({"weights": [1.0]}, "recipe.base.weights", None),
    ]
    for change, field, actual in cases:
        with pytest.raises(FormatError) as refused:
            Recipe.parse({**doc, "base": {**base, **change}})
        assert refused.value.field == field, (change, refused.value)
        if actual is not None:
            assert refused.value.actual == actual, (change, refused.value)
    too_many = {"vocabulary": [f"w{i:04d}" for i in range(501)], "coef": [0.0] * 501, "intercept": 0.0}
    with pytest.raises(FormatError, match=r"recipe.base.vocabulary: expected 1..500 tokens"):
        Recipe.parse({**doc, "base": too_many})


def test_fit_runs_every_blas_and_openmp_pool_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A multi-threaded BLAS sums in a load-dependent order: the solver runs with every native pool at one thread
    (read from inside the fit, by threadpoolctl), whatever the machine's cores."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info

    from enclave.training import fit

    seen: list[list[tuple[str, int]]] = []
    solver_fit = LogisticRegression.fit

    def observed(self: LogisticRegression, *args: object, **kwargs: object) -> LogisticRegression:
        seen.append([(str(pool["internal_api"]), int(pool["num_threads"])) for pool in threadpool_info()])
        return solver_fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", observed)
    texts, labels, _ = _mail(60)
    fit(RECIPE, texts, labels)
    assert len(seen) == 1 and seen[0] and {threads for _, threads in seen[0]} == {1}
