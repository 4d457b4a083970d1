"""The confidential worker pool as the platform reaches it: Celery tasks sent by name."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from celery import Celery
from celery.exceptions import BackendError
from celery.result import AsyncResult
from celery.utils.nodenames import worker_direct

log = logging.getLogger(__name__)

SHARD_QUEUE = "cscore.shards"
# disable_sync_subtasks=False on every result.get(): under Airflow's CeleryExecutor this code runs inside an
# Airflow Celery worker, where Celery refuses result.get() ("never call result.get() within a task") so a worker
# never waits on its own pool. These results come from the cscore workers (another app, another transport).
ATTEST_TASK = "cscore.attest"
SCORE_TASK = "cscore.score_shard"


class WorkerPoolError(RuntimeError):
    """The pool could not do what was asked; the message says what to do next."""


def celery_client(broker: str | None = None, backend: str | None = None) -> Celery:
    """A Celery client (no worker code imported) on the given transport; by default the one the environment
    names (tests and tools outside Airflow; DAGs get theirs from the `cscore_workers` connection)."""
    broker = broker or os.environ.get("CSCORE_CELERY_BROKER_URL")
    backend = backend or os.environ.get("CSCORE_CELERY_RESULT_BACKEND")
    if not broker or not backend:
        raise WorkerPoolError(
            "CSCORE_CELERY_BROKER_URL and CSCORE_CELERY_RESULT_BACKEND must be set for the platform "
            "to reach the workers"
        )
    app = Celery("cscore-platform", broker=broker, backend=backend)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"], **CLIENT_RETRY)
    return app


def results_reach_only_the_sender(app: Celery) -> bool:
    """True for Celery's `rpc://` result backend (the default beside RabbitMQ): results come back as messages to
    the process that sent the tasks, so no other process (a triggerer) can ever collect them."""
    return str(app.conf.result_backend or "").split("://", 1)[0].lower() == "rpc"


# Celery's defaults retry a lost Redis 20 times, ~1 s apart, for every pending result (each send and each
# result's __del__): ~20 s a step, which hung a test suite once. The client gives up after a few tries
# instead; run_shards is the outer loop that decides whether a transport outage fails the batch.
RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CLIENT_RETRY: dict[str, Any] = {
    "result_backend_transport_options": {"retry_policy": RETRY_POLICY},  # Redis result backend's reconnects
    "redis_socket_connect_timeout": 5.0,
    "redis_socket_timeout": 15.0,  # a hung (not stopped) Redis: 120 s by default
    "result_backend_always_retry": False,
    "broker_connection_timeout": 5.0,
    "broker_connection_retry": False,
    "broker_connection_max_retries": 3,
    # kombu's ensure_connection for the client's producer and control channel (default: retry without end)
    "broker_transport_options": {**RETRY_POLICY, "socket_connect_timeout": 5.0, "socket_timeout": 15.0},
    "task_publish_retry_policy": RETRY_POLICY,
}


def live_workers(app: Celery, timeout: float = 3.0) -> list[str]:
    """Names of the workers that answer a ping. A ping waits its whole timeout unless told how many
    replies to expect: `CSCORE_WORKER_POOL_SIZE` (the pool's configured size) lets it stop early."""
    expected = int(os.environ.get("CSCORE_WORKER_POOL_SIZE") or 0) or None
    replies = app.control.ping(timeout=timeout if expected else 1.0, limit=expected) or []
    return sorted(name for reply in replies for name in reply)


class Ping:
    """A ping of the pool sent now, in a thread, and read later (`answered`): a watch's first look then waits for no
    reply (0.3-0.5 s of a small batch's path here). Its error, a transport's included, is raised where it is read."""

    def __init__(self, app: Celery, timeout: float = 2.0) -> None:
        self._names: list[str] = []
        self._error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(app, timeout), name="cscore-pool-ping", daemon=True).start()

    def _run(self, app: Celery, timeout: float) -> None:
        try:
            self._names = live_workers(app, timeout=timeout)
        except BaseException as exc:  # handed to the reader, who tells a transport outage from a bug
            self._error = exc
        finally:
            self._done.set()

    def ready(self) -> bool:
        return self._done.is_set()

    def answered(self) -> list[str]:
        """The workers that answered (waiting for the ping if need be); raises what the ping raised."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._names


def attest_all(app: Celery, broker_names: list[str], timeout: float = 120.0, *,
               batch_id: str = "") -> list[dict[str, Any]]:
    """Ask every live worker to attest to the brokers for `batch_id` (the brokers log it); returns each worker's
    verdicts."""
    workers = live_workers(app)
    if not workers:
        raise WorkerPoolError("no confidential worker answered a ping: start workers, then retry the batch")
    pending = {w: app.send_task(ATTEST_TASK, args=[broker_names, batch_id], queue=worker_direct(w)) for w in workers}
    verdicts = []
    for worker, result in pending.items():
        try:
            verdicts.append(result.get(timeout=timeout, disable_sync_subtasks=False))
        except Exception as exc:  # the worker's own error text says which check refused it
            raise WorkerPoolError(f"worker {worker} failed attestation: {exc}") from exc
    return verdicts


# A worker that answers no ping for this long is taken for lost, and the shards it had started are sent
# again (receipts are written once, so a second attempt is safe: it reports the first one's receipt).
WORKER_SILENT_S = 20.0
TRANSPORT_DOWN_S = 60.0  # the Celery transport unreachable this long fails the batch with the reason
NO_WORKER_S = 60.0  # no worker at all answering this long fails the batch
CHECK_EVERY_S = 5.0
TRANSPORT_BLIP_S = 5.0  # the transport's server back after this long unreachable (nothing lost) is noted
TRANSPORT_RESENDS = 3  # a shard that failed on the worker's transport this often more fails the batch


class _Shards:
    """Every attempt of every shard; an outcome is the first successful attempt's."""

    def __init__(self, app: Celery, shards: list[dict[str, Any]], run_id: str,
                 sent: list[list[str]] | None = None, done: list[dict[str, Any] | None] | None = None) -> None:
        self.app, self.shards, self.run_id = app, shards, run_id
        # What the sender already collected: a transport restart since then took those results with it.
        self.outcomes: dict[int, dict[str, Any]] = {i: o for i, o in enumerate(done or []) if o is not None}
        self.transport_resends: dict[int, int] = {}
        if sent is not None:  # adopted: the attempts another process sent (a trigger taking over the wait)
            self.attempts = [[AsyncResult(task_id, app=app) for task_id in ids] for ids in sent]
            return
        self.attempts = [[] for _ in shards]
        for index in range(len(shards)):
            self.send(index)

    def send(self, index: int) -> None:
        # run_id lets a worker skip a leftover once this run no longer holds the batch
        self.attempts[index].append(self.app.send_task(SCORE_TASK, args=[self.shards[index]],
                                                       kwargs={"run_id": self.run_id}, queue=SHARD_QUEUE))

    def task_ids(self) -> list[list[str]]:
        """Celery task ids of every attempt, per shard: what a waiter in another process adopts."""
        return [[r.id for r in attempts] for attempts in self.attempts]

    def unfinished(self) -> list[int]:
        return [i for i in range(len(self.shards)) if i not in self.outcomes]

    def collect(self) -> list[str]:
        """Record finished attempts; raise WorkerPoolError (after revoking the rest) on a failed one. An attempt
        that failed on the worker's own transport error (its result could not be stored while the transport was
        down) is sent again, up to TRANSPORT_RESENDS times a shard; returns a sentence per shard sent again."""
        said: list[str] = []
        for index in self.unfinished():
            for result in list(self.attempts[index]):
                if not result.ready():
                    continue
                if result.successful():
                    self.outcomes[index] = result.get(disable_sync_subtasks=False)
                    break
                error = result.result
                if self._resend_after_transport_error(index, result, error):
                    said.append(f"shard {index} failed on the worker's transport ({type(error).__name__}: {error}); "
                                "sent again")
                    continue
                self.revoke()
                raise WorkerPoolError(f"shard {index} failed on the worker: {error}")
        return said

    def _resend_after_transport_error(self, index: int, result: AsyncResult, error: Any) -> bool:
        """Drop a failed attempt and send the shard again if it failed on the transport (bounded)."""
        if not isinstance(error, BaseException) or not is_transport_error(error):
            return False
        self.transport_resends[index] = self.transport_resends.get(index, 0) + 1
        if self.transport_resends[index] > TRANSPORT_RESENDS:
            return False
        self.attempts[index].remove(result)
        self.send(index)
        return True

    def revoke(self) -> None:
        # Stop the rest: a resubmission must not race leftovers of this attempt (workers also skip them
        # once the batch's status names another run or state, see tasks.worker_tasks).
        self.app.control.revoke([r.id for i in self.unfinished() for r in self.attempts[i]])

    def starters(self) -> set[str]:
        """Workers whose attempt of an unfinished shard is running now (by the hostname they reported)."""
        found = set()
        for index in self.unfinished():
            if host := _started_by(self.attempts[index][-1]):
                found.add(host)
        return found

    def waiting(self) -> list[int]:
        """Unfinished shards whose latest attempt no worker has started (queued, or reserved by one)."""
        return [i for i in self.unfinished() if self.attempts[i][-1].state == "PENDING"]

    def started_on(self, worker: str) -> list[int]:
        """Unfinished shards whose latest attempt was started by `worker`."""
        found = []
        for index in self.unfinished():
            if _started_by(self.attempts[index][-1]) == worker:
                found.append(index)
        return found


