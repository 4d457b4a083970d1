"""The `cscore.train` task's contract with the platform: a stable name, and refusals that name the field."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import pytest


@pytest.fixture
def worker_tasks(monkeypatch: pytest.MonkeyPatch) -> Any:
    # The Celery app needs a transport URL to import; nothing connects in these tests.
    monkeypatch.setenv("CSCORE_CELERY_BROKER_URL", "memory://")
    monkeypatch.setenv("CSCORE_CELERY_RESULT_BACKEND", "cache+memory://")
    for name in ("tasks.worker_tasks", "tasks.celery_app"):
        sys.modules.pop(name, None)
    return importlib.import_module("tasks.worker_tasks")


def test_the_training_task_has_its_stable_name(worker_tasks: Any) -> None:
    assert worker_tasks.train.name == "cscore.train" and "cscore.train" in worker_tasks.app.tasks


def test_a_forged_spec_is_refused_naming_the_field_before_any_storage_or_key(worker_tasks: Any) -> None:
    """The platform adds a field (say, a per-row output it hopes the worker honours): refused by name."""
    spec = {"tenant": "acme", "job_id": "j", "input_key": "k", "input_sha256": "0" * 64, "recipe_name": "r",
            "recipe_version": 1, "recipe_digest": "sha256:" + "1" * 64, "owner_broker": "owner",
            "model_name": "m", "model_version": 1, "owner_share_key": "s", "owner_share_wrapped": "",
            "receipt_key": "tuned/acme/m/1/receipt.jws", "predictions_key": "leak/rows.parquet"}
    with pytest.raises(worker_tasks.WorkerRefusal, match="FormatError: training_spec.predictions_key: expected one"):
        worker_tasks.train.run(spec)
    del spec["predictions_key"], spec["recipe_digest"]
    with pytest.raises(worker_tasks.WorkerRefusal, match="training_spec.recipe_digest"):
        worker_tasks.train.run(spec)


def test_scoring_workers_never_load_the_training_libraries() -> None:
    """Training's libraries are in the measured image, but a scoring process does not import them."""
    import subprocess
    from pathlib import Path

    code = ("import sys, enclave.worker\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {'sklearn', 'skl2onnx', 'scipy'})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == ""
