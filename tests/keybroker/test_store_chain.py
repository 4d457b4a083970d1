"""keybroker/store.py in process, on SQLite and PostgreSQL: the decision log's hash chain, the quota meter, grants,
sealed keys. PostgreSQL as in test_store_postgres.py (a schema of this test; CI runs a server)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keybroker.store import KeyStore, QuotaExceeded, StoreError
from tests.keybroker.test_store_postgres import pg_database, pg_url  # noqa: F401 - the PostgreSQL fixtures
from wire.decision_log import GENESIS, LOG_FIELDS, entry_hash, verify_chain

KEK = bytes(range(32))


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    # Postgres' rows are case-sensitive dicts and it locks the named table: what SQLite lets pass
    target = tmp_path / "keys.sqlite" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = KeyStore(target, KEK)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[KeyStore]:
    """A store whose file the test also opens directly, as an intruder would."""
    opened = KeyStore(tmp_path / "keys.sqlite", KEK)
    yield opened
    opened.close()


def _logged(store: KeyStore, count: int) -> list[dict[str, Any]]:
    for i in range(count):
        store.log_decision(operation="unwrap", decision="allow", reason=f"r{i}", key_id="k", batch_id=f"b{i}",
                           model_digest="sha256:m", claims_digest="c" * 64, measurement="ab" * 48)
    return store.decisions()


# The hash chain ------------------------------------------------------------------------------------------------
def test_entry_hash_is_sha256_of_the_previous_hash_then_the_canonical_log_fields() -> None:
    entry = {"seq": 1, "time": 1.5, "operation": "unwrap", "key_id": "k", "decision": "allow",
             "extra": "not hashed", "hash": "h", "prev_hash": "p"}
    body = {k: entry.get(k) for k in LOG_FIELDS}  # absent fields hashed as null
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert entry_hash(GENESIS, entry) == hashlib.sha256(GENESIS.encode() + canonical).hexdigest()
    assert entry_hash(GENESIS, {**entry, "extra": "changed"}) == entry_hash(GENESIS, entry)
    assert entry_hash("1" * 64, entry) != entry_hash(GENESIS, entry)


def test_the_logged_chain_starts_at_genesis_and_links_each_entry(store: KeyStore) -> None:
    assert store.head() == {"seq": 0, "hash": GENESIS}
    entries = _logged(store, 3)
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev_hash"] == GENESIS
    for before, entry in zip([None, *entries], entries, strict=False):
        prev = before["hash"] if before else GENESIS
        assert entry["prev_hash"] == prev and entry["hash"] == entry_hash(prev, entry)
    assert entries[1]["reason"] == "r1" and entries[1]["batch_id"] == "b1" and entries[1]["measurement"] == "ab" * 48
    assert store.head() == {"seq": 3, "hash": entries[-1]["hash"]}
    verify_chain(entries)
    verify_chain(entries[1:], start_hash=entries[0]["hash"])
    assert store.decisions(after=1) == entries[1:] and store.decisions(after=0, limit=2) == entries[:2]
    assert store.decisions(limit=1) == entries[:1]


def test_a_log_entry_carries_its_time_and_only_the_log_fields(store: KeyStore) -> None:
    before = time.time()
    entry = store.log_decision(operation="unwrap", decision="deny", reason="r", secret="never stored")
    assert before - 1e-6 <= entry["time"] <= time.time() + 1e-6 and entry["time"] == round(entry["time"], 6)
    assert set(entry) == {*LOG_FIELDS, "prev_hash", "hash"} and entry["key_id"] is None
    assert store.decisions() == [{**entry}]


def test_a_rewritten_and_rehashed_entry_breaks_the_next_link(store: KeyStore) -> None:
    entries = _logged(store, 3)
    forged = {**entries[1], "decision": "deny"}
    forged["hash"] = entry_hash(forged["prev_hash"], forged)  # consistent on its own
    with pytest.raises(ValueError) as refused:
        verify_chain([entries[0], forged, entries[2]])
    assert str(refused.value) == (f"decision 3: prev_hash expected {forged['hash']}, "
                                  f"actual {entries[2]['prev_hash']}")


def test_a_rewritten_entry_keeping_its_hash_is_refused_at_that_entry(store: KeyStore) -> None:
    entries = _logged(store, 3)
    forged = {**entries[1], "reason": "rewritten"}
    with pytest.raises(ValueError) as refused:
        verify_chain([entries[0], forged, entries[2]])
    assert str(refused.value) == (f"decision 2: hash expected {entry_hash(entries[0]['hash'], forged)}, "
                                  f"actual {entries[1]['hash']}")


def test_a_dropped_first_entry_and_a_wrong_start_are_refused(store: KeyStore) -> None:
    entries = _logged(store, 2)
    with pytest.raises(ValueError) as refused:
        verify_chain(entries[1:])
    assert str(refused.value) == f"decision 2: prev_hash expected {GENESIS}, actual {entries[0]['hash']}"
    with pytest.raises(ValueError) as refused:
        verify_chain(entries, start_hash="1" * 64)
    assert str(refused.value) == f"decision 1: prev_hash expected {'1' * 64}, actual {GENESIS}"


def test_a_whole_chain_rebuilt_from_a_rewritten_entry_is_refused_against_the_real_start() -> None:
    first = {"seq": 1, "time": 1.0, "operation": "unwrap", "decision": "allow", "prev_hash": "2" * 64}
    first["hash"] = entry_hash("2" * 64, first)
    with pytest.raises(ValueError) as refused:
        verify_chain([first])
    assert str(refused.value) == f"decision 1: prev_hash expected {GENESIS}, actual {'2' * 64}"


def test_the_decisions_table_refuses_update_and_delete(sqlite_store: KeyStore, tmp_path: Path) -> None:
    _logged(sqlite_store, 2)
    db = sqlite3.connect(tmp_path / "keys.sqlite", isolation_level=None)
    try:
        for statement in ("UPDATE decisions SET decision='deny'", "DELETE FROM decisions WHERE seq=1"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(statement)
    finally:
        db.close()


def test_the_store_and_its_wal_files_are_owner_only(tmp_path: Path) -> None:
    """The -wal file holds the store's latest pages: it was created 0644 before the store chmodded itself 0600."""
    umask = os.umask(0o022)  # the usual umask, whatever the test runner's
    try:
        store = KeyStore(tmp_path / "new" / "keys.sqlite", KEK)
        try:
            _logged(store, 2)
            files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "new").iterdir()}
        finally:
            store.close()
        assert files == {"keys.sqlite": 0o600, "keys.sqlite-wal": 0o600, "keys.sqlite-shm": 0o600}
        old = tmp_path / "old" / "keys.sqlite"  # a store made before: its files readable by all, the WAL open
        old.parent.mkdir()
        before = sqlite3.connect(old, isolation_level=None)
        try:
            before.execute("PRAGMA journal_mode=WAL")
            before.execute("CREATE TABLE t (x)")
            for path in old.parent.iterdir():
                path.chmod(0o644)
            reopened = KeyStore(old, KEK)
            try:
                modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in old.parent.iterdir()}
            finally:
                reopened.close()
        finally:
            before.close()
        assert modes == {"keys.sqlite": 0o600, "keys.sqlite-wal": 0o600, "keys.sqlite-shm": 0o600}
    finally:
        os.umask(umask)


