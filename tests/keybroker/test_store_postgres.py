"""The key store on both backends: SQLite (`db_path`, the default) and PostgreSQL (`db_url`).

Every store test runs on both. The Postgres ones need the server of CI and the dev machine
(127.0.0.1:5432, trust auth, user postgres; `CSCORE_TEST_POSTGRES_URL` names another maintenance database):
they create one uniquely named database for the session, one schema per test, and drop the database at the
end. If the server is unreachable they fail, saying so; they never skip.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import sql

from keybroker.config import BrokerConfig
from keybroker.store import KeyStore, StoreError, redact_url
from tests.keybroker.conftest import MEASUREMENT, REPO, BrokerProcess
from tests.keybroker.inproc import GOOD, OTHER, Env
from wire.decision_log import GENESIS, verify_chain

ADMIN_URL = os.environ.get("CSCORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
START_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def _with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path=f"/{name}").geturl()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of this test session only (dropped at the end); its URL."""
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is unreachable at {redact_url(ADMIN_URL)}: the key broker's Postgres store tests "
                    f"need it (CI runs one). Start it with `{START_HINT}`. Driver error: {exc}", pytrace=False)
    name = f"cscore_kb_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield _with_database(ADMIN_URL, name)
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A fresh schema in the session's database; the URL puts it first on the search path."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield f"{pg_database}?options={quote(f'-csearch_path={schema}')}"
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@dataclass
class Backend:
    """One store location and a direct connection to it that bypasses the store (as an intruder would)."""

    name: str
    target: Path | str
    kek: bytes

    def open(self, kek: bytes | None = None) -> KeyStore:
        return KeyStore(self.target, kek or self.kek)

    def raw(self, statement: str) -> list[Any]:
        """Run one statement outside the store; the driver's error propagates."""
        if isinstance(self.target, Path):
            db = sqlite3.connect(self.target, isolation_level=None)
            try:
                return db.execute(statement).fetchall()
            finally:
                db.close()
        with psycopg.connect(self.target, autocommit=True) as conn:
            cur = conn.execute(statement.encode())
            return cur.fetchall() if cur.description else []


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    target: Path | str = tmp_path / "keys.sqlite" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    return Backend(request.param, target, secrets.token_bytes(32))


@pytest.fixture
def store(backend: Backend) -> Iterator[KeyStore]:
    opened = backend.open()
    yield opened
    opened.close()


def _reopen(backend: Backend, store: KeyStore) -> KeyStore:
    """A broker restart: the old store is closed, a new one opens the same location."""
    store.close()
    return backend.open()


def test_keys_and_broker_secrets_survive_a_restart_sealed_under_the_kek(backend: Backend, store: KeyStore) -> None:
    assert store.backend == ("sqlite" if backend.name == "sqlite" else "postgresql")
    material = secrets.token_bytes(32)
    record, created = store.create_key("k-1", "data", material, None, [GOOD], {"min_tcb": {"snp": 3}})
    assert created and record.material == material
    assert store.create_key("k-1", "data", b"x" * 32, None, [])[1] is False  # existing key kept
    token_key = store.broker_secret("token-signing", lambda: b"signing-key")
    store = _reopen(backend, store)
    try:
        again = store.get_key("k-1")
        assert again is not None and again.material == material and again.measurements == [GOOD]
        assert again.settings == {"min_tcb": {"snp": 3}} and again.created == record.created
        assert store.broker_secret("token-signing", lambda: pytest.fail("regenerated")) == token_key
        assert [k["key_id"] for k in store.list_keys()] == ["k-1"]
    finally:
        store.close()
    (sealed,) = backend.raw("SELECT sealed FROM keys WHERE key_id='k-1'")[0]
    assert material not in bytes(sealed)
    assert AESGCM(backend.kek).decrypt(sealed[:12], sealed[12:], b"key:k-1") == material
    with pytest.raises(StoreError, match="KEK"):
        backend.open(secrets.token_bytes(32))


