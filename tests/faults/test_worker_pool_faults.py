"""The platform's shard fan-out (dags/cscore_platform/worker_pool.py) rides out a worker host that dies and a
Redis that restarts, on real processes: Redis on its socket, two Celery workers with the workers' settings.

The workers run a stand-in `cscore.score_shard` (no enclave): it takes a second, writes its shard's receipt
once (O_EXCL, as S3's If-None-Match) and logs every run, so rows lost and rows duplicated can be counted.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dags.cscore_platform import worker_pool
from infra.local import parts, procs
from infra.local.stack import LocalStack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

STAND_IN_APP = '''
import json, os, time
from pathlib import Path
from celery import Celery

app = Celery("cscore", broker=os.environ["CSCORE_CELERY_BROKER_URL"],
             backend=os.environ["CSCORE_CELERY_RESULT_BACKEND"])
app.conf.update({SETTINGS})


@app.task(name="cscore.score_shard", bind=True, acks_late=True)
def score_shard(self, spec, run_id=""):
    folder = Path(os.environ["RECEIPTS"]) / run_id  # one folder per test
    with open(folder / "started.log", "a") as log:
        log.write(f"{{spec['shard_index']}} {{self.request.hostname}}\\n")
    time.sleep(1.0)
    try:
        fd = os.open(folder / f"{{spec['shard_index']}}.receipt", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, self.request.hostname.encode())
        os.close(fd)
        reused = False
    except FileExistsError:
        reused = True
    with open(folder / "runs.log", "a") as log:
        log.write(f"{{spec['shard_index']}} {{self.request.hostname}} {{run_id}}\\n")
    return {{"shard_index": spec["shard_index"], "rows": spec["rows"], "worker": self.request.hostname,
            "reused": reused}}
'''
# The settings of tasks/celery_app.py that fault handling rests on (checked against it below).
SETTINGS = {"task_acks_late": True, "task_reject_on_worker_lost": True, "worker_prefetch_multiplier": 1,
            "task_track_started": True, "task_default_queue": "cscore.shards", "worker_direct": True,
            "broker_connection_retry_on_startup": True}
SHARDS = 12


@pytest.fixture(scope="module")
def pool_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("pool")
    repo = root / "repo"
    (repo / "tasks").mkdir(parents=True)
    (repo / "tasks" / "__init__.py").write_text("")
    (repo / "tasks" / "celery_app.py").write_text(STAND_IN_APP.format(SETTINGS=repr(SETTINGS)))
    (root / "receipts").mkdir()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSCORE_", "AIRFLOW"))}
    environ.update(CSCORE_S3_ENDPOINT="http://127.0.0.1:9", RECEIPTS=str(root / "receipts"))
    with LocalStack(root / "state", workers=2, airflow=False, brokers=False, sim_tee=False, environ=environ,
                    repo=repo, out=lambda _: None) as stack:
        yield stack
        # Celery results left for the garbage collector unsubscribe from Redis in __del__, retrying for ~20 s
        # each once Redis is gone: collect them while it still answers, so no later test hangs on them.
        gc.collect()


def test_the_stand_in_has_the_workers_fault_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCORE_CELERY_BROKER_URL", "memory://")
    monkeypatch.setenv("CSCORE_CELERY_RESULT_BACKEND", "cache+memory://")
    from tasks.celery_app import app

    assert {name: app.conf[name] for name in SETTINGS} == SETTINGS


class _Run:
    """run_shards in a thread, as the DAG's score step calls it; what it noted and returned."""

    def __init__(self, stack: LocalStack, monkeypatch: pytest.MonkeyPatch, tag: str) -> None:
        for name in ("CSCORE_CELERY_BROKER_URL", "CSCORE_CELERY_RESULT_BACKEND", "CSCORE_WORKER_POOL_SIZE"):
            monkeypatch.setenv(name, stack.env[name])
        self.receipts = Path(stack.environ["RECEIPTS"]) / tag
        self.receipts.mkdir()
        self.notes: list[str] = []
        self.outcomes: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.finished_at = 0.0
        self.shards = [{"shard_index": i, "rows": 400} for i in range(SHARDS)]
        self.thread = threading.Thread(target=self._run, args=(tag,))
        self.thread.start()

    def _run(self, tag: str) -> None:
        app = worker_pool.celery_client()
        try:
            self.outcomes = worker_pool.run_shards(app, self.shards, timeout=240, progress=lambda d, t: None,
                                                   note=self.notes.append, run_id=tag)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            app.close()

    def running_on(self, worker: str) -> bool:
        """Whether `worker` started a shard it has not finished (a kill then lands mid-shard)."""
        log = self.receipts / "started.log"
        started = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
        mine = [int(index) for index, host in started if host.startswith(worker)]
        return len(mine) > self.runs_by(worker)

    def runs_by(self, worker: str) -> int:
        log = self.receipts / "runs.log"
        return sum(1 for line in log.read_text().splitlines() if line.split()[1].startswith(worker)) \
            if log.exists() else 0

    def runs(self) -> list[int]:
        log = self.receipts / "runs.log"
        return [int(line.split()[0]) for line in log.read_text().splitlines()] if log.exists() else []

    def wait_until(self, ready: Any) -> None:
        deadline = time.monotonic() + 60
        while not ready():
            assert time.monotonic() < deadline and self.thread.is_alive(), self.error
            time.sleep(0.1)

    def join(self) -> None:
        self.thread.join(timeout=240)
        assert not self.thread.is_alive()
        assert self.error is None, self.error
        assert sorted(o["shard_index"] for o in self.outcomes) == list(range(SHARDS))  # none lost, none twice
        assert sum(o["rows"] for o in self.outcomes) == SHARDS * 400
        assert sorted(int(p.stem) for p in self.receipts.glob("*.receipt")) == list(range(SHARDS))


