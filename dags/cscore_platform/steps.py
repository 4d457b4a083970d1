"""The steps of one batch, as `provider.operators.ScoreBatchOperator` runs them.

Each step logs, in plain sentences, the batch id, what it checked and what it decided, and never a
secret (it has none to log). A step that fails marks the batch failed and frees it for resubmission.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog
from celery import Celery

from dags.cscore_platform import worker_pool
from dags.cscore_platform.manifest import Manifest, tenant_and_batch, verify_manifest
from dags.cscore_platform.planning import plan_shards
from wire.training import model_card_key

if TYPE_CHECKING:
    from dags.cscore_platform.batch_store import BatchStore

_log = structlog.get_logger("cscore.batch")


def batch_store() -> BatchStore:
    """The batch's objects in storage, one S3 client per process and configuration (each new one costs a
    connection lookup and a boto3 client: about a second on a busy host). Imported here: boto3 and the S3
    hook would otherwise cost every task's start-up, find_manifests' too, which never touches storage."""
    return _store_for(os.environ.get("CSCORE_BUCKET", ""), os.environ.get("AIRFLOW_CONN_AWS_DEFAULT", ""))


@functools.lru_cache(maxsize=4)
def _store_for(_bucket: str, _aws_conn: str) -> BatchStore:
    from dags.cscore_platform.batch_store import BatchStore

    return BatchStore()


def say(level: str, sentence: str, *args: object, **fields: object) -> None:
    """Log a sentence a person can follow, with its ids beside it as JSON fields (batch_id, step, ...)."""
    getattr(_log, level)(sentence % args if args else sentence, **fields)

SHARD_TIMEOUT_S = 1800.0


class BatchSkipped(Exception):
    """This run does not process the batch (already processed or in progress elsewhere)."""


@contextmanager
def _failing_marks_batch(store: BatchStore, manifest_key: str, run_id: str, step: str) -> Iterator[None]:
    try:
        yield
    except BatchSkipped:
        raise
    except BaseException as exc:  # timeouts and kills too: the claim must not outlive a dead run
        _release(store, manifest_key, run_id, step, str(exc))
        raise


def _release(store: BatchStore, manifest_key: str, run_id: str, step: str, why: str) -> None:
    """Mark the batch failed at `step` for `why` and free it for resubmission, if this run still holds it."""
    tenant, batch = tenant_and_batch(manifest_key)
    if store.release(tenant, batch, f"{step}: {why}", run_id):
        say("error", "Batch %s failed at step %s: %s. Its input is untouched; fix the cause and submit the "
                  "same manifest again.", batch, step, why, batch_id=batch, tenant=tenant, step=step,
                  run_id=run_id, decision="failed")
    else:
        say("error", "This run could not process batch %s (%s: %s); another run holds it and it is left "
                  "to that run.", batch, step, why, batch_id=batch, tenant=tenant, step=step, run_id=run_id,
                  decision="left to the holder")


def validate(manifest_key: str, run_id: str) -> dict[str, Any]:
    """Verify the owner's signature, the listed objects and the model, then claim the batch."""
    store = batch_store()
    tenant, batch = tenant_and_batch(manifest_key)
    with _failing_marks_batch(store, manifest_key, run_id, "validate"):
        manifest = verify_manifest(manifest_key, store.read(manifest_key), store.tenant_key(tenant))
        say("info", "Batch %s of tenant %s: manifest %s signed by the tenant's key; %d object(s), %d emails, "
                 "model %s:%d (%s).", batch, tenant, manifest.sha256[:16], len(manifest.objects),
                 manifest.rows, manifest.model_name, manifest.model_version, manifest.model_digest,
                 batch_id=batch, tenant=tenant, step="validate", manifest_sha256=manifest.sha256,
                 model_digest=manifest.model_digest, emails=manifest.rows)
        store.check_objects(manifest)
        store.check_model(manifest)
        say("info", "Batch %s: every listed object is present with its signed size; the model is published.",
            batch, batch_id=batch, tenant=tenant, step="validate", objects=[o.key for o in manifest.objects])
    holder = store.claim(manifest, run_id)
    if holder is not None:
        say("info", "Batch %s is not processed by this run: it is already %s (run %s).", batch,
                 holder.get("state"), holder.get("run_id"), batch_id=batch, tenant=tenant, step="validate",
                 decision="skipped", holder_run_id=holder.get("run_id"))
        raise BatchSkipped(f"batch {batch} already {holder.get('state')}")
    say("info", "Batch %s claimed by run %s.", batch, run_id, batch_id=batch, tenant=tenant, step="validate",
        decision="claimed", run_id=run_id)
    return manifest.to_dict()


