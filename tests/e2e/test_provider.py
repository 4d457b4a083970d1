"""The data engineers' pieces on the real stack: ScoreBatchOperator deferring to ShardsTrigger, the connections
the local stack creates, and a downstream DAG started by the results asset.

Every batch here defers at once (Variable `cscore_defer_after_s` = 0, set before the stack starts), so its
trigger fires within about a scheduler loop of the deferral: the window of LocalExecutor's resume-after-defer
race (dags/cscore_platform/executor.py). Each resumed task must succeed on its first try.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cscore.demo import TENANT, onboard_tenant, owner_trust
from enclave.measurement import code_measurement
from infra.local.stack import LocalStack
from sdk.emails import Email, email_text
from sdk.models import find_model
from sdk.owner import submit_batch, wait_for_batch
from sdk.party import Party
from sdk.provider import publish_model
from sdk.results import fetch_results
from sdk.storage import ObjectStore

pytestmark = pytest.mark.e2e
WAIT_S = 600.0


@pytest.fixture(scope="module")
def defer_at_once() -> Iterator[None]:
    """Requested before `stack`: the stack's Airflow reads AIRFLOW_VAR_* from the environment it starts with."""
    os.environ["AIRFLOW_VAR_CSCORE_DEFER_AFTER_S"] = "0"
    yield
    os.environ.pop("AIRFLOW_VAR_CSCORE_DEFER_AFTER_S", None)


def _db(stack: LocalStack) -> sqlite3.Connection:
    url = stack.airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    return sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True, timeout=30)


def _airflow(stack: LocalStack, *args: str) -> str:
    airflow = str(Path(sys.executable).parent / "airflow")
    return subprocess.run([airflow, *args], env=stack.child_env(), capture_output=True, text=True, check=True,
                          timeout=180).stdout


