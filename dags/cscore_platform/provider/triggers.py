"""ShardsTrigger: wait for a batch's shards in the triggerer, so no worker slot is held while they run."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from dags.cscore_platform import worker_pool
from dags.cscore_platform.provider.hooks import WORKERS_CONN_ID, WorkerPoolHook

CLASSPATH = "dags.cscore_platform.provider.triggers.ShardsTrigger"


class TriggerBroke(RuntimeError):
    """Waiting in the trigger raised an error that is not the pool's (a bug); the message holds its traceback."""


class ShardsTrigger(BaseTrigger):
    """Watches shards already sent to the pool (their Celery task ids) until all are done or one failed.

    It rides out the faults `worker_pool.run_shards` does (a silent worker's shards and a restarted
    transport's are sent again) and fires one event:
    `{"status": "done", "outcomes": [shard outcome, ...], "events": [sentence, ...]}` or
    `{"status": "failed", "reason": sentence, "events": [...]}` (with "traceback": text, when the error was not
    the pool's but a bug: the task raises TriggerBroke with it). Outcomes hold object keys, digests, counts and
    attestation verdicts only. A triggerer restart re-creates it from its kwargs and watches the same
    attempts (resent ones are found again by the silent-worker check; receipts make a second run safe).

    shards: the shard specs (`planning.plan_shards`); sent: Celery task ids per shard; started: time.time()
    when the batch's clock started; timeout_s: the whole wait's limit from `started`; poll_s: seconds between
    looks; done: the outcomes the task had collected, per shard (None: unfinished), which a transport restart
    may have taken from the result store.
    """

    def __init__(self, *, shards: list[dict[str, Any]], sent: list[list[str]], run_id: str, started: float,
                 timeout_s: float = 1800.0, poll_s: float = 0.25, workers_conn_id: str = WORKERS_CONN_ID,
                 done: list[dict[str, Any] | None] | None = None) -> None:
        super().__init__()
        self.shards, self.sent, self.run_id, self.started = shards, sent, run_id, started
        self.timeout_s, self.poll_s, self.workers_conn_id = timeout_s, poll_s, workers_conn_id
        self.done = done or []

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return CLASSPATH, {"shards": self.shards, "sent": self.sent, "run_id": self.run_id, "started": self.started,
                           "timeout_s": self.timeout_s, "poll_s": self.poll_s, "workers_conn_id": self.workers_conn_id,
                           "done": self.done}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        events: list[str] = []
        batch = f"{self.shards[0]['tenant']}/{self.shards[0]['batch_id']}" if self.shards else "?"
        try:
            conn = await WorkerPoolHook.aget_connection(self.workers_conn_id)
            settings = WorkerPoolHook.settings_from(conn.extra_dejson, self.workers_conn_id)
            app = worker_pool.celery_client(settings["broker_url"], settings["result_backend"])
            if worker_pool.results_reach_only_the_sender(app):  # never seen here: fail now, not at the timeout
                raise worker_pool.WorkerPoolError(
                    f"connection {self.workers_conn_id}: result backend {settings['result_backend']} hands results "
                    "only to the process that sent the shards, never to the triggerer; set a backend any process "
                    "can read (Redis, a database) or make the task wait in its own process (deferrable=False)")

            def progress(ok: int, total: int) -> None:
                self.log.info("Batch %s: %d ok / 0 failed of %d shards.", batch, ok, total)

            def note(sentence: str) -> None:
                events.append(sentence)
                self.log.warning("Batch %s: %s.", batch, sentence)

            # Celery's client calls block: each look runs in a thread, the triggerer's loop stays free.
            watch = await asyncio.to_thread(
                worker_pool.ShardWatch, app, self.shards, run_id=self.run_id, timeout=self.timeout_s,
                progress=progress, note=note, sent=self.sent, started=self.started, done=self.done)
            while (outcomes := await asyncio.to_thread(watch.step)) is None:
                await asyncio.sleep(self.poll_s)
        except worker_pool.WorkerPoolError as exc:  # the pool's reason: the batch fails with it
            self.log.error("Batch %s: waiting for shards failed: %s", batch, exc)
            yield TriggerEvent({"status": "failed", "reason": str(exc), "events": events})
            return
        except Exception as exc:  # noqa: BLE001 - a bug: the task fails with it and this traceback
            self.log.exception("Batch %s: waiting for shards raised %s", batch, type(exc).__name__)
            yield TriggerEvent({"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "events": events,
                                "traceback": traceback.format_exc()})
            return
        self.log.info("Batch %s: all %d shards done %.1f s after the batch started.", batch, len(outcomes),
                      time.time() - self.started)
        yield TriggerEvent({"status": "done", "outcomes": outcomes, "events": events})
