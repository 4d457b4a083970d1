"""cscore_train: train one owner's tuned spam model on an attested confidential worker.

Run with conf {"manifest_keys": ["incoming/<tenant>/<job>/training.jws"]} (the owner's `cscore owner train`
prints the key). Per job: verify the owner's signed training manifest, have the workers attest to both brokers,
send `cscore.train`; the worker writes the tuned model (ciphertext), its card and the receipt under
`tuned/<tenant>/<model>/<version>/`.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, get_current_context, task

from dags.cscore_platform import training

DAG_DOC = """
### cscore_train: one owner's training job on an attested confidential worker

1. **validate_training_manifest**: the tenant's signature; the instruction for the worker comes from it only.
2. **train**: every live worker attests to the owner's and the provider's brokers; one trains (`cscore.train`).

This DAG sees ciphertext, digests and object keys only: the metrics are in the enclave-signed receipt, the
weights in a ciphertext neither party can open alone.
"""


@dag(dag_id="cscore_train", schedule=None, catchup=False, max_active_runs=2, tags=["cscore"], doc_md=DAG_DOC,
     params={"manifest_keys": []})
def cscore_train() -> None:
    @task(show_return_value_in_logs=False, doc_md="Training manifest keys from `conf.manifest_keys`.")
    def find_training_manifests() -> list[str]:
        conf = get_current_context()["dag_run"].conf or {}
        return [str(k) for k in conf.get("manifest_keys", [])]

    @task(show_return_value_in_logs=False, doc_md="Verify the tenant's signature; derive the worker's instruction.")
    def validate_training_manifest(manifest_key: str) -> dict[str, Any]:
        return training.validate(manifest_key)

    @task(show_return_value_in_logs=False, doc_md="Workers attest to both brokers; one trains; returns keys only.")
    def train(job: dict[str, Any]) -> dict[str, Any]:
        return training.run_training(job["spec"], job["provider_broker"])

    train.expand(job=validate_training_manifest.expand(manifest_key=find_training_manifests()))


cscore_train()
