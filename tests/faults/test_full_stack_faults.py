"""Faults injected into a batch running on the whole local stack (Airflow's DAG and triggerer, two real Celery
workers running the enclave's `score_shard` with simulated SEV-SNP, both key brokers, moto, Redis):

- a worker host dies mid-shard (its main process and pool child SIGKILLed, not restarted): the batch completes
  on the other worker, every email scored once, and the status says which worker was lost;
- the Celery transport's Redis restarts mid-batch (every queued and unacknowledged message lost): the lost
  shards are sent again and the batch completes, every email scored once;
- the scheduler and its task processes are SIGKILLed mid-batch and the scheduler alone restarted: the lost
  task is failed and retried by the stack's settings, and the batch completes, every email scored once.

Each test prints its fault's figures (outcome, rows lost, rows duplicated, seconds from the fault to the batch's
end): `.venv/bin/python -m pytest -s tests/faults/test_full_stack_faults.py`. ~4-6 min on 2 quiet cores.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from cscore.demo import TENANT, onboard_tenant, owner_trust
from dags.cscore_platform import worker_pool
from enclave.measurement import code_measurement
from enclave.scoring import ModelSession
from infra.local import parts, procs
from infra.local.stack import LocalStack
from sdk.corpus import CorpusEmail
from sdk.emails import Email, email_text
from sdk.models import ModelListing, find_model
from sdk.owner import SubmittedBatch, submit_batch
from sdk.party import Party
from sdk.provider import publish_model
from sdk.results import fetch_results
from sdk.storage import ObjectStore
from tests.e2e.conftest import corpus, model_bytes  # noqa: F401 - the e2e suite's corpus and model fixtures
from tests.stacks import running_stack

# The project's 900 s per test: the first one also starts the stack (~1.5 min quiet, 6 min at load average 20).
pytestmark = [pytest.mark.faults, pytest.mark.e2e]
WAIT_S = 300.0  # the fault's recovery is asserted well below this; a batch still running then has hung
VICTIM = "celery-worker-1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("faults"), workers=2, airflow=True) as running:
        yield running


@pytest.fixture(scope="module")
def model(stack: LocalStack, model_bytes: bytes) -> ModelListing:  # noqa: F811 - the imported fixture
    store = ObjectStore()
    publish_model(model_bytes, "spam-filter", provider=Party.from_env("provider"), store=store,
                  allowed_measurements=[code_measurement().hex()])
    owner = Party.from_env("owner")
    onboard_tenant(owner, store, stack.state_dir)
    owner.trust_provider(Party.from_env("provider").public_key())
    return find_model(store, "spam-filter", owner.trusted_providers())


@pytest.fixture(scope="module")
def transport(stack: LocalStack) -> redis.Redis:
    """The Celery transport's Redis, read directly: which worker has started which shard."""
    return redis.Redis(unix_socket_path=stack.env["CSCORE_CELERY_BROKER_URL"].removeprefix("redis+socket://"))


def _emails(held_out: list[CorpusEmail], tag: str) -> list[Email]:
    return [Email(f"{tag}-{e.message_id}", email_text(e.raw)) for e in held_out]


def _submit(emails: list[Email], model: ModelListing) -> SubmittedBatch:
    return submit_batch(emails, model, tenant=TENANT, owner=Party.from_env("owner"), store=ObjectStore(),
                        measurements=[code_measurement().hex()])


def _status(batch: SubmittedBatch) -> dict[str, Any]:
    raw = ObjectStore().get_if_exists(f"status/{TENANT}/{batch.batch_id}.json")
    return json.loads(raw) if raw else {"state": "submitted"}


def _until(what: str, ready: Callable[[], bool], batch: SubmittedBatch, timeout: float = WAIT_S) -> None:
    """Poll `ready` every 50 ms; fail naming `what` and the batch's status if it is not so within `timeout`."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s; batch status {_status(batch)}"
        time.sleep(0.05)


def _finished(batch: SubmittedBatch) -> dict[str, Any]:
    """The batch's status once it succeeded or failed (a status that stays `processing` fails the test)."""
    _until("the batch finished", lambda: _status(batch)["state"] in {"succeeded", "failed"}, batch)
    return _status(batch)


