"""An active platform attacks one real local stack and gets nothing (issue 8).

One stack for the module (moto over HTTP, Redis, the simulated SEV-SNP firmware, the owner's and the
provider's key brokers and two Celery workers, each a separate process). The platform's side is played by
this test, as the platform would play it: it plans shards and sends `cscore.score_shard` by name, starts
processes of its own (a Celery worker with another configuration, a TLS-terminating relay, a key broker),
rewrites S3 objects, task arguments, broker answers (through its relay) and its own broker's database.
Airflow is left out: it only schedules what is sent here by hand.

Each attack asserts what the attacker obtains (no key bytes, no plaintext, no scores, no model bytes) and
the refusal that stopped it; honest batches on the same stack, before and after the attacks, are scored
bit for bit like plaintext onnxruntime. The last test scans every platform-side store for canaries.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import re
import select
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from celery.utils.nodenames import worker_direct
from joserfc import jwt
from joserfc.jwk import ECKey

from cscore.cli import main as cli_main
from cscore.demo import TENANT, corpus_split, onboard_tenant, owner_trust
from dags.cscore_platform import worker_pool
from dags.cscore_platform.manifest import Manifest, verify_manifest
from dags.cscore_platform.planning import plan_shards
from enclave.kbs_client import AttestedSession, EnclaveKeys
from enclave.measurement import code_measurement
from enclave.scoring import ModelSession
from enclave.signing import canonical_json, generate_signing_key, sign_json, unverified_payload
from enclave.tee import SimulatedSnpProvider
from infra.local import procs
from infra.local.parts import PY, worker_names
from infra.local.stack import LocalStack
from infra.local.util import ensure_secret, free_port
from keybroker.store import KeyStore
from keybroker.tls import create_local_ca, ensure_local_tls, issue_server_cert
from sdk.broker_admin import BrokerAdmin
from sdk.emails import Email, email_text
from sdk.models import ModelListing, find_model
from sdk.owner import OwnerKeys, SubmittedBatch, encode_part, submit_batch
from sdk.party import Party
from sdk.platform import approver_key
from sdk.provider import model_key_id, publish_baseline_model, publish_model
from sdk.results import fetch_results
from sdk.storage import ObjectStore
from sdk.training import export_onnx, train_spam_model
from tests.e2e.canaries import EMAIL_CANARIES, FLAG_CANARY, MODEL_CANARY, encoded_forms, redis_dump
from tests.stacks import running_stack
from wire.pop import POP_HEADER, POP_TYPE
from wire.tenant import approval_key, verify_approval
from wire.worker_config import CONFIG_ENV, BrokerIdentity, WorkerConfig, host_data, load_worker_config

# e2e: the module's stack sets the process environment (tests/conftest.py leaves it alone for e2e tests).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
TASK_WAIT_S = 120.0
ROGUE = f"rogue@{socket.gethostname()}"
ATTACKER = "mallory"  # the platform's own tenant, for batches of its own
_state: dict[str, Any] = {}


# -- the stack and the parties' material ------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One stack for every attack; its variables live in os.environ for the module only."""
    with running_stack(tmp_path_factory.mktemp("adv"), workers=2, airflow=False) as running:
        yield running


@pytest.fixture(scope="module")
def emails() -> list[Email]:
    _, held_out = corpus_split()
    found = [Email(e.message_id, email_text(e.raw)) for e in held_out[:600]]
    for i, canary in enumerate(EMAIL_CANARIES):  # canaries in real emails of every batch cut below
        k = i * 7
        found[k] = Email(found[k].message_id, f"{found[k].text}\n{canary}")
    return found


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    """The provider's confidential model, with a canary in its metadata (a leak of its bytes shows)."""
    train, _ = corpus_split()
    train = train[::3]  # a third of it (both labels): enough for a real model, quick to train
    model = onnx.load_from_string(export_onnx(train_spam_model([email_text(e.raw) for e in train],
                                                               [e.label for e in train])))
    entry = model.metadata_props.add()
    entry.key, entry.value = "canary", MODEL_CANARY
    return model.SerializeToString()


def _batch(emails: list[Email], tag: str, n: int) -> list[Email]:
    return [Email(f"{tag}-{e.message_id}", e.text) for e in emails[:n]]


def _submit(emails: list[Email]) -> SubmittedBatch:
    model: ModelListing = _state["model"]
    return submit_batch(emails, model, tenant=TENANT, owner=Party.from_env("owner"), store=ObjectStore(),
                        measurements=[code_measurement().hex()])


# -- the platform's own moves -------------------------------------------------------------------------

def _manifest(tenant: str, batch_id: str) -> Manifest:
    key = f"incoming/{tenant}/{batch_id}/manifest.jws"
    approver = dict(approver_key(Path(os.environ["CSCORE_STATE_DIR"]) / "platform").as_dict(private=False))
    tenant_key = verify_approval(ObjectStore().get(approval_key(tenant)).decode(), approver, tenant).key
    return verify_manifest(key, ObjectStore().get(key), tenant_key)


def _set_status(manifest: Manifest, state: str, **details: Any) -> None:
    body = {"state": state, "batch_id": manifest.batch_id, "tenant": manifest.tenant, "updated_at": time.time(),
            **details}
    ObjectStore().put(f"status/{manifest.tenant}/{manifest.batch_id}.json", json.dumps(body).encode(),
                      "application/json")


def _platform_runs(batch_id: str) -> dict[str, Any]:
    """What the DAG's steps do for one batch (attest, score by task name, result manifest, status).

    Returns the status it wrote: `succeeded`, or `failed` with the pool's reason.
    """
    manifest = _manifest(TENANT, batch_id)
    store = ObjectStore()
    card = unverified_payload(store.get(f"models/{manifest.model_name}/{manifest.model_version}/card.jws").decode(),
                              what="card")
    app = worker_pool.celery_client()
    run_id = f"adv-{uuid.uuid4().hex[:8]}"
    _set_status(manifest, "processing", run_id=run_id)
    try:
        attestation = worker_pool.attest_all(app, [manifest.broker_name, card["broker"]])
        outcomes = worker_pool.run_shards(app, plan_shards(manifest), timeout=300, progress=lambda *_: None,
                                          run_id=run_id)
    except worker_pool.WorkerPoolError as exc:
        _set_status(manifest, "failed", run_id=run_id, reason=str(exc))
        return {"state": "failed", "reason": str(exc)}
    key = f"{manifest.results_prefix}result-manifest.json"
    store.put(key, json.dumps({
        "type": "cscore.result-manifest/v1", "tenant": manifest.tenant, "batch_id": manifest.batch_id,
        "manifest_key": manifest.key, "manifest_sha256": manifest.sha256,
        "model": {"name": manifest.model_name, "version": manifest.model_version, "digest": manifest.model_digest},
        "rows": sum(o["rows"] for o in outcomes), "shards": outcomes, "attestation": attestation, "run_id": run_id,
    }, indent=1).encode(), "application/json")
    _set_status(manifest, "succeeded", run_id=run_id, result_manifest=key)
    return {"state": "succeeded"}


