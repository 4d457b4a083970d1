"""The batch's objects in storage, reached through Airflow's S3 hook (connection `aws_default`)."""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import botocore.session
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from botocore.exceptions import ClientError
from botocore.loaders import Loader

from dags.cscore_platform.manifest import Manifest, ManifestError
from wire.errors import FormatError
from wire.shard import LIMITS_VARIABLE, parse_limits
from wire.tenant import APPROVER_VARIABLE, approval_key, verify_approval
from wire.training import model_card_key

RESULT_MANIFEST_TYPE = "cscore.result-manifest/v1"
CLAIM_TTL_S = 3 * 3600.0  # longer than any run may take (score_shards times out after 1 h)


class BatchStore:
    """Reads manifests and inputs' metadata, records batch status, writes the result manifest."""

    def __init__(self, bucket: str | None = None, aws_conn_id: str = "aws_default") -> None:
        self.bucket = bucket or os.environ.get("CSCORE_BUCKET", "cscore")
        self._s3 = s3_client(aws_conn_id)

    def read(self, key: str) -> bytes:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            raise ManifestError(f"object {key}: expected it in bucket {self.bucket}, got {_code(exc)}") from exc

    def check_objects(self, manifest: Manifest) -> None:
        """Every listed object exists with the signed size (contents are checked by the worker)."""
        for index, obj in enumerate(manifest.objects):
            try:
                head = self._s3.head_object(Bucket=self.bucket, Key=obj.key)
            except ClientError as exc:
                raise ManifestError(
                    f"manifest.objects[{index}] {obj.key}: expected an object of {obj.size} bytes, "
                    f"got {_code(exc)}; upload it, then the manifest again"
                ) from exc
            if head["ContentLength"] != obj.size:
                raise ManifestError(
                    f"manifest.objects[{index}].size: expected {obj.size} (signed), got {head['ContentLength']}"
                )

    def check_model(self, manifest: Manifest) -> None:
        key = model_card_key(manifest.model_name, manifest.model_version)
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            raise ManifestError(
                f"manifest.model: expected a published model {manifest.model_name}:{manifest.model_version}, "
                "got none; list models with `cscore models`"
            ) from exc

    def claim(self, manifest: Manifest, run_id: str) -> dict[str, Any] | None:
        """Claim the batch for this run; returns the holder's status instead if it is taken.

        A claim older than CLAIM_TTL_S whose batch never finished belongs to a run that died without
        cleaning up (killed, out of memory): it is taken over, so the batch can be resubmitted.
        """
        if self._put_claim(manifest, run_id):
            self.set_status(manifest.tenant, manifest.batch_id, "processing", run_id=run_id,
                            manifest_sha256=manifest.sha256)
            return None
        status = self.status(manifest.tenant, manifest.batch_id) or {"state": "processing"}
        holder = self._claim(manifest.tenant, manifest.batch_id)
        if holder is not None and holder.get("run_id") == run_id:
            return None  # this run's own claim: a retry of its killed validate task
        stale = holder is not None and time.time() - holder.get("claimed_at", 0) > CLAIM_TTL_S
        if stale and status.get("state") != "succeeded":
            self._s3.delete_object(Bucket=self.bucket, Key=_claim_key(manifest.tenant, manifest.batch_id))
            return self.claim(manifest, run_id)
        return status

    def _put_claim(self, manifest: Manifest, run_id: str) -> bool:
        body = json.dumps({"manifest_sha256": manifest.sha256, "run_id": run_id, "claimed_at": time.time()})
        try:
            self._s3.put_object(Bucket=self.bucket, Key=_claim_key(manifest.tenant, manifest.batch_id),
                                Body=body.encode(), IfNoneMatch="*")
        except ClientError as exc:
            if _code(exc) != "PreconditionFailed":
                raise
            return False
        return True

    def _claim(self, tenant: str, batch_id: str) -> dict[str, Any] | None:
        try:
            raw = self._s3.get_object(Bucket=self.bucket, Key=_claim_key(tenant, batch_id))["Body"].read()
        except ClientError:
            return None
        holder: dict[str, Any] = json.loads(raw)
        return holder

    def held_by(self, tenant: str, batch_id: str, run_id: str) -> bool:
        """Whether run_id still holds the batch's claim (a retried task must not redo a released batch)."""
        holder = self._claim(tenant, batch_id)
        return holder is not None and holder.get("run_id") == run_id

    def release(self, tenant: str, batch_id: str, reason: str, run_id: str) -> bool:
        """Mark the batch failed and free its claim, so the same manifest can be submitted again.

        Only the run holding the claim (or any run, when nobody holds it) may do so: a duplicate event's
        failing run must not mark a batch failed that another run is processing. Returns whether it did.
        """
        holder = self._claim(tenant, batch_id)
        if holder is not None and holder.get("run_id") != run_id:
            return False
        self.set_status(tenant, batch_id, "failed", run_id=run_id, reason=reason)
        if holder is not None:
            self._s3.delete_object(Bucket=self.bucket, Key=_claim_key(tenant, batch_id))
        return True

    def status(self, tenant: str, batch_id: str) -> dict[str, Any] | None:
        try:
            raw = self._s3.get_object(Bucket=self.bucket, Key=_status_key(tenant, batch_id))["Body"].read()
        except ClientError:
            return None
        status: dict[str, Any] = json.loads(raw)
        return status

    def set_status(self, tenant: str, batch_id: str, state: str, **details: Any) -> None:
        body = {"state": state, "batch_id": batch_id, "tenant": tenant, "updated_at": time.time(), **details}
        self._s3.put_object(Bucket=self.bucket, Key=_status_key(tenant, batch_id),
                            Body=json.dumps(body).encode(), ContentType="application/json")

    def tenant_key(self, tenant: str) -> dict[str, Any]:
        """The tenant's manifest-verification key as the platform operator approved it (wire.tenant): the
        approval object must be signed by the pinned approver key and name this tenant."""
        try:
            key = approval_key(tenant)
        except FormatError as exc:
            raise ManifestError(f"manifest.{exc}") from exc
        try:
            token = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode()
        except ClientError as exc:
            raise ManifestError(
                f"manifest.tenant: expected a tenant approved by the platform operator (s3://{self.bucket}/{key}), "
                f"got {tenant!r} with {_code(exc)}; the owner registers with `cscore owner register`, the operator "
                "approves with `cscore platform approve-tenant`") from exc
        try:
            return verify_approval(token, approver_key(), tenant).key
        except FormatError as exc:
            raise ManifestError(f"s3://{self.bucket}/{key}: {exc}; refusing the tenant's manifests") from exc

    def write_result_manifest(self, manifest: Manifest, body: dict[str, Any]) -> str:
        key = f"{manifest.results_prefix}result-manifest.json"
        document = {"type": RESULT_MANIFEST_TYPE, **body}
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(document, indent=1).encode(),
                            ContentType="application/json")
        return key


