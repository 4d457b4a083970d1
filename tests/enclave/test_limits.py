"""The platform's per-batch limits stop a model that is too slow or too large, with the limit named."""

from __future__ import annotations

import multiprocessing
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from enclave.limits import LimitExceeded, RunLimits, resident_mib, watched
from enclave.runner import ContractSession
from enclave.scoring import CHUNK_ROWS
from tests.enclave.heavy_models import CONTRACT, columns, hungry_model, slow_model
from wire.errors import FormatError
from wire.shard import DEFAULT_MEMORY_MIB, DEFAULT_MS_PER_ROW, ShardSpec, ShardSpecError, parse_limits


def test_a_model_slower_than_the_limit_per_row_is_stopped_naming_the_limit() -> None:
    session = ContractSession(slow_model(), CONTRACT)
    with pytest.raises(LimitExceeded, match=rf"ran {CHUNK_ROWS} rows for more than {CHUNK_ROWS} ms, over the "
                                            r"batch's limit of 1 ms per row set by the platform"):
        session.run(columns(10), 10, RunLimits(ms_per_row=1))


def test_the_same_model_within_its_limits_runs_and_gives_the_same_bits_again() -> None:
    session = ContractSession(slow_model(width=256, depth=8), CONTRACT)
    first = session.run(columns(100), 100)["y"]
    again = session.run(columns(100), 100, RunLimits(ms_per_row=DEFAULT_MS_PER_ROW))["y"]
    assert first.shape == (100, 1) and np.isfinite(first).all()
    assert first.tobytes() == again.tobytes()


def test_a_model_that_outgrows_the_memory_limit_is_stopped_naming_it() -> None:
    session = ContractSession(hungry_model(), CONTRACT)  # ~400 MiB of live tensors per chunk
    limit = int(resident_mib()) + 100
    with pytest.raises(LimitExceeded, match=rf"memory went over the batch's limit of {limit} MiB set by the "
                                            r"platform while the model ran") as stopped:
        session.run(columns(5), 5, RunLimits(memory_mib=limit))
    # The only figure is the platform's: a model sizing its tensors from an email must not write a number here.
    assert [int(n) for n in re.findall(r"\d+", str(stopped.value))] == [limit]


def test_a_stopped_session_runs_again_when_the_next_batch_allows_it() -> None:
    session = ContractSession(slow_model(), CONTRACT)
    with pytest.raises(LimitExceeded):
        session.run(columns(3), 3, RunLimits(ms_per_row=1))
    assert session.run(columns(3), 3)["y"].shape == (3, 1)


def test_other_errors_of_the_run_pass_through_unchanged() -> None:
    def failing(_: object) -> None:
        raise KeyError("not a limit")

    with pytest.raises(KeyError, match="not a limit"):
        watched(failing, RunLimits(), 1)