# Quota metering ------------------------------------------------------------------------------------------------
def test_meter_counts_each_batch_once_and_refuses_past_the_quota(store: KeyStore) -> None:
    assert store.meter("owner", "b1", "k", 60, quota=100, period_s=3600) == 60
    assert store.meter("owner", "b1", "k", 60, quota=100, period_s=3600) == 60  # the same batch again: not twice
    with pytest.raises(QuotaExceeded) as refused:
        store.meter("owner", "b2", "k", 41, quota=100, period_s=3600)
    assert str(refused.value) == "60 rows used in the period plus 41 would exceed the quota of 100"
    assert (refused.value.used, refused.value.rows, refused.value.quota) == (60, 41, 100)
    assert store.meter("owner", "b2", "k", 40, quota=100, period_s=3600) == 100  # exactly the quota
    assert store.meter("owner", "b2", "k", 40, quota=100, period_s=3600) == 100


def test_meter_refuses_a_count_below_one_and_records_nothing(store: KeyStore) -> None:
    assert store.meter("owner", "b1", "k", 90, quota=100, period_s=3600) == 90
    for rows in (0, -100):
        with pytest.raises(ValueError) as refused:
            store.meter("owner", "refund", "k", rows, quota=100, period_s=3600)
        assert str(refused.value) == f"rows: expected at least 1, got {rows}"
    with pytest.raises(QuotaExceeded):  # the refund was not counted: the quota is still 10 from full
        store.meter("owner", "b2", "k", 11, quota=100, period_s=3600)
    assert store.meter("owner", "refund", "k", 1, quota=100, period_s=3600) == 91  # and "refund" was never seen


