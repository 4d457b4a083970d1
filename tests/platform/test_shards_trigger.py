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


def _first_event(monkeypatch: pytest.MonkeyPatch, error: Exception) -> dict[str, Any]:
    """Run the trigger over a watch whose first look raises `error`; the payload of the event it fires."""

    async def connection(cls: Any, conn_id: str) -> Any:
        return SimpleNamespace(extra_dejson={"broker_url": "memory://", "result_backend": "cache+memory://"})

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