def _in_child(out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    session = ContractSession(slow_model(), CONTRACT)
    try:
        session.run(columns(2), 2, RunLimits(ms_per_row=1))
        out.put("ran to the end")
    except LimitExceeded as exc:
        out.put(f"stopped: {exc}")


def _forked_answer(target: Callable[[multiprocessing.Queue], None], timeout: float) -> Any:  # type: ignore[type-arg]
    """What `target`, run in a forked child, put on its queue; "no answer" when nothing came within `timeout` s."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=target, args=(out,))
    child.start()
    try:
        answer = out.get(timeout=timeout)
    except queue.Empty:
        answer = "no answer"
    child.join(30)
    return answer


def test_limits_hold_in_a_forked_pool_child_after_the_parent_watched_a_run() -> None:
    # Celery's prefork pool forks workers: the parent's watchdog thread does not exist in the child.
    watched(lambda options: None, RunLimits(), 1)
    verdict = _forked_answer(_in_child, 120)
    assert verdict.startswith("stopped: the model ran"), verdict


def _spec(**limits: object) -> dict[str, object]:
    return {"tenant": "acme", "batch_id": "b1", "shard_index": 0, "input_key": "incoming/acme/b1/part-00000.parquet",
            "input_sha256": "", "row_group_start": 0, "row_group_end": 1, "model_name": "m", "model_version": 1,
            "model_digest": "sha256:" + "0" * 64, "owner_broker": "owner", "footer_key": "f", "column_key": "c",
            "result_key": "r", "output_key": "results/acme/b1/shard-00000.parquet",
            "receipt_key": "results/acme/b1/shard-00000.receipt.jws", **limits}


def test_a_shard_without_limits_gets_the_defaults_and_carries_the_platforms_own() -> None:
    spec = ShardSpec.from_dict(_spec())
    assert (spec.max_ms_per_row, spec.max_memory_mib) == (DEFAULT_MS_PER_ROW, DEFAULT_MEMORY_MIB)
    spec = ShardSpec.from_dict(_spec(max_ms_per_row=5, max_memory_mib=512))
    assert (spec.max_ms_per_row, spec.max_memory_mib) == (5, 512)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_ms_per_row", 0, "shard.max_ms_per_row: expected 1..3600000, got 0"),
    ("max_memory_mib", 10, "shard.max_memory_mib: expected 64..1048576, got 10"),
    ("max_ms_per_row", "5", "shard.max_ms_per_row: expected int, got str"),
])
def test_a_shard_with_limits_out_of_range_is_refused_naming_the_field(field: str, value: object,
                                                                       message: str) -> None:
    with pytest.raises(ShardSpecError, match=message):
        ShardSpec.from_dict(_spec(**{field: value}))


def test_the_operators_limits_are_parsed_strictly() -> None:
    assert parse_limits({}) == {"max_ms_per_row": DEFAULT_MS_PER_ROW, "max_memory_mib": DEFAULT_MEMORY_MIB}
    assert parse_limits({"max_ms_per_row": 20}) == {"max_ms_per_row": 20, "max_memory_mib": DEFAULT_MEMORY_MIB}
    with pytest.raises(FormatError, match="cscore_limits.max_ms: expected one of"):
        parse_limits({"max_ms": 20})
    with pytest.raises(FormatError, match=r"cscore_limits.max_memory_mib: expected an integer in 64..1048576, "
                                          r"got True"):
        parse_limits({"max_memory_mib": True})
    with pytest.raises(FormatError, match="cscore_limits: expected a JSON object, got 'list'"):
        parse_limits([1])


def test_the_watchdog_is_one_named_daemon_thread_per_process() -> None:
    """A daemon, so a worker exits without waiting on it; named, so a thread dump tells what it is."""
    for _ in range(2):
        watched(lambda options: None, RunLimits(), 1)
    watchdogs = [t for t in threading.enumerate() if t.name == "cscore-run-limits"]
    assert len(watchdogs) == 1 and watchdogs[0].daemon and watchdogs[0].is_alive()


def test_resident_memory_is_this_processs_rss_in_mib() -> None:
    """The figure the memory limit is held to: VmRSS of /proc/self/status, read again in another way."""
    status = Path("/proc/self/status").read_text()
    vm_rss_kib = int(re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M).group(1))  # type: ignore[union-attr]
    assert abs(resident_mib() - vm_rss_kib / 1024) < 8


def _polling_run(seen: list[bool], barrier: threading.Barrier | None = None) -> Callable[[Any], str]:
    """A run that, like onnxruntime between operators, stops when its options are told to terminate (5 s at most)."""
    def run(options: Any) -> str:
        if barrier is not None:
            barrier.wait(10)  # every run is armed before any can pass its deadline
        stop = time.monotonic() + 5
        while not options.terminate and time.monotonic() < stop:
            time.sleep(0.002)
        seen.append(options.terminate)
        return "finished"
    return run


def test_a_run_over_its_budget_is_told_to_terminate_then_refused() -> None:
    seen: list[bool] = []
    started = time.monotonic()
    with pytest.raises(LimitExceeded, match=r"^the model ran 50 rows for more than 50 ms, over the batch's limit of "
                                            r"1 ms per row set by the platform$"):
        watched(_polling_run(seen), RunLimits(ms_per_row=1), 50)
    assert seen == [True] and time.monotonic() - started < 3


def test_concurrent_runs_are_each_watched() -> None:
    barrier = threading.Barrier(2)
    seen: list[bool] = []
    outcomes: list[str] = []

    def one() -> None:
        try:
            outcomes.append(str(watched(_polling_run(seen, barrier), RunLimits(ms_per_row=1), 100)))
        except LimitExceeded as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert seen == [True, True]
    assert outcomes == ["the model ran 100 rows for more than 100 ms, over the batch's limit of 1 ms per row set by "
                        "the platform"] * 2


def test_a_finished_run_is_no_longer_watched() -> None:
    """The watchdog forgets a run once it returns, in budget or not, so it idles rather than polling for it."""
    from enclave import limits

    watched(lambda options: None, RunLimits(), 1000)
    with pytest.raises(LimitExceeded):
        watched(_polling_run([]), RunLimits(ms_per_row=1), 10)
    assert limits._watchdog is not None and limits._watchdog._runs == {}


def test_a_runs_budget_is_its_rows_times_the_milliseconds_per_row() -> None:
    """1000 rows at 1000 ms a row: the watchdog's deadline is 1000 s after the run was armed, not a second less."""
    from enclave import limits

    deadlines: list[float] = []

    def run(options: Any) -> None:
        assert limits._watchdog is not None
        deadlines.extend(r.deadline for r in limits._watchdog._runs.values() if r.options is options)

    before = time.monotonic()
    watched(run, RunLimits(ms_per_row=1000), 1000)
    after = time.monotonic()
    assert len(deadlines) == 1 and before + 1000 <= deadlines[0] <= after + 1000


def test_a_run_at_its_limits_is_within_them_and_just_past_them_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget is what the platform set: a clock at the deadline or a process at the memory limit is allowed."""
    import onnxruntime as ort

    from enclave import limits

    now = {"t": 100.0}
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=lambda: now["t"]))
    rss = {"mib": 512.0}
    monkeypatch.setattr(limits, "resident_mib", lambda: rss["mib"])
    run = limits._Run(ort.RunOptions(), 100.0, RunLimits(ms_per_row=2, memory_mib=512), 3)
    assert limits._breach(run) == ""
    rss["mib"] = 512.00390625  # one page more
    assert limits._breach(run) == ("the worker's memory went over the batch's limit of 512 MiB set by the platform "
                                   "while the model ran")
    now["t"] = 100.000001
    assert limits._breach(run) == ("the model ran 3 rows for more than 6 ms, over the batch's limit of 2 ms per row "
                                   "set by the platform")


def test_a_sessions_results_run_within_the_limits_given() -> None:
    session = ContractSession(slow_model(), CONTRACT)
    with pytest.raises(LimitExceeded, match=rf"^the model ran {CHUNK_ROWS} rows for more than {CHUNK_ROWS} ms"):
        session.results(pa.array(["a", "b", "c"]), columns(3), None, RunLimits(ms_per_row=1))


def test_a_watchdog_asleep_after_a_quiet_second_still_stops_the_next_run_over_budget() -> None:
    """Between runs it polls for a second (no wake-up per 64-row chunk), then sleeps until a run is armed."""
    from enclave import limits

    watched(lambda options: None, RunLimits(), 1)
    watchdog = limits._watchdog
    assert watchdog is not None
    until = time.monotonic() + 10
    while not watchdog._asleep and time.monotonic() < until:
        time.sleep(0.05)
    assert watchdog._asleep
    seen: list[bool] = []
    with pytest.raises(LimitExceeded, match=r"^the model ran 20 rows for more than 20 ms"):
        watched(_polling_run(seen), RunLimits(ms_per_row=1), 20)
    assert seen == [True] and watchdog._asleep is False


def _polling_watchdog() -> Any:
    """The process's watchdog having just looked at a run (its quiet second starts now), asleep or not before.

    A run that returns at once would not do: an asleep watchdog's run is disarmed before its thread looks.
    """
    from enclave import limits

    seen: list[bool] = []
    with pytest.raises(LimitExceeded):
        watched(_polling_run(seen), RunLimits(ms_per_row=1), 1)  # armed until the watchdog stops it
    assert seen == [True] and limits._watchdog is not None and not limits._watchdog._asleep
    return limits._watchdog


def test_a_watchdog_keeps_polling_between_runs_that_follow_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs a few milliseconds apart (a shard's chunks) never find it asleep: arming one wakes no thread."""
    watchdog = _polling_watchdog()
    notified: list[int] = []
    monkeypatch.setattr(watchdog._wake, "notify", lambda n=1: notified.append(n))
    for _ in range(10):  # at most 10 looks find none armed: half the second it lingers
        watched(lambda options: time.sleep(0.004), RunLimits(), 64)
    assert notified == [] and not watchdog._asleep


def test_after_a_run_the_watchdog_polls_on_for_a_second_before_it_sleeps() -> None:
    """A shard's next chunk comes within milliseconds: the watchdog lingers, it is not put to sleep by one look."""
    from enclave import limits

    watched(lambda options: time.sleep(0.15), RunLimits(), 1000)  # armed across at least two of its looks
    time.sleep(0.2)  # at most 4 looks find nothing armed: a fifth of the second it lingers
    watchdog = limits._watchdog
    assert watchdog is not None and not watchdog._asleep
    until = time.monotonic() + 10
    while not watchdog._asleep and time.monotonic() < until:
        time.sleep(0.05)
    assert watchdog._asleep


def _new_watchdog_state(out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from enclave import limits

    watchdog = limits._Watchdog()  # in a forked child: its thread dies with the child
    time.sleep(0.2)
    out.put(watchdog._asleep)


def test_a_new_watchdog_polls_for_a_second_before_it_first_sleeps() -> None:
    """Not asleep (a bool, False) in its first fifth of a second, though nothing was ever armed."""
    assert _forked_answer(_new_watchdog_state, 60) is False
