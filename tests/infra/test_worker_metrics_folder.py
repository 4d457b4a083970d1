"""The worker's metrics folder (prometheus_client's multiprocess files) lives as long as the worker's main process:
removed when it exits, not by a pool child that exits first, and never when the operator named the folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from infra.local.util import free_port

REPO = Path(__file__).resolve().parents[2]
SERVE = """
import os, sys
from tasks.metrics import serve_from_environment
serve_from_environment(os.environ)
print(os.environ["PROMETHEUS_MULTIPROC_DIR"], flush=True)
if os.fork() == 0:
    sys.exit(0)  # a pool child exiting normally runs the inherited atexit hooks
os.wait()
print(os.path.isdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]), flush=True)
"""


def _serve(extra: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"CSCORE_WORKER_METRICS_PORT": str(free_port()), "CSCORE_WORKER_METRICS_HOST": "127.0.0.1", **extra})
    done = subprocess.run([sys.executable, "-c", SERVE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_folder_it_made_is_removed_when_the_main_process_exits_not_before() -> None:
    folder, after_child = _serve({})
    assert Path(folder).name.startswith("cscore-worker-metrics-")
    assert after_child == "True"  # the pool child's exit left it
    assert not Path(folder).exists()


def test_a_folder_the_operator_named_is_kept(tmp_path: Path) -> None:
    named = tmp_path / "metrics"
    named.mkdir()
    folder, after_child = _serve({"PROMETHEUS_MULTIPROC_DIR": str(named)})
    assert (folder, after_child) == (str(named), "True")
    assert named.is_dir()
