"""Celery tasks run by the confidential workers. Idempotent, acknowledged late, stable names.

What a task returns or raises reaches the platform (result backend, Airflow logs), so errors are
contained: the enclave's own refusals (which name fields, expected and actual digests) pass through,
any other exception is reported by type only.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from celery.signals import worker_init

from attestation.errors import AttestationError
from enclave.kbs_client import KbsError
from enclave.limits import LimitExceeded
from enclave.preprocess import InputRefused
from enclave.runner import OutputRefused
from enclave.signing import canonical_json, unverified_payload
from enclave.tee import check_launch_binding, evidence_provider
from enclave.training import TrainingInputError
from enclave.worker import (
    Enclave,
    ModelIntegrityError,
    PlaintextRefused,
    ScoredShard,
    ShardInputError,
    TunedModelRefused,
    UsageExceeded,
    sha256_hex,
)
from tasks import metrics, storage
from tasks.celery_app import app
from wire.errors import FormatError
from wire.shard import ShardOutcome, ShardSpec, ShardSpecError
from wire.training import TrainingSpec, model_card_key
from wire.worker_config import CONFIG_ENV, load_worker_config

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
IO_THREADS = 4
CARDS_KEPT = 16  # model cards per worker process (by object key), as S3 served them
EVIDENCE_KEPT = 1024  # evidence objects this process wrote (by key), not written again
_cards: dict[str, str] = {}
_evidence_stored: dict[str, None] = {}

# Errors of our own whose messages carry only field names, digests and reasons: safe to show the platform.
SHAREABLE = (ShardSpecError, ShardInputError, ModelIntegrityError, PlaintextRefused, UsageExceeded, KbsError,
             AttestationError, FormatError, storage.StorageError, InputRefused, OutputRefused, TrainingInputError,
             LimitExceeded, TunedModelRefused)
# S3 failures that outlived boto3's retries: the shard is tried again later, then fails naming operation and code.
STORAGE_RETRY = {"max_retries": 5, "retry_backoff": 2, "retry_backoff_max": 30, "retry_jitter": True}


class WorkerRefusal(RuntimeError):
    """What the platform learns of a failure inside the worker."""


class WorkerRetry(WorkerRefusal):
    """A failure that a later attempt may not meet (S3 throttling, 5xx): Celery retries the task."""


class LeftoverShard(ValueError):
    """A shard message of a run that no longer holds its batch (failed, cancelled, taken over)."""


class ReceiptMismatch(ValueError):
    """A receipt already stored for this shard does not describe this shard."""


def contained(task: F) -> F:
    """Let only shareable error text out of the enclave."""

    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = task(*args, **kwargs)
        except (*SHAREABLE, ReceiptMismatch, LeftoverShard) as exc:
            refusal = f"{type(exc).__name__}: {exc}"
            retry = isinstance(exc, storage.StorageError) and exc.transient
            reason = type(exc).__name__
        except Exception as exc:
            log.error("task failed inside the enclave with %s (details withheld)", type(exc).__name__,
                      extra={"reason": type(exc).__name__})
            refusal = f"{type(exc).__name__} inside the worker (details stay in the enclave)"
            retry = False
            reason = type(exc).__name__
        else:
            metrics.task_done(task.__name__, time.perf_counter() - started, result)
            return result
        metrics.task_failed(task.__name__, time.perf_counter() - started, reason, retried=retry)
        # Raised outside the handler: no __context__, so no traceback carries the original text out.
        raise WorkerRetry(refusal) if retry else WorkerRefusal(refusal)

    return run  # type: ignore[return-value]


@cache
def _enclave() -> Enclave:
    """One per worker process: attested sessions and the model cache live as long as the process.

    Whom it trusts comes from the measured configuration (`CSCORE_WORKER_CONFIG` names the file; its digest
    must be the one this guest was launched with, else nothing starts).
    """
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"{CONFIG_ENV} is not set: a worker needs its measured configuration document")
    config, _ = load_worker_config(path)
    provider = evidence_provider(config)
    digest = check_launch_binding(provider, config)
    log.info("worker configuration %s bound to this guest's evidence (%s)", digest, config.tee)
    return Enclave(provider, config)


@worker_init.connect
def _check_configuration(**_: Any) -> None:
    # At start, not at the first task: a worker launched with the wrong configuration must not run at all.
    # SystemExit, because Celery logs and swallows an Exception raised by a signal handler.
    try:
        _enclave()
        # pyarrow imports pandas the first time it builds an array from numpy (1-4 s on a busy machine): once
        # here, in the parent before the pool forks, not in the first shard of every pool process.
        pa.array(np.zeros(1, np.float32))
    except Exception as exc:
        log.critical("worker refuses to start: %s", exc)
        raise SystemExit(f"cscore worker refuses to start: {exc}") from None


@app.task(name="cscore.attest", bind=True, acks_late=True)
@contained
def attest(self: Any, broker_names: list[str], batch_id: str = "") -> dict[str, Any]:
    """Attest this worker to each named broker of its configuration, for `batch_id` (logged by the broker);
    returns verdicts (no secrets)."""
    return _named_enclave(self).attest(broker_names, batch_id)


def _worker_name(task: Any) -> str:
    """The worker's one name (Celery's node name, e.g. cscore-worker-1@host): in Airflow, receipts and the log."""
    return str(getattr(task.request, "hostname", None) or socket.gethostname())


def _named_enclave(task: Any) -> Enclave:
    enclave = _enclave()
    enclave.name = _worker_name(task)
    return enclave


@app.task(name="cscore.score_shard", bind=True, acks_late=True, autoretry_for=(WorkerRetry,), **STORAGE_RETRY)
@contained
def score_shard(self: Any, spec_data: dict[str, Any], run_id: str = "") -> dict[str, Any]:
    """Score one shard; a shard whose receipt already exists is reported, not scored again. `run_id` (the
    platform's run that sent it): a leftover whose run no longer holds the batch is not run (LeftoverShard)."""
    spec = ShardSpec.from_dict(spec_data)
    worker = _worker_name(self)
    # Three independent GETs at once; the leftover check still decides first.
    leftover = _io().submit(_refuse_leftover, spec, run_id)
    stored = _io().submit(storage.get_if_exists, spec.receipt_key)
    card_token = _io().submit(_card, spec)
    leftover.result()
    existing = stored.result()
    if existing is not None:
        return _outcome_from_receipt(spec, existing, worker)
    card = card_token.result()
    source = storage.S3Object(spec.input_key)  # ranged reads: the footer and this shard's row groups
    started = time.perf_counter()
    enclave = _named_enclave(self)
    try:
        scored = enclave.score_shard(spec, source, card, storage.get_bytes)
    except Exception:
        _cards.pop(_card_key(spec), None)  # a card refused or outdated is fetched afresh next time
        raise
    log.info("shard %d of batch %s read %d bytes of %s in %d requests", spec.shard_index, spec.batch_id,
             source.bytes_read, spec.input_key, source.requests,
             extra={"batch_id": spec.batch_id, "shard": spec.shard_index, "rows": scored.rows,
                    "bytes_read": source.bytes_read})
    _store_before_receipt(spec, scored)
    receipt = scored.receipt.encode()
    # The receipt is the shard's commit: written once. A concurrent attempt that lost the race
    # reports the winner's receipt and removes its own (never referenced) output.
    if not storage.put_if_absent(spec.receipt_key, receipt, "application/jose"):
        storage.delete(scored.output_key)
        return _outcome_from_receipt(spec, storage.get_bytes(spec.receipt_key), worker)
    return ShardOutcome(
        shard_index=spec.shard_index,
        output_key=scored.output_key,
        output_sha256=scored.output_sha256,
        receipt_key=spec.receipt_key,
        receipt_sha256=sha256_hex(receipt),
        rows=scored.rows,
        worker=worker,
        reused=False,
        seconds={**scored.seconds, "store": round(time.perf_counter() - started - sum(scored.seconds.values()), 6)},
        # The sessions this shard just used (reused, no new round trip): attestation on the first contact.
        attestation=enclave.attest([spec.owner_broker, str(unverified_payload(card, what="card")["broker"])],
                                   spec.batch_id)
        if scored.evidence else {},
    ).to_dict()


@cache
def _io() -> ThreadPoolExecutor:
    """One shard's independent S3 calls at once (boto3's client is thread-safe): their round trips overlap.
    Created in the pool process on first use, never in the parent before it forks."""
    return ThreadPoolExecutor(IO_THREADS, thread_name_prefix="cscore-s3")


def _card(spec: ShardSpec) -> str:
    """The model card as stored (a JWS), fetched once per worker process and model. What is cached is what S3
    served, not a verdict: the enclave verifies the card's signature and digest at every shard, as if fetched."""
    key = _card_key(spec)
    token = _cards.get(key)
    if token is None:
        token = storage.get_bytes(key).decode()
        _cards[key] = token
        while len(_cards) > CARDS_KEPT:
            _cards.pop(next(iter(_cards)), None)
    return token


def _store_before_receipt(spec: ShardSpec, scored: ScoredShard) -> None:
    """Upload what the receipt names (output, usage record, evidence) at once, all before the receipt. The
    evidence, the same document for every shard this process scores under one attestation, is written once per
    batch folder and attestation (its key is its digest)."""
    evidence_key = f"{spec.receipt_key.rsplit('/', 1)[0]}/evidence/{scored.evidence_sha256}.json"
    puts = [(scored.output_key, scored.output, "application/octet-stream")]
    if scored.usage:
        puts.append((_usage_key(spec), scored.usage.encode(), "application/jose"))
    if scored.evidence and evidence_key not in _evidence_stored:
        puts.append((evidence_key, canonical_json(scored.evidence), "application/json"))
    for done in [_io().submit(storage.put_bytes, *put) for put in puts]:
        done.result()
    if scored.evidence:
        _evidence_stored[evidence_key] = None
        while len(_evidence_stored) > EVIDENCE_KEPT:
            _evidence_stored.pop(next(iter(_evidence_stored)), None)


def _refuse_leftover(spec: ShardSpec, run_id: str) -> None:
    """Cancellation that outlives worker restarts: the batch's status names the run processing it. (Only
    liveness rests on it: a platform that lies here can at most stop work it could drop anyway.)"""
    raw = storage.get_if_exists(f"status/{spec.tenant}/{spec.batch_id}.json") if run_id else None
    status = json.loads(raw) if raw else {}
    if raw and (status.get("state") != "processing" or status.get("run_id") != run_id):
        raise LeftoverShard(f"shard {spec.shard_index} of batch {spec.batch_id}: sent by run {run_id}, but the batch "
                            f"is {status.get('state')!r} in run {status.get('run_id')!r}; not run")


def _card_key(spec: ShardSpec) -> str:
    return model_card_key(spec.model_name, spec.model_version)


def _usage_key(spec: ShardSpec) -> str:
    # Under the model's folder, per tenant and batch: the provider lists its own models' usage.
    return f"usage/{spec.model_name}/{spec.tenant}/{spec.batch_id}/shard-{spec.shard_index:05d}.jws"


def _outcome_from_receipt(spec: ShardSpec, receipt: bytes, worker: str) -> dict[str, Any]:
    payload = unverified_payload(receipt.decode(), what="receipt")
    _check_receipt_matches(spec, payload)
    log.info("shard %d of batch %s already has a receipt; reporting it", spec.shard_index, spec.batch_id)
    return ShardOutcome(
        shard_index=spec.shard_index,
        output_key=payload["output"]["key"],
        output_sha256=payload["output"]["sha256"],
        receipt_key=spec.receipt_key,
        receipt_sha256=sha256_hex(receipt),
        rows=payload["output"]["rows"],
        worker=worker,
        reused=True,
    ).to_dict()


def _receipt_input(spec: ShardSpec) -> dict[str, Any]:
    """How this shard's receipt names its input: PME by the footer's file id, the baseline by its SHA-256."""
    pme = spec.protection == "pme"
    return {"key": spec.input_key, "sha256": "" if pme else spec.input_sha256,
            "file_id": spec.input_file_id if pme else "", "row_groups": [spec.row_group_start, spec.row_group_end]}


def _check_receipt_matches(spec: ShardSpec, payload: dict[str, Any]) -> None:
    """Reuse a stored receipt only if it is this shard's (the owner verifies its signature later)."""
    expected = {
        "batch_id": spec.batch_id,
        "shard_index": spec.shard_index,
        "input": _receipt_input(spec),
        "model.digest": spec.model_digest,
    }
    actual = {
        "batch_id": payload.get("batch_id"),
        "shard_index": payload.get("shard_index"),
        "input": payload.get("input"),
        "model.digest": (payload.get("model") or {}).get("digest"),
    }
    for name, value in expected.items():
        if actual[name] != value:
            raise ReceiptMismatch(f"{spec.receipt_key}: receipt.{name} expected {value!r}, got {actual[name]!r}; "
                                  "delete the stale receipt or submit under a new batch id")
    output_key = str((payload.get("output") or {}).get("key", ""))
    if not output_key.startswith(spec.output_key.removesuffix(".parquet")):
        raise ReceiptMismatch(f"{spec.receipt_key}: receipt.output.key expected under "
                              f"{spec.output_key.removesuffix('.parquet')}, got {output_key!r}")


@app.task(name="cscore.train", bind=True, acks_late=True, autoretry_for=(WorkerRetry,), **STORAGE_RETRY)
@contained
def train(self: Any, spec_data: dict[str, Any]) -> dict[str, Any]:
    """Train one owner's tuned model (`enclave.worker.Enclave.train`); a job whose receipt exists is reported.

    Uploads the tuned model's ciphertext, its enclave-signed card, the evidence and, last, the receipt (the
    job's commit). Returns object keys, digests and the worker's name: no metric, no weight.
    """
    spec = TrainingSpec.from_dict(spec_data)
    worker = _worker_name(self)
    existing = storage.get_if_exists(spec.receipt_key)
    if existing is None:
        card = storage.get_bytes(f"recipes/{spec.recipe_name}/{spec.recipe_version}/card.jws").decode()
        job = _named_enclave(self).train(spec, storage.get_bytes(spec.input_key), card, storage.get_bytes)
        storage.put_bytes(f"{spec.prefix}evidence/{job.evidence_sha256}.json", canonical_json(job.evidence),
                          "application/json")
        storage.put_bytes(job.model_key, job.model)
        storage.put_bytes(spec.prefix + "card.jws", job.card.encode(), "application/jose")
        if storage.put_if_absent(spec.receipt_key, job.receipt.encode(), "application/jose"):
            return {"job_id": spec.job_id, "model_key": job.model_key, "receipt_key": spec.receipt_key,
                    "receipt_sha256": sha256_hex(job.receipt.encode()), "worker": worker, "reused": False}
        existing = storage.get_bytes(spec.receipt_key)
    payload = unverified_payload(existing.decode(), what="training receipt")
    if (payload.get("job_id"), (payload.get("input") or {}).get("sha256")) != (spec.job_id, spec.input_sha256):
        raise ReceiptMismatch(f"{spec.receipt_key}: receipt (job_id, input.sha256) expected "
                              f"{(spec.job_id, spec.input_sha256)!r}, got "
                              f"{(payload.get('job_id'), (payload.get('input') or {}).get('sha256'))!r}")
    return {"job_id": spec.job_id, "model_key": spec.prefix + "model.onnx.enc", "receipt_key": spec.receipt_key,
            "receipt_sha256": sha256_hex(existing), "worker": worker, "reused": True}
