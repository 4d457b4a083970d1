"""cscore_batch: score one owner's encrypted email batch on attested confidential workers.

Started per manifest by `cscore_intake` (woken by the S3 event of a `manifest.jws` upload) with run id
`batch__<tenant>__<batch>__<time>`, or by hand with conf {"manifest_keys": ["incoming/<tenant>/<batch>/manifest.jws"]}.
Per batch, one task (`provider.ScoreBatchOperator`): validate the signed manifest, fan the shards out to the
workers (which attest on first contact), write the result manifest, announce the results asset.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task

from dags.cscore_platform import s3_events
from dags.cscore_platform.manifest import MANIFEST_NAME
from dags.cscore_platform.provider import RESULTS, RESULTS_ALIAS, ScoreBatchOperator
from dags.cscore_platform.provider.operators import DEFAULT_DEFER_AFTER_S, SCORE_RETRIES

DAG_DOC = """
### cscore_batch: one owner's encrypted email batch, scored on attested confidential workers

A run started by `cscore_intake` is **one batch**: its run id is `batch__<tenant>__<batch id>__<UTC time>` and its
note "batch <tenant>/<batch id>". Each mapped task instance is labelled `<tenant>/<batch id>` (the map index).

1. **find_manifests**: the manifest keys in `conf.manifest_keys` (one, from `cscore_intake`).
2. **score_batch** (`ScoreBatchOperator`, one mapped instance per batch): the owner's signature, the objects and
   their sizes, the model, and a claim so a manifest seen twice is processed once; the key brokers answer; the
   shards go to the workers, which attest to both brokers on first contact (a refusal fails the batch at once,
   with the broker's reason); the log counts shards *ok* and *failed*; every email came back once; the result
   manifest; status `succeeded`; an event on the `cscore_results` asset and on the batch's own asset
   (`cscore_results/<tenant>/<batch>`), for downstream DAGs. A batch not done within `cscore_defer_after_s`
   seconds (Variable, default 5) is waited for in the triggerer (`ShardsTrigger`): no worker slot is held.

A failing step marks the batch `failed` with its reason and frees the claim: the owner resubmits
(`cscore owner submit --resubmit <batch>`), finished shards are reused. This DAG sees ciphertext, digests and
counts only; task return values stay out of the logs. Connections: `aws_default`, `cscore_workers`,
`cscore_broker_<name>` (docs/PROVIDER.md).
"""


@dag(
    dag_id="cscore_batch",
    schedule=None,  # runs are started by cscore_intake, one per manifest, named after the batch
    catchup=False,
    max_active_runs=4,
    tags=["cscore"],
    doc_md=DAG_DOC,
    params={"manifest_keys": []},
)
def cscore_batch() -> None:
    @task(show_return_value_in_logs=False, retries=2,
          doc_md="Manifest keys from the S3 events that woke this run (or `conf.manifest_keys`), each once.")
    def find_manifests() -> list[str]:
        context = get_current_context()
        return s3_events.object_keys(s3_events.event_extras(context), context["dag_run"].conf or {}, MANIFEST_NAME)

    ScoreBatchOperator.partial(
        task_id="score_batch",
        map_index_template="{{ batch_label }}",
        # Mapped operators take these from partial() (their __init__ runs only at execution): stated here.
        outlets=[RESULTS, RESULTS_ALIAS],
        **SCORE_RETRIES,
        defer_after_s="{{ var.value.get('cscore_defer_after_s', '" + str(DEFAULT_DEFER_AFTER_S) + "') }}",
        doc_md="Validate and claim the batch, score its shards on the attested workers (waiting in the triggerer "
               "past `cscore_defer_after_s`), write the result manifest, announce the results asset.",
    ).expand(manifest_key=find_manifests())


cscore_batch()
