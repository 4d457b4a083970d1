"""Key store: master keys sealed under the KEK, policies, grants, the hash-chained decision log.

SQLite by default (`db_path`), PostgreSQL by configuration (`db_url`). Both speak the same SQL through a small
dialect seam (`_SQLite`, `_Postgres`): placeholders, DDL, the append-only trigger, and the write lock that keeps
the decision log's hash chain (and key versions) consistent when more than one process shares the database.

Lines holding only SQL text carry `# pragma: no mutate` (docs/MUTATION.md): mutmut would otherwise change the case
of keywords and unquoted names, which SQL reads the same. Quoted literals are parameters instead, so their case is
still mutated and tested.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from keybroker.crypto import seal, unseal
from wire.decision_log import GENESIS, LOG_FIELDS, PAGE_LIMIT, entry_hash

KEY_COLUMNS = "key_id, kind, sealed, policy, measurements, created, updated, settings"
KEK_CHECK = b"cscore-keybroker-kek-check"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY, kind TEXT NOT NULL, sealed BLOB NOT NULL, policy TEXT,
    measurements TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS key_versions (
    key_id TEXT NOT NULL, version INTEGER NOT NULL, sealed BLOB NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (key_id, version));
CREATE TABLE IF NOT EXISTS grants (
    batch_id TEXT PRIMARY KEY, model_digest TEXT NOT NULL, measurements TEXT NOT NULL,
    key_ids TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS owners (
    name TEXT PRIMARY KEY, grant_key TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    owner TEXT NOT NULL, batch_id TEXT NOT NULL, key_id TEXT NOT NULL, rows INTEGER NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (owner, batch_id, key_id));
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY, time REAL NOT NULL, operation TEXT NOT NULL, key_id TEXT, batch_id TEXT,
    model_digest TEXT, decision TEXT NOT NULL, reason TEXT NOT NULL, claims_digest TEXT,
    measurement TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
    BEGIN SELECT RAISE(ABORT, 'decision log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
    BEGIN SELECT RAISE(ABORT, 'decision log is append-only'); END;
"""

# The same tables on PostgreSQL (bytea for sealed values, double precision for times, `settings` from the start).
# One statement-level trigger refuses UPDATE, DELETE and TRUNCATE on the decision log, even of zero rows.
PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BYTEA NOT NULL)",
    """CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY, kind TEXT NOT NULL, sealed BYTEA NOT NULL, policy TEXT,
    measurements TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL,
    settings TEXT)""",
    """CREATE TABLE IF NOT EXISTS key_versions (
    key_id TEXT NOT NULL, version INTEGER NOT NULL, sealed BYTEA NOT NULL, created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (key_id, version))""",
    """CREATE TABLE IF NOT EXISTS grants (
    batch_id TEXT PRIMARY KEY, model_digest TEXT NOT NULL, measurements TEXT NOT NULL,
    key_ids TEXT NOT NULL, created DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS owners (
    name TEXT PRIMARY KEY, grant_key TEXT NOT NULL, created DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS usage (
    owner TEXT NOT NULL, batch_id TEXT NOT NULL, key_id TEXT NOT NULL, rows BIGINT NOT NULL,
    time DOUBLE PRECISION NOT NULL, PRIMARY KEY (owner, batch_id, key_id))""",
    "ALTER TABLE grants ADD COLUMN IF NOT EXISTS terms TEXT",
    """CREATE TABLE IF NOT EXISTS decisions (
    seq BIGINT PRIMARY KEY, time DOUBLE PRECISION NOT NULL, operation TEXT NOT NULL, key_id TEXT, batch_id TEXT,
    model_digest TEXT, decision TEXT NOT NULL, reason TEXT NOT NULL, claims_digest TEXT,
    measurement TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    """CREATE OR REPLACE FUNCTION decisions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'decision log is append-only';
END $$""",
    """DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = 'decisions_append_only' AND tgrelid = 'decisions'::regclass) THEN
        CREATE TRIGGER decisions_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON decisions
            FOR EACH STATEMENT EXECUTE FUNCTION decisions_append_only();
    END IF;
