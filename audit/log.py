"""An append-only transparency log: canonical JSON entries, an RFC 6962 Merkle tree, signed checkpoints.

Layout (a directory, or the same names under an S3 prefix):

    entries.jsonl           one entry per line: canonical JSON (enclave.signing.canonical_json)
    checkpoint              the latest signed checkpoint (a C2SP signed note)
    checkpoints/<size>      every checkpoint ever published, by tree size
    log-key.vkey            the log's verifier key (C2SP vkey: name+keyid+base64(0x01||pubkey))

A checkpoint is a C2SP tlog-checkpoint note ("<origin>\\n<size>\\n<base64 root>\\ntime <unix s>\\n")
signed with Ed25519 in the C2SP signed-note format, so any witness tool that reads notes can read it.
Leaf i of the tree is the bytes of line i (without its newline). Each entry carries `index` (its
position), `kind`, and `id` (what makes it unique, so collecting twice appends nothing).

Witnesses (the owner and the provider) keep the latest checkpoint they accepted in their own home and
accept a new one only with a valid consistency proof from it: a rewritten or forked log is refused.
No entry may hold a key, a plaintext or a score: `append` refuses fields with such names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.merkle import MerkleTree, ProofError, verify_consistency
from enclave.signing import canonical_json

KINDS = ("key_release", "attestation", "policy_change", "grant", "receipt", "batch_submitted", "batch_status",
         "batch_result", "broker_head", "training_submitted", "training_receipt", "tuned_model")
FORBIDDEN_FIELDS = frozenset({"material", "plaintext", "text", "dek", "secret", "private", "wrapped", "jwe",
                              "spam_probability", "probability", "label", "labels", "score", "scores", "emails"})
DEFAULT_ORIGIN = "cscore.local/audit"
ENTRIES = "entries.jsonl"
CHECKPOINT = "checkpoint"
HISTORY = "checkpoints/"
VKEY = "log-key.vkey"
WITNESS_FILE = "audit-checkpoint.json"
SIG_PREFIX = "\u2014 "  # em dash + space starts a signature line


class LogError(ValueError):
    """The log, a checkpoint or a note is malformed, unsigned, or inconsistent with what was seen before."""


# -- storage ---------------------------------------------------------------------------------------


class LogStorage(Protocol):
    """Where a log's files live: a directory or an S3 prefix."""

    def read(self, name: str) -> bytes | None: ...
    def write(self, name: str, data: bytes) -> None: ...
    def append(self, name: str, data: bytes) -> None: ...
    def names(self, prefix: str) -> list[str]: ...
    def describe(self) -> str: ...


