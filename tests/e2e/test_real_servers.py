"""One real batch on the production configuration, against this machine's (and CI's) real servers.

Switched by configuration only (the variables of infra/production/env.example):
- Airflow metadata on PostgreSQL (psycopg, sync and async URLs) in a fresh database this test creates and drops;
- CeleryExecutor with `airflow celery worker`, its broker on the real Redis (db 14, a queue of this run only),
  its results in that PostgreSQL database;
- both key brokers' stores on PostgreSQL, each in its own schema of that database (CSCORE_*_BROKER_DB_URL);
- the confidential workers' Celery transport on RabbitMQ, in a vhost of this run only.
Object storage stays moto and the TEE simulated. Then it shows each part was really used: Airflow's rows and
Celery's task results in PostgreSQL, the decision logs in the brokers' schemas, the shard queue in the vhost.

Needs PostgreSQL (127.0.0.1:5432, user postgres, trust), Redis (127.0.0.1:6379), RabbitMQ (127.0.0.1:5672,
guest) and `rabbitmqctl` (root) to make the vhost; it fails, saying which, when one is missing. ~3-5 min.
"""

from __future__ import annotations

import gc
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
import redis
from psycopg import sql

from cscore.demo import TENANT, owner_trust
from infra.local.stack import LocalStack
from sdk.party import Party
from sdk.results import fetch_results
from sdk.storage import ObjectStore
from tests.stacks import toy_batch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PG_ADMIN = os.environ.get("CSCORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CSCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
RABBIT = os.environ.get("CSCORE_TEST_RABBITMQ", "guest:guest@127.0.0.1:5672")
BROKER_SCHEMAS = {"owner": "owner_kb", "provider": "provider_kb"}


def _fail(what: str, exc: BaseException) -> None:
    pytest.fail(f"{what} is needed by the real-server end-to-end test (CI runs one): {exc}", pytrace=False)


@pytest.fixture(scope="module")
def pg_db() -> Iterator[str]:
    """A database of this run only: Airflow's tables in `public`, one schema per key broker; dropped after."""
    name = f"cscore_e2e_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _fail("PostgreSQL at 127.0.0.1:5432", exc)
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
            with psycopg.connect(url, autocommit=True) as conn:
                for schema in BROKER_SCHEMAS.values():
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            yield url
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _rabbitmqctl(*args: str) -> str:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        _fail("rabbitmqctl (to create this run's vhost)", FileNotFoundError("rabbitmqctl not on PATH"))
    assert ctl is not None
    return subprocess.run([ctl, "-q", *args], capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    name = f"cscore-e2e-{secrets.token_hex(4)}"
    try:
        _rabbitmqctl("add_vhost", name)
    except subprocess.CalledProcessError as exc:
        _fail("RabbitMQ (rabbitmqctl add_vhost)", RuntimeError(exc.stderr))
    try:
        _rabbitmqctl("set_permissions", "-p", name, RABBIT.split(":", 1)[0], ".*", ".*", ".*")
        yield name
    finally:
        _rabbitmqctl("delete_vhost", name)


@pytest.fixture(scope="module")
def airflow_queue() -> Iterator[str]:
    """Airflow's Celery queue of this run on the shared Redis db; its keys are deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        _fail("Redis at 127.0.0.1:6379", exc)
    queue = f"cscore-e2e-{secrets.token_hex(4)}"
    before = set(client.scan_iter())
    yield queue
    for key in client.scan_iter():  # this run's queue, and Celery's shared keys only if this run made them
        shared = key not in before and key.startswith((b"_kombu.", b"unacked"))
        if queue.encode() in key or shared:
            client.delete(key)


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, pg_db: str, vhost: str,
               airflow_queue: str) -> Iterator[LocalStack]:
    pg_async = pg_db.replace("postgresql://", "postgresql+psycopg://", 1)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSCORE_", "AIRFLOW"))}
    environ.update({
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_async,  # the _ASYNC twin is the stack's default
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{pg_async}",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": airflow_queue,
        "CSCORE_CELERY_BROKER_URL": f"amqp://{RABBIT}/{quote(vhost, safe='')}",
        **{f"CSCORE_{party.upper()}_BROKER_DB_URL": f"{pg_db}?options=-csearch_path%3D{schema}"
           for party, schema in BROKER_SCHEMAS.items()},
    })
    saved = dict(os.environ)
    stack = LocalStack(tmp_path_factory.mktemp("prod"), workers=1, airflow=True, environ=environ)
    stack.start()
    os.environ.update(stack.env)
    try:
        yield stack
    finally:
        gc.collect()  # Celery results' __del__ talks to the result backend: collect them while it runs
        stack.stop()
        os.environ.clear()
        os.environ.update(saved)


def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]  # literal queries of this module


def test_a_batch_runs_on_postgres_celery_redis_and_rabbitmq(production: LocalStack, pg_db: str, vhost: str,
                                                           airflow_queue: str) -> None:
    emails, batch, status = toy_batch(production.state_dir, "real-servers", 300, timeout=300)
    assert status["state"] == "succeeded", status.get("reason")
    anchors, policy = owner_trust(accept_simulated=True)
    results = fetch_results(TENANT, batch.batch_id, owner=Party.from_env("owner"), store=ObjectStore(),
                            anchors=anchors, policy=policy)
    assert sorted(results.table.column("message_id").to_pylist()) == sorted(e.message_id for e in emails)

    # Airflow's metadata is in PostgreSQL: this batch's run and its tasks, each queued on this run's Celery queue.
    deadline = time.monotonic() + 120  # the batch's status is written by the run's last task, before it ends
    while (runs := _rows(pg_db, "SELECT state FROM dag_run WHERE dag_id = 'cscore_batch'")) != [("success",)]:
        assert time.monotonic() < deadline and ("failed",) not in runs, runs
        time.sleep(1)
    queues = _rows(pg_db, "SELECT DISTINCT queue FROM task_instance WHERE dag_id = 'cscore_batch'")
    assert queues == [(airflow_queue,)]
    # The CeleryExecutor ran them: Celery's result backend (in the same database) has their results.
    # (each is stored when its Celery task returns, just after Airflow saw the task succeed: wait for every
    # successful task instance of the intake and batch runs; a deferred task's resumption is one more)
    tasks = _rows(pg_db, "SELECT count(*) FROM task_instance WHERE state = 'success'")[0][0]
    assert tasks >= 2, tasks
    deadline = time.monotonic() + 60
    while (done := _rows(pg_db, "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")[0][0]) < tasks:
        assert time.monotonic() < deadline, f"{done} Airflow tasks with a Celery result, expected at least {tasks}"
        time.sleep(1)
    airflow = str(Path(sys.executable).parent / "airflow")
    executor = subprocess.run([airflow, "config", "get-value", "core", "executor"], env=production.child_env(),
                              capture_output=True, text=True, check=True, timeout=120).stdout.split()[-1]
    assert executor == "CeleryExecutor"
    # Both key brokers kept their stores in their own schemas: keys, grants and decision logs.
    for party, schema in BROKER_SCHEMAS.items():
        granted = _rows(pg_db, f"SELECT count(*) FROM {schema}.decisions WHERE decision = 'allow'")[0][0]
        assert isinstance(granted, int) and granted > 0, (party, granted)
    assert _rows(pg_db, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' "
                        "AND table_name = 'decisions'") == [(0,)]  # nothing of theirs in Airflow's schema
    # The confidential workers' tasks went through RabbitMQ: the shard queue lives in this run's vhost.
    listed = _rabbitmqctl("list_queues", "-p", vhost, "name")
    assert "cscore.shards" in listed.split(), listed