def _started_by(result: AsyncResult) -> str:
    """The hostname a running attempt reported, or "". Its state and info are fetched apart: an attempt that
    ends in between has its outcome (a refusal, a dict of results) as info, which names no hostname."""
    if result.state != "STARTED":
        return ""
    info = result.info
    return str(info.get("hostname") or "") if isinstance(info, dict) and result.state == "STARTED" else ""


# What an unreachable or restarting Celery transport raises: sockets, Redis and AMQP connections, and kombu's and
# Celery's wrappers of them. Anything else (TypeError, KeyError, ...) is a bug and fails the task with its traceback.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError,
    kombu.exceptions.OperationalError, kombu.exceptions.ConnectionError, kombu.exceptions.ChannelError,
    amqp.exceptions.ConnectionError, amqp.exceptions.RecoverableChannelError, BackendError)


def is_transport_error(exc: BaseException) -> bool:
    """Whether `exc` is one of TRANSPORT_ERRORS or was raised from one (`raise ... from`): Celery's result
    consumer raises a plain RuntimeError from the connection error once its reconnect retries are spent."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, TRANSPORT_ERRORS):
            return True
        cause = cause.__cause__
    return False


def transport_epoch(app: Celery) -> str | None:
    """An id that changes when the Redis server behind the result backend restarts (its run_id); None when
    the transport cannot tell (then only its errors reveal a restart)."""
    client = getattr(app.backend, "client", None)
    if client is None or not hasattr(client, "info"):
        return None
    return str(client.info("server").get("run_id"))


def run_shards(
    app: Celery,
    shards: list[dict[str, Any]],
    *,
    timeout: float,
    progress: Callable[[int, int], None],
    note: Callable[[str], None] = lambda _: None,
    run_id: str = "",
) -> list[dict[str, Any]]:
    """Send every shard to the pool and wait for all; raises WorkerPoolError on the first failed shard.

    Faults it rides out, each told to `note` in a sentence: a worker that stops answering pings for
    WORKER_SILENT_S (its started shards are sent again), a Celery transport that restarted (every unfinished
    shard is sent again: queued messages died with it). It fails with the reason when the transport stays
    unreachable TRANSPORT_DOWN_S, when no worker answers for NO_WORKER_S, or after `timeout` s. Only the
    transport's own errors (TRANSPORT_ERRORS) count as an outage: any other error, from this code or from
    `progress` and `note`, propagates as it is.
    """
    watch = ShardWatch(app, shards, run_id=run_id, timeout=timeout, progress=progress, note=note)
    while (outcomes := watch.step()) is None:
        time.sleep(0.2)
    return outcomes


class ShardWatch:
    """One batch's shards on the pool, watched step by step: `step()` collects what finished, rides out the
    faults `run_shards` describes, and returns the outcomes once every shard is done (None until then).

    `sent` (Celery task ids per shard, from `task_ids()`) adopts shards another process sent: a deferrable
    operator sends, its trigger watches. `started` is when the batch's clock started (time.time()), so a
    watcher that takes over keeps the original deadline, and `done` (from `done()`) the outcomes the sender had
    collected. `first_ping`, a `Ping` sent before the shards, is the first look's: steps before it answered only
    collect (without one, the first step pings and waits)."""

    def __init__(self, app: Celery, shards: list[dict[str, Any]], *, run_id: str = "", timeout: float,
                 progress: Callable[[int, int], None] = lambda _d, _t: None,
                 note: Callable[[str], None] = lambda _: None, sent: list[list[str]] | None = None,
                 started: float | None = None, first_ping: Ping | None = None,
                 done: list[dict[str, Any] | None] | None = None) -> None:
        self.app, self.shards, self.timeout, self.progress, self.note = app, shards, timeout, progress, note
        self.deadline = time.monotonic() + timeout - (time.time() - started if started is not None else 0.0)
        self.pool = _Shards(app, shards, run_id, sent, done)
        self.last_seen: dict[str, float] = {}
        # None: ping at once, so every worker is known before one can die unseen (its shards are re-sent)
        self.last_check: float | None = None
        self.down_since: float | None = None
        self.epoch: str | None = None
        try:
            self.epoch = transport_epoch(app)
        except TRANSPORT_ERRORS:  # down as the watch starts (a trigger adopting shards): sent again once back
            self.down_since = time.monotonic()
        self.any_seen = time.monotonic()
        self.done_before = -1
        self.first_ping = first_ping

    def task_ids(self) -> list[list[str]]:
        return self.pool.task_ids()

    def done(self) -> list[dict[str, Any] | None]:
        """Each shard's outcome collected so far (None: unfinished): what a waiter in another process takes over,
        since the transport may lose a finished shard's result (a Redis restart) before that waiter reads it."""
        return [self.pool.outcomes.get(i) for i in range(len(self.shards))]

    def step(self) -> list[dict[str, Any]] | None:
        """One look; the outcomes in shard order once all are done. Raises WorkerPoolError with the reason; any
        other error (a bug, or a failing `note`) propagates as it is, never taken for a transport outage."""
        now, pool, app = time.monotonic(), self.pool, self.app
        said: list[str] = []  # told to `note` after the transport's calls: its own errors are never the transport's
        try:
            said.extend(pool.collect())
            ping, self.first_ping = self.first_ping, None
            if ping is not None and not ping.ready() and self.down_since is None:
                self.first_ping = ping  # its answer is read by a later step: this one only collects
            elif self.down_since is not None or (self.last_check is None or now - self.last_check >= CHECK_EVERY_S):
                new_epoch = transport_epoch(app)
                down = now - self.down_since if self.down_since is not None else None
                # A new server run lost its queued messages; the same run kept them (a dropped connection). A
                # transport that cannot tell (epoch None) is taken to have lost them.
                if new_epoch != self.epoch or (down is not None and new_epoch is None):
                    lost = pool.unfinished()
                    how = f"down for {down:.0f} s" if down is not None else "new server run"
                    said.append(f"the Celery transport {_where(app)} restarted or dropped its connections ({how}); "
                                f"{len(lost)} unfinished shard(s) sent again")
                    for index in lost:
                        pool.send(index)
                elif down is not None and down >= TRANSPORT_BLIP_S:
                    said.append(f"the Celery transport {_where(app)} did not answer for {down:.0f} s, then answered "
                                "as the same server run (its messages kept): nothing sent again")
                self.epoch, self.down_since = new_epoch, None
                self.last_check = now
                answered = ping.answered() if ping is not None and ping.ready() else None
                self.any_seen = _check_workers(app, pool, self.last_seen, self.any_seen, now, said.append, answered)
        except WorkerPoolError:
            raise
        except Exception as exc:
            if not is_transport_error(exc):
                raise  # a bug in our code (or a callback): the task fails with its own traceback
            self.down_since = self.down_since or now
            if now - self.down_since > TRANSPORT_DOWN_S:
                raise WorkerPoolError(
                    f"the Celery transport {_where(app)} did not answer for {now - self.down_since:.0f} s "
                    f"({type(exc).__name__}: {exc}); {len(pool.unfinished())} of {len(self.shards)} shards "
                    "unfinished; bring it back, then resubmit the batch (finished shards are reused)") from exc
        finally:
            for sentence in said:
                self.note(sentence)
        done = len(pool.outcomes)
        if done != self.done_before:
            self.progress(done, len(self.shards))
            self.done_before = done
        if done == len(self.shards):
            return [pool.outcomes[i] for i in range(len(self.shards))]
        if now > self.deadline:
            pool.revoke()
            raise WorkerPoolError(f"{len(self.shards) - done} of {len(self.shards)} shards unfinished after "
                                  f"{self.timeout:.0f} s")
        return None


