"""A real confidential worker (Celery prefork, simulated SEV-SNP) as operators see it: Prometheus metrics summed
over its pool processes, failures counted by reason, and JSON log lines that carry no secret.

The stack runs the key brokers, moto, Redis and one worker (no Airflow); tasks are sent by name, as the
platform sends them.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from infra.local import procs
from infra.local.stack import LocalStack

pytestmark = pytest.mark.timeout(400)
SHARD_QUEUE = "cscore.shards"  # tasks.celery_app's queue (the platform sends by name, never importing it)


@pytest.fixture(scope="module")
def json_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CSCORE_", "AIRFLOW"))}
    stack = LocalStack(tmp_path_factory.mktemp("ops-stack"), workers=1, airflow=False,
                       environ={**clean, "CSCORE_LOG_FORMAT": "json"})
    with stack:
        yield stack
        gc.collect()  # Celery results' __del__ talks to Redis: collect them while the stack still runs


def _run(stack: LocalStack, task: str, arg: object, *, fails: bool = False) -> Any:
    """Send a task by name, as the platform does; its result (or, with `fails`, the error it failed with).

    The result is collected here, while Redis runs: a Celery result left to the garbage collector after the
    stack stopped would retry Redis for a long time."""
    client = Celery(broker=stack.env["CSCORE_CELERY_BROKER_URL"], backend=stack.env["CSCORE_CELERY_RESULT_BACKEND"])
    try:
        result = client.send_task(task, args=[arg], queue=SHARD_QUEUE)
        value = result.get(timeout=120, propagate=False)
        assert result.failed() is fails, value
        result.forget()
        del result
        gc.collect()
        return value
    finally:
        client.close()


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_worker_metrics_sum_its_pool_processes_and_count_failures_by_reason(json_stack: LocalStack) -> None:
    url = json_stack.worker_metrics["celery-worker-1"]
    verdicts = _run(json_stack, "cscore.attest", ["owner", "provider"])
    assert {v["broker"] for v in verdicts["verdicts"]} == {"owner", "provider"}
    assert "ShardSpecError" in str(_run(json_stack, "cscore.score_shard", {"tenant": "t"}, fails=True))
    # A broker the measured configuration does not name: refused by the worker, counted by reason.
    assert "FormatError: provider_broker" in str(_run(json_stack, "cscore.attest", ["no-such-broker"], fails=True))
    parsed = _scrape(url)

    def value(name: str, **labels: str) -> float:
        return parsed.get((name, tuple(sorted(labels.items()))), 0.0)

    # The tasks ran in the pool's child process; the main process serves the counts: multiprocess mode works.
    worker = json_stack.parts["celery-worker-1"].popen.pid
    assert len(procs.tree(worker)) >= 2
    assert value("cscore_worker_tasks_total", task="attest", outcome="ok") == 1
    assert value("cscore_worker_tasks_total", task="score_shard", outcome="failed") == 1
    assert value("cscore_worker_task_failures_total", task="score_shard", reason="ShardSpecError") == 1
    assert value("cscore_worker_task_failures_total", task="attest", reason="FormatError") == 1
    assert value("cscore_worker_task_duration_seconds_count", task="attest", outcome="ok") == 1
    assert value("cscore_worker_task_duration_seconds_count", task="attest", outcome="failed") == 1
    # Labels are names from code: the tenant and the unknown broker's name the platform sent never show.
    assert not any(v in ("t", "no-such-broker") for _, labels in parsed for _, v in labels)


def test_worker_and_broker_logs_are_json_lines_without_secrets(json_stack: LocalStack) -> None:
    _run(json_stack, "cscore.attest", ["owner"])
    logs = {name: Path(part.log_file).read_text(errors="replace") for name, part in json_stack.parts.items()
            if name.startswith(("celery-worker", "owner-broker", "provider-broker"))}
    assert set(logs) >= {"celery-worker-1", "owner-broker", "provider-broker"}, sorted(json_stack.parts)
    for name, text in logs.items():
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines, name
        docs = [json.loads(line) for line in lines]  # every line one JSON object (no banner, no bare text)
        assert all({"ts", "level", "logger", "service", "message"} <= set(d) for d in docs), name
    worker_docs = [json.loads(line) for line in logs["celery-worker-1"].splitlines() if line.strip()]
    assert any(d.get("task_name") == "cscore.attest" and d.get("task_id") for d in worker_docs)
    assert any(d.get("operation") == "attest" and d.get("decision") == "allow"
               for d in map(json.loads, logs["owner-broker"].splitlines()))
    everything = "\n".join(logs.values())
    secrets = [(json_stack.state_dir / "brokers" / party / name).read_text().strip()
               for party in ("owner", "provider") for name in ("kek.hex", "admin-token")]
    secrets.append((json_stack.state_dir / "sim-tee" / "vcek.key").read_text().strip().splitlines()[1])
    assert [s[:8] for s in secrets if s in everything] == []
    assert "PRIVATE KEY" not in everything