END $$""",
)
PG_SCHEMA_LOCK = 0x63736B62_73636831  # advisory lock id ("cskbsch1"): one process creates the schema at a time
POSTGRES_URL = re.compile(r"^postgres(ql)?://", re.IGNORECASE)


class QuotaExceeded(RuntimeError):
    """A batch would take an owner past its row quota for a key."""

    def __init__(self, used: int, rows: int, quota: int) -> None:
        self.used, self.rows, self.quota = used, rows, quota
        super().__init__(f"{used} rows used in the period plus {rows} would exceed the quota of {quota}")


class StoreError(RuntimeError):
    """The store cannot be opened as configured (for example: the KEK does not match)."""


@dataclass(frozen=True)
class KeyRecord:
    """A master key's metadata and unsealed versions; key bytes must never be logged or returned.

    `versions` maps version -> key bytes (1 is the key as created; each rotation adds the next);
    `settings` holds the key's own `min_tcb` / `chip_ids` (absent: the broker config's apply).
    """

    key_id: str
    kind: str
    policy: str | None
    measurements: list[str]
    created: float
    updated: float
    versions: dict[int, bytes]
    settings: dict[str, Any]

    @property
    def version(self) -> int:
        """The newest version: the one new wraps use."""
        return max(self.versions)

    @property
    def material(self) -> bytes:
        """Key bytes of the newest version."""
        return self.versions[self.version]

    def public(self) -> dict[str, Any]:
        """Metadata safe to show an admin (no key material)."""
        return {"key_id": self.key_id, "kind": self.kind, "policy": self.policy,
                "measurements": self.measurements, "created": self.created, "updated": self.updated,
                "version": self.version, "min_tcb": self.settings.get("min_tcb"),
                "chip_ids": self.settings.get("chip_ids"), "quota": self.settings.get("quota")}


@dataclass(frozen=True)
class Grant:
    """The owner's permission for one batch: this model, these measurements and worker configurations,
    these keys, this many rows."""

    batch_id: str
    model_digest: str
    measurements: list[str]
    key_ids: list[str]
    created: float
    config_digests: list[str] = field(default_factory=list)  # empty only in stores written before they existed
    rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON form (also the `grant` variable of a CEL policy)."""
        return {"batch_id": self.batch_id, "model_digest": self.model_digest,
                "measurements": self.measurements, "key_ids": self.key_ids, "created": self.created,
                "config_digests": self.config_digests, "rows": self.rows}


def _version_label(key_id: str, version: int) -> str:
    """AAD of a rotated version at rest (version 1 keeps the original `key:<id>` label)."""
    return f"key:{key_id}#v{version}"


