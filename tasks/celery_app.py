"""The Celery app of the confidential workers.

Tasks are addressed by stable names (`cscore.attest`, `cscore.score_shard`) so the platform can send
them without importing this code. Messages and results carry object keys and digests only.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery, signals

from enclave.startup import UnsafeStartup, refuse_unsafe_startup

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
    worker_hijack_root_logger=False,
)