def _check_workers(app: Celery, pool: _Shards, last_seen: dict[str, float], any_seen: float, now: float,
                   note: Callable[[str], None], answered: list[str] | None = None) -> float:
    """Ping the pool (or take `answered`, an earlier ping's replies); re-send the shards of workers silent for
    WORKER_SILENT_S; returns when any answered.

    A worker is watched from its first ping or from the first shard it is seen running, whichever comes first
    (one that dies before it ever answered a ping is missed otherwise). A lost worker is handled once: its
    started shards, and every shard no worker has started yet (it may hold them reserved, and the transport
    gives reserved messages back only after its visibility timeout), are sent again; receipts make a second
    attempt of a finished shard report the first one's."""
    for worker in live_workers(app, timeout=2.0) if answered is None else answered:
        last_seen[worker] = now
        any_seen = now
    for worker in pool.starters():
        last_seen.setdefault(worker, now)
    for worker, seen in list(last_seen.items()):
        if now - seen < WORKER_SILENT_S:
            continue
        del last_seen[worker]  # handled once; a worker that answers again is watched anew
        lost = pool.started_on(worker)
        waiting = [i for i in pool.waiting() if i not in lost]
        if lost or waiting:
            note(f"worker {worker} answered no ping for {now - seen:.0f} s; its shard(s) "
                 f"{', '.join(map(str, lost)) or 'none'} sent again to the other workers, and the "
                 f"{len(waiting)} shard(s) not yet started with them")
            for index in lost + waiting:
                pool.send(index)
    if now - any_seen > NO_WORKER_S:
        pool.revoke()
        raise WorkerPoolError(f"no confidential worker answered a ping for {now - any_seen:.0f} s; "
                              f"{len(pool.unfinished())} shards unfinished; start workers, then resubmit the batch")
    return any_seen


def _where(app: Celery) -> str:
    """The transport's URL without a password."""
    return str(app.connection_for_write().as_uri())