def test_decision_log_chain_verifies_and_refuses_update_and_delete(backend: Backend, store: KeyStore) -> None:
    assert store.head() == {"seq": 0, "hash": GENESIS}
    for i in range(3):
        store.log_decision(operation="unwrap", decision="allow", reason=f"r{i}", key_id="k", batch_id="b")
    store = _reopen(backend, store)
    try:
        store.log_decision(operation="unwrap", decision="deny", reason="after restart", key_id="k")
        entries = store.decisions()
        verify_chain(entries)
        assert [e["seq"] for e in entries] == [1, 2, 3, 4] and store.head()["hash"] == entries[-1]["hash"]
        assert store.decisions(after=2) == entries[2:]
    finally:
        store.close()
    refused = (sqlite3.DatabaseError, psycopg.Error)
    statements = ["UPDATE decisions SET decision='allow'", "DELETE FROM decisions WHERE seq=1"]
    if backend.name == "postgres":  # statement-level trigger: even a statement touching no row, and TRUNCATE
        statements += ["UPDATE decisions SET reason='x' WHERE seq=99", "TRUNCATE decisions"]
    for statement in statements:
        with pytest.raises(refused, match="append-only"):
            backend.raw(statement)
    assert len(backend.raw("SELECT seq FROM decisions")) == 4


def test_grants_policies_and_resources_persist(backend: Backend, store: KeyStore) -> None:
    store.create_key("g-1", "data", secrets.token_bytes(32), None, [])
    store.put_grant("batch-1", "sha256:old", [GOOD], ["g-1"], config_digests=["cf" * 32], rows=10)
    grant = store.put_grant("batch-1", "sha256:m", [GOOD], ["g-1"], config_digests=["cf" * 32], rows=10)  # replaces
    store.set_policy("g-1", "!claims.debug", ["ee" * 48], {"chip_ids": ["00" * 64]})
    store.put_resource("repo/type/tag", b"first", None, [])
    store.put_resource("repo/type/tag", b"second", "claims.tee == 'sev-snp'", [GOOD])
    store = _reopen(backend, store)
    try:
        assert store.get_grant("batch-1") == grant and store.get_grant("batch-2") is None
        key = store.get_key("g-1")
        assert key is not None and key.policy == "!claims.debug" and key.measurements == ["ee" * 48]
        assert key.settings == {"chip_ids": ["00" * 64]}
        resource = store.get_key("repo/type/tag")
        assert resource is not None and resource.kind == "resource" and resource.material == b"second"
        assert resource.policy == "claims.tee == 'sev-snp'" and resource.measurements == [GOOD]
    finally:
        store.close()