def _still_held(store: BatchStore, manifest: Manifest, run_id: str, step: str) -> None:
    """A step retried after its process was killed goes on only while its run still holds the batch."""
    if not store.held_by(manifest.tenant, manifest.batch_id, run_id):
        status = store.status(manifest.tenant, manifest.batch_id) or {}
        say("info", "Batch %s is no longer held by run %s (it is %s); step %s does nothing.", manifest.batch_id,
            run_id, status.get("state"), step, batch_id=manifest.batch_id, step=step, decision="skipped")
        raise BatchSkipped(f"batch {manifest.batch_id} no longer held by run {run_id} ({status.get('state')})")


def preflight(batch: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The key brokers this batch needs answer (their Airflow connections, `provider.hooks`); fail fast naming
    the one that does not. Workers attest on their first contact with each broker (in `cscore.score_shard`),
    so the platform makes no attestation round trip of its own."""
    manifest = _manifest_of(batch)
    store = batch_store()
    _still_held(store, manifest, run_id, "preflight")
    if manifest.protection == "none":
        say("info", "Batch %s is a plaintext baseline (owner's choice): no attestation, no key brokers.",
            manifest.batch_id, batch_id=manifest.batch_id, step="preflight", decision="skipped (plaintext)")
        return {**batch, "provider_broker_url": ""}
    # Imported here: the provider package's operator imports these steps.
    from dags.cscore_platform.provider.hooks import BrokerUnavailable, ConnectionMissing, KeyBrokerHook

    with _failing_marks_batch(store, manifest.key, run_id, "preflight"):
        card = _model_card(store, manifest)
        for party, name in (("owner", manifest.broker_name), ("provider", str(card["broker"]))):
            hook = KeyBrokerHook.for_broker(name)
            try:
                url = hook.check()
            except ConnectionMissing:
                say("info", "Batch %s: no Airflow connection %s for the %s's key broker %r; not checked (the "
                    "workers reach it by their configuration).", manifest.batch_id, hook.broker_conn_id, party,
                    name, batch_id=manifest.batch_id, step="preflight", broker=name)
                continue
            except BrokerUnavailable as exc:
                raise BrokerUnavailable(f"the {party}'s {exc}; bring it back, then resubmit the batch") from exc
            say("info", "Batch %s: the %s's key broker %s answers at %s.", manifest.batch_id, party, name, url,
                batch_id=manifest.batch_id, step="preflight", broker=name)
    return {**batch, "provider_broker_url": str(card.get("broker_url", ""))}


def _manifest_of(batch: dict[str, Any]) -> Manifest:
    return Manifest.from_dict({k: v for k, v in batch.items() if k in Manifest.__dataclass_fields__})


def send_shards(batch: dict[str, Any], run_id: str, app: Celery, *, timeout: float = SHARD_TIMEOUT_S,
                note: Callable[[str], None] | None = None,
                first_ping: worker_pool.Ping | None = None) -> worker_pool.ShardWatch:
    """Plan the batch's shards and send them to the pool; returns the watch over them (`ShardWatch.step`), whose
    first look reads `first_ping` when given."""
    manifest = _manifest_of(batch)
    store = batch_store()
    with _failing_marks_batch(store, manifest.key, run_id, "score"):
        from dags.cscore_platform.batch_store import run_limits  # lazily, as batch_store()

        shards = plan_shards(manifest, run_limits())
        say("info", "Batch %s: %d shard(s) of up to %d row group(s) sent to the worker pool.",
            manifest.batch_id, len(shards), manifest.shard_row_groups, batch_id=manifest.batch_id,
            step="score", shards=len(shards))

        def progress(ok: int, total: int) -> None:
            # the watch stops at the first failed shard (and the batch fails, said below), so until then 0 failed.
            say("info", "Batch %s: %d ok / 0 failed of %d shards.", manifest.batch_id, ok, total,
                batch_id=manifest.batch_id, step="score", ok=ok, failed=0, total=total)

        return worker_pool.ShardWatch(app, shards, run_id=run_id, timeout=timeout, progress=progress,
                                      note=note or (lambda sentence: record_events(batch, run_id, [sentence])),
                                      first_ping=first_ping)


def record_events(batch: dict[str, Any], run_id: str, sentences: list[str]) -> None:
    """What the pool rode out goes into the batch's status, where the owner looks, and the task log."""
    manifest = _manifest_of(batch)
    events = batch.setdefault("events", [])
    for sentence in sentences:
        events.append(sentence)
        say("warning", "Batch %s: %s.", manifest.batch_id, sentence, batch_id=manifest.batch_id, step="score",
            pool_event=sentence)  # not `event`: structlog's own name for the message (TypeError)
    if sentences:
        batch_store().set_status(manifest.tenant, manifest.batch_id, "processing", run_id=run_id,
                                manifest_sha256=manifest.sha256, events=events)


def shards_failed(batch: dict[str, Any], run_id: str, reason: str) -> None:
    """Mark the batch failed with the pool's reason (brokers named as the owner's or the provider's); raises."""
    manifest = _manifest_of(batch)
    message = _whose_broker(reason, manifest.broker_url, str(batch.get("provider_broker_url") or ""))
    with _failing_marks_batch(batch_store(), manifest.key, run_id, "score"):
        raise worker_pool.WorkerPoolError(message)


def wait_broke(batch: dict[str, Any], run_id: str, error: str) -> None:
    """Mark the batch failed because waiting for its shards raised an error that is not the pool's (a bug):
    `error` names it (type and message). The caller raises it, traceback and all; a retry then skips the batch."""
    manifest = _manifest_of(batch)
    _release(batch_store(), manifest.key, run_id, "score",
             f"{error} (an error in the platform's wait for the shards, not the pool's; see the task's log)")


def shards_done(batch: dict[str, Any], outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Log every shard's outcome and each worker's attestation (reported with its first shard); the batch
    with `shards` and `attestation` (one entry per worker, the `cscore.attest` shape) added."""
    manifest = _manifest_of(batch)
    attestation: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        say("info", "Batch %s shard %d: %d rows by %s, receipt %s%s.", manifest.batch_id,
            outcome["shard_index"], outcome["rows"], outcome["worker"], outcome["receipt_key"],
            " (already done by an earlier attempt)" if outcome["reused"] else "",
            batch_id=manifest.batch_id, step="score", shard=outcome["shard_index"],
            worker=outcome["worker"], receipt_key=outcome["receipt_key"],
            receipt_sha256=outcome["receipt_sha256"], reused=outcome["reused"])
        if outcome.get("attestation"):
            attestation.setdefault(outcome["attestation"].get("worker") or outcome["worker"], outcome["attestation"])
    # the task's log ends with the count even when the triggerer did the waiting (its lines carry no fields)
    say("info", "Batch %s: %d ok / 0 failed of %d shards.", manifest.batch_id, len(outcomes), len(outcomes),
        batch_id=manifest.batch_id, step="score", ok=len(outcomes), failed=0, total=len(outcomes))
    for verdict in attestation.values():
        for v in verdict.get("verdicts", []):
            say("info", "Worker %s attested to broker %s: tee %s, measurement %s, root %s, claims digest %s.",
                verdict["worker"], v["broker"], v.get("tee"), v.get("measurement"), v.get("root"),
                v.get("claims_digest"), batch_id=manifest.batch_id, step="attest", worker=verdict["worker"],
                broker=v["broker"], measurement=v.get("measurement"), root=v.get("root"),
                claims_digest=v.get("claims_digest"), decision="accepted")
    shards = [{k: v for k, v in o.items() if k != "attestation"} for o in outcomes]
    return {**batch, "shards": shards, "attestation": [attestation[w] for w in sorted(attestation)]}


def _whose_broker(message: str, owner_url: str, provider_url: str) -> str:
    """The worker names a broker by URL only when it cannot tell whose it is; the manifest and card can."""
    for party, url in (("owner", owner_url), ("provider", provider_url)):
        if url:
            message = message.replace(f"the key broker at {url.rstrip('/')} ",
                                      f"the {party}'s key broker at {url} ")
    return message


def finalize(batch: dict[str, Any], run_id: str) -> str:
    """Check every email came back exactly once by count, then write the result manifest."""
    manifest = _manifest_of(batch)
    store = batch_store()
    _still_held(store, manifest, run_id, "finalize")
    with _failing_marks_batch(store, manifest.key, run_id, "finalize"):
        rows = sum(s["rows"] for s in batch["shards"])
        if rows != manifest.rows:
            raise ValueError(f"result rows: expected {manifest.rows} (signed manifest), got {rows}")
        key = store.write_result_manifest(manifest, {
            "tenant": manifest.tenant,
            "batch_id": manifest.batch_id,
            "manifest_key": manifest.key,
            "manifest_sha256": manifest.sha256,
            "model": {"name": manifest.model_name, "version": manifest.model_version,
                      "digest": manifest.model_digest},
            "rows": rows,
            "shards": sorted(batch["shards"], key=lambda s: s["shard_index"]),
            "attestation": batch["attestation"],
            "run_id": run_id,
        })
        store.set_status(manifest.tenant, manifest.batch_id, "succeeded", run_id=run_id,
                         manifest_sha256=manifest.sha256, result_manifest=key, events=batch.get("events", []))
    say("info", "Batch %s succeeded: %d emails scored; result manifest %s.", manifest.batch_id, rows, key,
        batch_id=manifest.batch_id, tenant=manifest.tenant, step="finalize", decision="succeeded",
        result_manifest=key, emails=rows)
    return key


def _model_card(store: BatchStore, manifest: Manifest) -> dict[str, Any]:
    # The card's payload is public metadata; the worker checks the model itself by digest.
    token = store.read(model_card_key(manifest.model_name, manifest.model_version)).decode()
    payload = token.split(".")[1]
    card: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return card
