"""Celery workers of the local stack, run against a stand-in tasks.celery_app, answer tasks sent by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery

from infra.local import procs
from infra.local.stack import LocalStack

pytestmark = pytest.mark.timeout(180)

STAND_IN_APP = '''
import os
from celery import Celery

app = Celery("cscore", broker=os.environ["CSCORE_CELERY_BROKER_URL"],
             backend=os.environ["CSCORE_CELERY_RESULT_BACKEND"])


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


def test_workers_start_answer_and_stop(tmp_path: Path, stand_in_repo: Path, clean_environ: dict[str, str]) -> None:
    environ = {**clean_environ, "CSCORE_S3_ENDPOINT": "http://127.0.0.1:9"}  # not contacted: no moto needed
    stack = LocalStack(tmp_path / "state", workers=2, airflow=False, brokers=False, sim_tee=False,
                       environ=environ, repo=stand_in_repo)
    with stack:
        assert {"celery-worker-1", "celery-worker-2"} <= set(stack.pids())
        client = Celery(broker=stack.env["CSCORE_CELERY_BROKER_URL"], backend=stack.env["CSCORE_CELERY_RESULT_BACKEND"])
        result = client.send_task("cscore.echo", args=[41]).get(timeout=30)
        assert result == {"x": 41, "s3": "http://127.0.0.1:9"}  # workers see the stack's variables
        started = set().union(*(procs.tree(pid) for pid in stack.pids().values()))
        assert len(started) >= 5  # redis, and each worker with its pool process
    assert not [p for p in started if procs.alive(p)]
