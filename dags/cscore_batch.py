"""cscore_batch: score one owner's encrypted email batch on attested confidential workers.

Started per manifest by `cscore_intake` (woken by the S3 event of a `manifest.jws` upload) with run id
`batch__<tenant>__<batch>__<time>`, or by hand with conf {"manifest_keys": ["incoming/<tenant>/<batch>/manifest.jws"]}.
Per batch: validate the signed manifest, have the workers attest, fan the shards out, write the result manifest.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from airflow.sdk import dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from dags.cscore_platform import steps
from dags.cscore_platform.manifest import ManifestError, tenant_and_batch

DAG_DOC = """
### cscore_batch: one owner's encrypted email batch, scored on attested confidential workers

A run started by `cscore_intake` is **one batch**: its run id is `batch__<tenant>__<batch id>__<UTC time>` and its
note "batch <tenant>/<batch id>". Each mapped task instance is labelled `<tenant>/<batch id>` (the map index).

1. **validate_manifest**: the owner's signature, the objects and their sizes, the model, and a claim so a
   manifest seen twice is processed once.
2. **attest_workers**: every live worker attests to the owner's and the provider's key brokers; a refusal fails
   the batch at once, with the broker's reason.
3. **score_shards**: the shards go to the workers; the log counts shards *ok* and *failed*.
4. **write_result_manifest**: every email came back once (by count); status `succeeded`.

A failing step marks the batch `failed` with its reason and frees the claim: the owner resubmits
(`cscore owner submit --resubmit <batch>`), finished shards are reused. This DAG sees ciphertext, digests and
counts only; task return values stay out of the logs (they are the batch's plan, for the next task).
"""


def _label(batch_or_key: dict[str, Any] | str) -> None:
    """Name this mapped task instance after its batch (Airflow shows it instead of "Map Index 0")."""
    if isinstance(batch_or_key, str):
        try:
            tenant, batch_id = tenant_and_batch(batch_or_key)
        except ManifestError:
            tenant, batch_id = "?", batch_or_key
    else:
        tenant, batch_id = str(batch_or_key.get("tenant")), str(batch_or_key.get("batch_id"))
    cast(dict[str, Any], get_current_context())["batch_label"] = f"{tenant}/{batch_id}"


BATCH_TASK: dict[str, Any] = {"map_index_template": "{{ batch_label }}", "show_return_value_in_logs": False}


def _run_id() -> str:
    return str(get_current_context()["run_id"])


def _skippable(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args, _run_id())
    except steps.BatchSkipped as exc:
        raise AirflowSkipException(str(exc)) from exc


@dag(
    dag_id="cscore_batch",
    schedule=None,  # runs are started by cscore_intake, one per manifest, named after the batch
    catchup=False,
    max_active_runs=4,
    tags=["cscore"],
    doc_md=DAG_DOC,
    # One retry, for a task whose process was killed (scheduler and task processes gone: the restarted
    # scheduler fails it after [scheduler] task_instance_heartbeat_timeout). A step that failed for a reason
    # has released the batch already; its retry sees that and does nothing (steps._still_held).
    default_args={"retries": 1, "retry_delay": timedelta(seconds=5)},
    params={"manifest_keys": []},
)
def cscore_batch() -> None:
    @task(show_return_value_in_logs=False,
          doc_md="Manifest keys from the S3 events that woke this run (or `conf.manifest_keys`), each once.")
    def find_manifests() -> list[str]:
        context = get_current_context()
        events = context.get("triggering_asset_events") or {}
        extras = [event.extra for asset_events in events.values() for event in asset_events]
        conf = context["dag_run"].conf or {}
        return steps.manifest_keys_from_events(extras, conf)

    @task(**BATCH_TASK, doc_md="Check the owner's signature, the objects and sizes, the model; claim the batch.")
    def validate_manifest(manifest_key: str) -> dict[str, Any]:
        _label(manifest_key)
        return _skippable(steps.validate, manifest_key)

    @task(**BATCH_TASK, doc_md="Every live worker attests to both key brokers; a refusal fails the batch.")
    def attest_workers(batch: dict[str, Any]) -> dict[str, Any]:
        _label(batch)
        return _skippable(steps.attest, batch)

    # A batch that failed for a reason is released and resubmitted whole (finished shards are reused).
    @task(**BATCH_TASK, execution_timeout=timedelta(hours=1),
          doc_md="Send the shards to the workers and wait; the log counts shards ok and failed.")
    def score_shards(batch: dict[str, Any]) -> dict[str, Any]:
        _label(batch)
        return _skippable(steps.score, batch)

    @task(**BATCH_TASK, doc_md="Check every email came back once; write the result manifest; status succeeded.")
    def write_result_manifest(batch: dict[str, Any]) -> str:
        _label(batch)
        return _skippable(steps.finalize, batch)

    validated = validate_manifest.expand(manifest_key=find_manifests())
    write_result_manifest.expand(batch=score_shards.expand(batch=attest_workers.expand(batch=validated)))


cscore_batch()