def _send(task: str, args: list[Any], queue: Any) -> tuple[str, str]:
    """Send a task by name, as the platform does; (Celery state, what came back: a value or the refusal)."""
    result = worker_pool.celery_client().send_task(task, args=args, queue=queue)
    value = result.get(timeout=TASK_WAIT_S, propagate=False)
    return result.state, str(value)


def _results_written(tenant: str, batch_id: str) -> list[str]:
    return ObjectStore().keys(f"results/{tenant}/{batch_id}/")


def _verified_scores(batch_id: str, texts: dict[str, str], model: bytes) -> None:
    """The owner's own verification and decryption, compared bit for bit with plaintext onnxruntime."""
    anchors, policy = owner_trust(accept_simulated=True)
    results = fetch_results(TENANT, batch_id, owner=Party.from_env("owner"), store=ObjectStore(), anchors=anchors,
                            policy=policy)
    _bit_exact(results.table, texts, model)


def _bit_exact(table: pa.Table, texts: dict[str, str], model: bytes) -> None:
    ids = table.column("message_id").to_pylist()
    assert sorted(ids) == sorted(texts)
    expected, labels = ModelSession(model).score([texts[i] for i in ids])
    got = table.column("spam_probability").to_numpy().astype(np.float32)
    assert got.tobytes() == expected.astype(np.float32).tobytes()  # bit for bit
    assert table.column("label").to_pylist() == list(labels)


def _cscore(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "cscore", "--state-dir", str(stack.state_dir), *args], env=stack.child_env(),
                          cwd=stack.repo, capture_output=True, text=True, timeout=180)


# -- 0. the honest batch ----------------------------------------------------------------------------

