"""A batch that does not finish in time is named with where to look: its Airflow run id's prefix."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dags.cscore_platform.intake import batch_run_prefix
from sdk.owner import BatchError, resubmit_batch, wait_for_batch


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
