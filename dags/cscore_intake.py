"""cscore_intake: each S3 manifest event starts one `cscore_batch` run, named after its batch.

Woken by the S3 event of a `manifest.jws` upload (S3 -> SQS -> asset watcher). Airflow names an
asset-triggered run by its time, and one such run may carry several manifests; this DAG only reads the
events and starts one `cscore_batch` run per manifest, with run id `batch__<tenant>__<batch>__<time>`
and the note "batch <tenant>/<batch>" (`dags.cscore_platform.intake`), in one task.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from airflow.sdk import dag, get_current_context, task

from dags.cscore_platform import intake, s3_events
from dags.cscore_platform.manifest import MANIFEST_NAME

MANIFESTS = s3_events.queue_asset("cscore_incoming_manifests", "cscore_manifest_queue",
                                   os.environ.get("CSCORE_SQS_QUEUE_URL"))

DAG_DOC = """
### cscore_intake: one `cscore_batch` run per uploaded manifest

**start_batch_runs**: the manifest keys in the S3 events that woke this run, each once; for each, a `cscore_batch`
run with run id `batch__<tenant>__<batch id>__<UTC time of this run>` and the note "batch <tenant>/<batch id>", so
a batch's run is found by its id (Airflow's run list filters by run id). Its log names every run it started. One
task, not a task that finds the keys and a mapped trigger per key: each task process is a second or more on every
batch's path.

Nothing here reads a manifest's content: validation is `cscore_batch`'s first step.
"""


@dag(dag_id="cscore_intake", schedule=[MANIFESTS] if MANIFESTS else None, catchup=False, tags=["cscore"],
     doc_md=DAG_DOC)
def cscore_intake() -> None:
    @task(show_return_value_in_logs=False,
          doc_md="Manifest keys from the S3 events that woke this run, each once; one `cscore_batch` run started "
                 "per key, named `batch__<tenant>__<batch>__<time>`.")
    def start_batch_runs() -> list[str]:
        context = get_current_context()
        # The run's own time, not the clock's: a task cleared and run again names the same runs, which it passes over.
        when = context["dag_run"].run_after or datetime.now(UTC)
        keys = s3_events.object_keys(s3_events.event_extras(context), {}, MANIFEST_NAME)
        return intake.start_batch_runs([intake.batch_run(key, when) for key in keys])

    start_batch_runs()


cscore_intake()