def test_honest_batch_is_scored_bit_exact(stack: LocalStack, emails: list[Email], model_bytes: bytes,
                                          tmp_path: Path) -> None:
    store = ObjectStore()
    provider, owner = Party.from_env("provider"), Party.from_env("owner")
    publish_model(model_bytes, "spam-filter", provider=provider, store=store,
                  allowed_measurements=[code_measurement().hex()], quota={"rows": 100_000, "period_s": 3600})
    publish_baseline_model(_small_model(), "baseline", provider=provider, store=store)
    onboard_tenant(owner, store, stack.state_dir)
    owner.trust_provider(provider.public_key())
    _state["model"] = find_model(store, "spam-filter", owner.trusted_providers())
    batch = _batch(emails, "honest", 450)  # 3 row groups: 2 shards
    flag = f"body: unknown charset '{FLAG_CANARY}': read as UTF-8"  # a reader's flag (sdk.emails)
    batch[5] = dataclasses.replace(batch[5], flags=(flag,))
    batch[6] = dataclasses.replace(batch[6], sender=f"{FLAG_CANARY} <s@example.com>", subject="hello",
                                   date="Tue, 3 Mar 2026 10:00:00 +0100")  # kept in the owner's journal only
    submitted = _submit(batch)
    assert _platform_runs(submitted.batch_id) == {"state": "succeeded"}
    out = tmp_path / "results.parquet"
    done = _cscore(stack, "owner", "results", submitted.batch_id, "--tenant", TENANT, "--accept-simulated",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert re.search(r"^emails flagged +1$", done.stdout, re.MULTILINE), done.stdout
    _bit_exact(pq.read_table(out), {e.message_id: e.text for e in batch}, model_bytes)
    flags = dict(zip(*pq.read_table(out, columns=["message_id", "flags"]).to_pydict().values(), strict=True))
    assert flags == {e.message_id: flag if e is batch[5] else "" for e in batch}  # back with its email only
    # From, Subject and Date joined back from the owner's journal, by the real program, as CSV too.
    done = _cscore(stack, "owner", "results", submitted.batch_id, "--tenant", TENANT, "--accept-simulated",
                   "--out", str(tmp_path / "results.csv"))
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    with (tmp_path / "results.csv").open(newline="") as fh:
        rows = {r["message_id"]: r for r in csv.DictReader(fh)}
    assert list(next(iter(rows.values())))[:4] == ["message_id", "from", "subject", "date"] and len(rows) == 450
    assert rows[batch[6].message_id]["from"] == f"{FLAG_CANARY} <s@example.com>"
    assert rows[batch[6].message_id]["date"].startswith("2026-03-03 09:00:00")
    assert rows[batch[7].message_id]["from"] == ""
    _state["honest"] = submitted
    # A batch the owner submits and grants; the platform sends it to its own worker first (attacks 1, 2).
    _state["victim_emails"] = victim = _batch(emails, "victim", 150)
    _state["victim"] = _submit(victim)


def _small_model() -> bytes:
    texts = ["win money now", "free prize claim", "meeting at noon", "lunch tomorrow?"] * 5
    return export_onnx(train_spam_model(texts, [1, 1, 0, 0] * 5))


def test_a_platform_that_renames_the_workers_in_its_result_manifest_is_caught_by_the_audit(
        stack: LocalStack) -> None:
    """Which worker got which key rests on what the enclave signed: the platform rewrites its own (unsigned)
    result manifest of the honest batch so that every worker name is its rogue's, before the auditor syncs."""
    honest: SubmittedBatch = _state["honest"]
    store, key = ObjectStore(), f"results/{TENANT}/{honest.batch_id}/result-manifest.json"
    original = store.get(key)
    doc = json.loads(original)
    signed = {str(s["shard_index"]): s["worker"] for s in doc["shards"]}  # as the receipts sign them
    assert signed and ROGUE not in signed.values()
    for entry in [*doc["attestation"], *doc["shards"]]:
        entry["worker"] = ROGUE
    store.put(key, json.dumps(doc).encode(), "application/json")
    try:
        assert _cscore(stack, "audit", "sync", "--state-dir", str(stack.state_dir)).returncode == 0
        verified = _cscore(stack, "audit", "verify", "--state-dir", str(stack.state_dir), "--json")
    finally:
        store.put(key, original, "application/json")
    assert verified.returncode == 1, verified.stdout[-3000:]
    found = [f["message"] for f in json.loads(verified.stdout)
             if f["check"] == "worker" and f["severity"] == "error" and f["batch_id"] == honest.batch_id]
    for index, worker in signed.items():
        assert any(f"names worker {ROGUE!r} for shard {index}, but its receipt signs {worker!r}" in m
                   for m in found), found
    assert any(f"names worker {ROGUE!r} for attested claims" in m and "but the enclave's receipt" in m
               for m in found), found


# -- 1, 2. the platform's own worker, relay and key broker ------------------------------------------

class Relay:
    """A TLS-terminating relay: presents a certificate of the attacker's CA, forwards to the real broker
    over TLS, and records every byte it sees in the clear (both directions). While `rewrite` is set, the
    connections it accepts are relayed message by message and each attest answer's JSON is passed through
    `rewrite` on its way back (the broker's own answers kept in `attest_answers`)."""

    rewrite: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def __init__(self, upstream: str, upstream_ca: Path, cert: Path, key: Path) -> None:
        host, port = upstream.removeprefix("https://").rsplit(":", 1)
        self._upstream = (host, int(port))
        self._server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_tls.load_cert_chain(cert, key)
        self._client_tls = ssl.create_default_context(cafile=str(upstream_ca))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self.recording = bytearray()
        self.attest_answers: list[dict[str, Any]] = []
        self.connections = 0
        self.failed_handshakes: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            client = self._server_tls.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            with self._lock:
                self.failed_handshakes.append(str(exc))
            conn.close()
            return
        with self._lock:
            self.connections += 1
        upstream = self._client_tls.wrap_socket(socket.create_connection(self._upstream),
                                                server_hostname=self._upstream[0])
        if self.rewrite is None:
            self._bridge(client, upstream)
        else:
            self._rewriting(client, upstream)

    def _rewriting(self, client: ssl.SSLSocket, upstream: ssl.SSLSocket) -> None:
        """HTTP/1.1 message by message (the broker's answers carry a Content-Length): requests as they are,
        attest answers rewritten while `rewrite` is set."""
        inbound, outbound = _HttpReader(client), _HttpReader(upstream)
        try:
            while (request := inbound.message()) is not None:
                upstream.sendall(request)
                answer = outbound.message()
                if answer is None:
                    return
                rewrite = self.rewrite
                if rewrite is not None and request.startswith(b"POST /kbs/v0/attest ") and b" 200 " in answer[:16]:
                    head, _, body = answer.partition(b"\r\n\r\n")
                    original = json.loads(body)
                    body = json.dumps(rewrite(original)).encode()
                    head = re.sub(rb"(?im)^content-length: *\d+", b"content-length: %d" % len(body), head)
                    answer = head + b"\r\n\r\n" + body
                    with self._lock:
                        self.attest_answers.append(original)
                with self._lock:
                    self.recording.extend(request + answer)
                client.sendall(answer)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                sock.close()

    def _bridge(self, a: ssl.SSLSocket, b: ssl.SSLSocket) -> None:
        """Both directions in one thread: an SSL socket read and written from two threads at once can stall."""
        peers = {a: b, b: a}
        try:
            for sock in peers:
                sock.settimeout(30)
            while True:
                ready = [s for s in peers if s.pending()] or select.select(list(peers), [], [], 30)[0]
                if not ready:
                    return
                for sock in ready:
                    sock.settimeout(0.0)  # a record without application data (a TLS 1.3 ticket) must not block
                    try:
                        chunk = sock.recv(65536)
                    except ssl.SSLWantReadError:
                        continue  # nothing to forward yet: the other direction may be waiting
                    finally:
                        sock.settimeout(30)
                    if not chunk:
                        return
                    with self._lock:
                        self.recording.extend(chunk)
                    peers[sock].sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in peers:
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


class _HttpReader:
    """Whole HTTP/1.1 messages from a socket: the head, then as many body bytes as its Content-Length says."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock, self._buffer = sock, b""

    def message(self) -> bytes | None:
        while b"\r\n\r\n" not in self._buffer:
            if not self._read():
                return None
        head, _, _ = self._buffer.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        size = len(head) + 4 + (int(length.group(1)) if length else 0)
        while len(self._buffer) < size:
            if not self._read():
                return None
        message, self._buffer = self._buffer[:size], self._buffer[size:]
        return message

    def _read(self) -> bool:
        chunk = self._sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)


def _platform_broker(stack: LocalStack) -> tuple[str, Path, BrokerAdmin]:
    """A third key broker, the platform's own: its config accepts the simulated root for its own keys.

    Its name is "platform", as the rogue configuration lists it (a broker attests only a worker that names it:
    keybroker.app attest); its grants name it as their issuer, which is whatever a broker says.
    """
    folder = stack.state_dir / "brokers" / "platform"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tls = ensure_local_tls(stack.state_dir / "tls" / "platform", folder, "platform")
    config = {"name": "platform", "host": "127.0.0.1", "port": port, "db_path": str(folder / "keys.sqlite"),
              "kek_path": str(folder / "kek.hex"), "admin_token_path": str(folder / "admin-token"),
              "trusted_roots_dir": os.environ["CSCORE_SIM_TEE_DIR"], "accept_simulated": True,
              "simulated_key_ids": [f"{ATTACKER}.*", "grant:*"], "token_ttl_s": 300,
              "tls_cert_path": str(tls.cert), "tls_key_path": str(tls.key)}
    ensure_secret(folder / "kek.hex", lambda: os.urandom(32).hex())
    token = ensure_secret(folder / "admin-token", lambda: uuid.uuid4().hex)
    (folder / "config.json").write_text(json.dumps(config))
    stack.spawn("platform-broker", [PY, "-m", "keybroker", "serve", "--config", str(folder / "config.json")])
    url = f"https://127.0.0.1:{port}"
    admin = BrokerAdmin(url, token, ca_bundle=str(tls.ca_cert))
    deadline = time.monotonic() + 60
    while True:
        try:
            admin.grant_key()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    return url, tls.ca_cert, admin


def _start_rogue(stack: LocalStack, config: WorkerConfig) -> procs.Part:
    """The same worker code, launched by the platform with a configuration of its choosing (its HOST_DATA)."""
    path = stack.state_dir / "worker" / "rogue-config.json"
    path.write_text(json.dumps(config.to_json()))
    env = {k: v for k, v in stack.child_env().items() if k != "PYTHONPATH"}
    env[CONFIG_ENV] = str(path)
    part = procs.spawn("celery-rogue", [PY, "-P", "-m", "celery", "-A", "tasks.celery_app", "worker", "-n",
                                        "rogue@%h", "-Q", "cscore.rogue", "--concurrency=1", "--loglevel=INFO"],
                       env, stack.state_dir, stack.repo)
    stack.parts[part.name] = part  # stopped with the stack if this module dies early
    app = worker_pool.celery_client()
    deadline = time.monotonic() + 120
    while not app.control.ping(destination=[ROGUE], timeout=1.0):
        assert part.popen.poll() is None, procs.log_tail(part.log_file)
        assert time.monotonic() < deadline, procs.log_tail(part.log_file)
    return part


@pytest.fixture(scope="class")
def rogue(stack: LocalStack) -> Iterator[dict[str, Any]]:
    """The relay, the platform's broker and the platform's worker, for the attacks of one class only
    (a live rogue would answer the platform's pings and take part in later honest batches)."""
    honest, _ = load_worker_config(os.environ[CONFIG_ENV])
    attacker_ca, attacker_key = create_local_ca(stack.state_dir / "tls" / "attacker")
    cert, key = issue_server_cert(attacker_ca, attacker_key, stack.state_dir / "tls" / "attacker", "relay")
    owner = honest.owner("owner")
    relay = Relay(owner.url, stack.broker_cas["owner"], cert, key)
    platform_url, platform_ca, platform_admin = _platform_broker(stack)
    config = WorkerConfig("simulated-sev-snp", (
        BrokerIdentity("owner", relay.url, attacker_ca.read_text()),  # the relay, with the attacker's CA
        BrokerIdentity("platform", platform_url, platform_ca.read_text()),  # the platform's own "owner"
        BrokerIdentity("owner-pinned", relay.url, owner.ca_pem),  # the relay, with the owner's genuine CA
    ), honest.providers)
    part = _start_rogue(stack, config)
    try:
        yield {"relay": relay, "config": config, "platform": platform_admin, "honest": honest}
    finally:
        relay.close()
        procs.kill_trees([part.pid], 15.0)
        part.popen.wait(timeout=15)
        stack.parts.pop(part.name, None)
        part.pid_file.unlink(missing_ok=True)


@contextlib.contextmanager
def _broker_store(stack: LocalStack, broker: str) -> Iterator[KeyStore]:
    """A running broker's own store, opened beside it (the test sees all)."""
    folder = stack.state_dir / "brokers" / broker
    store = KeyStore(folder / "keys.sqlite", bytes.fromhex((folder / "kek.hex").read_text().strip()))
    try:
        yield store
    finally:
        store.close()


def _owner_keys(stack: LocalStack, tenant: str, batch_id: str) -> list[bytes]:
    """The batch's master keys as the owner broker holds them (read from its store: the test sees all)."""
    with _broker_store(stack, "owner") as store:
        records = [store.get_key(k) for k in OwnerKeys.for_batch(tenant, batch_id).all()]
    return [r.material for r in records if r is not None]


def _provider_usage(stack: LocalStack) -> list[tuple[Any, ...]]:
    """Every row the provider's broker metered against its quotas (owner, batch, key, rows), read from its store."""
    path = stack.state_dir / "brokers" / "provider" / "keys.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT owner, batch_id, key_id, rows FROM usage ORDER BY owner, batch_id").fetchall()



class TestThePlatformsOwnWorker:
    def test_a_relay_that_rewrites_the_attest_answers_claims_fails_the_batch_by_name(
            self, rogue: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        """The platform's worker pool includes its own worker, which reaches the owner broker through the relay:
        the relay strips the claims of the broker's attest answer, or rewrites their HOST_DATA to the honest
        configuration's (the worker's verdict, in the result manifest, would then name a configuration the owner
        granted), and leaves the token, which still works. The worker refuses the answer; the batch fails, named."""
        victim: SubmittedBatch = _state["victim"]
        relay: Relay = rogue["relay"]
        owner = Party.from_env("owner").broker()
        last = owner.decisions()[-1]["seq"]
        honest_host_data = rogue["honest"].digest_hex()
        rewrites: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "claims stripped": lambda answer: {k: v for k, v in answer.items() if k != "claims"},
            "HOST_DATA rewritten": lambda answer: {**answer, "claims": {**answer["claims"],
                                                                       "host_data": honest_host_data}},
        }
        pinged = worker_pool.live_workers  # the platform's pool is what it says: its own worker in it, however slow
        monkeypatch.setattr(worker_pool, "live_workers",
                            lambda app, timeout=3.0: sorted({*pinged(app, timeout), ROGUE}))
        signed_digests = []
        for name, rewrite in rewrites.items():
            relay.rewrite, seen = rewrite, len(relay.attest_answers)
            try:
                status = _platform_runs(victim.batch_id)
            finally:
                relay.rewrite = None
            assert len(relay.attest_answers) == seen + 1, (name, status)  # the rogue attested once, via the relay
            answer = relay.attest_answers[-1]
            signed = answer["claims"]
            assert signed["host_data"] == rogue["config"].digest_hex() != honest_host_data  # what the broker saw
            expected = hashlib.sha256(canonical_json(signed)).hexdigest()
            signed_digests.append(expected)
            actual = hashlib.sha256(canonical_json(rewrite(answer).get("claims"))).hexdigest()
            assert status == {"state": "failed", "reason": (
                f"worker {ROGUE} failed attestation: KbsError: broker answered 502: the attest answer's claims are "
                "not those its token carries (rewritten on the way?); attest again over a connection the platform "
                f'cannot rewrite (TLS) (field claims; expected "{expected}"; actual "{actual}")')}, name
            assert _results_written(TENANT, victim.batch_id) == [], name
        # The broker logged the claims it signed; nothing was released for the batch, to any worker.
        decided = owner.decisions(after=last)
        assert [d["decision"] for d in decided if d["claims_digest"] in signed_digests] == ["allow", "allow"]
        assert [d for d in decided if d["operation"] != "attest"] == []
        assert b"/kbs/v0/unwrap" not in relay.recording and b'"jwe"' not in relay.recording
        # Resubmitted on the honest path (the rogue gone from the pool): test_the_victim_batch_is_then_scored_honestly.

    def test_a_relay_in_front_of_the_owner_broker_gets_no_key(self, stack: LocalStack,
                                                              rogue: dict[str, Any]) -> None:
        victim: SubmittedBatch = _state["victim"]
        spec = plan_shards(_manifest(TENANT, victim.batch_id))[0]
        state, refusal = _send("cscore.score_shard", [spec], worker_direct(ROGUE))
        assert state == "FAILURE"
        # The owner broker itself refused: the rogue's HOST_DATA is not a configuration the owner granted.
        assert "config-granted" in refusal and "HOST_DATA" in refusal, refusal
        assert rogue["config"].digest_hex() != rogue["honest"].digest_hex()
        assert _results_written(TENANT, victim.batch_id) == []
        relay: Relay = rogue["relay"]
        seen = bytes(relay.recording)
        # The relay did carry the session (attestation and the refused request) ...
        assert relay.connections >= 1 and b"/kbs/v0/attest" in seen and b"policy-denied" in seen
        # ... and no key: no JWE answer at all, no byte of the batch's keys in any encoding.
        assert b'"jwe"' not in seen
        assert not re.search(rb"eyJ[\w-]+\.[\w-]*\.[\w-]+\.[\w-]+\.[\w-]+", seen)  # no compact JWE (5 parts)
        keys = _owner_keys(stack, TENANT, victim.batch_id)
        assert len(keys) == 3 and not [k for k in keys for form in encoded_forms(k) if form in seen]
        assert not [c for c in EMAIL_CANARIES if c.encode() in seen]

    def test_the_relay_with_the_owners_genuine_ca_fails_the_handshake(self, rogue: dict[str, Any]) -> None:
        relay: Relay = rogue["relay"]
        before = len(relay.recording)
        state, refusal = _send("cscore.attest", [["owner-pinned"]], worker_direct(ROGUE))
        assert state == "FAILURE"
        assert "BrokerUnreachable" in refusal and "CERTIFICATE_VERIFY_FAILED" in refusal, refusal
        # The relay's thread records the handshake it lost after the worker has already given up: wait for it.
        deadline = time.monotonic() + 30
        while not relay.failed_handshakes and time.monotonic() < deadline:
            time.sleep(0.1)
        assert relay.failed_handshakes and len(relay.recording) == before  # not a byte in the clear

    def test_the_platforms_own_owner_broker_gets_no_model(self, stack: LocalStack, rogue: dict[str, Any]) -> None:
        platform: BrokerAdmin = rogue["platform"]
        model: ModelListing = _state["model"]
        batch_id, spec = _platform_batch(stack, platform, rogue["config"])
        state, refusal = _send("cscore.score_shard", [spec], worker_direct(ROGUE))
        assert state == "FAILURE"
        # The provider's broker refused: the grant's signing key is no registered owner broker's.
        assert "owner-granted" in refusal and "model_grant.kid" in refusal, refusal
        granted = [d for d in platform.decisions() if d["operation"] == "model-grant"]
        assert granted and granted[-1]["decision"] == "allow"  # the platform's broker did sign a grant
        assert _results_written(ATTACKER, batch_id) == []
        assert ObjectStore().keys(f"usage/{model.name}/{ATTACKER}/") == []

    def test_a_registered_owner_brokers_refund_grant_gives_no_quota_back(self, stack: LocalStack,
                                                                          rogue: dict[str, Any]) -> None:
        """The platform, a registered owner of the provider too (its broker's grant key registered), edits its
        own broker's grant of a batch to 0 or -100 rows, which that broker then signs as it is: metered as
        given, the negative count would hand the platform quota back. The provider refuses the grant, meters
        nothing, and its quota use is what it was."""
        platform: BrokerAdmin = rogue["platform"]
        provider = Party.from_env("provider").broker()
        usage = _provider_usage(stack)
        last = provider.decisions()[-1]["seq"]
        provider.register_owner("platform", platform.grant_key())
        try:
            for rows in (0, -100):
                batch_id, spec = _platform_batch(stack, platform, rogue["config"], rows=rows)
                state, refusal = _send("cscore.score_shard", [spec], worker_direct(ROGUE))
                assert (state, refusal) == ("FAILURE", (
                    f"KbsError: broker answered 403: key '{model_key_id('spam-filter')}': owner-granted: every batch "
                    "needs a fresh grant from a registered owner's broker (field grant; expected \"a model grant for "
                    "this batch from an owner broker registered here\"; actual \"model_grant.rows: expected at least "
                    f'1, got {rows}\")'))
                assert _results_written(ATTACKER, batch_id) == []
        finally:
            provider.register_owner("platform", _fresh_grant_key())  # re-keyed: the platform's key revoked
        decided = provider.decisions(after=last)
        refused = [d for d in decided if d["operation"] == "unwrap" and d["batch_id"].startswith("extract-")]
        assert len(refused) == 2 and {d["decision"] for d in refused} == {"deny"}
        assert [d for d in decided if d["operation"] == "meter"] == []
        assert _provider_usage(stack) == usage


def _platform_batch(stack: LocalStack, platform: BrokerAdmin, config: WorkerConfig,
                    rows: int | None = None) -> tuple[str, dict[str, Any]]:
    """A batch the platform submits as its own owner, granted by its broker to its own worker's configuration:
    (batch id, shard spec). `rows`: the count its broker's grant then says, written into that broker's store
    (its admin API takes at least 1 row; the broker is the platform's, and so is its database)."""
    model: ModelListing = _state["model"]
    batch_id = f"extract-{uuid.uuid4().hex[:6]}"
    keys = OwnerKeys.for_batch(ATTACKER, batch_id)
    for key_id in keys.all():
        platform.create_key(key_id, kind="result" if key_id == keys.results else "data")
    # Single-word emails: each score would give a coefficient of the model away.
    words = ["free", "money", "meeting", "viagra", "lunch", "winner", "invoice", "click"]
    table = pa.table({"message_id": [f"w{i}" for i in range(len(words))], "text": words})
    input_key = f"incoming/{ATTACKER}/{batch_id}/part-00000.parquet"
    # Written as an owner writes its parts (footer binding and all): the platform is its own owner here.
    data, file_id = encode_part(table, platform, keys, tenant=ATTACKER, batch_id=batch_id, key=input_key)
    ObjectStore().put(input_key, data)
    terms = ([code_measurement().hex()], keys.all())
    platform.grant(batch_id, model.digest, *terms, config_digests=[config.digest_hex()], rows=len(words))
    if rows is not None:
        with _broker_store(stack, "platform") as store:
            store.put_grant(batch_id, model.digest, *terms, config_digests=[config.digest_hex()], rows=rows)
    spec = {**_spec(ATTACKER, batch_id, input_key, data, model, owner_broker="platform", keys=keys),
            "input_file_id": file_id}
    return batch_id, spec


def _spec(tenant: str, batch_id: str, input_key: str, data: bytes, model: ModelListing, *, owner_broker: str,
          keys: OwnerKeys, protection: str = "pme") -> dict[str, Any]:
    prefix = f"results/{tenant}/{batch_id}/shard-00000"
    return {"tenant": tenant, "batch_id": batch_id, "shard_index": 0, "input_key": input_key,
            "input_sha256": hashlib.sha256(data).hexdigest(), "row_group_start": 0, "row_group_end": 1,
            "model_name": model.name, "model_version": model.version, "model_digest": model.digest,
            "owner_broker": owner_broker, "footer_key": keys.footer, "column_key": keys.emails,
            "result_key": keys.results, "output_key": f"{prefix}.parquet", "receipt_key": f"{prefix}.receipt.jws",
            "protection": protection}


def test_the_victim_batch_is_then_scored_honestly(stack: LocalStack, model_bytes: bytes) -> None:
    """The batch the platform first sent to its own worker: the honest workers score it, bit for bit."""
    victim: SubmittedBatch = _state["victim"]
    assert _platform_runs(victim.batch_id) == {"state": "succeeded"}
    _verified_scores(victim.batch_id, {e.message_id: e.text for e in _state["victim_emails"]}, model_bytes)


# -- 2b. a JWS by the attested key, typed otherwise, as a proof of possession ---------------------------

def test_a_jws_by_the_attested_tee_key_not_typed_as_a_proof_is_refused_over_https(stack: LocalStack) -> None:
    """Nothing the platform sees is signed by a worker's attested tee key: that key signs only proofs of
    possession, sent inside TLS to a pinned broker (receipts, usage records and tuned cards are signed by the
    Ed25519 receipt key, which no ES256 proof verifies under; log checkpoints by the broker). So the enclave's
    side is played here: a session attested to the running owner broker, as an honest worker's, presents a JWS
    its tee key signed over exactly the request but typed otherwise. The type alone refuses it: the same
    request typed as a proof is answered."""
    honest, _ = load_worker_config(os.environ[CONFIG_ENV])
    owner, admin = honest.owner("owner"), Party.from_env("owner").broker()
    keys = EnclaveKeys()
    evidence = SimulatedSnpProvider(Path(os.environ["CSCORE_SIM_TEE_DIR"]), code_measurement(),
                                    host_data=host_data(honest.digest()))
    session = AttestedSession(owner.url, evidence, ca_pem=owner.ca_pem, keys=keys, party="owner", broker_name="owner")
    batch_id = f"pop-{uuid.uuid4().hex[:6]}"
    key_id, model_digest, plain = f"{TENANT}.{batch_id}.footer", "sha256:" + "ab" * 32, os.urandom(32)
    admin.create_key(key_id)
    admin.grant(batch_id, model_digest, [code_measurement().hex()], [key_id], config_digests=[honest.digest_hex()],
                rows=1)
    body = {"key_id": key_id, "wrapped": base64.b64encode(admin.wrap(key_id, plain)).decode(), "batch_id": batch_id,
            "model_digest": model_digest}
    try:
        token, content = session.attest(batch_id).token, canonical_json(body)
        for typ in ("JWT", "kbs-log-checkpoint", "dpop+jwt"):
            claims = {"htm": "POST", "htu": "/kbs/v0/unwrap", "iat": int(time.time()), "jti": uuid.uuid4().hex,
                      "ath": _b64url(hashlib.sha256(token.encode()).digest()),
                      "bh": _b64url(hashlib.sha256(content).digest())}
            proof = jwt.encode({"alg": "ES256", "typ": typ}, claims, keys.tee_key, algorithms=["ES256"])
            answer = session._http.post("/kbs/v0/unwrap", content=content, headers={
                "Authorization": f"Bearer {token}", POP_HEADER: proof, "Content-Type": "application/json"})
            assert answer.status_code == 401, (typ, answer.text)
            problem = answer.json()
            assert (problem["type"], problem["detail"], problem["field"], problem["expected"], problem["actual"]) == (
                "urn:cscore:keybroker:pop-invalid", f"the {POP_HEADER} header is not typed as a proof of possession",
                f"{POP_HEADER}.typ", POP_TYPE, typ), typ
            assert "jwe" not in problem
        # The same token, key and request, typed as a proof: released (the key the test wrapped, nobody's secret).
        assert session.unwrap(key_id, base64.b64decode(body["wrapped"]), batch_id=batch_id,
                              model_digest=model_digest) == plain
    finally:
        session.close()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- 3. the provider revokes; warm workers must ask again -------------------------------------------

def test_a_revoked_measurement_or_owner_stops_the_next_batch_on_warm_workers(
        stack: LocalStack, emails: list[Email], model_bytes: bytes) -> None:
    provider = Party.from_env("provider").broker()
    key_id = model_key_id("spam-filter")
    honest = code_measurement().hex()
    revocations = {
        "measurement-allowed": (lambda: provider.set_policy(key_id, None, measurements=["00" * 48]),
                                lambda: provider.set_policy(key_id, None, measurements=[honest])),
        "model_grant.kid": (lambda: provider.register_owner("owner", _fresh_grant_key()),
                            lambda: provider.register_owner("owner", Party.from_env("owner").broker().grant_key())),
    }
    for index, (clause, (revoke, restore)) in enumerate(revocations.items()):
        batch = _batch(emails, f"revoked{index}", 100)
        submitted = _submit(batch)
        revoke()
        try:
            status = _platform_runs(submitted.batch_id)
        finally:
            restore()
        assert status["state"] == "failed" and clause in status["reason"], (clause, status)
        assert _results_written(TENANT, submitted.batch_id) == []
        # Restored: the same batch, sent again, is scored (the cache was never what authorised it).
        assert _platform_runs(submitted.batch_id) == {"state": "succeeded"}
        _verified_scores(submitted.batch_id, {e.message_id: e.text for e in batch}, model_bytes)


def _fresh_grant_key() -> dict[str, Any]:
    """Another key under the owner broker's registered name: the provider re-keys (revokes) that owner."""
    return dict(ECKey.generate_key("P-256", private=True).as_dict(private=False))


# -- 4. plaintext scores without a broker -----------------------------------------------------------

def _plaintext_input(batch_id: str, texts: list[str]) -> tuple[str, bytes]:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"message_id": [f"p{i}" for i in range(len(texts))], "text": texts}), sink,
                   row_group_size=200)
    data = sink.getvalue().to_pybytes()
    key = f"incoming/{ATTACKER}/{batch_id}/part-00000.parquet"
    ObjectStore().put(key, data)
    return key, data


