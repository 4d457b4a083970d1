"""Who the platform's wait loop takes for lost, which shards it sends again, and which errors it takes for a transport
outage (none but the transport's own: a bug surfaces as itself). No transport process needed."""

from __future__ import annotations

import threading
from typing import Any

import kombu.exceptions
import pytest
import redis.exceptions
from celery.exceptions import BackendGetMetaError

from dags.cscore_platform import worker_pool


class _Pool:
    """The part of worker_pool._Shards that _check_workers uses: shard 0 running on `runner`, 1 and 2 queued."""

    def __init__(self, runner: str) -> None:
        self.runner, self.sent = runner, []  # type: ignore[var-annotated]

    def starters(self) -> set[str]:
        return {self.runner}

    def started_on(self, worker: str) -> list[int]:
        return [0] if worker == self.runner and 0 not in self.sent else []

    def waiting(self) -> list[int]:
        return [1, 2]

    def unfinished(self) -> list[int]:
        return [0, 1, 2]

    def send(self, index: int) -> None:
        self.sent.append(index)

    def revoke(self) -> None:
        pass


def _check(pool: _Pool, seen: dict[str, float], now: float, notes: list[str]) -> float:
    return worker_pool._check_workers(None, pool, seen, 0.0, now, notes.append)  # type: ignore[arg-type]


def test_a_worker_that_never_answered_a_ping_is_missed_from_the_shard_it_started(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_pool, "live_workers", lambda app, timeout: ["w2"])  # w1 died before any ping
    pool, seen, notes = _Pool("w1"), {}, []  # type: ignore[var-annotated]
    _check(pool, seen, 1.0, notes)
    assert seen == {"w2": 1.0, "w1": 1.0} and pool.sent == []  # watched from the shard it runs
    _check(pool, seen, 1.0 + worker_pool.WORKER_SILENT_S + 1, notes)
    assert sorted(pool.sent) == [0, 1, 2]  # its started shard, and those it may hold reserved
    assert notes and notes[0].startswith("worker w1 answered no ping") and "not yet started" in notes[0]


def test_a_lost_worker_is_handled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_pool, "live_workers", lambda app, timeout: ["w2"])
    pool, notes = _Pool("w1"), []  # type: ignore[var-annotated]
    seen: dict[str, Any] = {"w1": 0.0}
    later = worker_pool.WORKER_SILENT_S + 1
    _check(pool, seen, later, notes)
    pool.runner = "w2"  # its shard now runs elsewhere
    _check(pool, seen, later + 5, notes)
    _check(pool, seen, later + 10, notes)
    assert sorted(pool.sent) == [0, 1, 2] and len(notes) == 1 and "w1" not in seen


def _memory_watch(monkeypatch: pytest.MonkeyPatch, **callbacks: Any) -> worker_pool.ShardWatch:
    """A watch over two shards sent on Celery's in-memory transport (nobody runs them); w1 answers pings."""
    monkeypatch.setattr(worker_pool, "live_workers", lambda app, timeout=3.0: ["w1"])
    app = worker_pool.celery_client("memory://", "cache+memory://")
    return worker_pool.ShardWatch(app, [{"shard_index": 0}, {"shard_index": 1}], run_id="r", timeout=600,
                                  **callbacks)


def test_a_bug_in_the_wait_loop_surfaces_as_itself_not_as_a_transport_outage(
        monkeypatch: pytest.MonkeyPatch) -> None:
    watch = _memory_watch(monkeypatch)
    assert watch.step() is None and watch.down_since is None  # a quiet look

    def buggy(app: Any, timeout: float = 3.0) -> list[str]:
        raise TypeError("live_workers() got an unexpected keyword argument")

    monkeypatch.setattr(worker_pool, "live_workers", buggy)
    monkeypatch.setattr(worker_pool, "CHECK_EVERY_S", 0.0)  # the next look pings
    with pytest.raises(TypeError, match="unexpected keyword"):
        watch.step()
    assert watch.down_since is None  # not counted as the transport being down


def test_a_note_that_raises_fails_the_wait_with_its_own_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The bug this guards: the score step's note raised TypeError (structlog's `event`), which the wait loop
    # took for a Redis outage and failed the batch 60 s later as "the Celery transport did not answer".
    def note(sentence: str) -> None:
        raise TypeError("meth() got multiple values for argument 'event'")

    watch = _memory_watch(monkeypatch, note=note)
    monkeypatch.setattr(worker_pool, "transport_epoch", lambda app: "a new server run")  # a note is due
    monkeypatch.setattr(worker_pool, "CHECK_EVERY_S", 0.0)
    with pytest.raises(TypeError, match="multiple values for argument 'event'"):
        watch.step()
    assert watch.down_since is None


@pytest.mark.parametrize("error", [
    OSError(111, "Connection refused"),
    redis.exceptions.ConnectionError("Error 111 connecting"),
    kombu.exceptions.OperationalError("Error 111 connecting"),
    BackendGetMetaError("lost", "t", "STARTED"),
])
def test_the_transports_own_errors_are_outages_and_only_they(error: Exception) -> None:
    assert worker_pool.is_transport_error(error)
    wrapped = RuntimeError("Retry limit exceeded while trying to reconnect to the Celery result store backend")
    wrapped.__cause__ = error  # Celery's result consumer raises this `from` the connection error
    assert worker_pool.is_transport_error(wrapped)
    in_handler = TypeError("a bug in an except clause")
    in_handler.__context__ = error  # raised while handling it, not from it: still a bug
    assert not worker_pool.is_transport_error(in_handler)
    for bug in (TypeError("x"), KeyError("hostname"), AttributeError("x"), ValueError("x"), RuntimeError("x")):
        assert not worker_pool.is_transport_error(bug)