def s3_client(aws_conn_id: str = "aws_default") -> Any:
    """A boto3 S3 client for the Airflow connection `aws_conn_id` (its credentials, role, region, endpoint and
    botocore config, as `S3Hook.get_conn()` makes it), built on this process's shared botocore data
    (`botocore_data`). Without Airflow's user-agent extras: the hook finds its caller for them with
    `inspect.stack()`, which read the source of every frame: 28 % of a batch task's samples (py-spy, issue 12)."""
    hook = S3Hook(aws_conn_id=aws_conn_id)
    session = hook.get_session(region_name=hook.region_name)
    session._session.register_component("data_loader", botocore_data())  # boto3 has no public accessor for it
    return session.client("s3", endpoint_url=hook.conn_config.get_service_endpoint_url(service_name="s3"),
                          config=hook.config, verify=hook.verify)


@functools.cache
def botocore_data() -> Loader:
    """One botocore data loader per process, shared by every client: the JSON service model, endpoint rules and
    partitions of S3 are read once (each new boto3 session reads them again: 18 % of a batch task's samples).
    `warm_botocore_data` loads them before the executor forks its workers, so task processes start with them."""
    loader: Loader = botocore.session.get_session().get_component("data_loader")
    return loader


def warm_botocore_data() -> None:
    """Load what an S3 client reads from botocore's data into `botocore_data()`: a client is made, no request sent."""
    session = botocore.session.get_session()
    session.register_component("data_loader", botocore_data())
    session.create_client("s3", region_name="us-east-1", aws_access_key_id="warm", aws_secret_access_key="warm")


def approver_key() -> dict[str, Any]:
    """The platform operator's public approval key, pinned as the Airflow Variable `cscore_tenant_approver`."""
    from airflow.sdk import Variable

    raw = Variable.get(APPROVER_VARIABLE, default=None)
    if not raw:
        raise ManifestError(f"platform configuration: expected the Airflow Variable {APPROVER_VARIABLE} (the "
                            "operator's public approval JWK), got none; set it (AIRFLOW_VAR_CSCORE_TENANT_APPROVER) "
                            "so approved tenants can be checked")
    key: dict[str, Any] = json.loads(raw) if isinstance(raw, str) else raw
    return key


def run_limits() -> dict[str, int]:
    """The per-batch limits on the model's run the operator set (Airflow Variable `cscore_limits`, JSON), or the
    defaults when unset. Raises ManifestError naming the field when the Variable is malformed."""
    from airflow.sdk import Variable

    raw = Variable.get(LIMITS_VARIABLE, default=None)
    try:
        return parse_limits(json.loads(raw) if isinstance(raw, str) else (raw or {}))
    except (ValueError, FormatError) as exc:
        raise ManifestError(f"platform configuration: {exc}; fix the Airflow Variable {LIMITS_VARIABLE} "
                            f"(AIRFLOW_VAR_{LIMITS_VARIABLE.upper()})") from None


def _claim_key(tenant: str, batch_id: str) -> str:
    return f"status/{tenant}/{batch_id}.claim"


def _status_key(tenant: str, batch_id: str) -> str:
    return f"status/{tenant}/{batch_id}.json"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "an error"))
