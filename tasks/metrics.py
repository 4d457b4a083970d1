"""Prometheus metrics of a confidential worker: tasks, shards, rows, durations, failures by reason.

Off unless ``CSCORE_WORKER_METRICS_PORT`` is set (``CSCORE_WORKER_METRICS_HOST``: the address to bind,
default ``0.0.0.0``, the VM's interfaces). Celery's prefork pool runs tasks in child processes, so the counts
use prometheus_client's multiprocess mode: every process writes its own memory-mapped files into a private
folder that the main process creates (mode 0700 inside the guest; never a folder the platform names), and
the main process serves their sum from an HTTP server started at ``worker_init``, before the pool forks.

The process serving them is the one that counts nothing itself: the pool's children write their files and
the main process sums them at each scrape.

- ``cscore_worker_tasks_total{task, outcome}``: ``ok``, ``reused`` (a receipt already existed), ``retried``
  or ``failed``;
- ``cscore_worker_task_failures_total{task, reason}``: reason = the refusal's exception type
  (``ShardSpecError``, ``KbsError``, ...), a name fixed in code;
- ``cscore_worker_rows_total{task}``: rows scored (shards scored here, not reused);
- ``cscore_worker_task_duration_seconds{task, outcome}`` and ``cscore_worker_shard_phase_seconds{phase}``
  (``keys``, ``read``, ``score``, ``write``, ``sign``, ``store``): histograms.

Labels are task, outcome, reason and phase names only: never a tenant, batch, key id, digest or message
(what the platform may see of a shard is in its result already: rows, timings, the refusal's type).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

PORT_ENV = "CSCORE_WORKER_METRICS_PORT"
HOST_ENV = "CSCORE_WORKER_METRICS_HOST"
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is first imported
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class _Metrics:
    """The worker's metric objects (created once per process tree, in the main process when serving)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Histogram

        kw = {"registry": registry}
        self.tasks = Counter("cscore_worker_tasks", "Tasks finished, by task and outcome", ["task", "outcome"], **kw)
        self.failures = Counter("cscore_worker_task_failures", "Failed or retried tasks, by task and the refusal's "
                                "exception type", ["task", "reason"], **kw)
        self.rows = Counter("cscore_worker_rows", "Rows scored, by task", ["task"], **kw)
        self.duration = Histogram("cscore_worker_task_duration_seconds", "Task run time, by task and outcome",
                                  ["task", "outcome"], buckets=DURATION_BUCKETS, **kw)
        self.phases = Histogram("cscore_worker_shard_phase_seconds", "Time per phase of scoring one shard",
                                ["phase"], buckets=DURATION_BUCKETS, **kw)


_metrics: _Metrics | None = None


def serve_from_environment(environ: Mapping[str, str] = os.environ) -> str | None:
    """Start the metrics endpoint when ``CSCORE_WORKER_METRICS_PORT`` is set; returns its URL (None: off).

    Call it in the worker's main process before the pool forks. Raises ValueError naming the variable for a
    port that is not 1..65535, RuntimeError when prometheus_client was imported before multiprocess mode
    could be chosen (the children's counts would be lost).
    """
    global _metrics
    raw = environ.get(PORT_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{PORT_ENV}: expected a TCP port 1..65535, got {raw!r}")
    if _MULTIPROC_ENV not in os.environ:
        folder = tempfile.mkdtemp(prefix="cscore-worker-metrics-")  # 0700, fresh
        os.environ[_MULTIPROC_ENV] = folder
        atexit.register(_remove_folder, folder, os.getpid())
    from prometheus_client import CollectorRegistry, start_http_server, values
    from prometheus_client.multiprocess import MultiProcessCollector

    # prometheus_client picks its value class when first imported, and Celery's CLI imports it before any app
    # code (Flower's command plugin): choose again now that the folder is set, before our metrics exist.
    values.ValueClass = values.get_value_class()
    if values.ValueClass is values.MutexValue:
        raise RuntimeError(f"{PORT_ENV}: prometheus_client did not switch to multiprocess mode")

    host = environ.get(HOST_ENV, "").strip() or "0.0.0.0"
    exported = CollectorRegistry()
    MultiProcessCollector(exported)
    start_http_server(int(raw), addr=host, registry=exported)
    _metrics = _Metrics(None)  # multiprocess mode: values live in the folder's files, not in a registry
    return f"http://{host}:{int(raw)}/metrics"


def _remove_folder(folder: str, creator: int) -> None:
    """At the main process's exit the counts go with it: every restart left a folder behind in /tmp."""
    if os.getpid() == creator:  # a pool child inherits the hook; the folder is not its to remove
        shutil.rmtree(folder, ignore_errors=True)


def _get() -> _Metrics:
    global _metrics
    if _metrics is None:  # metrics off: counted in a registry of their own that nobody serves
        from prometheus_client import CollectorRegistry

        _metrics = _Metrics(CollectorRegistry())
    return _metrics


def task_done(task: str, seconds: float, result: Any) -> None:
    """Count a task that returned: rows and phase times of a scored shard, `reused` when its receipt existed."""
    m = _get()
    reused = isinstance(result, dict) and result.get("reused") is True
    outcome = "reused" if reused else "ok"
    m.tasks.labels(task=task, outcome=outcome).inc()
    m.duration.labels(task=task, outcome=outcome).observe(seconds)
    if isinstance(result, dict) and not reused:
        if isinstance(result.get("rows"), int):
            m.rows.labels(task=task).inc(result["rows"])
        for phase, spent in (result.get("seconds") or {}).items():
            m.phases.labels(phase=str(phase)).observe(float(spent))


def task_failed(task: str, seconds: float, reason: str, *, retried: bool) -> None:
    """Count a task that raised; `reason` is the refusal's exception type name."""
    m = _get()
    outcome = "retried" if retried else "failed"
    m.tasks.labels(task=task, outcome=outcome).inc()
    m.failures.labels(task=task, reason=reason).inc()
    m.duration.labels(task=task, outcome=outcome).observe(seconds)


def process_exited(pid: int) -> None:
    """A pool process ended: drop its live-gauge files (multiprocess mode's rule; counters keep their counts)."""
    if _MULTIPROC_ENV in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
