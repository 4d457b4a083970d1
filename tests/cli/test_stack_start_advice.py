"""`cscore stack start` says how other shells reach the stack: advice that works as written, from any folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import infra.local.stack
from cscore.cli import main


class _Stack:
    """A local stack whose start only writes its stack.env, as the real one does."""

    def __init__(self, state_dir: Path, *, workers: int, airflow: bool) -> None:
        self.state_dir = state_dir
        self.env = {"CSCORE_AIRFLOW_URL": "http://127.0.0.1:8080", "CSCORE_OWNER_BROKER_URL": "https://127.0.0.1:4431",
                    "CSCORE_VISION_BROKER_URL": "https://127.0.0.1:4432", "AIRFLOW__API__SECRET_KEY": "s3cr3t-api",
                    "AWS_SECRET_ACCESS_KEY": "s3cr3t-aws", "CSCORE_BROKER_CA": "/state/tls/brokers-ca.pem",
                    "CSCORE_CELERY_BROKER_URL": "redis+socket:///state/redis/redis.sock"}  # not a key broker
        self.worker_metrics = {"celery-worker-1": "http://127.0.0.1:9101/metrics"}

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "stack.env").write_text(f"CSCORE_STATE_DIR={self.state_dir.resolve()}\n"
                                                  "CSCORE_BUCKET=cscore\n")


def test_the_advised_command_exports_the_stack_to_other_programs_from_any_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """It said "`source .state/demo/stack.env`": relative, and sourcing sets shell variables that no command sees."""
    monkeypatch.setattr(infra.local.stack, "LocalStack", _Stack)
    monkeypatch.chdir(tmp_path)
    assert main(["--state-dir", ".state/demo", "stack", "start"]) == 0
    out = capsys.readouterr().out
    advised = re.findall(r"`([^`]+)`", out)
    assert len(advised) == 1, out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    child = (f"{sys.executable} -c 'import os; env = os.environ.get; "
             "print(env(\"CSCORE_STATE_DIR\"), env(\"CSCORE_BUCKET\"))'")
    done = subprocess.run(["bash", "-c", f"{advised[0]}; {child}"], capture_output=True, text=True, timeout=60,
                          cwd=elsewhere)
    assert done.returncode == 0 and done.stdout.split() == [str(tmp_path / ".state/demo"), "cscore"], done
    assert f"--state-dir {tmp_path / '.state/demo'} " in out  # the option too names the folder from anywhere


def test_json_names_the_state_dir_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(infra.local.stack, "LocalStack", _Stack)
    monkeypatch.chdir(tmp_path)
    assert main(["--state-dir", ".state/demo", "stack", "start", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    state = tmp_path / ".state/demo"
    assert (out["state_dir"], out["env_file"]) == (str(state), str(state / "stack.env"))


def test_the_operator_is_told_where_status_and_metrics_are_and_no_secret(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Airflow's UI, every worker's and broker's metrics endpoint, and how to stop: they were in stack.env or in
    `LocalStack.worker_metrics` only, where a command-line operator does not look."""
    monkeypatch.setattr(infra.local.stack, "LocalStack", _Stack)
    assert main(["--state-dir", str(tmp_path), "stack", "start"]) == 0
    out = capsys.readouterr().out
    assert [" ".join(line.split()) for line in out.splitlines()[1:]] == [
        "Airflow UI http://127.0.0.1:8080",
        "celery-worker-1 metrics http://127.0.0.1:9101/metrics",
        "owner broker metrics https://127.0.0.1:4431/metrics (curl --cacert /state/tls/brokers-ca.pem)",
        "vision broker metrics https://127.0.0.1:4432/metrics (curl --cacert /state/tls/brokers-ca.pem)",
        f"stop cscore --state-dir {tmp_path} stack stop"]
    assert "s3cr3t" not in out
    assert main(["--state-dir", str(tmp_path), "stack", "start", "--json"]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t" not in out
    assert {k: v for k, v in json.loads(out).items() if k not in ("state_dir", "env_file")} == {
        "airflow_url": "http://127.0.0.1:8080", "worker_metrics": {"celery-worker-1": "http://127.0.0.1:9101/metrics"},
        "broker_metrics": {"owner": "https://127.0.0.1:4431/metrics", "vision": "https://127.0.0.1:4432/metrics"},
        "broker_ca": "/state/tls/brokers-ca.pem"}
