"""SQLite key store: master keys sealed under the KEK, policies, grants, the hash-chained decision log."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from keybroker.crypto import canonical_json, seal, sha256_hex, unseal

GENESIS = "0" * 64
KEY_COLUMNS = "key_id, kind, sealed, policy, measurements, created, updated, settings"
KEK_CHECK = b"cscore-keybroker-kek-check"
LOG_FIELDS = (
    "seq", "time", "operation", "key_id", "batch_id", "model_digest",
    "decision", "reason", "claims_digest", "measurement",
)

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
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY, time REAL NOT NULL, operation TEXT NOT NULL, key_id TEXT, batch_id TEXT,
    model_digest TEXT, decision TEXT NOT NULL, reason TEXT NOT NULL, claims_digest TEXT,
    measurement TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
    BEGIN SELECT RAISE(ABORT, 'decision log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
    BEGIN SELECT RAISE(ABORT, 'decision log is append-only'); END;
"""


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
                "chip_ids": self.settings.get("chip_ids")}


@dataclass(frozen=True)
class Grant:
    """The owner's permission for one batch: this model, these measurements, these keys."""

    batch_id: str
    model_digest: str
    measurements: list[str]
    key_ids: list[str]
    created: float

    def as_dict(self) -> dict[str, Any]:
        """JSON form (also the `grant` variable of a CEL policy)."""
        return {"batch_id": self.batch_id, "model_digest": self.model_digest,
                "measurements": self.measurements, "key_ids": self.key_ids, "created": self.created}


def _version_label(key_id: str, version: int) -> str:
    """AAD of a rotated version at rest (version 1 keeps the original `key:<id>` label)."""
    return f"key:{key_id}#v{version}"


def entry_hash(prev_hash: str, entry: dict[str, Any]) -> str:
    """Chain hash of one decision: sha256(prev_hash || canonical JSON of the entry's LOG_FIELDS)."""
    body = {k: entry.get(k) for k in LOG_FIELDS}
    return sha256_hex(prev_hash.encode() + canonical_json(body))


def verify_chain(entries: list[dict[str, Any]], start_hash: str = GENESIS) -> None:
    """Raise ValueError at the first entry whose prev_hash or hash does not follow from its predecessor."""
    prev = start_hash
    for entry in entries:
        if entry["prev_hash"] != prev:
            raise ValueError(f"decision {entry['seq']}: prev_hash expected {prev}, actual {entry['prev_hash']}")
        expected = entry_hash(prev, entry)
        if entry["hash"] != expected:
            raise ValueError(f"decision {entry['seq']}: hash expected {expected}, actual {entry['hash']}")
        prev = entry["hash"]