def test_plaintext_shards_naming_a_confidential_model_are_refused(stack: LocalStack) -> None:
    model: ModelListing = _state["model"]
    baseline = find_model(ObjectStore(), "baseline", Party.from_env("owner").trusted_providers())
    keys = OwnerKeys.for_batch(ATTACKER, "none")
    queue = worker_direct(worker_names(2)[0])
    cases = {
        "confidential": (model, "PlaintextRefused", "card.protection 'none'"),
        # the baseline card, with the confidential model's digest: the card does not describe that model
        "baseline card, confidential digest": (dataclasses.replace(baseline, digest=model.digest),
                                               "ModelIntegrityError", model.digest),
    }
    for name, (listing, error, detail) in cases.items():
        batch_id = f"plain-{uuid.uuid4().hex[:6]}"
        key, data = _plaintext_input(batch_id, ["free money now", "see you at lunch"])
        spec = _spec(ATTACKER, batch_id, key, data, listing, owner_broker="owner", keys=keys, protection="none")
        state, refusal = _send("cscore.score_shard", [spec], queue)
        assert state == "FAILURE" and error in refusal and detail in refusal, (name, refusal)
        assert _results_written(ATTACKER, batch_id) == [], name
    # Control: the model its provider published unencrypted is scored in plaintext, as the baseline allows.
    batch_id = f"plain-{uuid.uuid4().hex[:6]}"
    key, data = _plaintext_input(batch_id, ["free money now", "see you at lunch"])
    state, value = _send("cscore.score_shard", [_spec(ATTACKER, batch_id, key, data, baseline, owner_broker="owner",
                                                      keys=keys, protection="none")], queue)
    assert state == "SUCCESS", value
    assert len([k for k in _results_written(ATTACKER, batch_id) if k.endswith(".parquet")]) == 1


