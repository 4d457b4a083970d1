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
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from airflow.executors import workloads
from airflow.executors.local_executor import LocalExecutor

log = logging.getLogger(__name__)


class DeferSafeLocalExecutor(LocalExecutor):
    """LocalExecutor that never takes an earlier launch's result of a task instance key for a later one's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._launches: Counter[Any] = Counter()

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