class DirStorage:
    """A log in a local directory (files written atomically, entries appended)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def write(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def append(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def names(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        return sorted(f"{prefix}{p.name}" for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def describe(self) -> str:
        return str(self.root)


class S3Storage:
    """A log under a prefix of an object store (sdk.storage.ObjectStore); appends rewrite the object."""

    def __init__(self, store: Any, prefix: str = "audit/") -> None:
        self.store = store
        self.prefix = prefix if prefix.endswith("/") or not prefix else prefix + "/"

    def read(self, name: str) -> bytes | None:
        data: bytes | None = self.store.get_if_exists(self.prefix + name)
        return data

    def write(self, name: str, data: bytes) -> None:
        self.store.put(self.prefix + name, data)

    def append(self, name: str, data: bytes) -> None:
        self.write(name, (self.read(name) or b"") + data)

    def names(self, prefix: str) -> list[str]:
        return sorted(k[len(self.prefix):] for k in self.store.keys(self.prefix + prefix))

    def describe(self) -> str:
        return f"s3://{self.store.bucket}/{self.prefix}"


# -- signed notes (C2SP signed-note, Ed25519) -------------------------------------------------------


def key_id(name: str, public: Ed25519PublicKey) -> bytes:
    """C2SP signed-note key id: the first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key)."""
    return hashlib.sha256(name.encode() + b"\n\x01" + _raw(public)).digest()[:4]


def verifier_key(name: str, public: Ed25519PublicKey) -> str:
    """The C2SP vkey string `name+<hex key id>+<base64(0x01 || public key)>`."""
    encoded = base64.b64encode(b"\x01" + _raw(public)).decode()
    return f"{name}+{key_id(name, public).hex()}+{encoded}"


def parse_verifier_key(vkey: str) -> tuple[str, Ed25519PublicKey]:
    """(name, public key) of a vkey string; raises LogError if it is not an Ed25519 vkey."""
    try:
        name, kid, b64 = vkey.strip().split("+", 2)
        raw = base64.b64decode(b64, validate=True)
        public = Ed25519PublicKey.from_public_bytes(raw[1:])
    except ValueError as exc:
        raise LogError(f"log key: expected a vkey name+keyid+base64, got {vkey[:80]!r}") from exc
    if raw[:1] != b"\x01" or key_id(name, public).hex() != kid:
        raise LogError(f"log key {name}: key id {kid} does not match its Ed25519 public key")
    return name, public


def sign_note(text: str, name: str, key: Ed25519PrivateKey) -> str:
    """A signed note: the text (ending in a newline), a blank line, one signature line."""
    if not text.endswith("\n"):
        raise LogError("note text: expected it to end with a newline")
    sig = key.sign(text.encode())
    return f"{text}\n{SIG_PREFIX}{name} {base64.b64encode(key_id(name, key.public_key()) + sig).decode()}\n"


def open_note(note: str, vkey: str) -> str:
    """The text of a note that carries a valid signature by `vkey`; raises LogError otherwise."""
    name, public = parse_verifier_key(vkey)
    text, sep, sigs = note.rpartition("\n\n")
    if not sep:
        raise LogError("checkpoint note: expected text, a blank line and signature lines")
    text += "\n"
    for line in sigs.splitlines():
        if not line.startswith(SIG_PREFIX + name + " "):
            continue
        try:  # strict, as Go's note.Open: a lenient decoder would drop stray characters and read on
            blob = base64.b64decode(line.rsplit(" ", 1)[1], validate=True)
        except ValueError as exc:
            raise LogError(f"checkpoint note: a signature line of {name} is not base64: {line[:80]!r}") from exc
        if blob[:4] != key_id(name, public):
            continue
        try:
            public.verify(blob[4:], text.encode())
        except InvalidSignature as exc:
            raise LogError(f"checkpoint note: the signature of {name} does not verify over its text") from exc
        return text
    raise LogError(f"checkpoint note: expected a signature by log key {name}, found none")


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# -- checkpoints -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head: origin, size, root hash and the time it was signed."""

    origin: str
    size: int
    root: bytes
    timestamp: int
    note: str = ""

    def text(self) -> str:
        """The C2SP tlog-checkpoint body, with the timestamp as an extension line."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\ntime {self.timestamp}\n"

    @classmethod
    def parse(cls, text: str, note: str = "") -> Checkpoint:
        lines = text.splitlines()
        try:
            origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
            stamp = int(next(x for x in lines[3:] if x.startswith("time ")).split()[1])
        except (IndexError, ValueError, StopIteration) as exc:
            raise LogError(f"checkpoint: expected origin, size, base64 root and 'time N' lines, got {text!r}") from exc
        if len(root) != 32 or size < 0:
            raise LogError(f"checkpoint: expected a 32-byte root and size >= 0, got {len(root)} bytes, size {size}")
        return cls(origin, size, root, stamp, note)

    @classmethod
    def open(cls, note: str, vkey: str) -> Checkpoint:
        """Verify the note's signature by `vkey`, then parse it."""
        return cls.parse(open_note(note, vkey), note)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.timestamp))
        return f"size {self.size}, root {self.root.hex()[:16]}…, signed {when}"


# -- the log ---------------------------------------------------------------------------------------


