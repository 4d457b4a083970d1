"""ScoreBatchOperator: one owner's batch, from its signed manifest to its result manifest, in one task.

One task instead of four (validate, attest, score, write): each step was bookkeeping around a few S3 calls,
and every task paid Airflow's start-up (about a second here). Workers attest on their first contact with each
broker, inside their first shard, so there is no attestation round trip either.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dags.cscore_platform import steps, worker_pool
from dags.cscore_platform.intake import RunConfError, run_manifest_key
from dags.cscore_platform.manifest import ManifestError, tenant_and_batch
from dags.cscore_platform.provider.assets import RESULTS, RESULTS_ALIAS, batch_results_asset
from dags.cscore_platform.provider.hooks import WORKERS_CONN_ID, WorkerPoolHook
from dags.cscore_platform.provider.triggers import ShardsTrigger, TriggerBroke

DEFAULT_DEFER_AFTER_S = 5.0
# The task's looks at its shards in the first FAST_LOOKS_S of its wait, a Redis read a shard each: `poll_s` (0.25 s,
# right for a wait of minutes) added 0.12 s to a small batch on average.
TASK_POLL_S, FAST_LOOKS_S = 0.05, 5.0
# A killed process is retried (its run still holds the batch); a batch failed for a reason is not redone.
SCORE_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(seconds=5), "retry_exponential_backoff": 2.0,
                                 "max_retry_delay": timedelta(minutes=2)}


class ScoreBatchOperator(BaseOperator):
    """Score the batch of one signed manifest (`incoming/<tenant>/<batch>/manifest.jws`) on the attested pool;
    without `manifest_key`, the one its run's conf names (`{"manifest_keys": [key]}`, as `cscore_intake` starts a
    `cscore_batch` run: a conf naming none or several fails the task, not retried).

    In order: verify the owner's signature, the objects and the model, and claim the batch; check that the key
    brokers it needs answer (`cscore_broker_<name>` connections); send its shards to the workers
    (`cscore_workers` connection); wait for them; check every email came back once; write the result
    manifest and mark the batch succeeded; emit an asset event on `cscore_results` (and a per-batch asset
    through the `cscore_batch_results` alias) with extra {tenant, batch_id, result_manifest, rows, run_id,
    waited_in: "task" or "triggerer"}.

    Waiting: the task waits in its own process for `defer_after_s` seconds (a small batch is done by then and
    pays no deferral), then defers to `ShardsTrigger` so no worker slot is held (`deferrable=False`, or a
    `cscore_workers` result backend of `rpc://`, whose results reach only the sending process: it waits
    in-process throughout). Returns the result manifest's key. A batch already processed or held by
    another run is skipped; a failure marks the batch failed with its reason (the owner resubmits, finished
    shards are reused) and fails the task. Never sees an email, a score or a key.
    """

    template_fields = ("manifest_key", "defer_after_s")
    ui_color = "#d8e8f8"

    def __init__(self, *, manifest_key: str | None = None, workers_conn_id: str = WORKERS_CONN_ID,
                 deferrable: bool = True, defer_after_s: float | str = DEFAULT_DEFER_AFTER_S, poll_s: float = 0.25,
                 shard_timeout: timedelta = timedelta(seconds=steps.SHARD_TIMEOUT_S), **kwargs: Any) -> None:
        # Defaults for a plain instance; a mapped one (.partial().expand()) must pass both in partial().
        kwargs.setdefault("outlets", [RESULTS, RESULTS_ALIAS])
        for name, value in SCORE_RETRIES.items():
            kwargs.setdefault(name, value)
        super().__init__(**kwargs)
        self.manifest_key, self.workers_conn_id, self.deferrable = manifest_key, workers_conn_id, deferrable
        self.defer_after_s, self.poll_s, self.shard_timeout = defer_after_s, poll_s, shard_timeout

    def execute(self, context: Any) -> str:
        run_id = str(context["run_id"])
        key = self.manifest_key or self._run_manifest_key(context)
        self._label(context, key)
        self._not_redone(context, key, run_id)
        app = WorkerPoolHook(self.workers_conn_id).get_conn()
        ping = worker_pool.Ping(app)  # answered while the batch is validated: the wait's first look needs no round trip
        try:
            batch = steps.validate(key, run_id)
            self._label(context, batch)
            batch = steps.preflight(batch, run_id)
        except steps.BatchSkipped as exc:
            raise AirflowSkipException(str(exc)) from exc
        self._say_taken_over(context, batch, run_id)
        started = time.time()
        watch = steps.send_shards(batch, run_id, app, timeout=self.shard_timeout.total_seconds(), first_ping=ping)
        # rpc:// results reach this process only: a trigger would wait for them forever
        deferrable = self.deferrable and not worker_pool.results_reach_only_the_sender(app)
        limit = time.monotonic() + float(self.defer_after_s) if deferrable else float("inf")
        fast_until = time.monotonic() + FAST_LOOKS_S
        try:
            while (outcomes := watch.step()) is None:
                if time.monotonic() >= limit:
                    self.defer(
                        trigger=ShardsTrigger(shards=watch.shards, sent=watch.task_ids(), run_id=run_id,
                                              started=started, timeout_s=self.shard_timeout.total_seconds(),
                                              poll_s=self.poll_s, workers_conn_id=self.workers_conn_id,
                                              done=watch.done()),
                        method_name="execute_complete", kwargs={"batch": batch},
                        timeout=self.shard_timeout + timedelta(minutes=1))
                time.sleep(min(self.poll_s, TASK_POLL_S) if time.monotonic() < fast_until else self.poll_s)
        except worker_pool.WorkerPoolError as exc:
            steps.shards_failed(batch, run_id, str(exc))
            raise
        except Exception as exc:  # a bug, not the pool's reason: the batch fails too (a retry would only repeat it)
            steps.wait_broke(batch, run_id, f"{type(exc).__name__}: {exc}")
            raise
        return self._finish(context, batch, run_id, outcomes)

    def execute_complete(self, context: Any, event: dict[str, Any], batch: dict[str, Any]) -> str:
        """Resumed when the trigger fired: record what the pool rode out, then finish or fail the batch."""
        run_id = str(context["run_id"])
        self._label(context, batch)
        steps.record_events(batch, run_id, list(event.get("events") or []))
        if event.get("traceback"):
            steps.wait_broke(batch, run_id, str(event.get("reason")))
            raise TriggerBroke(f"{event.get('reason')}; the trigger's traceback:\n{event['traceback']}")
        if event.get("status") != "done":
            steps.shards_failed(batch, run_id, str(event.get("reason")))
        return self._finish(context, batch, run_id, list(event["outcomes"]), waited_in="triggerer")

    def _finish(self, context: Any, batch: dict[str, Any], run_id: str, outcomes: list[dict[str, Any]],
                waited_in: str = "task") -> str:
        try:
            key = steps.finalize(steps.shards_done(batch, outcomes), run_id)
        except steps.BatchSkipped as exc:
            raise AirflowSkipException(str(exc)) from exc
        extra = {"tenant": batch["tenant"], "batch_id": batch["batch_id"], "result_manifest": key,
                 "rows": sum(int(o["rows"]) for o in outcomes), "run_id": run_id, "waited_in": waited_in}
        events = context["outlet_events"]
        events[RESULTS].extra = extra
        events[RESULTS_ALIAS].add(batch_results_asset(batch["tenant"], batch["batch_id"]), extra=extra)
        return key

    def _say_taken_over(self, context: Any, batch: dict[str, Any], run_id: str) -> None:
        """A retry going on with its run's batch (the previous try ended without finishing it or marking it failed):
        said in the batch's status, after what the previous try recorded there, for the owner to see."""
        tries = int(getattr(context.get("ti"), "try_number", 1) or 1)
        if tries <= 1:
            return
        status = steps.batch_store().status(batch["tenant"], batch["batch_id"]) or {}
        if status.get("state") != "processing" or status.get("run_id") != run_id:
            return  # e.g. the lost try had finished the batch: nothing to say of a takeover
        batch["events"] = list(status.get("events") or [])
        steps.record_events(batch, run_id, [
            f"try {tries - 1} of run {run_id} ended without finishing the batch or failing it (most often its "
            "process was lost: killed with the scheduler or its host, or out of memory; that try's log says more); "
            f"try {tries} took the batch over and sent its shards again"])

    @staticmethod
    def _run_manifest_key(context: Any) -> str:
        try:
            return run_manifest_key(context["dag_run"].conf)
        except RunConfError as exc:  # a retry would read the same conf
            raise AirflowFailException(str(exc)) from exc

    def _not_redone(self, context: Any, manifest_key: str, run_id: str) -> None:
        """A retry goes on only where its run still holds the batch (its process was killed); a batch that
        failed for a reason waits for the owner's resubmission."""
        if int(getattr(context.get("ti"), "try_number", 1) or 1) <= 1:
            return
        try:
            tenant, batch_id = tenant_and_batch(manifest_key)
        except ManifestError:
            return
        status = steps.batch_store().status(tenant, batch_id) or {}
        if status.get("state") == "failed" and status.get("run_id") == run_id:
            raise AirflowSkipException(f"batch {batch_id} failed in this run ({status.get('reason')}); not redone: "
                                       "the owner resubmits it")

    @staticmethod
    def _label(context: Any, batch_or_key: dict[str, Any] | str) -> None:
        """Name the task instance after its batch (`map_index_template="{{ batch_label }}"` shows it)."""
        if isinstance(batch_or_key, str):
            try:
                tenant, batch_id = tenant_and_batch(batch_or_key)
            except ManifestError:
                tenant, batch_id = "?", batch_or_key
        else:
            tenant, batch_id = str(batch_or_key.get("tenant")), str(batch_or_key.get("batch_id"))
        context["batch_label"] = f"{tenant}/{batch_id}"