@pytest.mark.timeout(2400)  # a stack, three batches, a downstream DAG: 15 min once on a loaded 2-core host
def test_deferred_batches_resume_first_try_and_a_downstream_dag_runs_on_their_results(
        defer_at_once: None, stack: LocalStack, model_bytes: bytes, corpus: Any) -> None:
    assert stack.airflow_env["AIRFLOW__CORE__EXECUTOR"].endswith("DeferSafeLocalExecutor")
    store = ObjectStore()
    provider, owner = Party.from_env("provider"), Party.from_env("owner")
    publish_model(model_bytes, "spam-filter", provider=provider, store=store,
                  allowed_measurements=[code_measurement().hex()])
    onboard_tenant(owner, store, stack.state_dir)
    owner.trust_provider(provider.public_key())
    model = find_model(store, "spam-filter", owner.trusted_providers())
    _airflow(stack, "dags", "unpause", "cscore_on_results")

    _, held_out = corpus
    emails = [Email(e.message_id, email_text(e.raw)) for e in held_out[:240]]
    parts = [[Email(f"p{i}-{e.message_id}", e.text) for e in emails[i * 80:(i + 1) * 80]] for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        batches = list(pool.map(lambda part: submit_batch(part, model, tenant=TENANT, owner=owner, store=store,
                                                          measurements=[code_measurement().hex()]), parts))
    statuses = [wait_for_batch(store, TENANT, b.batch_id, timeout=WAIT_S) for b in batches]
    assert [s["state"] for s in statuses] == ["succeeded"] * 3, statuses

    anchors, policy = owner_trust(accept_simulated=True)
    shards = 0
    for batch, part in zip(batches, parts, strict=True):
        results = fetch_results(TENANT, batch.batch_id, owner=owner, store=store, anchors=anchors, policy=policy)
        assert sorted(results.table.column("message_id").to_pylist()) == sorted(e.message_id for e in part)
        manifest = json.loads(store.get(f"results/{TENANT}/{batch.batch_id}/result-manifest.json"))
        shards += len(manifest["shards"])
        # Attestation came with the workers' first shards: each worker that scored names both brokers.
        assert {s["worker"] for s in manifest["shards"]} == {a["worker"] for a in manifest["attestation"]}
        assert all({v["broker"] for v in a["verdicts"]} == {"owner", "provider"} for a in manifest["attestation"])

    # The provider's bill: every shard's usage record verified against its enclave's evidence, under the
    # measurements the provider's broker releases the model key to.
    usage = subprocess.run([sys.executable, "-m", "cscore", "--state-dir", str(stack.state_dir), "provider", "usage",
                            "--model", "spam-filter", "--accept-simulated", "--json"], env=stack.child_env(),
                           capture_output=True, text=True, timeout=300)
    assert usage.returncode == 0, usage.stderr[-2000:]
    assert json.loads(usage.stdout) == {"records": shards, "per_owner": {TENANT: [3, 240]},
                                        "released_without_records": []}

    run_ids = sorted({s["run_id"] for s in statuses})  # one cscore_batch run per batch (cscore_intake)
    marks = ",".join("?" * len(run_ids))
    deadline = time.monotonic() + WAIT_S
    while True:  # the status says succeeded before the task ends (and emits its asset events)
        with _db(stack) as db:
            tis = db.execute(f"SELECT task_id, state, try_number FROM task_instance WHERE dag_id = 'cscore_batch' "
                             f"AND run_id IN ({marks})", run_ids).fetchall()
        if all(t[1] in {"success", "failed", "skipped", "upstream_failed"} for t in tis) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    with _db(stack) as db:
        events = [json.loads(e) for (e,) in db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = 'cscore_results'")]
        per_batch = {n for (n,) in db.execute("SELECT name FROM asset WHERE name LIKE 'cscore_results/%'")}
    # One task per batch run, score_batch, done on its first try (no resume failed).
    assert len(run_ids) == 3 and sorted(tis) == [("score_batch", "success", 1)] * 3, tis
    by_batch = {e["batch_id"]: e for e in events}
    for batch, status in zip(batches, statuses, strict=True):
        event = by_batch[batch.batch_id]
        assert event["waited_in"] == "triggerer"  # it deferred, and the trigger's event resumed it
        assert (event["tenant"], event["rows"], event["run_id"]) == (TENANT, 80, status["run_id"])
        assert event["result_manifest"] == f"results/{TENANT}/{batch.batch_id}/result-manifest.json"
        assert f"cscore_results/{TENANT}/{batch.batch_id}" in per_batch

    # The downstream DAG ran on those events: asset-triggered runs of cscore_on_results, in the real Airflow,
    # that succeeded and consumed results events of these batches. (Airflow may fold events that land together
    # into one run, or leave one to a later run: not one run per batch.)
    deadline = time.monotonic() + WAIT_S
    ours = {b.batch_id for b in batches}
    while True:
        with _db(stack) as db:
            consumed = [json.loads(extra or "{}") for (extra,) in db.execute(
                "SELECT e.extra FROM dagrun_asset_event d JOIN dag_run r ON r.id = d.dag_run_id "
                "JOIN asset_event e ON e.id = d.event_id WHERE r.dag_id = 'cscore_on_results' "
                "AND r.run_type = 'asset_triggered' AND r.state = 'success'")]
        seen = ours & {c.get("batch_id") for c in consumed}
        if seen or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    assert seen, "no successful cscore_on_results run consumed a results event of these batches"


def test_the_stack_gives_the_dags_connections_not_variables(stack: LocalStack) -> None:
    env = stack.airflow_env
    workers = json.loads(env["AIRFLOW_CONN_CSCORE_WORKERS"])
    assert workers["extra"]["broker_url"] == stack.env["CSCORE_CELERY_BROKER_URL"]
    for name in ("owner", "provider"):
        broker = json.loads(env[f"AIRFLOW_CONN_CSCORE_BROKER_{name.upper()}"])
        assert broker["host"] == stack.env[f"CSCORE_{name.upper()}_BROKER_URL"]
        assert broker["extra"]["broker_name"] == name and "BEGIN CERTIFICATE" in broker["extra"]["ca_pem"]



def test_hooks_reach_the_real_brokers_and_workers_through_those_connections(
        stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    from dags.cscore_platform.provider import BrokerUnavailable, KeyBrokerHook, WorkerPoolHook

    for name, value in stack.airflow_env.items():
        if name.startswith("AIRFLOW_CONN_"):
            monkeypatch.setenv(name, value)
    for name in ("owner", "provider"):
        assert KeyBrokerHook.for_broker(name).check() == stack.env[f"CSCORE_{name.upper()}_BROKER_URL"]
        assert KeyBrokerHook.for_broker(name).public_keys()["grant"]["kty"] == "EC"
    ok, message = WorkerPoolHook().test_connection()
    assert ok and "2 worker(s) answered" in message, message
    # The owner's connection pointed at the provider's broker (its URL and its CA, else TLS already refuses):
    # refused by name, not silently used.
    owner = json.loads(stack.airflow_env["AIRFLOW_CONN_CSCORE_BROKER_OWNER"])
    provider = json.loads(stack.airflow_env["AIRFLOW_CONN_CSCORE_BROKER_PROVIDER"])
    monkeypatch.setenv("AIRFLOW_CONN_CSCORE_BROKER_OWNER", json.dumps(
        {**owner, "host": provider["host"], "extra": {**owner["extra"], "ca_pem": provider["extra"]["ca_pem"]}}))
    with pytest.raises(BrokerUnavailable, match="expected name 'owner', got 'provider'"):
        KeyBrokerHook.for_broker("owner").check()
    # With the owner's own CA the provider's certificate does not even pass TLS.
    monkeypatch.setenv("AIRFLOW_CONN_CSCORE_BROKER_OWNER", json.dumps({**owner, "host": provider["host"]}))
    with pytest.raises(BrokerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        KeyBrokerHook.for_broker("owner").check()
