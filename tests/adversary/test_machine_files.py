"""Simulated machines are separate for files too (issue 13): the platform's account, on its own machine,
tries to read the owner broker's KEK and key store, the owner's keys, the provider broker's model keys and
the simulated chip's key, and every read is refused.

One stack for the module, each role on a network namespace of its own (tests/e2e/test_many_machines.py) and
each machine's processes run as an unprivileged account of its own (infra/local/machine_users.py), its
folders 0700. A batch runs end to end first, the operator approving the tenant as the platform's account
(no shared folder), so every key store holds real keys when the other accounts try to read them.

Needs root (namespaces, useradd, mount) and Debian's redis-server (TLS). ~5-8 min.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cscore.demo import TENANT, owner_trust
from infra.local import machine_users, procs
from infra.local.netns import Network
from infra.local.stack import LocalStack
from sdk.party import Party
from sdk.results import fetch_results
from sdk.storage import ObjectStore
from tests.stacks import approve_as_platform, machines_stack, toy_batch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROLES = ("redis", "brokers", "workers", "platform")
# What each account may read (the key in machine_users.ACCOUNTS); None: root's alone (the supervisor's).
SECRETS = {
    "brokers/owner/kek.hex": "owner-broker", "brokers/owner/keys.sqlite": "owner-broker",
    "brokers/owner/admin-token": "owner-broker", "brokers/owner/owner-tls.key": "owner-broker",
    "brokers/owner/config.json": "owner-broker", "brokers/owner": "owner-broker",
    "brokers/provider/kek.hex": "provider-broker", "brokers/provider/keys.sqlite": "provider-broker",
    "brokers/provider": "provider-broker",
    "owner/signing.jwk": "owner", "owner/broker-admin-token": "owner", "owner": "owner",
    "provider/signing.jwk": "provider", "provider/broker-admin-token": "provider",
    "sim-tee/vcek.key": "workers", "worker/config.json": "workers",
    "redis/password": "redis", "redis/redis.conf": "redis",
    "platform/tenant-approver.jwk": "platform", "airflow/jwt-secret": "platform",
    "tls/owner/ca.key": None, "tls/provider/ca.key": None, "tls/redis/ca.key": None, "stack.env": None,
    # The supervisor's CA folder is no machine's: each reads its own copy of the public certificates.
    "tls": None, "tls/redis/ca.pem": None, "tls/ca-bundle.pem": None,
    "platform/tls/redis/ca.pem": "platform", "worker/tls/redis/ca.pem": "workers",
    "worker/tls/ca-bundle.pem": "workers", "redis/ca.pem": "redis",
}
PROBERS = ("platform", "workers", "redis", "owner-broker", "provider-broker")
# Read one byte of each file, list each folder; print what happened (errno names) and the prober's standing.
PROBE = """
import errno, json, os, sys
out = {}
for path in json.loads(sys.argv[1]):
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as fh:
                fh.read(1)
        out[path] = "read"
    except OSError as exc:
        out[path] = errno.errorcode.get(exc.errno, str(exc.errno))
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({"files": out, "uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(),
                  "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip()}))
"""


@pytest.fixture(scope="module")
def net() -> Iterator[Network]:
    with Network(list(ROLES)) as network:
        yield network


@pytest.fixture(scope="module")
def stack(net: Network, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with machines_stack(tmp_path_factory.mktemp("machine-files"), net, ROLES, workers=1, airflow=True, users=True) as s:
        yield s


@pytest.fixture(scope="module")
def batch(stack: LocalStack) -> dict[str, Any]:
    emails, submitted, status = toy_batch(stack.state_dir, "files", 60, timeout=480,
                                          approve=approve_as_platform(stack))
    return {"emails": emails, "batch": submitted, "status": status}


def probe(s: LocalStack, key: str) -> dict[str, Any]:
    """PROBE run as account `key` on its machine, over every path of SECRETS."""
    paths = [str(s.state_dir / rel) for rel in SECRETS]
    done = s.run_as(key, [sys.executable, "-c", PROBE, json.dumps(paths)])
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, Any] = json.loads(done.stdout)
    report["files"] = {str(Path(p).relative_to(s.state_dir)): r for p, r in report["files"].items()}
    return report


def uids(pids: set[int]) -> dict[int, set[int]]:
    """pid -> its real, effective, saved and filesystem uids, for the pids still running."""
    found = {}
    for pid in pids:
        try:
            line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
        except OSError:
            continue  # a task process that ended meanwhile
        found[pid] = {int(u) for u in line.split()[1:]}
    return found


def test_a_batch_runs_end_to_end_on_machines_of_separate_accounts(stack: LocalStack,
                                                                   batch: dict[str, Any]) -> None:
    assert batch["status"]["state"] == "succeeded", batch["status"].get("reason")
    anchors, policy = owner_trust(accept_simulated=True)
    results = fetch_results(TENANT, batch["batch"].batch_id, owner=Party.from_env("owner"), store=ObjectStore(),
                            anchors=anchors, policy=policy)
    assert sorted(results.table.column("message_id").to_pylist()) == sorted(e.message_id for e in batch["emails"])


def test_every_process_of_a_machine_runs_as_its_account_never_root(stack: LocalStack,
                                                                     batch: dict[str, Any]) -> None:
    expect = {"redis": "redis", "owner-broker": "owner-broker", "provider-broker": "provider-broker",
              "vision-broker": "vision-broker", "moto": "platform", "airflow-scheduler": "platform",
              "airflow-api-server": "platform", "airflow-dag-processor": "platform",
              "airflow-triggerer": "platform", "celery-worker-1": "workers"}
    assert set(stack.pids()) == set(expect)
    for name, leader in stack.pids().items():
        account = machine_users.account(expect[name])
        assert account is not None
        uid = machine_users.ensure_user(account.name)[0]
        assert uid != 0
        running = uids(procs.tree(leader))
        assert leader in running and running == {pid: {uid} for pid in running}, name
    accounts = {machine_users.ensure_user(a.name)[0] for a in machine_users.ACCOUNTS.values()}
    assert len(accounts) == len(machine_users.ACCOUNTS)  # no two parties share an account


@pytest.mark.parametrize("key", PROBERS)
def test_an_account_reads_its_own_secrets_and_no_other_partys(stack: LocalStack, batch: dict[str, Any],
                                                              key: str) -> None:
    assert batch["status"]["state"] == "succeeded"  # the key stores hold the batch's and the model's keys
    missing = [rel for rel in SECRETS if not (stack.state_dir / rel).exists()]
    assert missing == []  # a refusal below is "permission denied", never "not there"
    report = probe(stack, key)
    expected = {rel: "read" if owner == key else "EACCES" for rel, owner in SECRETS.items()}
    assert report["files"] == expected
    account = machine_users.account(key)
    assert account is not None
    uid, gid = machine_users.ensure_user(account.name)
    assert (report["uid"], report["euid"], report["groups"]) == (uid, uid, [])
    assert (int(report["cap_eff"], 16), report["no_new_privs"]) == (0, "1")  # no capability, no setuid way back


def test_the_platforms_account_cannot_list_the_state_dir_or_plant_files_in_it(stack: LocalStack) -> None:
    script = ("import os, json, sys\nout = {}\n"
              "try:\n    os.listdir(sys.argv[1]); out['list'] = 'listed'\nexcept OSError as e: out['list'] = e.errno\n"
              "try:\n    open(os.path.join(sys.argv[1], 'brokers', 'planted'), 'w'); out['plant'] = 'planted'\n"
              "except OSError as e: out['plant'] = e.errno\nprint(json.dumps(out))")
    done = stack.run_as("platform", [sys.executable, "-c", script, str(stack.state_dir)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"list": errno.EACCES, "plant": errno.EACCES}
    assert not (stack.state_dir / "brokers" / "planted").exists()


# Another machine's running processes, seen through /proc (one pid namespace here): their environment, memory,
# open files and root; and a signal (0: the permission check alone).
PROC_PROBE = """
import errno, json, os, sys
out = {}
for pid in map(int, sys.argv[1:]):
    tries = {"environ": lambda: open(f"/proc/{pid}/environ", "rb").read(1),
             "mem": lambda: open(f"/proc/{pid}/mem", "rb").close(),
             "fd": lambda: os.listdir(f"/proc/{pid}/fd"),
             "root": lambda: os.listdir(f"/proc/{pid}/root/"),
             "signal": lambda: os.kill(pid, 0)}
    for name, attempt in tries.items():
        try:
            attempt()
            out[f"{pid}:{name}"] = "done"
        except OSError as exc:
            out[f"{pid}:{name}"] = errno.errorcode[exc.errno]
print(json.dumps(out))
"""


def test_the_platforms_account_cannot_reach_into_another_machines_processes(stack: LocalStack) -> None:
    pids = stack.pids()
    foreign = [pids[name] for name in ("owner-broker", "provider-broker", "celery-worker-1", "redis")]
    own = pids["moto"]  # the platform's own process: the probe can succeed where it may
    done = stack.run_as("platform", [sys.executable, "-c", PROC_PROBE, *map(str, [*foreign, own])])
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    attempts = ("environ", "mem", "fd", "root", "signal")
    denied = {"environ": "EACCES", "mem": "EACCES", "fd": "EACCES", "root": "EACCES", "signal": "EPERM"}
    assert {k: v for k, v in found.items() if int(k.split(":")[0]) != own} == {
        f"{pid}:{name}": denied[name] for pid in foreign for name in attempts}
    assert found[f"{own}:environ"] == found[f"{own}:signal"] == "done"