def test_a_worker_host_that_dies_mid_batch_leaves_its_shards_to_the_others(
        pool_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _Run(pool_stack, monkeypatch, "worker-dies")
    run.wait_until(lambda: len(run.runs()) >= 2 and run.running_on("cscore-worker-1@"))  # mid-shard
    victim = pool_stack.pids()["celery-worker-1"]
    host = procs.tree(victim)
    assert len(host) >= 2  # the worker's main process and its pool child
    procs.signal_all(host, signal.SIGKILL)  # the host dies: nothing acknowledges, nothing requeues
    killed_at = time.monotonic()
    run.join()
    print(f"\nworker killed: batch done {run.finished_at - killed_at:.1f} s later; "
          f"{len(run.runs()) - SHARDS} shard(s) run twice; notes: {run.notes}")
    assert any(n.startswith("worker cscore-worker-1@") and "sent again to the other workers" in n for n in run.notes)
    assert all(o["worker"].startswith("cscore-worker-2@") or not o["reused"] for o in run.outcomes)
    pool_stack.parts.pop("celery-worker-1").popen.wait(timeout=10)  # reap it; restart for the next test
    parts.spawn_workers(_only_worker(pool_stack, 1)).wait()


def _only_worker(stack: LocalStack, index: int) -> LocalStack:
    """Restart just worker <index>: spawn_workers starts workers 1..n, so n=index and the others kept."""
    keep = {n: p for n, p in stack.parts.items() if n.startswith("celery-worker-") and n != f"celery-worker-{index}"}
    stack.workers = index
    for name in keep:
        stack.parts.pop(name)
    stack.parts.update(keep)  # spawn_workers(index=1) only starts celery-worker-1
    return stack


def test_a_redis_restart_mid_batch_loses_no_shard(pool_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _Run(pool_stack, monkeypatch, "redis-restarts")
    run.wait_until(lambda: len(run.runs()) >= 3)
    redis = pool_stack.parts.pop("redis")
    procs.kill_tree(redis.pid, timeout=5)  # every queued and unacknowledged message goes with it
    redis.popen.wait(timeout=10)
    restarted_at = time.monotonic()
    parts.spawn_redis(pool_stack).wait()
    run.join()
    print(f"\nredis restarted: batch done {run.finished_at - restarted_at:.1f} s later; "
          f"{len(run.runs()) - SHARDS} shard(s) run twice; notes: {run.notes}")
    assert any(n.startswith("the Celery transport") and "sent again" in n for n in run.notes)
    outcomes_by_shard = {o["shard_index"]: o for o in run.outcomes}
    assert len(outcomes_by_shard) == SHARDS
    assert json.dumps(run.outcomes)  # plain JSON, as XCom needs


@pytest.fixture()
def lone_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A Redis of its own (the module's stack keeps running): stopped by the test that uses it."""
    folder = tmp_path_factory.mktemp("redis")
    sock = folder / "r.sock"
    server = _redis_on(sock)
    try:
        yield server, sock
    finally:
        server.kill()
        server.wait(timeout=10)


def _redis_on(sock: Path) -> subprocess.Popen[bytes]:
    """A redis-server on the unix socket `sock`, answering PING."""
    server = subprocess.Popen([parts.redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "",
                               "--appendonly", "no", "--dir", str(sock.parent)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not (sock.exists() and _pongs(sock)):
        assert time.monotonic() < deadline and server.poll() is None, "redis-server did not start"
        time.sleep(0.05)
    return server


def _pongs(sock: Path) -> bool:
    try:
        return parts.redis_ping(sock)
    except OSError:
        return False


def test_a_pending_result_against_a_stopped_redis_gives_up_after_a_few_tries(
        lone_redis: tuple[subprocess.Popen[bytes], Path], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    server, sock = lone_redis
    url = f"redis+socket://{sock}"
    monkeypatch.setenv("CSCORE_CELERY_BROKER_URL", url)
    monkeypatch.setenv("CSCORE_CELERY_RESULT_BACKEND", url)
    unraisable: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda hook: unraisable.append(hook.exc_value))
    caplog.set_level(logging.ERROR, logger="celery.backends.redis")
    app = worker_pool.celery_client()
    pending = app.send_task("cscore.no-such-task", queue="cscore.nobody")  # subscribed, never answered
    assert not pending.ready()
    server.terminate()
    server.wait(timeout=10)

    del pending  # what hung a suite: the result's __del__ unsubscribes, reconnecting to a Redis that is gone
    gc.collect()
    assert [str(e).strip() for e in unraisable] == [
        "Retry limit exceeded while trying to reconnect to the Celery result store\nbackend. The Celery "
        "application must be restarted."]
    with pytest.raises(RuntimeError, match="Retry limit exceeded"):  # a new shard: the same few tries
        app.send_task("cscore.no-such-task", queue="cscore.nobody")
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Connection to Redis lost")]
    # Celery's default is "Retry (0/20)" ... "(19/20)" per step, ~1 s apart
    assert retries == [f"Connection to Redis lost: Retry ({i}/3) {when}." for i, when in
                       zip(range(3), ["now", "now", "in 1.00 second"], strict=True)] * 2, retries
    app.close()


def test_a_stopped_redis_is_an_outage_ridden_out_then_named(
        lone_redis: tuple[subprocess.Popen[bytes], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The other side of tests/platform/test_worker_watch.py (a bug surfaces as itself): the transport's real
    errors, from a Redis that stopped, are an outage: ridden out, shards sent again once it is back, and named
    when it stays down."""
    server, sock = lone_redis
    url = f"redis+socket://{sock}"
    monkeypatch.setattr(sys, "unraisablehook", lambda hook: None)  # results' __del__ against the stopped Redis
    app = worker_pool.celery_client(url, url)
    notes: list[str] = []
    shards = [{"shard_index": i, "rows": 1} for i in range(3)]
    watch = worker_pool.ShardWatch(app, shards, run_id="r", timeout=600, note=notes.append)
    assert watch.step() is None and watch.down_since is None and watch.epoch is not None
    monkeypatch.setattr(worker_pool, "CHECK_EVERY_S", 0.0)  # every look asks the transport
    redis.Redis(unix_socket_path=str(sock)).client_kill_filter(_type="normal")  # every connection dropped
    for _ in range(3):
        assert watch.step() is None
    assert [len(a) for a in watch.task_ids()] == [1, 1, 1] and notes == []  # same server run: nothing lost
    server.terminate()
    server.wait(timeout=10)
    assert watch.step() is None  # connection refused: not raised, counted as the transport being down
    assert watch.down_since is not None and notes == []
    again = _redis_on(sock)  # back, empty: the queued shard messages died with the first one
    try:
        for _ in range(3):  # the first look after may still meet a stale connection of the old server
            assert watch.step() is None
        assert len(notes) == 1 and "restarted or dropped its connections" in notes[0], notes
        assert notes[0].endswith("3 unfinished shard(s) sent again")
        assert [len(a) for a in watch.task_ids()] == [2, 2, 2] and watch.down_since is None
        queued = redis.Redis(unix_socket_path=str(sock)).llen(worker_pool.SHARD_QUEUE)
        assert queued == 3  # each shard's message is on the new server's queue
    finally:
        again.terminate()
        again.wait(timeout=10)
    assert watch.step() is None  # down again
    monkeypatch.setattr(worker_pool, "TRANSPORT_DOWN_S", -1.0)  # ... for longer than the loop waits
    with pytest.raises(worker_pool.WorkerPoolError, match=r"the Celery transport redis\+socket://.* did not answer"
                       r" for \d+ s \(.*\); 3 of 3 shards unfinished; bring it back"):
        watch.step()
