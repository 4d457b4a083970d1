"""The resume-after-defer race of Airflow's LocalExecutor, and DeferSafeLocalExecutor's fix.

A deferring task's LocalExecutor worker reports "success" for the task instance key once its supervisor is
done. When the trigger fires first and the resumed attempt (same key, same try number) is launched before
that report is read, Airflow 3.3.2's executor drops the key from its running set and buffers the stale
"success": the scheduler then fails the running resumed attempt as "killed externally" (apache/airflow#72716).
These tests drive the real executors' queueing and result reading in that order (no worker processes: the
results are put on the executor's own result queue, as its worker processes do).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from airflow.executors import workloads
from airflow.executors.local_executor import LocalExecutor
from airflow.executors.workloads.task import TaskInstanceDTO
from airflow.utils.state import TaskInstanceState

from dags.cscore_platform.executor import DeferSafeLocalExecutor


def _workload() -> workloads.ExecuteTask:
    ti = TaskInstanceDTO(id=uuid.uuid4(), task_id="score_batch", dag_id="cscore_batch", run_id="r1", try_number=1,
                         dag_version_id=uuid.uuid4(), map_index=0, pool_slots=1, priority_weight=1)
    return workloads.ExecuteTask(ti=ti, dag_rel_path="cscore_batch.py",
                                 bundle_info=workloads.BundleInfo(name="dags-folder"), token="not-a-secret",
                                 log_path=None)


def _executor(cls: type[LocalExecutor], monkeypatch: pytest.MonkeyPatch) -> Any:
    from multiprocessing import SimpleQueue, Value

    executor = cls(parallelism=2)
    executor.activity_queue, executor.result_queue, executor.workers = SimpleQueue(), SimpleQueue(), {}
    executor._unread_messages = Value("I")
    monkeypatch.setattr(executor, "_check_workers", lambda: None)  # no task processes: results are put by hand
    return executor


def _launch(executor: Any, workload: workloads.ExecuteTask) -> None:
    executor.queue_workload(workload, session=None)
    executor.trigger_tasks(open_slots=1)


def _race(executor: Any) -> tuple[Any, workloads.ExecuteTask]:
    """Launch, defer (its success not read yet), trigger fired and the resumed attempt launched, then read."""
    workload = _workload()
    _launch(executor, workload)
    executor.result_queue.put((workload.key, TaskInstanceState.SUCCESS, None))  # the defer exit's report
    _launch(executor, workload)  # the resumed attempt: same key
    executor.sync()
    return executor, workload


def test_stock_local_executor_takes_the_defer_exit_for_the_resumed_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    # Why the fix exists: if Airflow fixes this upstream, this test says so and the fix can go.
    executor, workload = _race(_executor(LocalExecutor, monkeypatch))
    # The resumed attempt is no longer queued here (has_task is false) and its key reads "finished": the
    # scheduler fails the queued or running resumed attempt as killed externally.
    assert workload.key not in executor.queued_tasks and workload.key not in executor.running
    assert executor.get_event_buffer()[workload.key][0] == TaskInstanceState.SUCCESS


def test_defer_safe_executor_keeps_the_resumed_attempt_running(monkeypatch: pytest.MonkeyPatch) -> None:
    executor, workload = _race(_executor(DeferSafeLocalExecutor, monkeypatch))
    assert executor.get_event_buffer() == {}  # the defer exit's report is not taken for the resumed attempt
    # The resumed attempt's own end is reported as usual.
    executor.result_queue.put((workload.key, TaskInstanceState.SUCCESS, None))
    executor.sync()
    assert executor.get_event_buffer()[workload.key][0] == TaskInstanceState.SUCCESS


def test_defer_safe_executor_reports_an_ordinary_end_and_a_read_in_time_defer_exit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    executor = _executor(DeferSafeLocalExecutor, monkeypatch)
    workload = _workload()
    _launch(executor, workload)
    executor.result_queue.put((workload.key, TaskInstanceState.FAILED, None))
    executor.sync()
    assert executor.get_event_buffer()[workload.key][0] == TaskInstanceState.FAILED
    # A defer exit read before its task is resumed is reported too (the scheduler ignores it: TI deferred).
    _launch(executor, workload)
    executor.result_queue.put((workload.key, TaskInstanceState.SUCCESS, None))
    executor.sync()
    assert executor.get_event_buffer()[workload.key][0] == TaskInstanceState.SUCCESS


def test_workers_fork_after_the_dag_folders_task_imports_are_loaded(tmp_path: Any) -> None:
    """The executor's start loads what a task's DAG parse and run import (the DAG files' modules, Celery and the
    transport and result backend it loads by name, the S3 batch store and botocore's S3 model) before it forks
    its worker processes, whose forks run the tasks: each task parses warm."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    wanted = ["dags.cscore_platform.provider.operators", "celery.app", "dags.cscore_platform.batch_store",
              "dags.cscore_platform.steps", "dags.cscore_platform.intake", "kombu.transport.redis",
              "celery.backends.redis"]
    script = (
        "import json, sys\n"
        "from dags.cscore_platform.executor import DeferSafeLocalExecutor\n"
        f"wanted = {wanted!r}\n"
        "before = [m for m in wanted if m in sys.modules]\n"
        "executor = DeferSafeLocalExecutor(parallelism=1)\n"
        "executor.start()\n"
        "after = [m for m in wanted if m in sys.modules]\n"
        "from dags.cscore_platform.batch_store import botocore_data\n"
        "s3_model = any(k[:2] == ('load_service_model', 's3') for k in botocore_data()._cache)\n"
        "workers = [p.is_alive() for p in executor.workers.values()]\n"
        "executor.end()\n"
        "print(json.dumps({'before': before, 'after': after, 'workers': workers, 's3_model': s3_model}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CSCORE_"))}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__DAGS_FOLDER=str(repo / "dags"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False")
    done = subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # botocore's S3 model too, loaded into the loader every S3 client of a task process shares
    assert seen == {"before": [], "after": wanted, "workers": [True], "s3_model": True}, done.stderr[-3000:]


def test_the_schedulers_now_on_sqlite_has_microseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run dated .4 s into a second is schedulable at once (`run_after <= now()`), not at the next second."""
    import re
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import String, create_engine, func, literal, select, type_coerce

    _executor(DeferSafeLocalExecutor, monkeypatch)
    with create_engine("sqlite://").connect() as db:
        now = db.execute(select(type_coerce(func.now(), String))).scalar_one()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", now), now
        assert abs(datetime.fromisoformat(now).replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(seconds=5)
        just_before = (datetime.fromisoformat(now) - timedelta(microseconds=1000)).isoformat(" ")
        assert db.execute(select(literal(just_before) <= func.now())).scalar_one()
