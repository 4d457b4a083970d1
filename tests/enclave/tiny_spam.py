"""A TF-IDF + logistic regression spam model trained on 40 short sentences (milliseconds), exported as skl2onnx
exports the provider's model: the graph `enclave.tfidf_path` reproduces, without the corpus."""

from __future__ import annotations

import random
from functools import cache

import onnx
import onnxruntime as ort
import pytest
from sklearn.pipeline import Pipeline

from enclave.tfidf_path import TfidfPath
from sdk.training import TOKEN_PATTERN, export_onnx, train_spam_model

SPAM = "free money win prize cheap pills offer click"
HAM = "meeting noon lunch report attached project tomorrow agenda invoice team call thanks"
WORDS = [*SPAM.split(), *HAM.split()]


@cache
def tiny_spam_model(token_pattern: str = TOKEN_PATTERN, extra: tuple[str, ...] = (),
                    max_features: int | None = None) -> tuple[Pipeline, bytes]:
    """The fitted pipeline and its ONNX bytes; `extra` words join the spam sentences' vocabulary, which keeps its
    `max_features` most frequent words (all by default)."""
    rng = random.Random(3)
    texts, labels = [], []
    for i in range(40):
        words = [*SPAM.split(), *extra] if i % 2 else HAM.split()
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))))
        labels.append(i % 2)
    pipeline = train_spam_model(texts, labels, max_features=max_features, token_pattern=token_pattern)
    return pipeline, export_onnx(pipeline)


def rewrite_derivations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(intra-op threads, chunk rows) of each TfidfPath derived from now on (the list fills as they are made)."""
    seen: list[tuple[int, int]] = []
    original = TfidfPath.__init__

    def recorded(self: TfidfPath, model: onnx.ModelProto, options: ort.SessionOptions, chunk_rows: int) -> None:
        seen.append((options.intra_op_num_threads, chunk_rows))
        original(self, model, options, chunk_rows)
    monkeypatch.setattr(TfidfPath, "__init__", recorded)
    return seen
