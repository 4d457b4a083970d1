"""cscore_batch: score one owner's encrypted email batch on attested confidential workers.

Woken by the S3 event of a `manifest.jws` upload (S3 -> SQS -> asset watcher), or run by hand with
conf {"manifest_keys": ["incoming/<tenant>/<batch>/manifest.jws"]}. Per batch: validate the signed
manifest, have the workers attest, fan the shards out, write the result manifest.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetWatcher, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from dags.cscore_platform import steps

QUEUE_URL = os.environ.get("CSCORE_SQS_QUEUE_URL")


def _manifest_asset() -> Asset | None:
    if not QUEUE_URL:
        return None
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    trigger = MessageQueueTrigger(scheme="sqs", sqs_queue=QUEUE_URL, waiter_delay=1, wait_time_seconds=1,
                                  max_messages=10)
    return Asset("cscore_incoming_manifests", watchers=[AssetWatcher(name="cscore_manifest_queue",
                                                                      trigger=trigger)])


def _run_id() -> str:
    return str(get_current_context()["run_id"])


def _skippable(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args, _run_id())
    except steps.BatchSkipped as exc:
        raise AirflowSkipException(str(exc)) from exc


MANIFESTS = _manifest_asset()


@dag(
    dag_id="cscore_batch",
    schedule=[MANIFESTS] if MANIFESTS else None,
    catchup=False,
    max_active_runs=4,
    tags=["cscore"],
    # One retry, for a task whose process was killed (scheduler and task processes gone: the restarted
    # scheduler fails it after [scheduler] task_instance_heartbeat_timeout). A step that failed for a reason
    # has released the batch already; its retry sees that and does nothing (steps._still_held).
    default_args={"retries": 1, "retry_delay": timedelta(seconds=5)},
    params={"manifest_keys": []},
)
def cscore_batch() -> None:
    @task
    def find_manifests() -> list[str]:
        context = get_current_context()
        events = context.get("triggering_asset_events") or {}
        extras = [event.extra for asset_events in events.values() for event in asset_events]
        conf = context["dag_run"].conf or {}
        return steps.manifest_keys_from_events(extras, conf)

    @task
    def validate_manifest(manifest_key: str) -> dict[str, Any]:
        return _skippable(steps.validate, manifest_key)

    @task
    def attest_workers(batch: dict[str, Any]) -> dict[str, Any]:
        return _skippable(steps.attest, batch)

    # A batch that failed for a reason is released and resubmitted whole (finished shards are reused).
    @task(execution_timeout=timedelta(hours=1))
    def score_shards(batch: dict[str, Any]) -> dict[str, Any]:
        return _skippable(steps.score, batch)

    @task
    def write_result_manifest(batch: dict[str, Any]) -> str:
        return _skippable(steps.finalize, batch)

    validated = validate_manifest.expand(manifest_key=find_manifests())
    write_result_manifest.expand(batch=score_shards.expand(batch=attest_workers.expand(batch=validated)))


cscore_batch()
