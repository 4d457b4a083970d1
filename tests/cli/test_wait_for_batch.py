"""A batch that does not finish in time is named with where to look: its Airflow run id's prefix."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from cscore.cli import main
from dags.cscore_platform.intake import batch_run_prefix
from sdk.owner import BatchError, resubmit_batch, wait_for_batch
from sdk.storage import ObjectStore


class StuckStore:
    """A bucket whose batch status stays `processing`."""

    bucket = "cscore"

    def exists(self, key: str) -> bool:
        return key == "status/acme/b-17.json"

    def get_if_exists(self, key: str) -> bytes | None:
        return json.dumps({"state": "processing"}).encode() if self.exists(key) else None


def test_a_timeout_names_the_batch_runs_id_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCORE_POLL_S", "0")
    store: Any = StuckStore()
    with pytest.raises(TimeoutError) as err:
        wait_for_batch(store, "acme", "b-17", timeout=0.05)
    assert "still 'processing'" in str(err.value) and batch_run_prefix("acme", "b-17") in str(err.value)


@pytest.mark.parametrize("tenant, batch", [("acme", "b-18"), ("other", "b-17")])
def test_an_unknown_batch_or_the_wrong_tenant_says_what_to_check(tenant: str, batch: str) -> None:
    store: Any = StuckStore()  # holds acme's b-17 only
    with pytest.raises(LookupError) as err:
        wait_for_batch(store, tenant, batch, timeout=5)
    assert str(err.value) == (f"batch {batch!r}: no such batch for tenant {tenant!r} (incoming/{tenant}/{batch}/"
                              "manifest.jws is absent in bucket cscore); check the id `cscore owner submit` printed "
                              "and --tenant")


class Bucket:
    """The bucket as the owner's resubmit reads and writes it."""

    bucket = "cscore"

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.puts: list[tuple[str, bytes]] = []

    def get_if_exists(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def put(self, key: str, data: bytes, content_type: str = "") -> None:
        self.puts.append((key, data))


def test_resubmit_of_an_unknown_batch_says_what_to_check() -> None:
    """It ended in a botocore NoSuchKey traceback."""
    store: Any = Bucket({})
    with pytest.raises(LookupError) as err:
        resubmit_batch("acme", "b-nope", store)
    assert str(err.value) == ("batch 'b-nope': no such batch for tenant 'acme' (incoming/acme/b-nope/manifest.jws is "
                              "absent in bucket cscore); check the id `cscore owner submit` printed and --tenant")
    assert store.puts == []


@pytest.mark.parametrize("status", [b'{"state": "failed"}', b"not json", b"[1]", None])
def test_resubmit_uploads_the_manifest_again_unless_the_batch_succeeded(status: bytes | None) -> None:
    objects = {"incoming/acme/b-1/manifest.jws": b"signed"}
    if status is not None:
        objects["status/acme/b-1.json"] = status
    store: Any = Bucket(dict(objects))
    assert resubmit_batch("acme", "b-1", store) == "incoming/acme/b-1/manifest.jws"
    assert store.puts == [("incoming/acme/b-1/manifest.jws", b"signed")]  # its created event starts the batch again
    succeeded: Any = Bucket({**objects, "status/acme/b-1.json": b'{"state": "succeeded"}'})
    with pytest.raises(BatchError) as err:
        resubmit_batch("acme", "b-1", succeeded)
    assert str(err.value) == ("batch 'b-1': expected a failed batch to resubmit, got one that succeeded (the platform "
                              "would pass it over); `cscore owner results b-1 --tenant acme` fetches its results")
    assert succeeded.puts == []


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    """An S3 bucket (moto, in process) whose objects carry the bucket's own LastModified."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CSCORE_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("CSCORE_POLL_S", "0.05")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="cscore")
        yield ObjectStore(bucket="cscore")


MANIFEST, STATUS = "incoming/acme/b-1/manifest.jws", "status/acme/b-1.json"
FAILED = json.dumps({"state": "failed", "reason": "validate: manifest.tenant: ..."}).encode()


def test_a_failure_from_before_the_resubmit_is_not_the_batchs_outcome(bucket: ObjectStore) -> None:
    """`owner results` run just after `owner submit --resubmit` reported the last run's failure as the batch's."""
    bucket.put(MANIFEST, b"signed")
    bucket.put(STATUS, FAILED)
    time.sleep(1.05)  # S3 keeps whole seconds: the resubmit lands in a later one
    resubmit_batch("acme", "b-1", bucket)
    seen: list[str] = []
    with pytest.raises(TimeoutError) as err:
        wait_for_batch(bucket, "acme", "b-1", timeout=0.3, progress=seen.append)
    assert seen == ["resubmitted"] and "still 'resubmitted'" in str(err.value)
    bucket.put(STATUS, json.dumps({"state": "succeeded"}).encode())  # the platform's new run
    assert wait_for_batch(bucket, "acme", "b-1", timeout=5)["state"] == "succeeded"
    bucket.put(STATUS, FAILED)  # ... or its new failure, written after the manifest: that is the outcome
    assert wait_for_batch(bucket, "acme", "b-1", timeout=5)["reason"] == "validate: manifest.tenant: ..."


def test_a_failure_written_after_the_manifest_is_the_outcome(bucket: ObjectStore) -> None:
    bucket.put(MANIFEST, b"signed")
    bucket.put(STATUS, FAILED)
    assert wait_for_batch(bucket, "acme", "b-1", timeout=5)["state"] == "failed"
    assert bucket.modified("no/such/key") is None


def test_a_resubmit_says_what_to_run_next(bucket: ObjectStore, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bucket.put(MANIFEST, b"signed")
    bucket.put(STATUS, FAILED)
    assert main(["--state-dir", str(tmp_path), "owner", "submit", "--resubmit", "b-1", "--tenant", "acme"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"resubmitted {MANIFEST}",
        "next: cscore owner results b-1 --tenant acme --out FILE  (waits for the platform's new run of the batch, "
        "verifies every receipt, decrypts)"]
