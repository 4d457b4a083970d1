"""Airflow's LocalExecutor without the resume-after-defer race (the local stack's default executor).

The race (Airflow 3.3.2; apache/airflow#72716, #71580, PR #71579 still open): a deferring task's process
exits and its LocalExecutor worker reports "success" for the task instance key once the supervisor is done.
If the trigger fires first and the scheduler launches the resumed attempt (same key, same try number) before
that report is read, the stale report lands in the event buffer while the resumed attempt is no longer queued
in the executor; the scheduler then sees "executor says finished, task says queued/running", takes the
resumed attempt for killed externally and fails it (3.3.2 guards only the still-`scheduled` case). It bites
a trigger that fires within about a scheduler loop of the deferral: a batch whose last shard lands right
after the operator deferred.

The fix is at the cause: the executor counts the launches of each key and reads a result as the latest
launch's only when no later launch of that key is outstanding. A stale result is dropped (the task reports
its own state to the API server; the executor's event only detects processes that died silently).
Select it with `AIRFLOW__CORE__EXECUTOR=dags.cscore_platform.executor.DeferSafeLocalExecutor`.

On a SQLite metadata database it gives the scheduler a now() with sub-seconds (`sqlite_now_to_the_microsecond`):
the scheduler takes a queued run only once `run_after <= now()`, and SQLite's CURRENT_TIMESTAMP has whole seconds,
compared as text with run_after's microseconds, so every run, the intake's and each batch's, waited for the next
whole second after the one it was dated in: 0.5 s each on average, twice on a batch's path.

It also starts its worker processes warm: every task process is forked from one and parses its DAG file
first, so the executor parses the DAG folder once before forking them (`warm_task_imports`) and each task's
parse then runs its DAG file alone, its imports already loaded.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.executors import workloads
from airflow.executors.local_executor import LocalExecutor

log = logging.getLogger(__name__)
# Imported by tasks as they run (lazily, so a DAG file's parse does not pay for them); the last five Celery loads
# by name on a client's first send, ping and result (9.8 % of a batch task's samples, py-spy).
TASK_MODULES = ("dags.cscore_platform.batch_store", "dags.cscore_platform.steps", "dags.cscore_platform.training",
                "celery.app.control", "celery.app.amqp", "celery.backends.redis", "celery.loaders.app",
                "kombu.transport.redis")


def warm_task_imports(dags_folder: str | None = None) -> None:
    """Load what a task process of this DAG folder imports (its DAG files' modules, the providers' asset handlers
    their assets need, the modules tasks import as they run). A failure is logged, never raised: tasks then import
    for themselves."""
    from airflow import settings
    from airflow.dag_processing.dagbag import BundleDagBag

    folder = dags_folder or settings.DAGS_FOLDER
    try:
        bag = BundleDagBag(dag_folder=folder, safe_mode=False, load_op_links=False, bundle_path=Path(folder),
                           bundle_name="dags-folder")
        for name in TASK_MODULES:
            importlib.import_module(name)
        from dags.cscore_platform.batch_store import warm_botocore_data

        warm_botocore_data()
    except Exception as exc:  # warming is an optimisation: the scheduler must start regardless
        log.warning("Task imports not preloaded (%s: %s); each task process imports its own", type(exc).__name__, exc)
        return
    log.info("Task imports preloaded for the workers: DAGs %s from %s (pid %d)", sorted(bag.dags), folder, os.getpid())


def sqlite_now_to_the_microsecond() -> None:
    """Compile SQLAlchemy's now() on SQLite as the UTC time to the microsecond, stored form ('YYYY-MM-DD
    HH:MM:SS.ffffff'; SQLite's clock gives milliseconds), not CURRENT_TIMESTAMP's whole seconds. Other databases'
    now() is unchanged; so is any process that does not call this (the scheduler's, through its executor, does)."""
    from sqlalchemy.ext.compiler import compiles
    from sqlalchemy.sql import functions

    @compiles(functions.now, "sqlite")
    def _now(element: Any, compiler: Any, **kw: Any) -> str:
        return "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"


class DeferSafeLocalExecutor(LocalExecutor):
    """LocalExecutor that never takes an earlier launch's result of a task instance key for a later one's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._launches: Counter[Any] = Counter()
        sqlite_now_to_the_microsecond()  # the scheduler's process, before its loop compiles a query

    def start(self) -> None:
        # Before the workers fork: each task process (a fork of a worker) then parses its DAG file warm. In a DAG
        # file's parse on a loaded 2-core host, imports were 0.3-0.6 CPU s and 4-21 s of wall time per task.
        warm_task_imports()
        super().start()

    def _process_workloads(self, workload_list: Sequence[Any]) -> None:
        for workload in workload_list:
            if isinstance(workload, workloads.ExecuteTask):
                self._launches[workload.key] += 1
        super()._process_workloads(workload_list)

    def _read_results(self) -> None:
        while not self.result_queue.empty():
            key, state, _exc = self.result_queue.get()
            if self._stale(key):
                log.info("Result %s of an earlier launch of %s (it deferred; its resumed attempt runs now): "
                         "not taken for the running attempt's", state, key)
                continue
            self.change_state(key, state)

    def _stale(self, key: Any) -> bool:
        """Count one finished launch of `key`; True when a later launch of the same key is still out."""
        launches = self._launches
        if key not in launches:
            return False
        launches[key] -= 1
        if launches[key] > 0:
            return True
        del launches[key]
        return False
