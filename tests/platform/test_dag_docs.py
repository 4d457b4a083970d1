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


def test_dag_and_tasks_are_documented_and_mapped_tasks_keep_return_values_out_of_logs(dag_module: Any) -> None:
    dag = dag_module.cscore_batch()
    assert "one owner's encrypted email batch" in dag.doc_md
    for task in dag.tasks:
        assert task.doc_md, f"{task.task_id} has no doc_md"
        kwargs = getattr(task, "partial_kwargs", None) or task.__dict__
        if task.task_type != "ScoreBatchOperator":  # a classic operator: Airflow logs no return value of it
            assert kwargs.get("show_return_value_in_logs") is False, task.task_id
    mapped = [t for t in dag.tasks if t.task_id != "find_manifests"]
    assert {t.map_index_template for t in mapped} == {"{{ batch_label }}"}


@pytest.mark.parametrize(("given", "label"), [
    ("incoming/acme/b-17/manifest.jws", "acme/b-17"),
    ({"tenant": "acme", "batch_id": "b-17", "objects": []}, "acme/b-17"),
    ("not/a/manifest", "?/not/a/manifest"),
])
def test_mapped_task_label_is_the_batch(dag_module: Any, given: Any, label: str) -> None:
    from dags.cscore_platform.provider import ScoreBatchOperator

    context: dict[str, Any] = {}
    ScoreBatchOperator._label(context, given)
    (score,) = [t for t in dag_module.cscore_batch().tasks if t.task_id == "score_batch"]
    assert jinja2.Template(score.map_index_template).render(**context) == label


def test_score_batch_announces_the_results_asset_and_its_per_batch_alias(dag_module: Any) -> None:
    from airflow.sdk import Asset, AssetAlias

    (score,) = [t for t in dag_module.cscore_batch().tasks if t.task_id == "score_batch"]
    outlets = score.partial_kwargs.get("outlets") or score.outlets
    assert {(type(o).__name__, o.name) for o in outlets} == {("Asset", "cscore_results"),
                                                            ("AssetAlias", "cscore_batch_results")}
    assert isinstance(outlets[0], Asset | AssetAlias)


def test_score_batch_retries_a_killed_process_with_backoff(dag_module: Any) -> None:
    (score,) = [t for t in dag_module.cscore_batch().tasks if t.task_id == "score_batch"]
    kwargs = score.partial_kwargs
    assert (kwargs["retries"], kwargs["retry_exponential_backoff"]) == (2, 2.0)
    assert kwargs["retry_delay"].total_seconds() == 5 and kwargs["max_retry_delay"].total_seconds() == 120


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
    start = dag.get_task("start_batch_run")
    assert start.partial_kwargs["trigger_dag_id"] == "cscore_batch" and start.map_index_template == "{{ task.note }}"
    assert dag_module.cscore_batch().schedule is None  # only intake (or a person) starts batch runs


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
