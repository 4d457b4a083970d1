"""One real local stack for the end-to-end tests: moto over HTTP, Redis, two key brokers as separate
processes, two Celery worker processes with the simulated SEV-SNP TEE, and `airflow standalone`."""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import pytest

from cscore.demo import corpus_split
from infra.local.stack import LocalStack
from sdk.corpus import CorpusEmail
from sdk.emails import email_text
from sdk.training import export_onnx, train_spam_model
from tests.e2e.canaries import MODEL_CANARY
from tests.stacks import running_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Module-scoped, so the stack's variables leave os.environ before other test modules run."""
    with running_stack(tmp_path_factory.mktemp("stack"), workers=2, airflow=True) as running:
        yield running


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
