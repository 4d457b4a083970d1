"""cscore_batch: score one owner's encrypted email batch on attested confidential workers.

Started per manifest by `cscore_intake` (woken by the S3 event of a `manifest.jws` upload) with run id
`batch__<tenant>__<batch>__<time>`, or by hand with conf {"manifest_keys": ["incoming/<tenant>/<batch>/manifest.jws"]}.
One task (`provider.ScoreBatchOperator`), which reads its manifest key from the run's conf: validate the signed
manifest, fan the shards out to the workers (which attest on first contact), write the result manifest, announce
the results asset.
"""

from __future__ import annotations

from airflow.sdk import dag

from dags.cscore_platform.provider import RESULTS, RESULTS_ALIAS, ScoreBatchOperator
from dags.cscore_platform.provider.operators import DEFAULT_DEFER_AFTER_S, SCORE_RETRIES

DAG_DOC = """
### cscore_batch: one owner's encrypted email batch, scored on attested confidential workers

A run started by `cscore_intake` is **one batch**: its run id is `batch__<tenant>__<batch id>__<UTC time>` and its
note "batch <tenant>/<batch id>"; its conf `{"manifest_keys": [key]}` names its one manifest (a run started by hand
names exactly one too, or its task fails saying so).

**score_batch** (`ScoreBatchOperator`, the run's one task, labelled by the run): the owner's signature, the
objects and their sizes, the model, and a claim so a manifest seen twice is processed once; the key brokers
answer; the shards go to the workers, which attest to both brokers on first contact (a refusal fails the batch at
once, with the broker's reason); the log counts shards *ok* and *failed*; every email came back once; the result
manifest; status `succeeded`; an event on the `cscore_results` asset and on the batch's own asset
(`cscore_results/<tenant>/<batch>`), for downstream DAGs. A batch not done within `cscore_defer_after_s` seconds
(Variable, default 5) is waited for in the triggerer (`ShardsTrigger`): no worker slot is held.

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
    ScoreBatchOperator(
        task_id="score_batch",  # its manifest key: the run's conf.manifest_keys, exactly one
        outlets=[RESULTS, RESULTS_ALIAS],
        **SCORE_RETRIES,
        defer_after_s="{{ var.value.get('cscore_defer_after_s', '" + str(DEFAULT_DEFER_AFTER_S) + "') }}",
        doc_md="Validate and claim the batch of the run's manifest (`conf.manifest_keys`, exactly one), score its "
               "shards on the attested workers (waiting in the triggerer past `cscore_defer_after_s`), write the "
               "result manifest, announce the results asset.",
    )


cscore_batch()
