"""Fixtures: key brokers running as real processes on free loopback ports, stopped by pid.

The session's two brokers (owner over plain HTTP on loopback, provider over TLS with the local CA)
start concurrently, while the simulated firmware is generated, to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.local.util import free_port
from keybroker.tls import TlsFiles, ensure_local_tls
from sdk.broker_admin import BrokerAdmin
from tests.keybroker.inproc import Env

REPO = Path(__file__).resolve().parents[2]
MEASUREMENT = bytes(range(48))
OTHER_MEASUREMENT = bytes(48)




class BrokerProcess:
    """`python -m keybroker serve --config` in its own process; stderr captured to a file.

    With `tls`, the broker serves HTTPS with the local CA's certificate and clients get `ca_bundle`.
    """

    def __init__(self, state: Path, name: str = "owner", tls: TlsFiles | None = None, **overrides: Any) -> None:
        self.state = state
        self.tls = tls
        if tls is not None:
            overrides = {"tls_cert_path": str(tls.cert), "tls_key_path": str(tls.key), **overrides}
        self.config: dict[str, Any] = {
            "name": name, "host": "127.0.0.1", "port": free_port(),
            "db_path": str(state / "keys.sqlite"), "kek_path": str(state / "kek.hex"),
            "admin_token_path": str(state / "admin-token"), "trusted_roots_dir": str(state / "sim-tee"),
            "accept_simulated": True, "simulated_key_ids": ["*"], "token_ttl_s": 300, **overrides}
        self.config_path = state / f"{name}-config.json"
        self.log_path = state / f"{name}-broker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.config['port']}"

    @property
    def ca_bundle(self) -> Path | None:
        """The CA to verify this broker with (None: plain HTTP)."""
        return self.tls.ca_cert if self.tls else None

    def http(self) -> httpx.Client:
        """A plain httpx client for this broker (verifying TLS with the local CA)."""
        verify: Any = ssl.create_default_context(cafile=str(self.tls.ca_cert)) if self.tls else True
        return httpx.Client(base_url=self.url, verify=verify, timeout=10)

    @property
    def admin_token(self) -> str:
        return Path(self.config["admin_token_path"]).read_text().strip()

    def start(self) -> BrokerProcess:
        """Spawn and wait until /healthz answers."""
        return self.spawn().wait_ready()

    def spawn(self) -> BrokerProcess:
        """Start the process without waiting (see wait_ready)."""
        self.state.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "keybroker", "serve", "--config",
                                          str(self.config_path)],
                                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 120) -> BrokerProcess:  # 30 s was missed at load 27
        """Poll /healthz; raise with the log's tail if the process exits or stays silent."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        with self.http() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"broker exited {self.proc.returncode}: {self.log_text()[-2000:]}")
                try:
                    if client.get("/healthz", timeout=0.5).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"broker not ready in {timeout_s} s: {self.log_text()[-2000:]}")

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
        return BrokerAdmin(self.url, self.admin_token, ca_bundle=self.ca_bundle)


@dataclass
class SessionBrokers:
    """What the session fixtures share: the simulated firmware and the two brokers."""

    sim_dir: Path
    owner: BrokerProcess
    provider: BrokerProcess


@pytest.fixture(scope="session")
def session_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionBrokers]:
    """Spawn both brokers, generate the simulated firmware meanwhile (they load it lazily), then wait."""
    from attestation.simulated import create_simulated_firmware

    sim = tmp_path_factory.mktemp("sim-tee")
    tls = ensure_local_tls(tmp_path_factory.mktemp("ca"), tmp_path_factory.mktemp("provider-tls"), "provider")
    common: dict[str, Any] = {"trusted_roots_dir": str(sim), "rate_limit_rps": 1000, "rate_limit_burst": 1000,
                              "log_level": "debug", "shutdown_timeout_s": 1}
    owner = BrokerProcess(tmp_path_factory.mktemp("owner"), name="owner", **common).spawn()
    provider = BrokerProcess(tmp_path_factory.mktemp("provider"), name="provider", tls=tls, **common).spawn()
    try:
        create_simulated_firmware(sim)
        yield SessionBrokers(sim, owner.wait_ready(), provider.wait_ready())
    finally:
        owner.stop()
        provider.stop()


@pytest.fixture(scope="session")
def sim_dir(session_brokers: SessionBrokers) -> Path:
    """Simulated SEV-SNP firmware (VCEK, ASK, ARK) shared by the brokers and TEEs of the session."""
    return session_brokers.sim_dir


@pytest.fixture(scope="session")
def broker(session_brokers: SessionBrokers) -> BrokerProcess:
    """The data owner's broker (plain HTTP on loopback), shared by the session; tests use distinct ids."""
    return session_brokers.owner


@pytest.fixture(scope="session")
def provider_broker(session_brokers: SessionBrokers) -> BrokerProcess:
    """The model provider's broker, over TLS with the local CA (`ca_bundle`)."""
    return session_brokers.provider


@pytest.fixture(scope="session")
def admin(broker: BrokerProcess) -> Iterator[BrokerAdmin]:
    client = broker.admin()
    yield client
    client.close()


@pytest.fixture
def env(tmp_path: Path) -> Env:
    """An in-process broker (stand-in verifier) with admin and worker clients."""
    return Env(tmp_path)
