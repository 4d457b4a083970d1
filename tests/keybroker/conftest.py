"""Fixtures: a key broker running as a real process on a free loopback port, stopped by pid."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdk.broker_admin import BrokerAdmin

REPO = Path(__file__).resolve().parents[2]
MEASUREMENT = bytes(range(48))
OTHER_MEASUREMENT = bytes(48)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerProcess:
    """`python -m keybroker serve --config` in its own process; stderr captured to a file."""

    def __init__(self, state: Path, name: str = "owner", **overrides: Any) -> None:
        self.state = state
        self.config: dict[str, Any] = {
            "name": name, "host": "127.0.0.1", "port": free_port(),
            "db_path": str(state / "keys.sqlite"), "kek_path": str(state / "kek.hex"),
            "admin_token_path": str(state / "admin-token"), "trusted_roots_dir": str(state / "sim-tee"),
            "accept_simulated": True, "token_ttl_s": 300, **overrides}
        self.config_path = state / f"{name}-config.json"
        self.log_path = state / f"{name}-broker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config['port']}"

    @property
    def admin_token(self) -> str:
        return Path(self.config["admin_token_path"]).read_text().strip()

    def start(self) -> BrokerProcess:
        self.state.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "keybroker", "serve", "--config", str(self.config_path)],
                                     cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"broker not ready in 20 s: {self.log_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def admin(self) -> BrokerAdmin:
        return BrokerAdmin(self.url, self.admin_token)


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulated SEV-SNP firmware (VCEK, ASK, ARK) shared by the brokers and TEEs of the session."""
    from attestation.simulated import create_simulated_firmware

    folder = tmp_path_factory.mktemp("sim-tee")
    create_simulated_firmware(folder)
    return folder


def _session_broker(tmp_path_factory: pytest.TempPathFactory, sim_dir: Path, name: str) -> Iterator[BrokerProcess]:
    state = tmp_path_factory.mktemp(name)
    proc = BrokerProcess(state, name=name, trusted_roots_dir=str(sim_dir), rate_limit_rps=1000,
                         rate_limit_burst=1000, log_level="debug").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory, sim_dir: Path) -> Iterator[BrokerProcess]:
    """The data owner's broker process, shared by the session (tests use distinct key and batch ids)."""
    yield from _session_broker(tmp_path_factory, sim_dir, "owner")


@pytest.fixture(scope="session")
def provider_broker(tmp_path_factory: pytest.TempPathFactory, sim_dir: Path) -> Iterator[BrokerProcess]:
    """The model provider's broker process."""
    yield from _session_broker(tmp_path_factory, sim_dir, "provider")


@pytest.fixture(scope="session")
def admin(broker: BrokerProcess) -> Iterator[BrokerAdmin]:
    client = broker.admin()
    yield client
    client.close()
