"""enclave.measurement's closure (distributions by actual content, no Airflow) and enclave.startup's refusals."""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

from enclave import measurement
from enclave.startup import (
    NATIVE_STARTUP_VARIABLES,
    PYTHON_STARTUP_VARIABLES,
    UnsafeStartup,
    refuse_unsafe_startup,
    startup_problems,
)

SAFE = SimpleNamespace(ignore_environment=0, safe_path=True, optimize=0, inspect=0)


def test_the_closure_holds_the_workers_libraries_and_nothing_of_the_platform_or_clients() -> None:
    names = {measurement._normalise(d.name) for d in measurement.closure_distributions()}
    assert {"cryptography", "pyarrow", "onnxruntime", "numpy", "celery", "kombu", "redis", "joserfc",
            "httpx", "boto3"} <= names
    # Training (enclave.training, issue 16) runs in the enclave: its libraries are measured too; the scoring
    # path never imports them (tests/enclave/test_training_task.py).
    assert {"scikit-learn", "skl2onnx"} <= names
    assert not names & {"apache-airflow", "fastapi", "uvicorn", "moto", "cscore", "cel-python", "psycopg"}


def _fake_distribution(site: Path, body: str) -> metadata.Distribution:
    (site / "fakepkg").mkdir(parents=True, exist_ok=True)
    (site / "fakepkg" / "__init__.py").write_text(body)
    info = site / "fakepkg-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    # RECORD's own hashes are stale on purpose: the measurement must read the files, not trust RECORD.
    (info / "RECORD").write_text("fakepkg/__init__.py,sha256=AAAA,1\nfakepkg-1.0.dist-info/METADATA,,\n"
                                 "fakepkg-1.0.dist-info/RECORD,,\n")
    return metadata.PathDistribution(info)


def test_a_distribution_is_measured_by_its_files_actual_content(tmp_path: Path) -> None:
    base = measurement._distribution_digest(_fake_distribution(tmp_path, "X = 1\n"))
    assert measurement._distribution_digest(_fake_distribution(tmp_path, "X = 1\n")) == base
    assert measurement._distribution_digest(_fake_distribution(tmp_path, "X = 2\n")) != base  # RECORD unchanged


def test_components_are_labelled_without_machine_paths() -> None:
    labels = [label for label, _ in measurement.measurement_components()]
    assert labels[:4] == ["trusted-code", "python:version", "python:binary", "python:stdlib"]
    assert "dist:pyarrow" in labels and any(label.startswith("pth:") for label in labels)
    assert not [label for label in labels if "/" in label]


def test_an_honest_start_up_has_no_problem() -> None:
    assert startup_problems({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin"},
                            SAFE) == []


@pytest.mark.parametrize("name", PYTHON_STARTUP_VARIABLES + NATIVE_STARTUP_VARIABLES)
def test_each_startup_variable_is_refused_by_name(name: str) -> None:
    with pytest.raises(UnsafeStartup, match=f"{name} is set") as refused:
        refuse_unsafe_startup({name: "/somewhere/secret-value"}, SAFE)
    assert "secret-value" not in str(refused.value)


def test_ignore_environment_makes_python_variables_inert_but_not_the_loaders() -> None:
    ignoring = SimpleNamespace(**{**vars(SAFE), "ignore_environment": 1})
    assert startup_problems({"PYTHONPATH": "/x", "PYTHONSTARTUP": "/y"}, ignoring) == []
    assert startup_problems({"LD_PRELOAD": "/x.so"}, ignoring) == ["LD_PRELOAD is set (it loads native code into "
                                                                    "the worker)"]


@pytest.mark.parametrize(("flag", "words"), [("safe_path", "PYTHONSAFEPATH off"), ("optimize", "-O"),
                                             ("inspect", "-i")])
def test_unsafe_interpreter_flags_are_refused(flag: str, words: str) -> None:
    flags = SimpleNamespace(**{**vars(SAFE), flag: not getattr(SAFE, flag)})
    assert any(words in p for p in startup_problems({}, flags))
