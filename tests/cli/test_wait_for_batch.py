"""A batch that does not finish in time is named with where to look: its Airflow run id's prefix."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dags.cscore_platform.intake import batch_run_prefix
from sdk.owner import wait_for_batch


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
