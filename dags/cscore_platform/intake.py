"""One `cscore_batch` run per manifest, named after its batch, so Airflow finds a batch's run by its id.

Run id: `batch__<tenant>__<batch id>__<UTC time the intake saw the event, to the microsecond>`. Tenant and
batch ids hold only `[A-Za-z0-9_.-]` (the manifest key's pattern), which Airflow's run id pattern allows.
A key that is not a manifest's gets `manifest__<sha256 of the key, 12 hex>__<time>`; its run fails at
validation, naming the key.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from dags.cscore_platform.manifest import ManifestError, tenant_and_batch

RUN_PREFIX = "batch__"


def batch_run_prefix(tenant: str, batch_id: str) -> str:
    """The start of every run id of this batch (a resubmitted batch has several runs)."""
    return f"{RUN_PREFIX}{tenant}__{batch_id}__"


def batch_run(manifest_key: str, now: datetime) -> dict[str, Any]:
    """TriggerDagRunOperator arguments for one manifest: {"trigger_run_id", "conf": {"manifest_keys": [key]},
    "note"} (`now` timezone-aware UTC)."""
    stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
    try:
        tenant, batch_id = tenant_and_batch(manifest_key)
    except ManifestError:
        digest = hashlib.sha256(manifest_key.encode()).hexdigest()[:12]
        return {"trigger_run_id": f"manifest__{digest}__{stamp}", "conf": {"manifest_keys": [manifest_key]},
                "note": f"not a manifest key: {manifest_key[:200]}"}
    return {"trigger_run_id": batch_run_prefix(tenant, batch_id) + stamp, "conf": {"manifest_keys": [manifest_key]},
            "note": f"batch {tenant}/{batch_id}"}
