"""The local stack with Redis and the key brokers on simulated machines of their own (network namespaces),
the workers on the host: TLS everywhere, Redis only with its user's password, which no log or command
line shows."""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from enclave.kbs_client import AttestedSession
from enclave.measurement import code_measurement
from enclave.tee import SimulatedSnpProvider
from infra.local import procs
from infra.local.netns import Namespace, Network
from infra.local.parts import REDIS_USER
from infra.local.stack import LocalStack

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def net() -> Iterator[Network]:
    with Network(["redis", "brokers"]) as network:
        yield network


@pytest.fixture(scope="module")
def stack(net: Network, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, list[str]]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSCORE_", "AIRFLOW"))}
    said: list[str] = []
    s = LocalStack(tmp_path_factory.mktemp("stack"), workers=1, airflow=False, environ=environ, out=said.append,
                   machines={"redis": net["redis"], "brokers": net["brokers"]}, lan=net.cidr)
    with s:
        yield s, said


def _in_namespace(pid: int, ns: Namespace) -> bool:
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{ns.name}").st_ino


def test_redis_and_brokers_run_in_their_namespaces_and_workers_on_the_host(
        stack: tuple[LocalStack, list[str]], net: Network) -> None:
    s, _ = stack
    pids = s.pids()
    assert _in_namespace(pids["redis"], net["redis"])
    for party in ("owner", "provider", "vision"):
        assert _in_namespace(pids[f"{party}-broker"], net["brokers"])
    assert not _in_namespace(pids["celery-worker-1"], net["brokers"])
    assert os.stat(f"/proc/{pids['celery-worker-1']}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino


def test_brokers_answer_over_tls_at_their_machines_address_only(stack: tuple[LocalStack, list[str]],
                                                                net: Network) -> None:
    s, _ = stack
    for party in ("owner", "provider"):
        url = httpx.URL(s.env[f"CSCORE_{party.upper()}_BROKER_URL"])
        assert (url.scheme, url.host) == ("https", net["brokers"].address)
        verify = ssl.create_default_context(cafile=str(s.broker_cas[party]))
        assert httpx.get(f"{url}/healthz", verify=verify, timeout=10).status_code == 200
        with socket.socket() as sock:  # nothing of the broker on the host's loopback
            sock.settimeout(2)
            assert sock.connect_ex(("127.0.0.1", int(url.port or 0))) != 0


def test_redis_takes_tls_with_the_password_only(stack: tuple[LocalStack, list[str]], net: Network) -> None:
    s, _ = stack
    url = s.env["CSCORE_CELERY_BROKER_URL"]
    assert url.startswith(f"rediss://{REDIS_USER}:") and f"@{net['redis'].address}:" in url
    port = int(url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    password = (s.state_dir / "redis" / "password").read_text().strip()

    def client(*, tls: bool = True, username: str | None = REDIS_USER, password: str | None = password) -> redis.Redis:
        return redis.Redis(host=net["redis"].address, port=port, socket_timeout=5, ssl=tls,
                           ssl_ca_certs=str(s.redis_ca) if tls else None, username=username, password=password)

    assert client().ping()
    with pytest.raises(redis.AuthenticationError):
        client(password="wrong").ping()
    with pytest.raises((redis.AuthenticationError, redis.ResponseError), match="(?i)NOAUTH|authenticated"):
        client(username=None, password=None).ping()
    with pytest.raises(redis.ConnectionError):  # plaintext is not spoken at all
        client(tls=False).ping()


def test_the_redis_password_is_in_no_log_output_or_command_line(stack: tuple[LocalStack, list[str]]) -> None:
    s, said = stack
    password = (s.state_dir / "redis" / "password").read_text().strip()
    assert len(password) >= 32
    logs = list((s.state_dir / "logs").glob("*.log"))
    assert {"redis.log", "celery-worker-1.log", "owner-broker.log"} <= {p.name for p in logs}
    assert [p.name for p in logs if password in p.read_text(errors="replace")] == []
    assert not [line for line in said if password in line]
    started = set().union(*(procs.tree(pid) for pid in s.pids().values()))
    assert not [p for p in started if password in procs.describe(p) + Path(f"/proc/{p}/cmdline").read_text()]
    conf = s.state_dir / "redis" / "redis.conf"
    assert conf.stat().st_mode & 0o077 == 0


def test_a_broker_verifies_the_simulated_chip_with_its_own_copy_of_the_vendor_root(
        stack: tuple[LocalStack, list[str]]) -> None:
    s, _ = stack
    folder = s.state_dir / "brokers" / "owner"
    config = json.loads((folder / "config.json").read_text())
    assert Path(config["trusted_roots_dir"]) == folder / "vendor-roots"  # not the chip's own folder
    assert (folder / "vendor-roots" / "ark.pem").read_bytes() == (s.state_dir / "sim-tee" / "ark.pem").read_bytes()
    assert not (folder / "vendor-roots" / "vcek.key").exists()
    session = AttestedSession(s.env["CSCORE_OWNER_BROKER_URL"],
                              SimulatedSnpProvider(s.state_dir / "sim-tee", code_measurement()),
                              ca_pem=s.broker_cas["owner"].read_text())
    assert session.attest().claims["measurement"] == code_measurement().hex()