def is_postgres_url(target: str | Path) -> bool:
    """Whether a store target names a PostgreSQL database (`postgresql://...` or `postgres://...`)."""
    return isinstance(target, str) and POSTGRES_URL.match(target) is not None


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs: everything from the user's colon to the URL's last
    `@`, so a password holding an unencoded `/` or `@` (a malformed URL) is hidden whole, the host with it if need be.
    """
    return re.sub(r"^([a-zA-Z]+://[^:/@]*):.*@", r"\1:***@", url, flags=re.DOTALL)


class _SQLite:
    """SQLite dialect: one file, WAL, `BEGIN IMMEDIATE` for read-then-write transactions."""

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only before SQLite opens it: its -wal and -shm files take the database file's mode when created
        # (made 0600 only afterwards, the store's recent pages sat in a world-readable -wal).
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))
        for path in (db_path, *(db_path.with_name(db_path.name + end) for end in ("-wal", "-shm"))):
            if path.exists():  # a store created before this check
                os.chmod(path, 0o600)
        self.conn = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")  # pragma: no mutate
        # FULL: a release decision must survive a crash
        self.conn.execute("PRAGMA synchronous=FULL")  # pragma: no mutate
        self.conn.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Stores created before per-key settings existed gain the column (NULL: no settings)."""
        keys = self.conn.execute(
            "SELECT * FROM keys LIMIT 0",  # pragma: no mutate
        ).description
        if "settings" not in {column[0] for column in keys}:
            self.conn.execute("ALTER TABLE keys ADD COLUMN settings TEXT")  # pragma: no mutate
        # Grants gained terms (configuration digests, rows) with the measured worker configuration.
        grants = self.conn.execute(
            "SELECT * FROM grants LIMIT 0",  # pragma: no mutate
        ).description
        if "terms" not in {column[0] for column in grants}:
            self.conn.execute("ALTER TABLE grants ADD COLUMN terms TEXT")  # pragma: no mutate

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """Run one statement (`?` placeholders); rows are addressable by column name."""
        return self.conn.execute(sql, params)

    @contextmanager
    def write(self, table: str) -> Iterator[None]:
        """A transaction holding the database's write lock (other writers, also other processes, wait)."""
        del table  # SQLite has one write lock for the whole file
        self.conn.execute("BEGIN IMMEDIATE")  # pragma: no mutate
        try:
            yield
            self.conn.execute("COMMIT")  # pragma: no mutate
        except BaseException:
            self.conn.execute("ROLLBACK")  # pragma: no mutate
            raise

    def close(self) -> None:
        self.conn.close()


class _Postgres:
    """PostgreSQL dialect (psycopg 3): `%s` placeholders, autocommit statements, explicit write transactions.

    The connection is reopened before the next statement if the server dropped it (for example on a restart);
    a statement that was cut off fails, and is not retried.
    """

    def __init__(self, url: str) -> None:
        import psycopg  # only brokers configured for Postgres need the driver loaded

        self._psycopg = psycopg
        self.url = url
        self._writing: Any = None  # the connection of the write transaction in progress
        self.conn = self._connect()
        with self.conn.transaction():
            # Concurrent CREATE ... IF NOT EXISTS can still collide: one broker process creates the schema.
            self.conn.execute(
                "SELECT pg_advisory_xact_lock(%s)",  # pragma: no mutate
                (PG_SCHEMA_LOCK,))
            for statement in PG_SCHEMA:
                self.conn.execute(statement)

    def _connect(self) -> Any:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
        from psycopg.rows import dict_row

        given = conninfo_to_dict(self.url)
        defaults = {k: v for k, v in (("connect_timeout", 10), ("application_name", "cscore-keybroker"))
                    if k not in given}
        try:
            return self._psycopg.connect(make_conninfo(self.url, **defaults), autocommit=True, row_factory=dict_row)
        except self._psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to the key store at {redact_url(self.url)}: {exc}") from exc

    def _live(self) -> Any:
        # Never inside a write transaction: its statements must not move to another connection.
        if self._writing is None and self.conn.closed:  # psycopg: a broken connection is closed as well
            self.conn = self._connect()
        return self.conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """Run one statement written with `?` placeholders (the shared SQL never holds `?` or `%` otherwise)."""
        return self._live().execute(sql.replace("?", "%s"), params)

    @contextmanager
    def write(self, table: str) -> Iterator[None]:
        """A transaction holding `table` against other writers (readers go on): appends to the hash chain and
        new key versions stay sequential across broker processes sharing the database."""
        conn = self._live()
        with conn.transaction():
            conn.execute(f'LOCK TABLE "{table}" IN SHARE ROW EXCLUSIVE MODE')  # quoted: the name as given
            self._writing = conn
            try:
                yield
            finally:
                self._writing = None

    def close(self) -> None:
        self.conn.close()