def _task_metas(transport: redis.Redis) -> dict[bytes, dict[str, Any]]:
    """Every Celery task state in the result backend: key -> {"status", "result", ...}."""
    keys = list(transport.scan_iter(match="celery-task-meta-*", count=1000))
    values = transport.mget(keys) if keys else []
    return {k: json.loads(v) for k, v in zip(keys, values, strict=True) if v}


def _rows_once(batch: SubmittedBatch, emails: list[Email], model_bytes: bytes) -> tuple[int, int]:  # noqa: F811
    """Fetch and verify the batch's results; (rows lost, rows duplicated), and the scores bit for bit."""
    anchors, policy = owner_trust(accept_simulated=True)
    results = fetch_results(TENANT, batch.batch_id, owner=Party.from_env("owner"), store=ObjectStore(),
                            anchors=anchors, policy=policy)
    ids = results.table.column("message_id").to_pylist()
    expected = {e.message_id for e in emails}
    lost, duplicated = len(expected - set(ids)), len(ids) - len(set(ids))
    by_id = dict(zip(ids, results.table.column("spam_probability").to_numpy(), strict=True))
    scores, _ = ModelSession(model_bytes).score([e.text for e in emails])
    got = np.array([by_id.get(e.message_id, np.nan) for e in emails], dtype=np.float32)
    assert lost or got.tobytes() == scores.astype(np.float32).tobytes()  # as a fault-free batch, bit for bit
    return lost, duplicated


def _figures(fault: str, status: dict[str, Any], lost: int, duplicated: int, recovered_s: float) -> None:
    print(f"\n[fault] {fault}: outcome {status['state']}, rows lost {lost}, rows duplicated {duplicated}, "
          f"batch done {recovered_s:.1f} s after the fault; events: {status.get('events')}")


def test_a_worker_host_killed_mid_shard_leaves_its_shards_to_the_other(
        stack: LocalStack, model: ModelListing, transport: redis.Redis, corpus: Any,  # noqa: F811
        model_bytes: bytes) -> None:  # noqa: F811
    _, held_out = corpus
    emails = _emails(held_out, "kill")  # ~2,400 emails: 7 shards of 400
    t0 = time.monotonic()
    batch = _submit(emails, model)
    print(f"\n[fault] batch {batch.batch_id} submitted in {time.monotonic() - t0:.1f} s")
    victim = stack.pids()[VICTIM]
    node = f"cscore-worker-{VICTIM.rsplit('-', 1)[1]}@"

    def victim_mid_shard() -> bool:
        return any(m["status"] == "STARTED" and str((m.get("result") or {}).get("hostname", "")).startswith(node)
                   for m in _task_metas(transport).values())

    _until(f"{node} started a shard", victim_mid_shard, batch)
    print(f"[fault] {node} started a shard {time.monotonic() - t0:.1f} s after the submit began")
    host = procs.tree(victim)
    assert len(host) >= 2  # the worker's main process and its pool child
    procs.signal_all(host, signal.SIGKILL)  # the host dies: nothing acknowledges, nothing requeues
    killed_at = time.monotonic()
    stack.parts.pop(VICTIM).popen.wait(timeout=10)  # reaped; not restarted
    assert _status(batch)["state"] in {"submitted", "processing"}  # the kill landed mid-batch
    status = _finished(batch)
    recovered_s = time.monotonic() - killed_at
    lost, duplicated = _rows_once(batch, emails, model_bytes) if status["state"] == "succeeded" else (-1, -1)
    _figures("worker host SIGKILLed mid-shard", status, lost, duplicated, recovered_s)
    assert status["state"] == "succeeded", json.dumps(status, indent=1)
    assert (lost, duplicated) == (0, 0)
    said = [e for e in status.get("events", []) if e.startswith(f"worker {node}")]
    assert said and "answered no ping" in said[0] and "sent again to the other workers" in said[0], status
    # lost after WORKER_SILENT_S of silence, noticed within a check, the shard then scored by the other worker
    assert recovered_s < worker_pool.WORKER_SILENT_S + 90, recovered_s


