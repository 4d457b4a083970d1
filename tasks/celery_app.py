"""The Celery app of the confidential workers.

Tasks are addressed by stable names (`cscore.attest`, `cscore.score_shard`) so the platform can send
them without importing this code. Messages and results carry object keys and digests only.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import Celery, current_task, signals

from enclave.startup import UnsafeStartup, refuse_unsafe_startup
from tasks import metrics
from wire.jsonlog import JsonFormatter, env_log_format

SHARD_QUEUE = "cscore.shards"


def _transport_url(variable: str) -> str:
    url = os.environ.get(variable)
    if not url:
        raise RuntimeError(
            f"{variable} is not set: point it at the Celery transport (redis://..., amqp://..., "
            "redis+socket://...), or start the local stack with `cscore stack start`"
        )
    return url


@signals.worker_init.connect
def _refuse_unsafe_startup(**_: Any) -> None:
    """Before the worker consumes anything: a start-up the measurement does not cover ends the process.

    SystemExit, not an exception: Celery logs and swallows exceptions raised by signal receivers."""
    try:
        refuse_unsafe_startup(os.environ)
    except UnsafeStartup as refused:
        print(f"cscore worker: {refused}", file=sys.stderr, flush=True)
        raise SystemExit(78) from None  # EX_CONFIG


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    """In the main process, before the pool forks: the Prometheus endpoint (if CSCORE_WORKER_METRICS_PORT)."""
    try:
        url = metrics.serve_from_environment(os.environ)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"cscore worker: metrics: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(78) from None  # EX_CONFIG: a worker the operator cannot see should not run quietly
    if url:
        logging.getLogger(__name__).info("metrics at %s", url, extra={"metrics_url": url})


@signals.worker_process_shutdown.connect
def _pool_process_exited(pid: int | None = None, **_: Any) -> None:
    metrics.process_exited(pid or os.getpid())


@signals.celeryd_init.connect
def _json_logs_from_the_start(instance: Any = None, **_: Any) -> None:
    """With JSON logs, from the worker's first line: no start-up banner, warnings as log records, and the root
    handler in place before Celery's own (which then leaves a configured root alone)."""
    if env_log_format() != "json":
        return
    if instance is not None:
        instance.quiet = True
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TaskJsonFormatter("worker"))
    logging.getLogger().addHandler(handler)
    logging.captureWarnings(True)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_format(logger: logging.Logger | None = None, **_: Any) -> None:
    """CSCORE_LOG_FORMAT=json: Celery's handlers (root and task logger) write JSON lines (wire.jsonlog)."""
    if env_log_format() != "json" or logger is None:
        return
    for handler in logger.handlers:
        handler.setFormatter(TaskJsonFormatter("worker"))


class TaskJsonFormatter(JsonFormatter):
    """JSON lines with the running task's name and id (Celery's ids; they name no tenant or batch)."""

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        doc = super().fields(record)
        task = current_task
        if task is not None and getattr(task, "request", None) is not None and task.request.id:
            doc.setdefault("task_name", task.name)
            doc.setdefault("task_id", task.request.id)
        return doc


app = Celery(
    "cscore",
    broker=_transport_url("CSCORE_CELERY_BROKER_URL"),
    backend=_transport_url("CSCORE_CELERY_RESULT_BACKEND"),
    include=["tasks.worker_tasks"],
)
app.conf.update(
    task_acks_late=True,  # a worker that dies mid-shard leaves the message for another worker
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_track_started=True,  # the platform sees which worker runs a shard, and re-sends it if that worker dies
    task_default_queue=SHARD_QUEUE,
    worker_direct=True,  # each worker also listens on its own queue, so each can be asked to attest
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=24 * 3600,
    broker_connection_retry_on_startup=True,
    # A shard's result that cannot be stored while the transport restarts is stored once it is back (backoff to
    # 10 s, ~1.5 min in all), not turned into the shard's failure; the platform re-sends what is lost anyway.
    result_backend_always_retry=True,
    result_backend_max_retries=12,
    worker_hijack_root_logger=False,
)
