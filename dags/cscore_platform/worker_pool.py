"""The confidential worker pool as the platform reaches it: Celery tasks sent by name."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from celery.utils.nodenames import worker_direct

log = logging.getLogger(__name__)

SHARD_QUEUE = "cscore.shards"
ATTEST_TASK = "cscore.attest"
SCORE_TASK = "cscore.score_shard"


class WorkerPoolError(RuntimeError):
    """The pool could not do what was asked; the message says what to do next."""


def celery_client() -> Celery:
    """A Celery client (no worker code imported) on the transport named by the environment."""
    broker = os.environ.get("CSCORE_CELERY_BROKER_URL")
    backend = os.environ.get("CSCORE_CELERY_RESULT_BACKEND")
    if not broker or not backend:
        raise WorkerPoolError(
            "CSCORE_CELERY_BROKER_URL and CSCORE_CELERY_RESULT_BACKEND must be set for the platform "
            "to reach the workers"
        )
    app = Celery("cscore-platform", broker=broker, backend=backend)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    return app


def live_workers(app: Celery, timeout: float = 3.0) -> list[str]:
    """Names of the workers that answer a ping. A ping waits its whole timeout unless told how many
    replies to expect: `CSCORE_WORKER_POOL_SIZE` (the pool's configured size) lets it stop early."""
    expected = int(os.environ.get("CSCORE_WORKER_POOL_SIZE") or 0) or None
    replies = app.control.ping(timeout=timeout if expected else 1.0, limit=expected) or []
    return sorted(name for reply in replies for name in reply)


def attest_all(app: Celery, broker_urls: list[str], timeout: float = 120.0) -> list[dict[str, Any]]:
    """Ask every live worker to attest to the brokers; returns each worker's verdicts."""
    workers = live_workers(app)
    if not workers:
        raise WorkerPoolError("no confidential worker answered a ping: start workers, then retry the batch")
    pending = {w: app.send_task(ATTEST_TASK, args=[broker_urls], queue=worker_direct(w)) for w in workers}
    verdicts = []
    for worker, result in pending.items():
        try:
            verdicts.append(result.get(timeout=timeout))
        except Exception as exc:  # the worker's own error text says which check refused it
            raise WorkerPoolError(f"worker {worker} failed attestation: {exc}") from exc
    return verdicts


def run_shards(
    app: Celery,
    shards: list[dict[str, Any]],
    *,
    timeout: float,
    progress: Callable[[int, int], None],
) -> list[dict[str, Any]]:
    """Send every shard to the pool at once and wait for all; raises on the first failed shard."""
    results: list[AsyncResult] = [app.send_task(SCORE_TASK, args=[s], queue=SHARD_QUEUE) for s in shards]
    deadline = time.monotonic() + timeout
    done_before = -1
    while True:
        done = sum(1 for r in results if r.ready())
        if done != done_before:
            progress(done, len(results))
            done_before = done
        failed = next((r for r in results if r.ready() and r.failed()), None)
        if failed is not None:
            # Stop the rest: a resubmission must not race leftovers of this attempt.
            app.control.revoke([r.id for r in results if not r.ready()])
            index = results.index(failed)
            raise WorkerPoolError(f"shard {index} failed on the worker: {failed.result}")
        if done == len(results):
            return [r.get() for r in results]
        if time.monotonic() > deadline:
            app.control.revoke([r.id for r in results if not r.ready()])
            raise WorkerPoolError(f"{len(results) - done} of {len(results)} shards unfinished after {timeout:.0f} s")
        time.sleep(0.2)
