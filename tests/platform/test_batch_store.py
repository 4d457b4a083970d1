"""Batch claims and status: a manifest seen twice is processed once; a failed batch can be resubmitted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from dags.cscore_platform import batch_store
from dags.cscore_platform.batch_store import BatchStore
from dags.cscore_platform.manifest import Manifest, ManifestObject


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchStore]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    connection = {"conn_type": "aws", "extra": {"region_name": "us-east-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="cscore")
        yield BatchStore(bucket="cscore")


def _manifest(sha: str = "aa" * 32) -> Manifest:
    return Manifest(key="incoming/acme/b-1/manifest.jws", sha256=sha, tenant="acme", batch_id="b-1",
                    objects=(ManifestObject("incoming/acme/b-1/part-00000.parquet", 1, "0", 1, 1),),
                    model_name="m", model_version=1, model_digest="sha256:" + "0" * 64,
                    results_prefix="results/acme/b-1/", broker_name="owner", broker_url="https://b", footer_key="f",
                    column_key="c",
                    result_key="r", shard_row_groups=1)


def test_second_claim_of_the_same_batch_gets_the_holders_status(store: BatchStore) -> None:
    assert store.claim(_manifest(), "run-1") is None
    holder: Any = store.claim(_manifest(), "run-2")
    assert holder["state"] == "processing" and holder["run_id"] == "run-1"


def test_a_failing_duplicate_run_cannot_fail_or_free_the_running_batch(store: BatchStore) -> None:
    store.claim(_manifest(), "run-1")
    assert store.release("acme", "b-1", "validate: object missing", "run-2") is False
    status: Any = store.status("acme", "b-1")
    assert (status["state"], status["run_id"]) == ("processing", "run-1")
    assert store.claim(_manifest(), "run-3") is not None  # still held by run-1


def test_a_failed_batch_is_freed_for_resubmission(store: BatchStore) -> None:
    store.claim(_manifest(), "run-1")
    assert store.release("acme", "b-1", "score: measurement not granted", "run-1") is True
    status: Any = store.status("acme", "b-1")
    assert status["state"] == "failed" and "measurement" in status["reason"]
    assert store.claim(_manifest(), "run-2") is None


def test_an_invalid_manifest_marks_an_unclaimed_batch_failed(store: BatchStore) -> None:
    assert store.release("acme", "b-1", "validate: bad signature", "run-1") is True
    assert store.status("acme", "b-1")["state"] == "failed"  # type: ignore[index]


def test_a_dead_runs_stale_claim_is_taken_over(store: BatchStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.claim(_manifest(), "run-1")
    later = time.time() + batch_store.CLAIM_TTL_S + 60
    monkeypatch.setattr(batch_store.time, "time", lambda: later)
    assert store.claim(_manifest(), "run-2") is None
    assert store.status("acme", "b-1")["run_id"] == "run-2"  # type: ignore[index]


def test_a_succeeded_batch_is_never_taken_over(store: BatchStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.claim(_manifest(), "run-1")
    store.set_status("acme", "b-1", "succeeded", run_id="run-1")
    later = time.time() + batch_store.CLAIM_TTL_S + 60
    monkeypatch.setattr(batch_store.time, "time", lambda: later)
    assert store.claim(_manifest(), "run-2") == store.status("acme", "b-1")


def test_a_retry_taking_its_runs_batch_over_says_so_after_what_the_lost_try_recorded(
        store: BatchStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from dags.cscore_platform import steps
    from dags.cscore_platform.provider.operators import ScoreBatchOperator

    monkeypatch.setattr(steps, "batch_store", lambda: store)
    manifest = _manifest()
    op = ScoreBatchOperator(task_id="score", manifest_key=manifest.key)
    store.claim(manifest, "run-1")
    earlier = "worker w1 answered no ping for 60 s: its shard 0 was sent again to the other workers"
    store.set_status("acme", "b-1", "processing", run_id="run-1", manifest_sha256=manifest.sha256, events=[earlier])
    first = manifest.to_dict()
    op._say_taken_over({"ti": SimpleNamespace(try_number=1)}, first, "run-1")  # a first try has nothing to say
    assert store.status("acme", "b-1")["events"] == [earlier] and "events" not in first  # type: ignore[index]
    batch = manifest.to_dict()
    op._say_taken_over({"ti": SimpleNamespace(try_number=2)}, batch, "run-1")
    status: Any = store.status("acme", "b-1")
    assert status["state"] == "processing" and status["events"][0] == earlier and len(status["events"]) == 2
    assert status["events"][1].startswith("try 1 of run run-1 ended without finishing the batch or failing it")
    assert "try 2 took the batch over and sent its shards again" in status["events"][1]
    assert batch["events"] == status["events"]  # what finalize writes into the succeeded status
    # A try lost after it finished the batch: its status stays as that try left it.
    store.set_status("acme", "b-1", "succeeded", run_id="run-1", events=[earlier])
    finished = store.status("acme", "b-1")
    op._say_taken_over({"ti": SimpleNamespace(try_number=3)}, manifest.to_dict(), "run-1")
    assert store.status("acme", "b-1") == finished
