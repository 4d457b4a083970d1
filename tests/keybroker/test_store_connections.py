"""keybroker/store.py's connections in process: which target is PostgreSQL, a URL's password hidden, the SQLite file
(created with its folder, private, shared with threads, migrated from before `settings` and `terms`), the Postgres
connection (its defaults, one connection kept, reopened after a drop but never inside a write), `ping`'s refusal.
PostgreSQL as in test_store_postgres.py (a schema of this test; CI runs a server)."""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest

from keybroker.store import KeyStore, StoreError, is_postgres_url, redact_url
from tests.keybroker.test_store_postgres import pg_database, pg_url  # noqa: F401 - the PostgreSQL fixtures

KEK = bytes(range(32))
APP = "cscore-keybroker"


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[KeyStore]:  # noqa: F811 - the fixture imported above
    opened = KeyStore(pg_url, KEK)
    yield opened
    opened.close()


def _connection(store: KeyStore) -> Any:
    """The Postgres store's current driver connection."""
    return store._db.conn


def _drop_store_connections(url: str, application_name: str = APP) -> None:
    """What a server restart does to the broker: its backends in this database are terminated."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = %s AND datname = current_database()", (application_name,))


# Targets and URLs -----------------------------------------------------------------------------------------------
def test_only_a_postgresql_url_string_names_postgres() -> None:
    for url in ("postgresql://u@h/db", "postgres://u@h/db", "POSTGRESQL://u@h/db"):
        assert is_postgres_url(url), url
    for target in ("mysql://u@h/db", "keys.sqlite", "/var/lib/postgresql://db", Path("postgresql://u@h/db")):
        assert not is_postgres_url(target), target


def test_redact_url_hides_the_password_only() -> None:
    assert redact_url("postgresql://broker:s3cret@db:5432/keys") == "postgresql://broker:***@db:5432/keys"
    assert redact_url("POSTGRES://broker:s3cret@db/keys") == "POSTGRES://broker:***@db/keys"
    assert redact_url("postgresql://broker@db/keys?sslmode=require") == "postgresql://broker@db/keys?sslmode=require"
    assert redact_url("postgresql://db:5432/keys") == "postgresql://db:5432/keys"


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://broker:pa/ss@db/keys", "postgresql://broker:***@db/keys"),  # a mistyped secret, not encoded
    ("postgresql://broker:p@ss@db/keys", "postgresql://broker:***@db/keys"),
    ("postgresql://broker:pa\nss@db/keys", "postgresql://broker:***@db/keys"),
    ("postgresql://broker:s3cret@db/keys?application_name=a@b", "postgresql://broker:***@b"),  # the host too
])
def test_redact_url_hides_a_malformed_password_whole(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# SQLite -----------------------------------------------------------------------------------------------------------
def test_a_sqlite_store_makes_its_folder_and_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    target = tmp_path / "state" / "broker" / "keys.sqlite"
    KeyStore(target, KEK).close()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    KeyStore(target, KEK).close()  # the folder exists now: opened again


def test_a_sqlite_store_is_used_from_other_threads(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite", KEK)
    try:
        with ThreadPoolExecutor(1) as pool:  # the broker's request threads share one store
            record, created = pool.submit(store.create_key, "k-1", "data", b"A" * 32, None, []).result()
        assert created and store.get_key("k-1") == record
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "keys.sqlite")  # committed, not left in an open transaction
    try:
        assert db.execute("SELECT key_id FROM keys").fetchall() == [("k-1",)]
    finally:
        db.close()


def test_a_sqlite_store_from_before_settings_and_terms_gains_both_columns(tmp_path: Path) -> None:
    target = tmp_path / "keys.sqlite"
    KeyStore(target, KEK).close()  # the meta table and its KEK check as an old broker wrote them
    db = sqlite3.connect(target, isolation_level=None)
    db.executescript("""
        DROP TABLE keys; DROP TABLE grants;
        CREATE TABLE keys (key_id TEXT PRIMARY KEY, kind TEXT NOT NULL, sealed BLOB NOT NULL, policy TEXT,
                           measurements TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
        CREATE TABLE grants (batch_id TEXT PRIMARY KEY, model_digest TEXT NOT NULL, measurements TEXT NOT NULL,
                             key_ids TEXT NOT NULL, created REAL NOT NULL);
        INSERT INTO grants VALUES ('old', 'sha256:m', '[]', '["k"]', 1.0);
    """)
    db.close()
    store = KeyStore(target, KEK)
    try:
        store.put_resource("r-1", b"secret", None, [])
        record = store.get_key("r-1")
        assert record is not None and record.settings == {} and record.kind == "resource"
        grant = store.get_grant("old")
        assert grant is not None and (grant.key_ids, grant.config_digests, grant.rows) == (["k"], [], 0)
    finally:
        store.close()
    KeyStore(target, KEK).close()  # migrated already: opened again unchanged
    db = sqlite3.connect(target)
    try:
        assert [r[1] for r in db.execute("PRAGMA table_info(keys)")][-1] == "settings"
        assert [r[1] for r in db.execute("PRAGMA table_info(grants)")][-1] == "terms"
        assert db.execute("SELECT kind, settings FROM keys").fetchall() == [("resource", json.dumps({}))]
    finally:
        db.close()


# PostgreSQL -------------------------------------------------------------------------------------------------------
def test_a_postgres_store_names_itself_and_times_out_connecting_unless_the_url_says_otherwise(
        pg_store: KeyStore, pg_url: str) -> None:  # noqa: F811
    given = _connection(pg_store).info.get_parameters()
    assert (given["application_name"], given["connect_timeout"]) == (APP, "10")
    own = KeyStore(f"{pg_url}&application_name=mine&connect_timeout=3", KEK)
    try:
        given = _connection(own).info.get_parameters()
        assert (given["application_name"], given["connect_timeout"]) == ("mine", "3")
    finally:
        own.close()


def test_a_postgres_store_keeps_one_connection(pg_store: KeyStore) -> None:
    first = _connection(pg_store).info.backend_pid
    pg_store.create_key("k-1", "data", b"A" * 32, None, [])
    pg_store.log_decision(operation="unwrap", decision="allow", reason="r")
    assert pg_store.get_key("k-1") is not None and pg_store.head()["seq"] == 1
    assert _connection(pg_store).info.backend_pid == first


def test_a_postgres_store_reconnects_after_a_drop_before_and_after_a_write(pg_store: KeyStore, pg_url: str) -> None:  # noqa: F811
    pg_store.create_key("k-1", "data", b"A" * 32, None, [])  # no write transaction yet
    _drop_store_connections(pg_url)
    with pytest.raises(psycopg.OperationalError):
        pg_store.get_key("k-1")
    assert pg_store.get_key("k-1") is not None
    pg_store.log_decision(operation="unwrap", decision="allow", reason="r")  # a write, then the server drops us
    _drop_store_connections(pg_url)
    with pytest.raises(psycopg.OperationalError):
        pg_store.head()  # the statement cut off fails (and is not retried) ...
    assert pg_store.head()["seq"] == 1  # ... the next one runs on a new connection
    pg_store.log_decision(operation="unwrap", decision="allow", reason="r")
    assert pg_store.head()["seq"] == 2


def test_a_write_whose_connection_drops_is_not_continued_on_another(pg_store: KeyStore, pg_url: str) -> None:  # noqa: F811
    db = pg_store._db
    moved = []
    with suppress(psycopg.OperationalError), db.write("decisions"):  # its end on a dead connection: either way
        _drop_store_connections(pg_url)
        with pytest.raises(psycopg.OperationalError):
            moved.append(db.execute("SELECT count(*) AS n FROM decisions").fetchone())
    assert moved == []
    assert pg_store.head()["seq"] == 0  # after the write: a new connection


def test_a_write_locks_the_table_it_names(pg_store: KeyStore, pg_url: str) -> None:  # noqa: F811
    with pg_store._db.write("usage"), psycopg.connect(pg_url, autocommit=True) as other:
        held = other.execute("SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                             "WHERE l.pid = %s AND l.locktype = 'relation' AND c.relkind = 'r'",
                             (_connection(pg_store).info.backend_pid,)).fetchall()
    assert held == [("usage", "ShareRowExclusiveLock")]


# ping -------------------------------------------------------------------------------------------------------------
def test_ping_answers_on_both_backends(tmp_path: Path, pg_store: KeyStore) -> None:
    sqlite_store = KeyStore(tmp_path / "keys.sqlite", KEK)
    try:
        sqlite_store.ping()  # no StoreError
        pg_store.ping()
    finally:
        sqlite_store.close()


def test_ping_of_a_closed_sqlite_store_names_the_backend_and_the_error(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite", KEK)
    store.close()
    with pytest.raises(StoreError) as refused:
        store.ping()
    assert str(refused.value) == ("sqlite key store does not answer: ProgrammingError: "
                                  "Cannot operate on a closed database.")


def test_ping_of_a_postgres_store_without_its_tables_gives_the_errors_first_line(pg_store: KeyStore,
                                                                                pg_url: str) -> None:  # noqa: F811
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE keys")
    with pytest.raises(StoreError) as refused:
        pg_store.ping()
    assert str(refused.value) == 'postgresql key store does not answer: UndefinedTable: relation "keys" does not exist'
    assert "LINE 1" in str(refused.value.__cause__)  # the driver's later lines are left out


def test_ping_of_an_error_without_text_names_its_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(tmp_path / "keys.sqlite", KEK)

    def silent(*args: object) -> None:
        raise OSError

    monkeypatch.setattr(store._db, "execute", silent)
    with pytest.raises(StoreError) as refused:
        store.ping()
    assert str(refused.value) == "sqlite key store does not answer: OSError: "
    monkeypatch.undo()
    store.close()
