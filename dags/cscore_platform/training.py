"""The platform's side of a training job: verify the owner's training manifest, have the workers attest, send
`cscore.train` by name and wait for its outcome (object keys and digests; never a metric or a weight).

A job's state is recorded as for a batch (`status/<tenant>/<job>.json`: processing, succeeded, failed with the
reason) so `cscore owner train` can stop waiting on a failure; the owner trusts only the enclave's receipt.

The manifest (`incoming/<tenant>/<job>/training.jws`, `cscore.training-manifest/v1`, see
`sdk/owner_training.py`) is signed by the tenant's registered key; what the worker receives is derived from it
only, so the platform can withhold a job but not change the data, the recipe or the owner's key share.
"""

from __future__ import annotations

import json
import re
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from dags.cscore_platform import worker_pool
from dags.cscore_platform.manifest import ManifestError

TRAINING_MANIFEST_TYPE = "cscore.training-manifest/v1"
TRAINING_NAME = "training.jws"
TRAIN_TASK = "cscore.train"
TRAIN_TIMEOUT_S = 3600.0


def tenant_and_job(key: str) -> tuple[str, str]:
    """Split `incoming/<tenant>/<job>/training.jws`; raises ManifestError for anything else."""
    match = re.fullmatch(r"incoming/([^/]+)/([^/]+)/" + re.escape(TRAINING_NAME), key)
    if not match:
        raise ManifestError(f"training manifest key: expected incoming/<tenant>/<job>/{TRAINING_NAME}, got {key!r}")
    return match.group(1), match.group(2)


def training_spec(key: str, token: bytes, tenant_key: dict[str, Any]) -> dict[str, Any]:
    """The worker's instruction (`wire.training.TrainingSpec` as a dict) from the owner-signed manifest at `key`.

    Raises ManifestError naming the field: signature, type, tenant/job against the key, object under the job.
    """
    tenant, job = tenant_and_job(key)
    try:
        signed = jws.deserialize_compact(token.decode("ascii").strip(), OKPKey.import_key(tenant_key),
                                         algorithms=["Ed25519"])
        m = json.loads(signed.payload)
    except (UnicodeDecodeError, JoseError, ValueError) as exc:
        raise ManifestError(f"training manifest {key}: expected a compact JWS signed by tenant {tenant}'s registered "
                            f"key, got {type(exc).__name__}: {exc}. Re-submit it with `cscore owner train`.") from exc
    try:
        expected = {"type": TRAINING_MANIFEST_TYPE, "tenant": tenant, "job_id": job,
                    "object.key": f"incoming/{tenant}/{job}/train.parquet"}
        actual = {"type": m["type"], "tenant": m["tenant"], "job_id": m["job_id"], "object.key": m["object"]["key"]}
        for name, value in expected.items():
            if actual[name] != value:
                raise ManifestError(f"training manifest.{name}: expected {value!r}, got {actual[name]!r}")
        model, broker = m["model"], m["key_broker"]
        return {"tenant": tenant, "job_id": job, "input_key": m["object"]["key"], "input_sha256": m["object"]["sha256"],
                "recipe_name": m["recipe"]["name"], "recipe_version": m["recipe"]["version"],
                "recipe_digest": m["recipe"]["digest"], "owner_broker": broker["name"], "model_name": model["name"],
                "model_version": model["version"], "owner_share_key": broker["share_key"],
                "owner_share_wrapped": broker["share_wrapped"],
                "receipt_key": f"tuned/{tenant}/{model['name']}/{model['version']}/receipt.jws"}
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"training manifest {key}: expected field {exc} ({TRAINING_MANIFEST_TYPE})") from exc


def run_training(spec: dict[str, Any], provider_broker: str, timeout: float = TRAIN_TIMEOUT_S) -> dict[str, Any]:
    """Every live worker attests to both brokers, then one trains; returns the task's outcome (keys, digests)."""
    app = worker_pool.celery_client()
    worker_pool.attest_all(app, [spec["owner_broker"], provider_broker], batch_id=spec["job_id"])
    result = app.send_task(TRAIN_TASK, args=[spec], queue=worker_pool.SHARD_QUEUE)
    outcome: dict[str, Any] = result.get(timeout=timeout)
    return outcome


def record(manifest_key: str, state: str, **details: Any) -> None:
    """The job's status (`status/<tenant>/<job>.json`) as the owner's `cscore owner train` polls it."""
    from dags.cscore_platform.batch_store import BatchStore

    try:
        tenant, job = tenant_and_job(manifest_key)
    except ManifestError:
        return  # a key outside incoming/<tenant>/<job>/: no job to record it for
    BatchStore().set_status(tenant, job, state, **details)


def validate(manifest_key: str) -> dict[str, Any]:
    """Read and verify the training manifest with the tenant's registered key; the spec and the recipe's broker.

    The broker name comes from the recipe card as stored (the worker verifies the card itself); it only says
    which broker the workers attest to."""
    from dags.cscore_platform.batch_store import BatchStore

    store = BatchStore()
    tenant, _ = tenant_and_job(manifest_key)
    spec = training_spec(manifest_key, store.read(manifest_key), store.tenant_key(tenant))
    card_key = f"recipes/{spec['recipe_name']}/{spec['recipe_version']}/card.jws"
    try:
        claimed = json.loads(jws.extract_compact(store.read(card_key).strip()).payload)
        provider = str(claimed["broker"])
    except (JoseError, ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"{card_key}: expected a recipe card naming its broker, got {type(exc).__name__}") from exc
    return {"spec": spec, "provider_broker": provider}
