"""cscore_train: train one owner's tuned spam model on an attested confidential worker.

Woken by the S3 event of a `training.jws` upload (S3 -> SQS `CSCORE_SQS_TRAINING_QUEUE_URL` -> asset watcher),
or run by hand with conf {"manifest_keys": ["incoming/<tenant>/<job>/training.jws"]} (`cscore owner train`
prints the key). Per job: verify the owner's signed training manifest, have the workers attest to both brokers,
send `cscore.train`; the worker writes the tuned model (ciphertext), its card and the receipt under
`tuned/<tenant>/<model>/<version>/`.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import dag, get_current_context, task

from dags.cscore_platform import s3_events, training

DAG_DOC = """
### cscore_train: one owner's training job on an attested confidential worker

Each mapped task instance is **one job** (`incoming/<tenant>/<job>/training.jws`).

1. **validate_training_manifest**: the tenant's signature; the instruction for the worker comes from it only.
2. **train**: every live worker attests to the owner's and the provider's brokers; one trains (`cscore.train`).

The job's state (`status/<tenant>/<job>.json`) says processing, succeeded or failed with the reason.
This DAG sees ciphertext, digests and object keys only: the metrics are in the enclave-signed receipt, the
weights in a ciphertext neither party can open alone.
"""

MANIFESTS = s3_events.queue_asset("cscore_incoming_training_manifests", "cscore_training_queue",
                                   os.environ.get("CSCORE_SQS_TRAINING_QUEUE_URL"))


def _failing_marks_job(manifest_key: str, step: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except BaseException as exc:  # timeouts and kills too: the owner stops waiting with the reason
        training.record(manifest_key, "failed", reason=f"{step}: {exc}")
        raise


@dag(dag_id="cscore_train", schedule=[MANIFESTS] if MANIFESTS else None, catchup=False, max_active_runs=2,
     tags=["cscore"], doc_md=DAG_DOC, params={"manifest_keys": []})
def cscore_train() -> None:
    @task(show_return_value_in_logs=False,
          doc_md="Training manifest keys from the S3 events that woke this run (or `conf.manifest_keys`), each once.")
    def find_training_manifests() -> list[str]:
        context = get_current_context()
        return s3_events.object_keys(s3_events.event_extras(context), context["dag_run"].conf or {},
                                     training.TRAINING_NAME)

    @task(show_return_value_in_logs=False, doc_md="Verify the tenant's signature; derive the worker's instruction.")
    def validate_training_manifest(manifest_key: str) -> dict[str, Any]:
        job = _failing_marks_job(manifest_key, "validate_training_manifest", training.validate, manifest_key)
        training.record(manifest_key, "processing", run_id=str(get_current_context()["run_id"]))
        return {**job, "manifest_key": manifest_key}

    @task(show_return_value_in_logs=False, doc_md="Workers attest to both brokers; one trains; returns keys only.")
    def train(job: dict[str, Any]) -> dict[str, Any]:
        outcome: dict[str, Any] = _failing_marks_job(job["manifest_key"], "train", training.run_training,
                                                     job["spec"], job["provider_broker"])
        training.record(job["manifest_key"], "succeeded", run_id=str(get_current_context()["run_id"]),
                        receipt_key=outcome["receipt_key"], model_key=outcome["model_key"])
        return outcome

    train.expand(job=validate_training_manifest.expand(manifest_key=find_training_manifests()))


cscore_train()