class KeyStore:
    """Thread-safe key store on SQLite (a Path) or PostgreSQL (a `postgresql://` URL); every secret column is
    sealed under the KEK with its id as AAD."""

    def __init__(self, target: Path | str, kek: bytes) -> None:
        self._kek = kek
        self._lock = threading.Lock()
        self._db: _SQLite | _Postgres = (_Postgres(str(target)) if is_postgres_url(target)
                                         else _SQLite(Path(target)))
        self._check_kek()

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return "postgresql" if isinstance(self._db, _Postgres) else "sqlite"

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def ping(self) -> None:
        """Read the keys table once; StoreError naming the backend and the driver's error if the database does not
        answer (a dropped Postgres connection is reopened first, as for any statement)."""
        try:
            with self._lock:
                self._db.execute("SELECT count(*) FROM keys").fetchall()  # pragma: no mutate
        except Exception as exc:  # the drivers' errors share no base class; the caller only needs the text
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise StoreError(f"{self.backend} key store does not answer: {type(exc).__name__}: {first_line}") from exc

    def _check_kek(self) -> None:
        """Refuse to start with a KEK other than the one the store was created with."""
        self._db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(k) DO NOTHING",  # pragma: no mutate
            ("kek_check", seal(self._kek, KEK_CHECK, "kek")))
        row = self._db.execute(
            "SELECT v FROM meta WHERE k=?",  # pragma: no mutate
            ("kek_check",)).fetchone()
        try:
            unseal(self._kek, row["v"], "kek")
        except InvalidTag as exc:
            raise StoreError("the KEK file does not match the key store (it was created with another KEK)") from exc

    # Broker's own key pairs (token signing, key transport) ------------------------------------------
    def broker_secret(self, name: str, generate: Any) -> bytes:
        """Return the sealed broker secret `name`, creating it with `generate()` on first use."""
        label = f"broker:{name}"
        with self._lock:
            row = self._db.execute(
                "SELECT v FROM meta WHERE k=?",  # pragma: no mutate
                (label,)).fetchone()
            if row is not None:
                return unseal(self._kek, row["v"], label)
            value: bytes = generate()
            # Another process sharing the store may have created it meanwhile: the first one stored wins.
            self._db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(k) DO NOTHING",  # pragma: no mutate
                (label, seal(self._kek, value, label)))
            row = self._db.execute(
                "SELECT v FROM meta WHERE k=?",  # pragma: no mutate
                (label,)).fetchone()
            return unseal(self._kek, row["v"], label)

    # Keys -----------------------------------------------------------------------------------------
    def create_key(self, key_id: str, kind: str, material: bytes, policy: str | None,
                   measurements: list[str], settings: dict[str, Any] | None = None) -> tuple[KeyRecord, bool]:
        """Insert a key unless key_id exists; returns (record, created)."""
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                f"INSERT INTO keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(key_id) DO NOTHING",
                (key_id, kind, seal(self._kek, material, f"key:{key_id}"), policy,
                 json.dumps(measurements), now, now, json.dumps(settings or {})))
            created = cur.rowcount == 1
        record = self.get_key(key_id)
        assert record is not None
        return record, created

    def get_key(self, key_id: str) -> KeyRecord | None:
        """Fetch and unseal a key, or None if unknown."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM keys WHERE key_id=?",  # pragma: no mutate
                (key_id,)).fetchone()
            later = self._db.execute(
                "SELECT version, sealed FROM key_versions WHERE key_id=?",  # pragma: no mutate
                (key_id,)).fetchall()
        if row is None:
            return None
        versions = {1: unseal(self._kek, row["sealed"], f"key:{key_id}")}
        versions.update({r["version"]: unseal(self._kek, r["sealed"], _version_label(key_id, r["version"]))
                         for r in later})
        return KeyRecord(row["key_id"], row["kind"], row["policy"], json.loads(row["measurements"]),
                         row["created"], row["updated"], versions, json.loads(row["settings"] or "{}"))

    def rotate_key(self, key_id: str, material: bytes) -> int:
        """Add the next version of a key (older versions stay, for unwrapping); returns the new version."""
        with self._lock, self._db.write("key_versions"):
            row = self._db.execute(
                "SELECT MAX(version) AS v FROM key_versions WHERE key_id=?",  # pragma: no mutate
                (key_id,)).fetchone()
            version = (row["v"] or 1) + 1
            now = time.time()
            self._db.execute(
                "INSERT INTO key_versions VALUES (?,?,?,?)",  # pragma: no mutate
                (key_id, version, seal(self._kek, material, _version_label(key_id, version)), now))
            self._db.execute(
                "UPDATE keys SET updated=? WHERE key_id=?",  # pragma: no mutate
                (now, key_id))
        return version

    def list_keys(self) -> list[dict[str, Any]]:
        """Metadata of every key (no material)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key_id, kind, policy, measurements, created, updated, settings, "  # pragma: no mutate
                "COALESCE((SELECT MAX(version) FROM key_versions v "  # pragma: no mutate
                "WHERE v.key_id = keys.key_id), 1) AS version "  # pragma: no mutate
                "FROM keys ORDER BY key_id",  # pragma: no mutate
            ).fetchall()
        out = []
        for r in rows:
            settings = json.loads(r["settings"] or "{}")
            out.append({**{k: r[k] for k in ("key_id", "kind", "policy", "created", "updated", "version")},
                        "measurements": json.loads(r["measurements"]), "min_tcb": settings.get("min_tcb"),
                        "chip_ids": settings.get("chip_ids")})
        return out

    def set_policy(self, key_id: str, policy: str | None, measurements: list[str] | None,
                   settings: dict[str, Any] | None = None) -> None:
        """Replace a key's CEL policy (None: the default); if given, its measurements and its settings."""
        sets = ["policy=?", "updated=?"]  # pragma: no mutate
        args = [policy, time.time()]
        if measurements is not None:
            sets.append("measurements=?")  # pragma: no mutate
            args.append(json.dumps(measurements))
        if settings is not None:
            sets.append("settings=?")  # pragma: no mutate
            args.append(json.dumps(settings))
        with self._lock:
            self._db.execute(f"UPDATE keys SET {', '.join(sets)} WHERE key_id=?", (*args, key_id))

    def put_resource(self, key_id: str, value: bytes, policy: str | None, measurements: list[str]) -> None:
        """Insert or replace a resource (a secret value released whole, kind 'resource')."""
        now = time.time()
        with self._lock:
            self._db.execute(
                f"INSERT INTO keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT(key_id) DO UPDATE SET "  # pragma: no mutate
                "sealed=excluded.sealed, policy=excluded.policy, "  # pragma: no mutate
                "measurements=excluded.measurements, updated=excluded.updated",  # pragma: no mutate
                (key_id, "resource", seal(self._kek, value, f"key:{key_id}"), policy, json.dumps(measurements), now,
                 now, json.dumps({})))

    # Grants ---------------------------------------------------------------------------------------
    def put_grant(self, batch_id: str, model_digest: str, measurements: list[str], key_ids: list[str], *,
                  config_digests: list[str], rows: int) -> Grant:
        """Record (or replace) the grant of a batch."""
        grant = Grant(batch_id, model_digest, measurements, key_ids, time.time(), config_digests, rows)
        terms = json.dumps({"config_digests": config_digests, "rows": rows})
        with self._lock:
            self._db.execute(
                "INSERT INTO grants "  # pragma: no mutate
                "(batch_id, model_digest, measurements, key_ids, created, terms) "  # pragma: no mutate
                "VALUES (?,?,?,?,?,?) ON CONFLICT(batch_id) DO UPDATE SET "  # pragma: no mutate
                "model_digest=excluded.model_digest, measurements=excluded.measurements, "  # pragma: no mutate
                "key_ids=excluded.key_ids, created=excluded.created, terms=excluded.terms",  # pragma: no mutate
                (batch_id, model_digest, json.dumps(measurements), json.dumps(key_ids), grant.created, terms))
        return grant

    def get_grant(self, batch_id: str) -> Grant | None:
        """The grant of a batch, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM grants WHERE batch_id=?",  # pragma: no mutate
                (batch_id,)).fetchone()
        if row is None:
            return None
        terms = json.loads(row["terms"] or "{}")
        return Grant(row["batch_id"], row["model_digest"], json.loads(row["measurements"]),
                     json.loads(row["key_ids"]), row["created"], terms.get("config_digests", []),
                     terms.get("rows", 0))

    # Registered owner brokers (a provider's broker) and their metered use ------------------------
    def register_owner(self, name: str, grant_key: dict[str, Any]) -> None:
        """Register (or re-key) an owner broker whose model grants this broker accepts."""
        with self._lock:
            self._db.execute(
                "INSERT INTO owners VALUES (?,?,?) ON CONFLICT(name) DO UPDATE SET "  # pragma: no mutate
                "grant_key=excluded.grant_key, created=excluded.created",  # pragma: no mutate
                (name, json.dumps(grant_key), time.time()))

    def owners(self) -> dict[str, dict[str, Any]]:
        """Registered owner brokers: name -> public grant key (JWK)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, grant_key FROM owners ORDER BY name",  # pragma: no mutate
            ).fetchall()
        return {r["name"]: json.loads(r["grant_key"]) for r in rows}

    def meter(self, owner: str, batch_id: str, key_id: str, rows: int, *, quota: int, period_s: float) -> int:
        """Count a batch's rows against the owner's quota for this key, once per batch; returns the rows used in
        the period (this batch included). Raises QuotaExceeded (nothing recorded) when it would exceed `quota`,
        ValueError (nothing recorded) for fewer than 1 row: a negative count would hand quota back."""
        if rows < 1:
            raise ValueError(f"rows: expected at least 1, got {rows}")
        now = time.time()
        with self._lock, self._db.write("usage"):
            seen = self._db.execute(
                "SELECT rows FROM usage WHERE owner=? AND batch_id=? AND key_id=?",  # pragma: no mutate
                (owner, batch_id, key_id)).fetchone()
            used = self._db.execute(
                "SELECT COALESCE(SUM(rows), 0) AS n FROM usage "  # pragma: no mutate
                "WHERE owner=? AND key_id=? AND time > ?",  # pragma: no mutate
                (owner, key_id, now - period_s)).fetchone()["n"]
            if seen is not None:
                return int(used)
            if used + rows > quota:
                raise QuotaExceeded(int(used), rows, quota)
            self._db.execute(
                "INSERT INTO usage VALUES (?,?,?,?,?)",  # pragma: no mutate
                (owner, batch_id, key_id, rows, now))
        return int(used) + rows

    # Decision log ---------------------------------------------------------------------------------
    def log_decision(self, **fields: Any) -> dict[str, Any]:
        """Append one hash-chained decision (fields: operation, decision, reason, key_id, ...)."""
        with self._lock, self._db.write("decisions"):
            last = self._db.execute(
                "SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1",  # pragma: no mutate
            ).fetchone()
            entry = {k: fields.get(k) for k in LOG_FIELDS}
            entry["seq"] = (last["seq"] + 1) if last else 1
            entry["time"] = round(time.time(), 6)
            entry["prev_hash"] = last["hash"] if last else GENESIS
            entry["hash"] = entry_hash(str(entry["prev_hash"]), entry)
            cols = (*LOG_FIELDS, "prev_hash", "hash")
            self._db.execute(f"INSERT INTO decisions ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                             tuple(entry[c] for c in cols))
        return entry

    def decisions(self, after: int = 0, limit: int = PAGE_LIMIT) -> list[dict[str, Any]]:
        """Decision log entries with seq > after, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM decisions WHERE seq > ? ORDER BY seq LIMIT ?",  # pragma: no mutate
                (after, limit)).fetchall()
        return [dict(r) for r in rows]

    def head(self) -> dict[str, Any]:
        """The last entry's seq and hash (seq 0 and the genesis hash when empty)."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1",  # pragma: no mutate
            ).fetchone()
        return {"seq": row["seq"], "hash": row["hash"]} if row else {"seq": 0, "hash": GENESIS}
