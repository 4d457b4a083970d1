"""The four steps of one batch, as the DAG's tasks run them.

Each step logs, in plain sentences, the batch id, what it checked and what it decided, and never a
secret (it has none to log). A step that fails marks the batch failed and frees it for resubmission.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote_plus

import structlog

from dags.cscore_platform import worker_pool
from dags.cscore_platform.batch_store import BatchStore, run_limits
from dags.cscore_platform.manifest import MANIFEST_NAME, Manifest, tenant_and_batch, verify_manifest
from dags.cscore_platform.planning import plan_shards

_log = structlog.get_logger("cscore.batch")


def say(level: str, sentence: str, *args: object, **fields: object) -> None:
    """Log a sentence a person can follow, with its ids beside it as JSON fields (batch_id, step, ...)."""
    getattr(_log, level)(sentence % args if args else sentence, **fields)

SHARD_TIMEOUT_S = 1800.0


class BatchSkipped(Exception):
    """This run does not process the batch (already processed or in progress elsewhere)."""


def manifest_keys_from_events(event_extras: Iterable[dict[str, Any]], conf: dict[str, Any]) -> list[str]:
    """Manifest keys named by SQS-delivered S3 events and by a manual run's conf, each once."""
    keys: list[str] = list(conf.get("manifest_keys") or [])
    for extra in event_extras:
        # A trigger-made asset event carries the trigger's event under "payload".
        for message in (extra.get("payload") or extra).get("message_batch") or []:
            keys.extend(_keys_in_s3_event(message.get("Body", "")))
    unique = list(dict.fromkeys(keys))
    say("info", "This run will look at %d manifest(s): %s", len(unique), ", ".join(unique) or "none")
    return unique


def _keys_in_s3_event(body: str) -> list[str]:
    try:
        records = json.loads(body).get("Records", [])
    except ValueError:
        say("warning", "Ignored a queue message that is not an S3 event")
        return []
    keys = [unquote_plus(r["s3"]["object"]["key"]) for r in records if "s3" in r]
    return [k for k in keys if k.endswith("/" + MANIFEST_NAME)]


@contextmanager
def _failing_marks_batch(store: BatchStore, manifest_key: str, run_id: str, step: str) -> Iterator[None]:
    try:
        yield
    except BatchSkipped:
        raise
    except BaseException as exc:  # timeouts and kills too: the claim must not outlive a dead run
        tenant, batch = tenant_and_batch(manifest_key)
        reason = f"{step}: {exc}"
        if store.release(tenant, batch, reason, run_id):
            say("error", "Batch %s failed at step %s: %s. Its input is untouched; fix the cause and submit the "
                      "same manifest again.", batch, step, exc, batch_id=batch, tenant=tenant, step=step,
                      run_id=run_id, decision="failed")
        else:
            say("error", "This run could not process batch %s (%s: %s); another run holds it and it is left "
                      "to that run.", batch, step, exc, batch_id=batch, tenant=tenant, step=step, run_id=run_id,
                      decision="left to the holder")
        raise


def validate(manifest_key: str, run_id: str) -> dict[str, Any]:
    """Verify the owner's signature, the listed objects and the model, then claim the batch."""
    store = BatchStore()
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


