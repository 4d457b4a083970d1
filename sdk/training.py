"""The model provider's spam model: TF-IDF + logistic regression, exported to ONNX.

Only this configuration converts exactly with skl2onnx (DESIGN §7): word unigrams, an explicit ASCII
``token_pattern``, no ``sublinear_tf``/``strip_accents``, and the converter option ``locale=C.UTF-8``.
The exported graph takes ``text`` (string [N, 1]) and gives ``label`` (int64 [N]) and
``probabilities`` (float32 [N, 2], column 1 = spam), the schema ``enclave.scoring.ModelSession`` checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.pipeline import Pipeline

from enclave.training import canonical_opsets, spam_pipeline
from wire.recipe import BaseWeights

TOKEN_PATTERN = r"[a-zA-Z0-9_]{2,}"
MAX_FEATURES = 20_000
INPUT_NAME = "text"
OUTPUT_NAMES = ("label", "probabilities")
OPSET = 17


def train_spam_model(
    texts: Sequence[str], labels: Sequence[int], *, max_features: int | None = MAX_FEATURES, seed: int = 0,
    token_pattern: str = TOKEN_PATTERN, C: float = 100.0, max_iter: int = 5000,  # noqa: N803 - sklearn's name
    base: BaseWeights | None = None,
) -> Pipeline:
    """Fit TF-IDF (ASCII word unigrams, lowercased) + LogisticRegression(C) on texts, labels 1 = spam.

    The defaults are the provider's generic model; a training recipe (`wire.recipe`) sets the others.

    ``max_features`` bounds the vocabulary (the most frequent terms): the ONNX graph works on dense
    [N, vocabulary] tensors, so a smaller vocabulary scores faster. ``base`` starts from a model's vocabulary and
    weights (`enclave.training.spam_pipeline`), as a recipe with base weights trains in the enclave.
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    y = np.asarray(labels, dtype=np.int64)
    if set(np.unique(y)) != {0, 1}:
        raise ValueError(f"labels must hold both 0 (ham) and 1 (spam), found {sorted(set(y.tolist()))}")
    pipeline = spam_pipeline(token_pattern=token_pattern, max_features=max_features, C=C, max_iter=max_iter,
                             seed=seed, base=base)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # bit-stable across runs and machines, like the enclave's training
        pipeline.fit(list(texts), y)
    return pipeline


def base_weights(pipeline: Pipeline) -> BaseWeights:
    """A fitted pipeline's vocabulary (in column order) and weights, for a recipe's `base` (`wire.recipe`)."""
    vocabulary = pipeline.named_steps["tfidf"].vocabulary_
    clf = pipeline.named_steps["clf"]
    return BaseWeights(tuple(sorted(vocabulary, key=vocabulary.__getitem__)),
                       tuple(float(w) for w in clf.coef_[0]), float(clf.intercept_[0]))


def export_onnx(pipeline: Pipeline) -> bytes:
    """Convert a fitted pipeline to ONNX bytes: input ``text`` string [None, 1]; outputs ``label`` int64 [N]
    and ``probabilities`` float32 [N, 2] (no ZipMap)."""
    from skl2onnx import convert_sklearn  # heavy import; only the provider's export needs it
    from skl2onnx.common.data_types import StringTensorType

    vectorizer = pipeline.named_steps["tfidf"]
    classifier = pipeline.named_steps["clf"]
    options = {
        id(vectorizer): {"locale": "C.UTF-8"},  # without it the StringNormalizer's lowercasing differs
        id(classifier): {"zipmap": False},  # plain float tensor, not a list of dicts
    }
    model = convert_sklearn(
        pipeline,
        initial_types=[(INPUT_NAME, StringTensorType([None, 1]))],
        final_types=None,
        options=options,
        target_opset=OPSET,
        name="cscore-spam",
    )
    _check_outputs(model)
    canonical_opsets(model)  # the enclave's own export does the same: same bytes in every process
    return model.SerializeToString()


def _check_outputs(model: object) -> None:
    names = tuple(o.name for o in model.graph.output)  # type: ignore[attr-defined]
    if names != OUTPUT_NAMES:
        raise RuntimeError(f"skl2onnx produced outputs {names}, expected {OUTPUT_NAMES}")


def sklearn_spam_probability(pipeline: Pipeline, texts: Sequence[str]) -> np.ndarray:
    """P(spam) from the sklearn pipeline, float64 [N]: the reference the ONNX graph must match."""
    return pipeline.predict_proba(list(texts))[:, 1]