def test_a_redis_restart_mid_batch_loses_no_shard(
        stack: LocalStack, model: ModelListing, transport: redis.Redis, corpus: Any,  # noqa: F811
        model_bytes: bytes) -> None:  # noqa: F811
    """On the worker left by the test above (or both, run alone)."""
    _, held_out = corpus
    emails = _emails(held_out, "redis")
    before = set(_task_metas(transport))
    batch = _submit(emails, model)

    def some_shards_done() -> bool:
        return any(m["status"] == "SUCCESS" for k, m in _task_metas(transport).items() if k not in before)

    _until("a first shard done", some_shards_done, batch)
    redis_part = stack.parts.pop("redis")
    procs.kill_tree(redis_part.pid, timeout=5)  # every queued and unacknowledged shard message goes with it
    redis_part.popen.wait(timeout=10)
    restarted_at = time.monotonic()
    assert _status(batch)["state"] == "processing"  # the restart landed mid-batch
    parts.spawn_redis(stack).wait()
    status = _finished(batch)
    recovered_s = time.monotonic() - restarted_at
    lost, duplicated = _rows_once(batch, emails, model_bytes) if status["state"] == "succeeded" else (-1, -1)
    _figures("Celery transport (Redis) restarted mid-batch", status, lost, duplicated, recovered_s)
    assert status["state"] == "succeeded", json.dumps(status, indent=1)
    assert (lost, duplicated) == (0, 0)
    said = [e for e in status.get("events", []) if e.startswith("the Celery transport")]
    assert said and "sent again" in said[0], status
    assert recovered_s < worker_pool.TRANSPORT_DOWN_S + 60, recovered_s


def test_a_scheduler_killed_with_its_task_processes_and_restarted_finishes_the_batch(
        stack: LocalStack, model: ModelListing, transport: redis.Redis, corpus: Any,  # noqa: F811
        model_bytes: bytes) -> None:  # noqa: F811
    """The scheduler and every process under it (the executor's task processes) SIGKILLed while the batch's
    shards run, then the scheduler alone started again: the stack's heartbeat, health and orphan settings
    (`infra/local/parts.py`) fail the lost task and its retry finishes the batch, every email once."""
    _, held_out = corpus
    emails = _emails(held_out, "sched")
    before = set(_task_metas(transport))
    batch = _submit(emails, model)
    _until("a first shard started", lambda: any(k not in before for k in _task_metas(transport)), batch)
    scheduler = stack.parts.pop("airflow-scheduler")
    procs.signal_all(procs.tree(scheduler.pid), signal.SIGKILL)
    scheduler.popen.wait(timeout=10)
    killed_at = time.monotonic()
    assert _status(batch)["state"] == "processing"  # the kill landed mid-batch
    stack.spawn("airflow-scheduler", [str(Path(parts.PY).parent / "airflow"), *parts.AIRFLOW_COMPONENTS["scheduler"]],
                role="platform")
    # A lost task may be marked failed before its retry runs: wait for the batch's last word, not its first.
    _until("the batch succeeded", lambda: _status(batch)["state"] == "succeeded", batch)
    recovered_s = time.monotonic() - killed_at
    status = _status(batch)
    lost, duplicated = _rows_once(batch, emails, model_bytes)
    _figures("scheduler and its task processes SIGKILLed, scheduler restarted", status, lost, duplicated,
             recovered_s)
    assert (lost, duplicated) == (0, 0)
    assert recovered_s < 180, recovered_s  # heartbeat timeout 45 s + orphan check 15 s + retry 5 s + scoring
