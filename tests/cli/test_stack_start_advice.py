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
    assert json.loads(capsys.readouterr().out) == {"state_dir": str(tmp_path / ".state/demo"),
                                                   "env_file": str(tmp_path / ".state/demo/stack.env")}
