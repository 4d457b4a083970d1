"""One real batch with the platform (moto S3+SQS, Airflow), the key brokers, Redis and the confidential workers
each on a simulated machine of its own (a network namespace: own loopback, a veth pair onto one LAN), talking
TCP with TLS to the brokers and Redis (an ACL user's password), each machine's processes as an account of its
own (infra/local/machine_users.py; tests/adversary/test_machine_files.py tries the reads); the owner is the
host, the operator approves its tenant as the platform's account. Results verify, and while the batch runs no
party's process holds a file of another party's folder open.

Needs root and iproute2 (CI runs as root), and Debian's redis-server (TLS). ~4-8 min.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from cscore.demo import TENANT, owner_trust
from infra.local import procs
from infra.local.netns import Network
from infra.local.stack import LocalStack
from sdk.party import Party
from sdk.results import fetch_results
from sdk.storage import ObjectStore
from tests.stacks import approve_as_platform, machines_stack, toy_batch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROLES = ("redis", "brokers", "workers", "platform")
# The folders of the stack's state dir each machine may open: its own, and logs/ (its stdout, the supervisor's).
OWN = {"redis": ("redis",), "brokers": ("brokers",), "workers": ("worker", "sim-tee"),
       "platform": ("airflow", "platform")}


@pytest.fixture(scope="module")
def net() -> Iterator[Network]:
    with Network(list(ROLES)) as network:
        yield network


@pytest.fixture(scope="module")
def stack(net: Network, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with machines_stack(tmp_path_factory.mktemp("machines"), net, ROLES, workers=1, airflow=True) as s:
        yield s


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


class OpenFiles:
    """Samples, every 0.2 s, which files under the state dir each machine's processes hold open."""

    def __init__(self, s: LocalStack, net: Network) -> None:
        self.stack, self.roles = s, {os.stat(f"/run/netns/{net[r].name}").st_ino: r for r in ROLES}
        self.seen: set[tuple[str, str]] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> OpenFiles:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        root = str(self.stack.state_dir) + "/"
        while not self._stop.wait(0.2):
            self.samples += 1
            for pid in procs.marked_pids(self.stack.state_dir):
                role = self.roles.get(_netns_inode(pid) or -1)
                for link in _fd_targets(pid):
                    if role and link.startswith(root):
                        self.seen.add((role, link[len(root):]))


def _fd_targets(pid: int) -> list[str]:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    found = []
    for fd in fds:
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return found


def test_a_batch_runs_across_simulated_machines(stack: LocalStack, net: Network) -> None:
    # Every part runs on its role's machine.
    where = {name: _netns_inode(pid) for name, pid in stack.pids().items()}
    expect = {"redis": "redis", "owner-broker": "brokers", "provider-broker": "brokers", "moto": "platform",
              "airflow-scheduler": "platform", "airflow-api-server": "platform", "celery-worker-1": "workers"}
    for name, role in expect.items():
        assert where[name] == os.stat(f"/run/netns/{net[role].name}").st_ino, (name, role)
    assert stack.env["CSCORE_S3_ENDPOINT"].startswith(f"http://{net['platform'].address}:")
    assert stack.env["CSCORE_CELERY_BROKER_URL"].startswith("rediss://")

    with OpenFiles(stack, net) as opened:
        emails, batch, status = toy_batch(stack.state_dir, "machines", 120, timeout=480,
                                          approve=approve_as_platform(stack))
    assert status["state"] == "succeeded", status.get("reason")
    anchors, policy = owner_trust(accept_simulated=True)
    results = fetch_results(TENANT, batch.batch_id, owner=Party.from_env("owner"), store=ObjectStore(),
                            anchors=anchors, policy=policy)
    assert sorted(results.table.column("message_id").to_pylist()) == sorted(e.message_id for e in emails)

    # No machine held another party's folder open (logs/ is each one's stdout, opened by the supervisor).
    assert opened.samples > 10 and {role for role, _ in opened.seen} >= {"brokers", "platform"}
    foreign = sorted((role, path) for role, path in opened.seen
                     if path.split("/", 1)[0] not in (*OWN[role], "logs"))
    assert foreign == []