class KeyStore:
    """Thread-safe SQLite store; every secret column is sealed under the KEK with its id as AAD."""

    def __init__(self, db_path: Path, kek: bytes) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._kek = kek
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a release decision must survive a crash
        self._db.executescript(SCHEMA)
        self._migrate()
        os.chmod(db_path, 0o600)
        self._check_kek()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        """Stores created before per-key settings existed gain the column (NULL: no settings)."""
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(keys)")}
        if "settings" not in columns:
            self._db.execute("ALTER TABLE keys ADD COLUMN settings TEXT")

    def _check_kek(self) -> None:
        """Refuse to start with a KEK other than the one the store was created with."""
        row = self._db.execute("SELECT v FROM meta WHERE k='kek_check'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('kek_check', ?)", (seal(self._kek, KEK_CHECK, "kek"),))
            return
        try:
            unseal(self._kek, row["v"], "kek")
        except InvalidTag as exc:
            raise StoreError("the KEK file does not match the key store (it was created with another KEK)") from exc

    # Broker's own key pairs (token signing, key transport) ------------------------------------------
    def broker_secret(self, name: str, generate: Any) -> bytes:
        """Return the sealed broker secret `name`, creating it with `generate()` on first use."""
        label = f"broker:{name}"
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k=?", (label,)).fetchone()
            if row is not None:
                return unseal(self._kek, row["v"], label)
            value: bytes = generate()
            self._db.execute("INSERT INTO meta VALUES (?, ?)", (label, seal(self._kek, value, label)))
            return value

    # Keys -----------------------------------------------------------------------------------------
    def create_key(self, key_id: str, kind: str, material: bytes, policy: str | None,
                   measurements: list[str], settings: dict[str, Any] | None = None) -> tuple[KeyRecord, bool]:
        """Insert a key unless key_id exists; returns (record, created)."""
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                f"INSERT OR IGNORE INTO keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                (key_id, kind, seal(self._kek, material, f"key:{key_id}"), policy,
                 json.dumps(measurements), now, now, json.dumps(settings or {})))
            created = cur.rowcount == 1
        record = self.get_key(key_id)
        assert record is not None
        return record, created

    def get_key(self, key_id: str) -> KeyRecord | None:
        """Fetch and unseal a key, or None if unknown."""
        with self._lock:
            row = self._db.execute("SELECT * FROM keys WHERE key_id=?", (key_id,)).fetchone()
            later = self._db.execute("SELECT version, sealed FROM key_versions WHERE key_id=?",
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
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT MAX(version) AS v FROM key_versions WHERE key_id=?",
                                       (key_id,)).fetchone()
                version = (row["v"] or 1) + 1
                now = time.time()
                self._db.execute("INSERT INTO key_versions VALUES (?,?,?,?)",
                                 (key_id, version, seal(self._kek, material, _version_label(key_id, version)), now))
                self._db.execute("UPDATE keys SET updated=? WHERE key_id=?", (now, key_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return version

    def list_keys(self) -> list[dict[str, Any]]:
        """Metadata of every key (no material)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key_id, kind, policy, measurements, created, updated, settings, "
                "COALESCE((SELECT MAX(version) FROM key_versions v WHERE v.key_id = keys.key_id), 1) AS version "
                "FROM keys ORDER BY key_id").fetchall()
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
        sets, args = ["policy=?", "updated=?"], [policy, time.time()]
        if measurements is not None:
            sets.append("measurements=?")
            args.append(json.dumps(measurements))
        if settings is not None:
            sets.append("settings=?")
            args.append(json.dumps(settings))
        with self._lock:
            self._db.execute(f"UPDATE keys SET {', '.join(sets)} WHERE key_id=?", (*args, key_id))

    def put_resource(self, key_id: str, value: bytes, policy: str | None, measurements: list[str]) -> None:
        """Insert or replace a resource (a secret value released whole, kind 'resource')."""
        now = time.time()
        with self._lock:
            self._db.execute(
                f"INSERT INTO keys ({KEY_COLUMNS}) VALUES (?,'resource',?,?,?,?,?,'{{}}') "
                "ON CONFLICT(key_id) DO UPDATE SET "
                "sealed=excluded.sealed, policy=excluded.policy, measurements=excluded.measurements, "
                "updated=excluded.updated",
                (key_id, seal(self._kek, value, f"key:{key_id}"), policy, json.dumps(measurements), now, now))

    # Grants ---------------------------------------------------------------------------------------
    def put_grant(self, batch_id: str, model_digest: str, measurements: list[str], key_ids: list[str]) -> Grant:
        """Record (or replace) the grant of a batch."""
        grant = Grant(batch_id, model_digest, measurements, key_ids, time.time())
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO grants VALUES (?,?,?,?,?)",
                             (batch_id, model_digest, json.dumps(measurements), json.dumps(key_ids),
                              grant.created))
        return grant

    def get_grant(self, batch_id: str) -> Grant | None:
        """The grant of a batch, or None."""
        with self._lock:
            row = self._db.execute("SELECT * FROM grants WHERE batch_id=?", (batch_id,)).fetchone()
        if row is None:
            return None
        return Grant(row["batch_id"], row["model_digest"], json.loads(row["measurements"]),
                     json.loads(row["key_ids"]), row["created"])

    # Decision log ---------------------------------------------------------------------------------
    def log_decision(self, **fields: Any) -> dict[str, Any]:
        """Append one hash-chained decision (fields: operation, decision, reason, key_id, ...)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last = self._db.execute("SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()
                entry = {k: fields.get(k) for k in LOG_FIELDS}
                entry["seq"] = (last["seq"] + 1) if last else 1
                entry["time"] = round(time.time(), 6)
                entry["prev_hash"] = last["hash"] if last else GENESIS
                entry["hash"] = entry_hash(str(entry["prev_hash"]), entry)
                cols = (*LOG_FIELDS, "prev_hash", "hash")
                self._db.execute(f"INSERT INTO decisions ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                                 tuple(entry[c] for c in cols))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return entry

    def decisions(self, after: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
        """Decision log entries with seq > after, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM decisions WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (after, limit)).fetchall()
        return [dict(r) for r in rows]

    def head(self) -> dict[str, Any]:
        """The last entry's seq and hash (seq 0 and the genesis hash when empty)."""
        with self._lock:
            row = self._db.execute("SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()
        return {"seq": row["seq"], "hash": row["hash"]} if row else {"seq": 0, "hash": GENESIS}