class AuditLog:
    """The transparency log. Open with `AuditLog.open_dir(path)` or `AuditLog(S3Storage(...), signer=...)`.

    Without a signer the log is read-only (what an auditor holds).
    """

    def __init__(self, storage: LogStorage, *, signer: Ed25519PrivateKey | None = None,
                 origin: str = DEFAULT_ORIGIN) -> None:
        self.storage = storage
        self.origin = origin
        self._signer = signer
        self._lines: list[bytes] | None = None
        self._ids: set[str] | None = None
        self._tree: MerkleTree | None = None
        if signer is not None and storage.read(VKEY) is None:
            storage.write(VKEY, (verifier_key(origin, signer.public_key()) + "\n").encode())

    @classmethod
    def open_dir(cls, path: Path, *, key_path: Path | None = None, create: bool = True,
                 origin: str = DEFAULT_ORIGIN) -> AuditLog:
        """A directory log; its signing key lives at `key_path` (default `<path>/log-key.pem`, mode 0600)."""
        path = Path(path)
        key_path = key_path or path / "log-key.pem"
        signer = load_or_create_key(key_path) if create or key_path.exists() else None
        return cls(DirStorage(path), signer=signer, origin=origin)

    def describe(self) -> str:
        return self.storage.describe()

    # reading
    def lines(self) -> list[bytes]:
        """Every entry's bytes, in log order (as stored: not yet checked)."""
        if self._lines is None:
            raw = self.storage.read(ENTRIES) or b""
            self._lines = [line for line in raw.split(b"\n") if line]
        return self._lines

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, parsed; raises LogError at a line that is not a JSON object."""
        out = []
        for i, line in enumerate(self.lines()):
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise LogError(f"entry at position {i}: expected JSON, got undecodable bytes") from exc
            if not isinstance(value, dict):
                raise LogError(f"entry at position {i}: expected a JSON object")
            out.append(value)
        return out

    @property
    def size(self) -> int:
        return len(self.lines())

    def tree(self) -> MerkleTree:
        """The Merkle tree over the stored lines."""
        if self._tree is None:
            self._tree = MerkleTree(self.lines())
        return self._tree

    def ids(self) -> set[str]:
        if self._ids is None:
            self._ids = {str(e.get("id")) for e in self.entries()}
        return self._ids

    def vkey(self) -> str | None:
        """The log's verifier key as stored beside it (pin it: a witness keeps its own copy)."""
        raw = self.storage.read(VKEY)
        return raw.decode().strip() if raw else None

    def checkpoint_note(self) -> str | None:
        raw = self.storage.read(CHECKPOINT)
        return raw.decode() if raw else None

    def history(self) -> list[str]:
        """Every checkpoint note ever published, oldest first."""
        names = sorted(self.storage.names(HISTORY), key=lambda n: int(n.rsplit("/", 1)[1]))
        return [(self.storage.read(n) or b"").decode() for n in names]

    def latest_checkpoint(self, vkey: str | None = None) -> Checkpoint:
        """The latest checkpoint, its signature checked with `vkey` (default: the log's own)."""
        note, key = self.checkpoint_note(), vkey or self.vkey()
        if note is None or key is None:
            raise LogError(f"log {self.describe()}: expected a signed checkpoint and a log key, found none")
        return Checkpoint.open(note, key)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return self.tree().consistency_proof(old_size, new_size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return self.tree().inclusion_proof(index, size)

    # writing
    def append(self, kind: str, entry_id: str, fields: dict[str, Any]) -> int | None:
        """Append one entry unless one with `entry_id` exists; returns its index, or None if already there."""
        if kind not in KINDS:
            raise LogError(f"entry kind: expected one of {KINDS}, got {kind!r}")
        if entry_id in self.ids():
            return None
        _refuse_secrets(fields, kind)
        index = self.size
        line = canonical_json({**fields, "kind": kind, "id": entry_id, "index": index})
        self.storage.append(ENTRIES, line + b"\n")
        self.lines().append(line)
        self.ids().add(entry_id)
        if self._tree is not None:
            self._tree.append(line)
        return index

    def publish_checkpoint(self, now: int | None = None) -> Checkpoint:
        """Sign (size, root, time) of the log as it is now; kept as `checkpoint` and in the history."""
        if self._signer is None:
            raise LogError(f"log {self.describe()}: opened without its signing key, cannot sign a checkpoint")
        head = Checkpoint(self.origin, self.size, self.tree().root(), int(now if now is not None else time.time()))
        note = sign_note(head.text(), self.origin, self._signer)
        self.storage.write(f"{HISTORY}{head.size}", note.encode())
        self.storage.write(CHECKPOINT, note.encode())
        return Checkpoint(head.origin, head.size, head.root, head.timestamp, note)

    def reload(self) -> None:
        """Forget cached entries (after another process appended)."""
        self._lines = self._ids = self._tree = None


def _refuse_secrets(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k).lower() in FORBIDDEN_FIELDS:
                raise LogError(f"{where}.{k}: a log entry never holds keys, plaintext or scores")
            _refuse_secrets(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_secrets(v, f"{where}[{i}]")


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The log's Ed25519 signing key (PKCS#8 PEM, mode 0600), created on first use."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise LogError(f"{path}: expected an Ed25519 private key")
    return key


# -- witnesses -------------------------------------------------------------------------------------


class Witness:
    """A party (owner, provider) that remembers the latest checkpoint it accepted, in its own home.

    The first checkpoint it sees pins the log's key (trust on first use); every later one must be signed
    by the same key and come with a consistency proof from the remembered one.
    """

    def __init__(self, home: Path, name: str) -> None:
        self.home = Path(home)
        self.name = name
        self.path = self.home / WITNESS_FILE

    def saved(self) -> dict[str, Any] | None:
        """{"log_key", "checkpoint", "accepted_at"} as last saved, or None."""
        if not self.path.is_file():
            return None
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    def check(self, log: AuditLog) -> Checkpoint:
        """The log's latest checkpoint if it is consistent with what this witness saw; LogError says why not."""
        saved = self.saved()
        pinned = saved["log_key"] if saved else log.vkey()
        if saved and log.vkey() and log.vkey() != pinned:
            raise LogError(f"{self.name}'s witness: the log now presents key {log.vkey()}, "
                           f"but the {self.name} pinned {pinned}: the log's key was replaced")
        new = log.latest_checkpoint(pinned)
        if saved is None:
            return new
        old = Checkpoint.open(saved["checkpoint"], str(pinned))
        if new.size < old.size:
            raise LogError(f"the {self.name} saw the log at {old.describe()}, but it now has only {new.size} "
                           "entries: entries were removed (the log was rolled back)")
        try:
            verify_consistency(old.size, new.size, log.consistency_proof(old.size, new.size), old.root, new.root)
        except ProofError as exc:
            raise LogError(f"the log's checkpoint ({new.describe()}) is not an extension of the one the "
                           f"{self.name} saw ({old.describe()}): the log was rewritten or forked ({exc})") from exc
        return new

    def observe(self, log: AuditLog) -> Checkpoint:
        """Check the log's latest checkpoint (see `check`) and remember it."""
        new = self.check(log)
        saved = self.saved()
        record = {"log_key": saved["log_key"] if saved else log.vkey(), "checkpoint": new.note,
                  "accepted_at": int(time.time())}
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(WITNESS_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.path)
        return new