def test_an_attempt_that_ends_between_its_state_and_its_info_names_no_worker() -> None:
    """Celery fetches state and info apart: a shard refused in between has the refusal as its info (seen in a
    CI run as "TypeError: 'WorkerRefusal' object is not subscriptable", failing the batch as a platform bug)."""

    class Racing:
        def __init__(self) -> None:
            self.reads = 0

        @property
        def state(self) -> str:
            self.reads += 1
            return "STARTED" if self.reads == 1 else "FAILURE"

        info = ValueError("refused by the owner's broker")

    assert worker_pool._started_by(Racing()) == ""  # type: ignore[arg-type]


def test_a_shard_that_failed_on_the_workers_transport_is_sent_again_a_bounded_number_of_times(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that finished its shard while the transport restarted could not store the result: Celery records
    the redis ConnectionError as the shard's failure (seen in CI: the batch failed 3 s after a Redis restart).
    Receipts make a second attempt safe, so the shard is sent again; a failure of any other kind fails at once."""
    notes: list[str] = []
    watch = _memory_watch(monkeypatch, note=notes.append)
    backend = watch.app.backend
    for _ in range(worker_pool.TRANSPORT_RESENDS):
        failed = watch.task_ids()[0][-1]
        backend.mark_as_failure(failed, redis.exceptions.ConnectionError("Error 2 connecting to redis.sock"))
        assert watch.step() is None
        assert failed not in watch.task_ids()[0] and len(watch.task_ids()[0]) == 1  # the failed attempt replaced
        assert notes[-1].startswith("shard 0 failed on the worker's transport (ConnectionError"), notes
    backend.mark_as_failure(watch.task_ids()[0][-1], redis.exceptions.ConnectionError("down for good"))
    with pytest.raises(worker_pool.WorkerPoolError, match="shard 0 failed on the worker: down for good"):
        watch.step()


def test_a_shard_refused_by_the_worker_fails_the_batch_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    watch = _memory_watch(monkeypatch)
    first = watch.task_ids()[1][0]
    watch.app.backend.mark_as_failure(first, ValueError("refused by the owner's broker"))
    with pytest.raises(worker_pool.WorkerPoolError, match="shard 1 failed on the worker: refused by the owner"):
        watch.step()
    assert watch.task_ids()[1] == [first]  # not sent again


def test_the_first_look_reads_the_ping_sent_before_the_shards_without_waiting_for_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answer = threading.Event()
    pinged_by: list[str] = []

    def slow_ping(app: Any, timeout: float = 3.0) -> list[str]:
        pinged_by.append(threading.current_thread().name)
        assert answer.wait(30)
        return ["w1"]

    monkeypatch.setattr(worker_pool, "live_workers", slow_ping)
    app = worker_pool.celery_client("memory://", "cache+memory://")
    ping = worker_pool.Ping(app)
    watch = worker_pool.ShardWatch(app, [{"shard_index": 0}], run_id="r", timeout=600, first_ping=ping)
    assert watch.step() is None and watch.step() is None  # looks that only collect: no reply awaited
    assert watch.last_check is None and watch.last_seen == {}
    answer.set()
    ping.answered()
    assert watch.step() is None
    assert list(watch.last_seen) == ["w1"] and watch.last_check is not None
    assert pinged_by == ["cscore-pool-ping"]  # the first look took the early ping's answer, it sent none of its own


@pytest.mark.parametrize(("error", "outage"), [(redis.exceptions.ConnectionError("Error 111 connecting"), True),
                                               (TypeError("a bug in the ping"), False)])
def test_what_the_early_ping_raised_is_raised_where_it_is_read(monkeypatch: pytest.MonkeyPatch, error: Exception,
                                                               outage: bool) -> None:
    def failing_ping(app: Any, timeout: float = 3.0) -> list[str]:
        raise error

    monkeypatch.setattr(worker_pool, "live_workers", failing_ping)
    app = worker_pool.celery_client("memory://", "cache+memory://")
    ping = worker_pool.Ping(app)
    with pytest.raises(type(error)):
        ping.answered()
    watch = worker_pool.ShardWatch(app, [{"shard_index": 0}], run_id="r", timeout=600, first_ping=ping)
    if outage:
        assert watch.step() is None and watch.down_since is not None  # ridden out as the transport's outage
    else:
        with pytest.raises(TypeError, match="a bug in the ping"):
            watch.step()
        assert watch.down_since is None


def test_a_waiter_that_takes_over_keeps_the_outcomes_the_sender_collected(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task collected shard 0, then Redis restarted (its result gone) and the task deferred: the trigger's
    watch must not wait for shard 0's result again (a full-stack run sat 'processing' at 6 of 7 shards)."""
    sender = _memory_watch(monkeypatch)
    backend = sender.app.backend
    first, second = sender.task_ids()[0][0], sender.task_ids()[1][0]
    backend.mark_as_done(first, {"shard_index": 0, "rows": 3})
    assert sender.step() is None and sender.done() == [{"shard_index": 0, "rows": 3}, None]
    backend.forget(first)  # the restarted transport's store no longer has it
    waiter = worker_pool.ShardWatch(sender.app, sender.shards, run_id="r", timeout=600, sent=sender.task_ids(),
                                    done=sender.done())
    backend.mark_as_done(second, {"shard_index": 1, "rows": 2})
    assert waiter.step() == [{"shard_index": 0, "rows": 3}, {"shard_index": 1, "rows": 2}]