def test_meter_keeps_owners_and_keys_apart(store: KeyStore) -> None:
    assert store.meter("owner", "b1", "k", 90, quota=100, period_s=3600) == 90
    assert store.meter("other", "b1", "k", 90, quota=100, period_s=3600) == 90
    assert store.meter("owner", "b1", "k2", 90, quota=100, period_s=3600) == 90
    assert store.meter("owner", "b2", "k", 10, quota=100, period_s=3600) == 100


def test_a_refused_batch_is_not_recorded(store: KeyStore) -> None:
    store.meter("owner", "b1", "k", 90, quota=100, period_s=3600)
    with pytest.raises(QuotaExceeded):
        store.meter("owner", "b2", "k", 20, quota=100, period_s=3600)
    assert store.meter("owner", "b3", "k", 10, quota=100, period_s=3600) == 100


def test_meter_counts_only_use_inside_the_period(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1_000_000.0
    monkeypatch.setattr(time, "time", lambda: now)
    store.meter("owner", "b1", "k", 90, quota=100, period_s=100)
    now += 100  # b1 is exactly one period old: outside
    assert store.meter("owner", "b2", "k", 90, quota=100, period_s=100) == 90
    now += 99.5
    with pytest.raises(QuotaExceeded) as refused:
        store.meter("owner", "b3", "k", 11, quota=100, period_s=100)
    assert str(refused.value) == "90 rows used in the period plus 11 would exceed the quota of 100"


# Grants and sealed keys ----------------------------------------------------------------------------------------
def test_a_grant_round_trips_with_its_terms(store: KeyStore) -> None:
    grant = store.put_grant("batch-1", "sha256:m", ["aa" * 48], ["k1", "k2"], config_digests=["cf" * 32], rows=7)
    assert store.get_grant("batch-1") == grant
    assert grant.as_dict() == {"batch_id": "batch-1", "model_digest": "sha256:m", "measurements": ["aa" * 48],
                               "key_ids": ["k1", "k2"], "created": grant.created, "config_digests": ["cf" * 32],
                               "rows": 7}
    replaced = store.put_grant("batch-1", "sha256:n", ["bb" * 48], ["k3"], config_digests=[], rows=1)
    assert store.get_grant("batch-1") == replaced and store.get_grant("batch-2") is None


def test_a_grant_written_before_its_terms_existed_reads_as_no_configs_and_no_rows(sqlite_store: KeyStore,
                                                                                 tmp_path: Path) -> None:
    sqlite_store.put_grant("old", "sha256:m", [], ["k"], config_digests=["cf" * 32], rows=7)
    db = sqlite3.connect(tmp_path / "keys.sqlite", isolation_level=None)
    db.execute("UPDATE grants SET terms=NULL")
    db.close()
    grant = sqlite_store.get_grant("old")
    assert grant is not None and (grant.config_digests, grant.rows) == ([], 0)


def test_each_key_version_is_sealed_under_its_own_label(sqlite_store: KeyStore, tmp_path: Path) -> None:
    first, second = secrets.token_bytes(32), secrets.token_bytes(32)
    sqlite_store.create_key("k-1", "data", first, None, [])
    assert sqlite_store.rotate_key("k-1", second) == 2
    db = sqlite3.connect(tmp_path / "keys.sqlite", isolation_level=None)
    try:
        (sealed,) = db.execute("SELECT sealed FROM keys WHERE key_id='k-1'").fetchone()
        (later,) = db.execute("SELECT sealed FROM key_versions WHERE key_id='k-1' AND version=2").fetchone()
        assert AESGCM(KEK).decrypt(sealed[:12], sealed[12:], b"key:k-1") == first
        assert AESGCM(KEK).decrypt(later[:12], later[12:], b"key:k-1#v2") == second
        # version 2's sealed bytes moved onto version 1's row: the label no longer matches
        db.execute("UPDATE keys SET sealed=? WHERE key_id='k-1'", (later,))
    finally:
        db.close()
    with pytest.raises(InvalidTag):
        sqlite_store.get_key("k-1")


def test_a_key_record_names_its_newest_version_and_shows_no_material(store: KeyStore) -> None:
    before = time.time()
    settings = {"quota": 5, "min_tcb": {"snp": 3}, "chip_ids": ["00" * 64]}
    record, created = store.create_key("k-1", "data", b"A" * 32, "true", ["aa" * 48], settings)
    assert created and record.version == 1 and record.material == b"A" * 32
    assert before <= record.created == record.updated <= time.time()
    store.rotate_key("k-1", b"B" * 32)
    store.rotate_key("k-1", b"C" * 32)
    rotated = store.get_key("k-1")
    assert rotated is not None
    record = rotated
    assert record.version == 3 and record.material == b"C" * 32
    assert record.versions == {1: b"A" * 32, 2: b"B" * 32, 3: b"C" * 32}
    assert record.public() == {"key_id": "k-1", "kind": "data", "policy": "true", "measurements": ["aa" * 48],
                               "created": record.created, "updated": record.updated, "version": 3,
                               "min_tcb": {"snp": 3}, "chip_ids": ["00" * 64], "quota": 5}
    assert record.updated >= record.created


def test_a_key_written_before_its_settings_existed_reads_as_no_settings(sqlite_store: KeyStore,
                                                                        tmp_path: Path) -> None:
    sqlite_store.create_key("old", "data", b"A" * 32, None, [], {"quota": 5})
    db = sqlite3.connect(tmp_path / "keys.sqlite", isolation_level=None)
    db.execute("UPDATE keys SET settings=NULL")
    db.close()
    record = sqlite_store.get_key("old")
    assert record is not None and record.settings == {} and record.public()["quota"] is None
    assert sqlite_store.list_keys()[0]["min_tcb"] is None


def test_a_broker_secret_is_generated_once_and_sealed_under_its_name(store: KeyStore) -> None:
    made: list[bytes] = []

    def generate() -> bytes:
        made.append(secrets.token_bytes(32))
        return made[-1]

    first = store.broker_secret("token-signing", generate)
    assert first == made[0] and store.broker_secret("token-signing", generate) == first and len(made) == 1
    other = store.broker_secret("key-transport", generate)
    assert other == made[1] != first


def test_a_store_opened_with_another_kek_is_refused(tmp_path: Path) -> None:
    KeyStore(tmp_path / "keys.sqlite", KEK).close()
    with pytest.raises(StoreError) as refused:
        KeyStore(tmp_path / "keys.sqlite", bytes(32))
    assert str(refused.value) == "the KEK file does not match the key store (it was created with another KEK)"
    KeyStore(tmp_path / "keys.sqlite", KEK).close()  # the right KEK still opens it


def test_an_owner_broker_is_registered_and_re_keyed(store: KeyStore) -> None:
    first, second = ({"kty": "EC", "crv": "P-256", "x": x, "y": "AA"} for x in ("first", "second"))
    store.register_owner("provider-b", first)
    store.register_owner("provider-a", second)
    assert store.owners() == {"provider-a": second, "provider-b": first}
    assert list(store.owners()) == ["provider-a", "provider-b"]
    store.register_owner("provider-b", second)  # re-keyed: the new key replaces the old
    assert store.owners() == {"provider-a": second, "provider-b": second}


def test_list_keys_shows_each_keys_metadata_and_newest_version(store: KeyStore) -> None:
    store.create_key("b", "data", b"A" * 32, "true", ["aa" * 48], {"min_tcb": {"snp": 3}, "chip_ids": ["00" * 64]})
    store.create_key("a", "model", b"B" * 32, None, [])
    store.rotate_key("b", b"C" * 32)
    b, a = store.get_key("b"), store.get_key("a")
    assert a is not None and b is not None
    assert store.list_keys() == [
        {"key_id": "a", "kind": "model", "policy": None, "created": a.created, "updated": a.updated, "version": 1,
         "measurements": [], "min_tcb": None, "chip_ids": None},
        {"key_id": "b", "kind": "data", "policy": "true", "created": b.created, "updated": b.updated, "version": 2,
         "measurements": ["aa" * 48], "min_tcb": {"snp": 3}, "chip_ids": ["00" * 64]}]


def test_decisions_gives_at_most_10_000_entries_a_call(sqlite_store: KeyStore, tmp_path: Path) -> None:
    # rows written directly (a chain need not hold for paging): 10 001 appends would take seconds
    db = sqlite3.connect(tmp_path / "keys.sqlite", isolation_level=None)
    cols = (*LOG_FIELDS, "prev_hash", "hash")
    db.execute("BEGIN")  # one transaction: a commit per row takes seconds
    db.executemany(f"INSERT INTO decisions ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                   [(seq, 1.0, "unwrap", None, None, None, "allow", "r", None, None, "0" * 64, "0" * 64)
                    for seq in range(1, 10_002)])
    db.execute("COMMIT")
    db.close()
    page = sqlite_store.decisions()
    assert len(page) == 10_000 and page[-1]["seq"] == 10_000
    assert [e["seq"] for e in sqlite_store.decisions(after=10_000)] == [10_001]
