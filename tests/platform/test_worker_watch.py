"""Who the platform's wait loop takes for lost, and which shards it sends again (no transport needed)."""

from __future__ import annotations

from typing import Any

import pytest

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