def test_concurrent_appends_from_two_processes_keep_one_valid_chain(backend: Backend, store: KeyStore) -> None:
    other = backend.open()  # a second broker process on the same database: only the database's lock orders them
    threads, per_thread = 8, 15
    errors: list[BaseException] = []

    def append(target: KeyStore, worker: int) -> None:
        try:
            for i in range(per_thread):
                target.log_decision(operation="unwrap", decision="allow", reason=f"w{worker}-{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=append, args=(store if n % 2 else other, n)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    other.close()
    assert not errors, errors
    entries = store.decisions()
    verify_chain(entries)
    assert [e["seq"] for e in entries] == list(range(1, threads * per_thread + 1))
    assert len({e["reason"] for e in entries}) == threads * per_thread


def test_rotation_versions_persist_and_stay_sequential(backend: Backend, store: KeyStore) -> None:
    first = secrets.token_bytes(32)
    store.create_key("rot", "data", first, None, [])
    other = backend.open()
    made: dict[int, bytes] = {}
    lock = threading.Lock()

    def rotate(target: KeyStore) -> None:
        for _ in range(4):
            material = secrets.token_bytes(32)
            version = target.rotate_key("rot", material)
            with lock:
                made[version] = material

    workers = [threading.Thread(target=rotate, args=(s,)) for s in (store, other)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    other.close()
    assert sorted(made) == list(range(2, 10))
    store = _reopen(backend, store)
    try:
        record = store.get_key("rot")
        assert record is not None and record.versions == {1: first, **made} and record.version == 9
        assert store.list_keys()[0]["version"] == 9
    finally:
        store.close()


def test_in_process_broker_releases_keys_after_a_restart(backend: Backend, tmp_path: Path) -> None:
    extra = {"db_url": backend.target} if backend.name == "postgres" else {}
    env = Env(tmp_path, **extra)
    wrapped = env.data_key()
    assert env.worker().unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m") == b"D" * 16
    env.app.state.broker.store.close()
    restarted = Env(tmp_path, **extra)
    assert restarted.worker().unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m") == b"D" * 16
    with pytest.raises(Exception, match="measurement"):
        restarted.worker(restarted.enclave(OTHER)).unwrap("data-1", wrapped, batch_id="batch-1",
                                                          model_digest="sha256:m")
    ops = [e["operation"] for e in restarted.admin.decisions()]  # chain and checkpoint verified across restart
    assert ops.count("unwrap") == 3 and "admin.grant" in ops


def test_config_db_url_wins_over_db_path_and_must_name_postgres(tmp_path: Path) -> None:
    base = {"name": "o", "host": "127.0.0.1", "port": 0, "kek_path": str(tmp_path / "kek"),
            "admin_token_path": str(tmp_path / "admin")}
    url = "postgresql://broker:s3cret@db.internal:5432/keys"
    both = BrokerConfig.from_dict({**base, "db_path": str(tmp_path / "k.db"), "db_url": url})
    assert both.store_target == url
    assert BrokerConfig.from_dict({**base, "db_url": url}).store_target == url
    assert BrokerConfig.from_dict({**base, "db_path": str(tmp_path / "k.db")}).store_target == tmp_path / "k.db"
    with pytest.raises(ValueError, match=r"db_path \(or db_url, or db_url_path\)"):
        BrokerConfig.from_dict(base)
    with pytest.raises(ValueError, match="postgresql://") as bad:
        BrokerConfig.from_dict({**base, "db_url": "mysql://u:pw@h/db"})
    assert "pw" not in str(bad.value)
    assert redact_url(url) == "postgresql://broker:***@db.internal:5432/keys"


def test_config_db_url_path_reads_the_url_from_a_file_and_never_shows_its_content(tmp_path: Path) -> None:
    base = {"name": "o", "host": "127.0.0.1", "port": 0, "kek_path": str(tmp_path / "kek"),
            "admin_token_path": str(tmp_path / "admin")}
    url = "postgresql://broker:s3cret@db.internal:5432/keys"
    secret = tmp_path / "db-url"
    secret.write_text(url + "\n")  # as `kubectl create secret --from-file` or an editor leaves it
    config = BrokerConfig.from_dict({**base, "db_path": str(tmp_path / "k.db"), "db_url_path": str(secret)})
    assert config.store_target == url and "s3cret" not in repr(config)  # the path wins; the URL is read on use
    with pytest.raises(ValueError, match="db_url and db_url_path both set; keep db_url_path"):
        BrokerConfig.from_dict({**base, "db_url": url, "db_url_path": str(secret)})
    missing = BrokerConfig.from_dict({**base, "db_url_path": str(tmp_path / "absent")})
    with pytest.raises(ValueError, match=r"db_url_path .*absent: cannot be read \(FileNotFoundError: No such file"):
        missing.store_target  # noqa: B018
    for content, got in (("hunter2-canary", "14 characters of another kind"), ("mysql://u:hunter2-canary@h/db",
                                                                             "a mysql:// URL")):
        secret.write_text(content)
        with pytest.raises(ValueError) as bad:
            BrokerConfig.from_dict({**base, "db_url_path": str(secret)}).store_target  # noqa: B018
        assert str(bad.value).endswith(f"expected one postgresql:// URL in the file, got {got}")
        assert "hunter2" not in str(bad.value)


def test_unreachable_postgres_is_a_clear_store_error() -> None:
    with pytest.raises(StoreError, match=r"cannot connect to the key store at postgresql://u:\*\*\*@127.0.0.1:9/x"):
        KeyStore("postgresql://u:pw@127.0.0.1:9/x?connect_timeout=2", bytes(32))


def test_broker_process_on_postgres_over_http(pg_url: str, tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path, db_url=pg_url, shutdown_timeout_s=1).start()
    try:
        admin = broker.admin()
        admin.create_key("pg-http")
        dek = secrets.token_bytes(32)
        wrapped = admin.wrap("pg-http", dek)
        admin.grant("batch-pg", "sha256:m", [MEASUREMENT.hex()], ["pg-http"], config_digests=["cf" * 32], rows=10)
        admin.set_policy("pg-http", "!claims.debug")
        assert admin.rotate_key("pg-http")["version"] == 2
        before = admin.decisions()
        admin.close()
    finally:
        broker.stop()
    broker.start()  # a restart: everything comes back from Postgres
    try:
        admin = broker.admin()
        assert admin.unwrap("pg-http", wrapped) == dek
        key = admin.get_key("pg-http")
        assert key["version"] == 2 and key["policy"] == "!claims.debug"
        after = admin.decisions()  # verifies the chain and the checkpoint signed by the persisted token key
        assert after[:len(before)] == before and len(after) > len(before)
        admin.close()
    finally:
        broker.stop()
    assert not Path(broker.config["db_path"]).exists()  # db_url won: no SQLite file
    backend = Backend("postgres", pg_url, b"")
    assert backend.raw("SELECT key_id FROM keys") == [("pg-http",)]
    assert backend.raw("SELECT batch_id FROM grants") == [("batch-pg",)]


def test_broker_process_on_postgres_with_the_url_in_a_secret_file(pg_url: str, tmp_path: Path) -> None:
    """What the Helm chart deploys (postgres.enabled): the URL, password included, only in a mounted file."""
    password = "pw-canary-3e9d"  # trust auth here ignores it; it must show up nowhere but in the file
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1)
    assert password in url
    secret = tmp_path / "db-url"
    secret.write_text(url + "\n")
    secret.chmod(0o400)
    broker = BrokerProcess(tmp_path, db_url_path=str(secret), metrics_token_path=str(tmp_path / "metrics-token"),
                           shutdown_timeout_s=1).start()
    try:
        admin = broker.admin()
        admin.create_key("pg-file")
        wrapped = admin.wrap("pg-file", b"k" * 32)
        assert admin.unwrap("pg-file", wrapped) == b"k" * 32
        admin.close()
        with broker.http() as http:
            assert http.get("/healthz").json()["database"] == "postgresql"
            token = (tmp_path / "metrics-token").read_text().strip()
            scrape = http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert scrape.status_code == 200 and password not in scrape.text
    finally:
        broker.stop()
    assert password not in broker.config_path.read_text() and "postgresql://" not in broker.config_path.read_text()
    assert password not in broker.log_text()
    assert not Path(broker.config["db_path"]).exists()  # the file's URL won: no SQLite file
    assert Backend("postgres", pg_url, b"").raw("SELECT key_id FROM keys") == [("pg-file",)]


def test_a_broker_whose_db_url_file_cannot_be_read_does_not_start(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path, db_url_path=str(tmp_path / "not-mounted"))
    broker.config_path.write_text(json.dumps(broker.config))
    done = subprocess.run([sys.executable, "-m", "keybroker", "serve", "--config", str(broker.config_path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2
    assert f"db_url_path {tmp_path / 'not-mounted'}: cannot be read" in done.stderr and "Traceback" not in done.stderr


def test_postgres_store_reconnects_after_the_server_drops_it(pg_url: str) -> None:
    store = KeyStore(pg_url, secrets.token_bytes(32))
    try:
        store.create_key("re-1", "data", b"m" * 32, None, [])
        with psycopg.connect(pg_url, autocommit=True) as conn:  # what a server restart does to the broker
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 'cscore-keybroker' AND datname = current_database()")
        try:
            store.get_key("re-1")  # the statement cut off fails (and is not retried) ...
        except psycopg.OperationalError:
            pass
        record = store.get_key("re-1")  # ... the next one runs on a new connection
        assert record is not None and record.material == b"m" * 32
    finally:
        store.close()