# -- 5. spec and card tampering ---------------------------------------------------------------------

def test_tampered_specs_and_cards_are_refused_before_any_key(stack: LocalStack, emails: list[Email]) -> None:
    store = ObjectStore()
    batch = _batch(emails, "tamper", 50)
    submitted = _submit(batch)
    spec = plan_shards(_manifest(TENANT, submitted.batch_id))[0]
    queue = worker_direct(worker_names(2)[0])
    state, refusal = _send("cscore.score_shard", [{**spec, "owner_broker": "platform-broker"}], queue)
    assert state == "FAILURE" and "FormatError" in refusal and "owner_broker" in refusal, refusal
    assert "'platform-broker'" in refusal or "platform-broker" in refusal

    model: ModelListing = _state["model"]
    card_key = f"models/{model.name}/{model.version}/card.jws"
    genuine = store.get(card_key)
    payload = unverified_payload(genuine.decode(), what="card")
    attacker = generate_signing_key()
    stripped = {k: v for k, v in payload.items() if k not in ("quota", "output")}
    header, _, signature = genuine.decode().split(".")
    forged = {
        "re-signed by another key": sign_json(payload, attacker),
        "quota and precision stripped, re-signed": sign_json(stripped, attacker),
        "quota stripped, provider's signature kept": ".".join(
            [header, base64.urlsafe_b64encode(canonical_json(stripped)).rstrip(b"=").decode(), signature]),
    }
    try:
        for name, token in forged.items():
            store.put(card_key, token.encode(), "application/jose")
            state, refusal = _send("cscore.score_shard", [spec], queue)
            assert state == "FAILURE" and "card.signature" in refusal, (name, refusal)
            assert _results_written(TENANT, submitted.batch_id) == [], name
    finally:
        store.put(card_key, genuine, "application/jose")


