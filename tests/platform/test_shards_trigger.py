"""What the shards' trigger hands the task: the pool's reason as the batch's, and a bug as itself, with its traceback
(an error of the trigger's own code is not a reason to report calmly, and the task must fail with it)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from dags.cscore_platform import steps, worker_pool
from dags.cscore_platform.provider import operators, triggers
from dags.cscore_platform.provider.hooks import WorkerPoolHook

SHARDS = [{"tenant": "acme", "batch_id": "b1", "shard_index": 0}]


def _first_event(monkeypatch: pytest.MonkeyPatch, error: Exception, backend: str = "cache+memory://") -> dict[str, Any]:
    """Run the trigger over a watch whose first look raises `error`; the payload of the event it fires."""

    async def connection(cls: Any, conn_id: str) -> Any:
        return SimpleNamespace(extra_dejson={"broker_url": "memory://", "result_backend": backend})

    class Watch:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def step(self) -> None:
            raise error

    monkeypatch.setattr(WorkerPoolHook, "aget_connection", classmethod(connection))
    monkeypatch.setattr(worker_pool, "ShardWatch", Watch)
    trigger = triggers.ShardsTrigger(shards=SHARDS, sent=[["t0"]], run_id="r", started=0.0)

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger fired no event")

    return asyncio.run(first())


def test_the_pools_reason_becomes_the_batchs_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    event = _first_event(monkeypatch, worker_pool.WorkerPoolError("no confidential worker answered a ping"))
    assert event == {"status": "failed", "reason": "no confidential worker answered a ping", "events": []}


def test_a_bug_in_the_wait_reaches_the_task_with_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    event = _first_event(monkeypatch, TypeError("meth() got multiple values for argument 'event'"))
    assert event["status"] == "failed"
    assert event["reason"] == "TypeError: meth() got multiple values for argument 'event'"
    assert "in step" in event["traceback"] and "TypeError" in event["traceback"]

    marked: list[str] = []
    monkeypatch.setattr(steps, "record_events", lambda batch, run_id, sentences: None)
    monkeypatch.setattr(steps, "wait_broke", lambda batch, run_id, error: marked.append(error))
    op = operators.ScoreBatchOperator(task_id="score", manifest_key="incoming/acme/b1/manifest.jws")
    with pytest.raises(triggers.TriggerBroke, match=r"(?s)TypeError: meth\(\).*the trigger's traceback:.*in step"):
        op.execute_complete({"run_id": "r"}, event, {"tenant": "acme", "batch_id": "b1"})
    assert marked == [event["reason"]]  # the batch is failed with it too: a retry skips it, nothing waits on it


def test_a_trigger_on_rpc_results_fails_at_once_naming_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # rpc:// results go to the process that sent the shards: the trigger would look for them until the timeout
    event = _first_event(monkeypatch, AssertionError("no look at the shards"), backend="rpc://")
    assert event == {"status": "failed", "events": [], "reason": (
        "connection cscore_workers: result backend rpc:// hands results only to the process that sent the shards, "
        "never to the triggerer; set a backend any process can read (Redis, a database) or make the task wait in "
        "its own process (deferrable=False)")}


class _Watch:
    """Shards that are done at the third look."""

    shards = SHARDS

    def __init__(self) -> None:
        self.looks = 0

    def step(self) -> list[dict[str, Any]] | None:
        self.looks += 1
        return [{"shard_index": 0, "rows": 1}] if self.looks == 3 else None

    def task_ids(self) -> list[list[str]]:
        return [["t0"]]

    def done(self) -> list[dict[str, Any] | None]:
        return [None]


@pytest.mark.parametrize(("backend", "defers"), [("rpc://", False), ("RPC://", False),
                                                 ("redis://127.0.0.1:6379/0", True), ("db+postgresql://h/d", True)])
def test_the_task_defers_only_where_the_triggerer_can_read_the_results(
        monkeypatch: pytest.MonkeyPatch, backend: str, defers: bool) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    watch = _Watch()
    monkeypatch.setattr(WorkerPoolHook, "get_conn", lambda self: worker_pool.celery_client("memory://", backend))
    monkeypatch.setattr(worker_pool, "Ping", lambda app: None)
    monkeypatch.setattr(steps, "validate", lambda key, run_id: {"tenant": "acme", "batch_id": "b1"})
    monkeypatch.setattr(steps, "preflight", lambda batch, run_id: batch)
    monkeypatch.setattr(steps, "send_shards", lambda batch, run_id, app, timeout, first_ping: watch)
    op = operators.ScoreBatchOperator(task_id="score", manifest_key="incoming/acme/b1/manifest.jws",
                                      defer_after_s=0, poll_s=0)
    finished: list[list[dict[str, Any]]] = []
    monkeypatch.setattr(op, "_label", lambda context, what: None)
    monkeypatch.setattr(op, "_not_redone", lambda context, key, run_id: None)
    monkeypatch.setattr(op, "_say_taken_over", lambda context, batch, run_id: None)

    def finish(context: Any, batch: dict[str, Any], run_id: str, outcomes: list[dict[str, Any]]) -> str:
        finished.append(outcomes)
        return "key"

    monkeypatch.setattr(op, "_finish", finish)
    if defers:
        with pytest.raises(TaskDeferred):
            op.execute({"run_id": "r"})
        assert watch.looks == 1 and finished == []
    else:
        assert op.execute({"run_id": "r"}) == "key"
        assert watch.looks == 3 and finished == [[{"shard_index": 0, "rows": 1}]]