def attest(batch: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Have every worker attest to the owner's and the provider's brokers; fail fast on a refusal."""
    manifest = Manifest.from_dict(batch)
    store = BatchStore()
    _still_held(store, manifest, run_id, "attest")
    if manifest.protection == "none":
        say("info", "Batch %s is a plaintext baseline (owner's choice): no attestation, no key brokers.",
            manifest.batch_id, batch_id=manifest.batch_id, step="attest", decision="skipped (plaintext)")
        return {**batch, "attestation": []}
    with _failing_marks_batch(store, manifest.key, run_id, "attest"):
        card = _model_card(store, manifest)
        brokers = [manifest.broker_name, card["broker"]]  # names: workers look them up in their configuration
        app = worker_pool.celery_client()
        try:
            verdicts = worker_pool.attest_all(app, brokers, batch_id=manifest.batch_id)
        except worker_pool.WorkerPoolError as exc:
            raise worker_pool.WorkerPoolError(_whose_broker(str(exc), manifest.broker_url, card["broker_url"])) from exc
        for verdict in verdicts:
            for v in verdict["verdicts"]:
                say("info", "Worker %s attested to broker %s: tee %s, measurement %s, root %s, claims digest %s.",
                    verdict["worker"], v["broker"], v.get("tee"), v.get("measurement"), v.get("root"),
                    v.get("claims_digest"), batch_id=manifest.batch_id, step="attest", worker=verdict["worker"],
                    broker=v["broker"], measurement=v.get("measurement"), root=v.get("root"),
                    claims_digest=v.get("claims_digest"), decision="accepted")
    return {**batch, "attestation": verdicts}


def _whose_broker(message: str, owner_url: str, provider_url: str) -> str:
    """The worker names a broker by URL only when it cannot tell whose it is; the manifest and card can."""
    for party, url in (("owner", owner_url), ("provider", provider_url)):
        message = message.replace(f"the key broker at {url.rstrip('/')} ", f"the {party}'s key broker at {url} ")
    return message


def score(batch: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Fan the shards out to the workers and wait for every one of them."""
    manifest = Manifest.from_dict({k: v for k, v in batch.items() if k != "attestation"})
    store = BatchStore()
    _still_held(store, manifest, run_id, "score")
    events: list[str] = []

    def note(sentence: str) -> None:
        # What the pool rode out goes into the batch's status, where the owner looks, and the task log.
        events.append(sentence)
        say("warning", "Batch %s: %s.", manifest.batch_id, sentence, batch_id=manifest.batch_id, step="score",
            event=sentence)
        store.set_status(manifest.tenant, manifest.batch_id, "processing", run_id=run_id,
                         manifest_sha256=manifest.sha256, events=events)

    with _failing_marks_batch(store, manifest.key, run_id, "score"):
        shards = plan_shards(manifest, run_limits())
        say("info", "Batch %s: %d shard(s) of up to %d row group(s) sent to the worker pool.",
                 manifest.batch_id, len(shards), manifest.shard_row_groups, batch_id=manifest.batch_id,
                 step="score", shards=len(shards))

        def progress(ok: int, total: int) -> None:
            # run_shards stops at the first failed shard (and the batch fails, said below), so until then 0 failed.
            say("info", "Batch %s: %d ok / 0 failed of %d shards.", manifest.batch_id, ok, total,
                batch_id=manifest.batch_id, step="score", ok=ok, failed=0, total=total)

        outcomes = worker_pool.run_shards(worker_pool.celery_client(), shards, timeout=SHARD_TIMEOUT_S,
                                          progress=progress, note=note, run_id=run_id)
        for outcome in outcomes:
            say("info", "Batch %s shard %d: %d rows by %s, receipt %s%s.", manifest.batch_id,
                     outcome["shard_index"], outcome["rows"], outcome["worker"], outcome["receipt_key"],
                     " (already done by an earlier attempt)" if outcome["reused"] else "",
                     batch_id=manifest.batch_id, step="score", shard=outcome["shard_index"],
                     worker=outcome["worker"], receipt_key=outcome["receipt_key"],
                     receipt_sha256=outcome["receipt_sha256"], reused=outcome["reused"])
    return {**batch, "shards": outcomes, "events": events}


def finalize(batch: dict[str, Any], run_id: str) -> str:
    """Check every email came back exactly once by count, then write the result manifest."""
    fields = {k: v for k, v in batch.items() if k not in {"attestation", "shards", "events"}}
    manifest = Manifest.from_dict(fields)
    store = BatchStore()
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
    token = store.read(f"models/{manifest.model_name}/{manifest.model_version}/card.jws").decode()
    payload = token.split(".")[1]
    card: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return card