# -- 6. the owner's tools against what the platform rewrote ------------------------------------------

def test_the_owner_tool_refuses_rewritten_results_in_one_line(stack: LocalStack, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Each rewrite: a non-zero exit and one line naming the object and the check; nothing decrypted."""
    store = ObjectStore()
    honest: SubmittedBatch = _state["honest"]
    prefix = f"results/{TENANT}/{honest.batch_id}/"
    evidence = sorted(k for k in store.keys(prefix + "evidence/"))
    doc = json.loads(store.get(evidence[0]))
    doc["runtime_data"]["receipt_pubkey"] = {"kty": "OKP", "crv": "Ed25519", "x": "A" * 43}  # the platform's key
    receipt0, receipt1 = prefix + "shard-00000.receipt.jws", prefix + "shard-00001.receipt.jws"
    foreign = f"results/{TENANT}/{_state['victim'].batch_id}/shard-00000.receipt.jws"
    flags_key = f"incoming/{TENANT}/{honest.batch_id}/flags.parquet"
    simulated = ("--accept-simulated",)
    cases = {
        "garbage manifest": ({prefix + "result-manifest.json": b"\x00garbage{"}, simulated,
                             prefix + "result-manifest.json", "expected JSON"),
        "evidence deleted": ({evidence[0]: None}, simulated, evidence[0], "found nothing"),
        "evidence rewritten": ({evidence[0]: json.dumps(doc).encode()}, simulated, evidence[0][len(prefix):],
                               "evidence"),
        "receipt of another shard": ({receipt0: store.get(receipt1)}, simulated, receipt0,
                                     "shard_index expected 0, got 1"),
        "receipt of another batch": ({receipt0: store.get(foreign)}, simulated, receipt0, "batch_id"),
        # The owner's flags travel beside the inputs, pinned by its signed manifest: none dropped, none swapped.
        "flags deleted": ({flags_key: None}, simulated, flags_key, "found nothing"),
        "flags of another batch": ({flags_key: store.get(f"incoming/{TENANT}/{_state['victim'].batch_id}/flags"
                                                         ".parquet")}, simulated, flags_key, "sha256 expected"),
        # The owner did not say it accepts the simulated TEE: its evidence is refused by name, not by a crash.
        "simulated evidence, not accepted": ({}, (), "evidence/", "evidence.cert_chain.ark"),
    }
    for index, (name, (changes, flags, obj, check)) in enumerate(cases.items()):
        saved = {k: store.get(k) for k in changes}
        for k, v in changes.items():
            store.delete(k) if v is None else store.put(k, v)
        out = tmp_path / f"{index}.parquet"
        argv = ["owner", "results", honest.batch_id, "--tenant", TENANT, *flags, "--out", str(out)]
        try:
            if index == 0:  # the real program once: what its user sees, exit code and all
                done = _cscore(stack, *argv)
                rc, stderr = done.returncode, done.stderr
            else:  # the same main() in this process (an escaping exception would fail the test here)
                rc, stderr = cli_main(["--state-dir", str(stack.state_dir), *argv]), capsys.readouterr().err
        finally:
            for k, v in saved.items():
                store.put(k, v)
        lines = stderr.strip().splitlines()
        assert rc != 0, name
        assert len(lines) == 1 and "Traceback" not in stderr, (name, stderr)
        assert obj in lines[0] and check in lines[0], (name, lines[0])
        assert not out.exists(), name
    assert cli_main(["--state-dir", str(stack.state_dir), "owner", "results", honest.batch_id, "--tenant", TENANT,
                     *simulated]) == 0  # restored: verifies again


def test_the_provider_refuses_usage_records_the_platform_copied_or_signed_and_names_dropped_ones(
        stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    """The provider's bill comes from records the platform stores: a genuine record copied under a second shard's
    key, or one the platform signed itself beside genuine evidence, is refused by name, not counted; a batch whose
    records the platform deleted is named from the provider broker's own log of releases."""
    store = ObjectStore()
    honest: SubmittedBatch = _state["honest"]
    folder = f"usage/spam-filter/{TENANT}/{honest.batch_id}/"
    genuine = store.get(folder + "shard-00000.jws")
    payload = {**unverified_payload(genuine.decode(), what="usage"), "shard_index": 8, "rows": 1_000_000}
    argv = ["--state-dir", str(stack.state_dir), "provider", "usage", "--model", "spam-filter", "--accept-simulated",
            "--json"]
    assert cli_main(argv) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["per_owner"][TENANT][1] >= 450  # the honest batch's 450 rows at least
    cases = {
        "copied": (folder + "shard-00009.jws", genuine, "shard_index expected 9 (from where it is stored), got 0"),
        "platform-signed": (folder + "shard-00008.jws", sign_json(payload, generate_signing_key()).encode(),
                            "receipt.signature"),
    }
    for name, (key, record, check) in cases.items():
        store.put(key, record)
        try:
            rc, err = cli_main(argv), capsys.readouterr().err
        finally:
            store.delete(key)
        assert rc == 2 and err.strip().count("\n") == 0 and key in err and check in err, (name, rc, err)
    assert cli_main(argv) == 0 and json.loads(capsys.readouterr().out) == before  # restored: the same bill
    assert honest.batch_id not in before["released_without_records"]
    saved = {key: store.get(key) for key in store.keys(folder)}
    for key in saved:  # the platform drops the batch's records: the broker's log of releases still names it
        store.delete(key)
    try:
        assert cli_main(argv) == 0
        dropped = json.loads(capsys.readouterr().out)
    finally:
        for key, record in saved.items():
            store.put(key, record)
    assert honest.batch_id in dropped["released_without_records"]
    assert dropped["per_owner"][TENANT][1] == before["per_owner"][TENANT][1] - 450


# -- 7. no canary, key or model byte anywhere the platform looks -------------------------------------


def test_no_canary_key_or_model_byte_in_any_platform_store(stack: LocalStack, model_bytes: bytes) -> None:
    store = ObjectStore()
    card = unverified_payload(store.get(f"models/spam-filter/{_state['model'].version}/card.jws").decode(),
                              what="card")
    dek = Party.from_env("provider").broker().unwrap(card["key_id"], base64.b64decode(card["wrapped_dek"]))
    owner_keys = [k for key in store.keys(f"incoming/{TENANT}/") if key.endswith("manifest.jws")
                  for k in _owner_keys(stack, TENANT, key.split("/")[2])]
    assert len(owner_keys) >= 12  # every batch of the module, three keys each
    secrets = ([c.encode() for c in [MODEL_CANARY, FLAG_CANARY, *EMAIL_CANARIES]] + encoded_forms(dek)
               + [f for k in owner_keys for f in encoded_forms(k)] + [model_bytes[1000:1064]])
    stores = {
        "s3": b"\n".join(store.get(k) for k in store.keys("")),
        "redis": redis_dump(stack),
        "process logs (workers, rogue worker, brokers)": b"\n".join(
            p.read_bytes() for p in (stack.state_dir / "logs").rglob("*") if p.is_file()),
    }
    assert len(stores["s3"]) > 100_000  # the scan reads real content: ciphertext, receipts, evidence
    assert b"cscore.score_shard" in stores["process logs (workers, rogue worker, brokers)"]
    assert b"celery-rogue" in b"".join(p.name.encode() for p in (stack.state_dir / "logs").iterdir())
    leaks = [(name, s[:24]) for name, blob in stores.items() for s in secrets if s in blob]
    assert leaks == []
