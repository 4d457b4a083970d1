"""The platform's per-batch limits stop a model that is too slow or too large, with the limit named."""

from __future__ import annotations

import multiprocessing
import queue
import re

import numpy as np
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


def test_limits_hold_in_a_forked_pool_child_after_the_parent_watched_a_run() -> None:
    # Celery's prefork pool forks workers: the parent's watchdog thread does not exist in the child.
    watched(lambda options: None, RunLimits(), 1)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_in_child, args=(out,))
    child.start()
    try:
        verdict = out.get(timeout=120)
    except queue.Empty:
        verdict = "no answer"
    child.join(30)
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
