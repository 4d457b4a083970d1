"""cscore_on_results: an example downstream DAG, run when a batch's results land (paused until unpaused).

A data engineer's DAG that starts on `cscore_results` asset events. Each event's extra names the batch
(tenant, batch_id), its result manifest's key and its row count; the results themselves stay encrypted for
the owner. This one records each event under `downstream/<tenant>/<batch>.json` in the bucket, where a real
one would hand over to the next system (notify the owner, load a catalogue, start a report).
"""

from __future__ import annotations

import json
import os

from airflow.sdk import dag, get_current_context, task

from dags.cscore_platform.provider import RESULTS

DOC = """
### cscore_on_results: runs when a cscore batch's results land

Scheduled on the `cscore_results` asset (one event per finished batch). Paused at creation: unpause it to use
it. For one batch only, schedule on `batch_results_asset(tenant, batch_id)` instead.
"""


@dag(dag_id="cscore_on_results", schedule=[RESULTS], catchup=False, is_paused_upon_creation=True,
     tags=["cscore", "example"], doc_md=DOC)
def cscore_on_results() -> None:
    @task(retries=2, show_return_value_in_logs=False,
          doc_md="Record each triggering results event (batch, result manifest, rows) in the bucket.")
    def record_results() -> list[str]:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        events = get_current_context()["triggering_asset_events"]
        s3 = S3Hook(aws_conn_id="aws_default")
        bucket = os.environ.get("CSCORE_BUCKET", "cscore")
        written = []
        for event in (e for asset_events in events.values() for e in asset_events):
            extra = dict(event.extra or {})
            if "batch_id" not in extra:
                continue
            key = f"downstream/{extra['tenant']}/{extra['batch_id']}.json"
            s3.load_string(json.dumps({**extra, "event_time": event.timestamp.isoformat()}), key, bucket,
                           replace=True)
            written.append(key)
        return written

    record_results()


cscore_on_results()
