"""One `cscore_batch` run per manifest, named after its batch, so Airflow finds a batch's run by its id.

Run id: `batch__<tenant>__<batch id>__<UTC time of the intake run that saw the event (its run_after), to the
microsecond>`. Tenant and batch ids hold only `[A-Za-z0-9_.-]` (the manifest key's pattern), which Airflow's run id
pattern allows. A key that is not a manifest's gets `manifest__<sha256 of the key, 12 hex>__<time>`; its run fails
at validation, naming the key. The intake's one task starts the runs itself (`start_batch_runs`), so a batch waits
for one intake task process, not two.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from dags.cscore_platform.manifest import ManifestError, tenant_and_batch

RUN_PREFIX = "batch__"
_log = structlog.get_logger("cscore.intake")


class RunConfError(ValueError):
    """A `cscore_batch` run's conf does not name exactly one manifest key."""


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


def run_manifest_key(conf: Mapping[str, Any] | None) -> str:
    """The one manifest key of a `cscore_batch` run's conf (`{"manifest_keys": [key]}`, as `batch_run` sets it).
    Raises RunConfError naming what the conf holds when it names none or several (one run is one batch)."""
    given = (conf or {}).get("manifest_keys")
    keys = list(dict.fromkeys(str(k) for k in given)) if isinstance(given, list) else given
    if not isinstance(keys, list) or len(keys) != 1:
        raise RunConfError(f"conf.manifest_keys must name exactly one manifest (one run is one batch), got {keys!r}; "
                           "start one run per manifest, as cscore_intake does")
    return keys[0]


def start_batch_runs(runs: list[dict[str, Any]], dag_id: str = "cscore_batch") -> list[str]:
    """Start one `dag_id` run per `batch_run` dict, from inside a running Airflow task: the Task SDK's own
    TriggerDagRun request to the task's supervisor, which `TriggerDagRunOperator` sends once per task (here once
    per run, in one task). A run that exists already is passed over (the intake task retried: its run ids are
    the same). Returns the run ids started; raises AirflowRuntimeError when the API server refuses one otherwise."""
    from airflow.sdk.exceptions import ErrorType
    from airflow.sdk.execution_time.comms import ErrorResponse, TriggerDagRun
    from airflow.sdk.execution_time.task_runner import SUPERVISOR_COMMS

    started = []
    for run in runs:
        answer = SUPERVISOR_COMMS.send(TriggerDagRun(dag_id=dag_id, run_id=run["trigger_run_id"], conf=run["conf"],
                                                     note=run["note"], logical_date=(now := datetime.now(UTC)),
                                                     run_after=now))  # as TriggerDagRunOperator dates them
        if isinstance(answer, ErrorResponse) and answer.error == ErrorType.DAGRUN_ALREADY_EXISTS:
            _log.info(f"Run {run['trigger_run_id']} ({run['note']}) exists already (a retried intake): passed over")
            continue
        if isinstance(answer, ErrorResponse):
            from airflow.sdk.exceptions import AirflowRuntimeError

            raise AirflowRuntimeError(answer)
        _log.info(f"Started run {run['trigger_run_id']} of {dag_id} ({run['note']})")
        started.append(run["trigger_run_id"])
    return started
