"""One real local stack for the end-to-end tests: moto over HTTP, Redis, two key brokers as separate
processes, two Celery worker processes with the simulated SEV-SNP TEE, and `airflow standalone`."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import onnx
import pytest

from cscore.demo import corpus_split
from infra.local.stack import LocalStack
from sdk.corpus import CorpusEmail
from sdk.emails import email_text
from sdk.training import export_onnx, train_spam_model
from tests.e2e.canaries import MODEL_CANARY


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Module-scoped, so the stack's variables leave os.environ before other test modules run."""
    state = tmp_path_factory.mktemp("stack")
    saved = dict(os.environ)
    # Every part embedded: a CSCORE_* variable in the environment would mean "use that real server".
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CSCORE_")}
    running = LocalStack(state, workers=2, airflow=True, environ=clean)
    running.start()
    os.environ.update(running.env)
    try:
        yield running
    finally:
        gc.collect()  # Celery results' __del__ talks to Redis: collect them while the stack still runs
        running.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def corpus() -> tuple[list[CorpusEmail], list[CorpusEmail]]:
    return corpus_split()


@pytest.fixture(scope="session")
def model_bytes(corpus: tuple[list[CorpusEmail], list[CorpusEmail]]) -> bytes:
    """The provider's model, with a canary in its metadata so a leak of model bytes is detectable."""
    train, _ = corpus
    pipeline = train_spam_model([email_text(e.raw) for e in train], [e.label for e in train])
    model = onnx.load_from_string(export_onnx(pipeline))
    entry = model.metadata_props.add()
    entry.key, entry.value = "canary", MODEL_CANARY
    return model.SerializeToString()
