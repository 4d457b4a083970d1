"""The whole local stack, Airflow included, starts and stops leaving no process behind."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from infra.local import procs
from infra.local.stack import REPO, LocalStack, load_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _imports(module: str) -> bool:
    """Whether a colleague's module imports yet (the stack itself fails with a clear error if not)."""
    env = {**os.environ, "CSCORE_CELERY_BROKER_URL": "memory://", "CSCORE_CELERY_RESULT_BACKEND": "cache+memory://"}
    return subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, env=env,
                          capture_output=True).returncode == 0


def _listening(pids: set[int]) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) on which any of pids listens."""
    inodes = {link[8:-1] for pid in pids for link in _fd_links(pid) if link.startswith("socket:[")}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                found.add(cols[1].rsplit(":", 1)[0])
    return found


def _fd_links(pid: int) -> list[str]:
    links = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return links


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def test_full_stack_starts_and_stops_cleanly(tmp_path: Path, clean_environ: dict[str, str]) -> None:
    sim_tee = (REPO / "attestation" / "simulated.py").exists() or (REPO / "attestation" / "simulated").is_dir()
    brokers = (REPO / "keybroker" / "__main__.py").exists()
    workers = 2 if _imports("tasks.celery_app") else 0
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        print(line)

    stack = LocalStack(tmp_path, workers=workers, airflow=True, brokers=brokers, sim_tee=sim_tee,
                       environ=clean_environ, out=out)
    try:
        stack.start()
        env = load_env(stack.env_file)
        health = httpx.get(f"{env['CSCORE_AIRFLOW_URL']}/api/v2/monitor/health", timeout=10).json()
        assert {health[c]["status"] for c in ("scheduler", "triggerer", "dag_processor")} == {"healthy"}
        if brokers:
            for party in ("owner", "provider"):
                url = env[f"CSCORE_{party.upper()}_BROKER_URL"]
                assert url.startswith("https://127.0.0.1:")  # TLS under the stack's local CA
                ca = ssl.create_default_context(cafile=env["CSCORE_BROKER_CA"])
                assert httpx.get(f"{url}/healthz", verify=ca).status_code == 200
                token = tmp_path / party / "broker-admin-token"
                assert token.stat().st_mode & 0o777 == 0o600
                assert token.read_text() == (tmp_path / "brokers" / party / "admin-token").read_text()
        started = set().union(*(procs.tree(pid) for pid in stack.pids().values())) | procs.marked_pids(tmp_path)
        assert len(started) >= len(stack.pids())
        assert _listening(started) <= LOOPBACK  # every server on loopback (or a unix socket)
    finally:
        stack.stop()
    assert not [p for p in started if procs.alive(p)]
    assert not procs.marked_pids(tmp_path)
    assert not list((tmp_path / "pids").iterdir())
    assert any("triggerer on http://127.0.0.1:" in line and "ready in" in line for line in lines)
