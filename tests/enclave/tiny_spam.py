"""A TF-IDF + logistic regression spam model trained on 40 short sentences (milliseconds), exported as skl2onnx
exports the provider's model: the graph `enclave.tfidf_path` reproduces, without the corpus."""

from __future__ import annotations

import random
from functools import cache

from sklearn.pipeline import Pipeline

from sdk.training import TOKEN_PATTERN, export_onnx, train_spam_model

SPAM = "free money win prize cheap pills offer click"
HAM = "meeting noon lunch report attached project tomorrow agenda invoice team call thanks"
WORDS = [*SPAM.split(), *HAM.split()]


@cache
def tiny_spam_model(token_pattern: str = TOKEN_PATTERN, extra: tuple[str, ...] = ()) -> tuple[Pipeline, bytes]:
    """The fitted pipeline and its ONNX bytes; `extra` words join the spam sentences' vocabulary."""
    rng = random.Random(3)
    texts, labels = [], []
    for i in range(40):
        words = [*SPAM.split(), *extra] if i % 2 else HAM.split()
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))))
        labels.append(i % 2)
    pipeline = train_spam_model(texts, labels, max_features=None, token_pattern=token_pattern)
    return pipeline, export_onnx(pipeline)
