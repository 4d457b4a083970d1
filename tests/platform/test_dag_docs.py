"""The DAG as the platform's engineers see it: documented, each mapped task named after its batch, no result dumps."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import jinja2
import pytest


@pytest.fixture
def dag_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.delenv("CSCORE_SQS_QUEUE_URL", raising=False)
    return importlib.import_module("dags.cscore_batch")


def test_dag_and_tasks_are_documented_and_its_one_task_reads_the_runs_manifest(dag_module: Any) -> None:
    dag = dag_module.cscore_batch()
    assert "one owner's encrypted email batch" in dag.doc_md
    for task in dag.tasks:
        assert task.doc_md, f"{task.task_id} has no doc_md"
    # One task process per batch run: no task before it that only reads the conf (the run is named after its batch).
    (score,) = dag.tasks
    assert (score.task_id, score.task_type, score.manifest_key) == ("score_batch", "ScoreBatchOperator", None)


@pytest.mark.parametrize("conf", [{}, None, {"manifest_keys": []}, {"manifest_keys": "incoming/acme/b/manifest.jws"},
                                  {"manifest_keys": ["incoming/acme/a/manifest.jws", "incoming/acme/b/manifest.jws"]}])
def test_a_batch_run_names_exactly_one_manifest_or_its_task_fails_unretried(conf: Any) -> None:
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from dags.cscore_platform.provider import ScoreBatchOperator

    with pytest.raises(AirflowFailException, match=r"conf.manifest_keys must name exactly one manifest .* got "):
        ScoreBatchOperator(task_id="score_batch").execute({"run_id": "r1", "dag_run": SimpleNamespace(conf=conf)})


def test_a_batch_runs_manifest_is_its_confs_one_key() -> None:
    from dags.cscore_platform.intake import run_manifest_key

    key = "incoming/acme/b-17/manifest.jws"
    assert run_manifest_key({"manifest_keys": [key]}) == key
    assert run_manifest_key({"manifest_keys": [key, key]}) == key  # the same manifest twice is one


@pytest.mark.parametrize(("given", "label"), [
    ("incoming/acme/b-17/manifest.jws", "acme/b-17"),
    ({"tenant": "acme", "batch_id": "b-17", "objects": []}, "acme/b-17"),
    ("not/a/manifest", "?/not/a/manifest"),
])
def test_mapped_task_label_is_the_batch(dag_module: Any, given: Any, label: str) -> None:
    from dags.cscore_platform.provider import ScoreBatchOperator

    context: dict[str, Any] = {}
    ScoreBatchOperator._label(context, given)
    # The template docs/PROVIDER.md gives a data engineer's ScoreBatchOperator mapped over manifest keys.
    assert jinja2.Template("{{ batch_label }}").render(**context) == label


def test_score_batch_announces_the_results_asset_and_its_per_batch_alias(dag_module: Any) -> None:
    from airflow.sdk import Asset, AssetAlias

    (score,) = [t for t in dag_module.cscore_batch().tasks if t.task_id == "score_batch"]
    outlets = score.outlets
    assert {(type(o).__name__, o.name) for o in outlets} == {("Asset", "cscore_results"),
                                                            ("AssetAlias", "cscore_batch_results")}
    assert isinstance(outlets[0], Asset | AssetAlias)


def test_score_batch_retries_a_killed_process_with_backoff(dag_module: Any) -> None:
    (score,) = [t for t in dag_module.cscore_batch().tasks if t.task_id == "score_batch"]
    assert (score.retries, score.retry_exponential_backoff) == (2, 2.0)
    assert score.retry_delay.total_seconds() == 5 and score.max_retry_delay.total_seconds() == 120


def test_shards_trigger_survives_its_serialization_into_the_triggerer() -> None:
    import importlib

    from dags.cscore_platform.provider import ShardsTrigger

    shards = [{"tenant": "acme", "batch_id": "b-1", "shard_index": 0, "output_key": "results/acme/b-1/x"}]
    trigger = ShardsTrigger(shards=shards, sent=[["id-0"]], run_id="r1", started=1.5e9, timeout_s=60.0)
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["sent"] == [["id-0"]] and kwargs["workers_conn_id"] == "cscore_workers"


@pytest.fixture
def intake_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.delenv("CSCORE_SQS_QUEUE_URL", raising=False)
    return importlib.import_module("dags.cscore_intake")


def test_intake_starts_one_documented_batch_run_per_manifest(intake_module: Any, dag_module: Any) -> None:
    dag = intake_module.cscore_intake()
    assert "one `cscore_batch` run per uploaded manifest" in dag.doc_md
    assert all(task.doc_md for task in dag.tasks)
    # One task process on a batch's path: it finds the keys and starts their runs itself.
    assert [t.task_id for t in dag.tasks] == ["start_batch_runs"]
    assert dag_module.cscore_batch().schedule is None  # only intake (or a person) starts batch runs


class _Supervisor:
    """The task's supervisor as the Task SDK reaches it: answers each request as the API server would."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers, self.sent = answers, []

    def send(self, msg: Any) -> Any:
        self.sent.append(msg)
        return self.answers.get(msg.run_id)


