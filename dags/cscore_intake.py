"""cscore_intake: each S3 manifest event starts one `cscore_batch` run, named after its batch.

Woken by the S3 event of a `manifest.jws` upload (S3 -> SQS -> asset watcher). Airflow names an
asset-triggered run by its time, and one such run may carry several manifests; this DAG only reads the
events and triggers one `cscore_batch` run per manifest, with run id `batch__<tenant>__<batch>__<time>`
and the note "batch <tenant>/<batch>" (`dags.cscore_platform.intake`).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, get_current_context, task

from dags.cscore_platform import s3_events
from dags.cscore_platform.intake import batch_run
from dags.cscore_platform.manifest import MANIFEST_NAME

MANIFESTS = s3_events.queue_asset("cscore_incoming_manifests", "cscore_manifest_queue",
                                   os.environ.get("CSCORE_SQS_QUEUE_URL"))

DAG_DOC = """
### cscore_intake: one `cscore_batch` run per uploaded manifest

1. **find_manifests**: the manifest keys in the S3 events that woke this run, each once.
2. **start_batch_run** (one per manifest, labelled `batch <tenant>/<batch id>`): triggers `cscore_batch` with
   run id `batch__<tenant>__<batch id>__<UTC time>` and that note, so a batch's run is found by its id
   (Airflow's run list filters by run id).

Nothing here reads a manifest's content: validation is `cscore_batch`'s first step.
"""


@dag(dag_id="cscore_intake", schedule=[MANIFESTS] if MANIFESTS else None, catchup=False, tags=["cscore"],
     doc_md=DAG_DOC)
def cscore_intake() -> None:
    @task(show_return_value_in_logs=False,
          doc_md="Manifest keys from the S3 events that woke this run, each once; one batch run each.")
    def find_manifests() -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        keys = s3_events.object_keys(s3_events.event_extras(get_current_context()), {}, MANIFEST_NAME)
        return [batch_run(key, now) for key in keys]

    # A retried trigger whose run exists already skips (run ids are unique per event).
    TriggerDagRunOperator.partial(
        task_id="start_batch_run", trigger_dag_id="cscore_batch", skip_when_already_exists=True,
        map_index_template="{{ task.note }}",
        doc_md="Start the `cscore_batch` run of one manifest, named `batch__<tenant>__<batch>__<time>`.",
    ).expand_kwargs(find_manifests())


cscore_intake()