def test_intake_starts_each_batch_run_once_and_passes_over_one_that_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import ErrorResponse, OKResponse

    from dags.cscore_platform.intake import batch_run, start_batch_runs

    now = datetime(2026, 11, 30, 2, 15, 7, tzinfo=UTC)
    runs = [batch_run(f"incoming/acme/b-{n}/manifest.jws", now) for n in range(3)]
    exists = ErrorResponse(error=ErrorType.DAGRUN_ALREADY_EXISTS)
    supervisor = _Supervisor({runs[0]["trigger_run_id"]: OKResponse(ok=True), runs[1]["trigger_run_id"]: exists,
                              runs[2]["trigger_run_id"]: OKResponse(ok=True)})
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", supervisor, raising=False)
    assert start_batch_runs(runs) == [runs[0]["trigger_run_id"], runs[2]["trigger_run_id"]]
    assert [(m.type, m.dag_id, m.run_id, m.conf, m.note) for m in supervisor.sent] == [
        ("TriggerDagRun", "cscore_batch", r["trigger_run_id"], r["conf"], r["note"]) for r in runs]

    refused = ErrorResponse(error=ErrorType.API_SERVER_ERROR, detail={"status_code": 404})
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", _Supervisor({runs[0]["trigger_run_id"]: refused}),
                        raising=False)
    with pytest.raises(AirflowRuntimeError, match="API_SERVER_ERROR"):
        start_batch_runs(runs)


def test_a_batch_run_is_named_after_its_batch() -> None:
    from datetime import UTC, datetime

    from airflow.configuration import conf

    from dags.cscore_platform.intake import batch_run, batch_run_prefix

    now = datetime(2026, 11, 30, 2, 15, 7, 123456, tzinfo=UTC)
    run = batch_run("incoming/acme/b-17.x_2/manifest.jws", now)
    assert run == {"trigger_run_id": "batch__acme__b-17.x_2__20261130T021507.123456Z",
                   "conf": {"manifest_keys": ["incoming/acme/b-17.x_2/manifest.jws"]}, "note": "batch acme/b-17.x_2"}
    assert run["trigger_run_id"].startswith(batch_run_prefix("acme", "b-17.x_2"))
    pattern = conf.get("scheduler", "allowed_run_id_pattern")
    assert re.fullmatch(pattern, run["trigger_run_id"])
    odd = batch_run("incoming/acme/b 1/manifest.jws", now)
    assert odd["trigger_run_id"].startswith("manifest__") and re.fullmatch(pattern, odd["trigger_run_id"])
    assert odd["conf"] == {"manifest_keys": ["incoming/acme/b 1/manifest.jws"]}
