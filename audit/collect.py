"""Fill the transparency log from both brokers' decision logs and from what lies in object storage.

`sync_log` is idempotent: every entry has an id derived from its source (broker and sequence number,
or the SHA-256 of the object it describes), and an id already in the log is not appended again. Run it
after each batch (and after any policy change); each run ends with a fresh signed checkpoint.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from audit.log import AuditLog, Checkpoint
from enclave.signing import SignatureError, unverified_payload

Entry = tuple[str, str, dict[str, Any]]  # kind, id, fields
POLICY_OPS = {"admin.create_key", "admin.set_policy", "admin.put_resource"}
RELEASE_OPS = {"unwrap", "wrap", "resource"}


class CollectError(RuntimeError):
    """A source contradicts what the log already holds (for example: a broker rewrote its history)."""


class DecisionSource(Protocol):
    """What sync_log needs of a broker: sdk.broker_admin.BrokerAdmin has it."""

    def decisions(self, after: int = 0, *, verify: bool = True) -> list[dict[str, Any]]: ...


class Objects(Protocol):
    """What sync_log needs of object storage: sdk.storage.ObjectStore has it."""

    def get(self, key: str) -> bytes: ...
    def keys(self, prefix: str) -> list[str]: ...


@dataclass
class SyncReport:
    """What one sync appended, by kind, and the checkpoint it ended with."""

    appended: dict[str, int] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None

    @property
    def total(self) -> int:
        return sum(self.appended.values())

    def summary(self) -> str:
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.appended.items())) or "nothing new"
        head = f"; checkpoint {self.checkpoint.describe()}" if self.checkpoint else ""
        return f"audit log: appended {parts}{head}"


def sync_log(log: AuditLog, brokers: Mapping[str, DecisionSource], store: Objects, *,
             checkpoint: bool = True) -> SyncReport:
    """Append new broker decisions (chains and signed checkpoints verified) and new S3 records.

    brokers: name ("owner", "provider") -> BrokerAdmin. Raises CollectError if a broker's history no
    longer matches what the log recorded from it, and ValueError if a broker's chain does not verify.
    """
    report = SyncReport()
    for name, admin in sorted(brokers.items()):
        decisions = admin.decisions(0, verify=True)
        _add(log, report, broker_entries(log, name, decisions))
        if decisions:  # what this sync saw of the broker: the audit says it checked up to here, no further
            _add(log, report, iter([head_entry(name, decisions[-1])]))
    _add(log, report, storage_entries(store))
    if checkpoint and (report.total or log.checkpoint_note() is None or _stale(log)):
        report.checkpoint = log.publish_checkpoint()
    return report


def _stale(log: AuditLog) -> bool:
    try:
        return log.latest_checkpoint().size != log.size
    except ValueError:
        return True


def _add(log: AuditLog, report: SyncReport, entries: Iterator[Entry]) -> None:
    for kind, entry_id, fields in entries:
        if log.append(kind, entry_id, fields) is not None:
            report.appended[kind] = report.appended.get(kind, 0) + 1


# -- broker decisions ------------------------------------------------------------------------------


def broker_entries(log: AuditLog, broker: str, decisions: list[dict[str, Any]]) -> Iterator[Entry]:
    """Entries for the decisions not yet logged, after checking the logged ones are still the broker's."""
    logged = {e["seq"]: e["chain_hash"] for e in log.entries() if e.get("broker") == broker and "seq" in e}
    by_seq = {d["seq"]: d for d in decisions}
    for seq, chain_hash in sorted(logged.items()):
        now = by_seq.get(seq)
        if now is None or now["hash"] != chain_hash:
            raise CollectError(
                f"broker {broker}: decision {seq} was logged with chain hash {chain_hash}, but the broker now "
                f"shows {now['hash'] if now else 'nothing'} there: its decision log was rewritten or reset")
    for d in decisions:
        if d["seq"] not in logged:
            yield decision_entry(broker, d)


def decision_entry(broker: str, d: dict[str, Any]) -> Entry:
    """The log entry of one broker decision (kind by operation; never any key bytes: the broker has none there)."""
    op = d["operation"]
    fields: dict[str, Any] = {
        "broker": broker, "seq": d["seq"], "chain_hash": d["hash"], "time": d["time"], "operation": op,
        "decision": d["decision"], "key_id": d.get("key_id"), "batch_id": d.get("batch_id"),
        "model_digest": d.get("model_digest"), "measurement": d.get("measurement"),
        "claims_digest": d.get("claims_digest"), "reason": d.get("reason"),
    }
    if op == "attest":
        kind = "attestation"
    elif op == "admin.grant":
        kind = "grant"
        fields.update(parse_grant_reason(d.get("reason") or ""))
    elif op in POLICY_OPS:
        kind = "policy_change"
        fields.update(parse_policy_reason(d.get("reason") or ""))
    else:
        kind = "key_release"
    return kind, f"decision:{broker}:{d['seq']}", fields


def head_entry(broker: str, last: dict[str, Any]) -> Entry:
    """The broker's log head as a sync saw it (its chain was verified against the broker's signed checkpoint):
    {"broker", "head_seq", "head_hash", "synced_at" (epoch s)}. One entry per head: a later sync that sees the
    same head appends nothing."""
    fields = {"broker": broker, "head_seq": last["seq"], "head_hash": last["hash"], "synced_at": round(time.time(), 3)}
    return "broker_head", f"head:{broker}:{last['seq']}:{last['hash']}", fields


def parse_grant_reason(reason: str) -> dict[str, Any]:
    """{"key_ids", "granted_measurements", "granted_config_digests", "granted_rows"} from the broker's
    "grant keys [...] to measurements [...]; worker configurations [...]; N rows" (the last two since the
    measured worker configuration; None in older logs)."""
    m = re.fullmatch(r"grant keys (\[.*?\]) to measurements (\[.*?\])"
                     r"(?:; worker configurations (\[.*?\]); (\d+) rows)?", reason)
    if not m:
        return {"key_ids": None, "granted_measurements": None, "granted_config_digests": None, "granted_rows": None}
    return {"key_ids": _literal(m.group(1)), "granted_measurements": _literal(m.group(2)),
            "granted_config_digests": _literal(m.group(3)) if m.group(3) else None,
            "granted_rows": int(m.group(4)) if m.group(4) else None}


def parse_policy_reason(reason: str) -> dict[str, Any]:
    """{"key_kind", "policy", "key_measurements"} from a create_key / set_policy / put_resource reason.

    key_measurements is None when unchanged; policy is None for the kind's default policy.
    """
    m = re.fullmatch(r"(?:created (\w+) key; )?policy: (.*?); measurements: (unchanged|\[.*?\])(?:; quota: .*)?",
                     reason, re.S)
    if not m:
        return {"key_kind": None, "policy": None, "key_measurements": None}
    policy = None if m.group(2) == "default" else m.group(2)
    measurements = None if m.group(3) == "unchanged" else _literal(m.group(3))
    return {"key_kind": m.group(1), "policy": policy, "key_measurements": measurements}


def _literal(text: str) -> list[str] | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


# -- object storage --------------------------------------------------------------------------------


def storage_entries(store: Objects) -> Iterator[Entry]:
    """Entries for manifests, receipts, result manifests and statuses found in the bucket, oldest first; for
    training jobs, their manifests, the enclave's training receipts and the tuned models' cards (lineage)."""
    found: list[tuple[float, Entry]] = []
    for key in store.keys("incoming/"):
        if key.endswith("/manifest.jws"):
            found.append(_manifest_entry(key, store.get(key)))
        elif key.endswith("/training.jws"):
            found.append(_training_manifest_entry(key, store.get(key)))
    tuned = store.keys("tuned/")
    trained_at: dict[str, float] = {}
    for key in tuned:
        if key.endswith("/receipt.jws"):
            found.append(_training_receipt_entry(key, store.get(key)))
            trained_at[key.removesuffix("receipt.jws")] = found[-1][0]
    for key in tuned:
        if key.endswith("/card.jws"):  # uploaded just before its receipt
            when, entry = _tuned_card_entry(key, store.get(key))
            found.append((trained_at.get(key.removesuffix("card.jws"), when) - 0.25, entry))
    last_receipt: dict[str, float] = {}
    results = store.keys("results/")
    for key in results:
        if key.endswith(".receipt.jws"):
            found.append(_receipt_entry(key, store.get(key)))
            batch = found[-1][1][2]["path_batch_id"]
            last_receipt[batch] = max(last_receipt.get(batch, 0.0), found[-1][0])
    for key in results:
        if key.endswith("/result-manifest.json"):
            when, entry = _result_manifest_entry(key, store.get(key))
            found.append((last_receipt.get(entry[2]["batch_id"], when) + 0.5, entry))
    for key in store.keys("status/"):
        if key.endswith(".json"):
            found.append(_status_entry(key, store.get(key)))
    for _, entry in sorted(found, key=lambda item: item[0]):
        yield entry


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tenant_batch(key: str) -> tuple[str, str]:
    parts = key.split("/")
    return (parts[1], parts[2].removesuffix(".json")) if len(parts) > 2 else ("", "")


def _manifest_entry(key: str, raw: bytes) -> tuple[float, Entry]:
    tenant, batch = _tenant_batch(key)
    try:
        p = unverified_payload(raw.decode(errors="replace"), what="manifest")
    except SignatureError:  # logged as stored, its fields empty: the auditor checks the JWS itself
        p = {}
    objects = [{k: o.get(k) for k in ("key", "size", "sha256", "file_id", "rows", "row_groups")}
               for o in p.get("objects", [])]
    fields = {"tenant": tenant, "batch_id": batch, "manifest_key": key, "manifest_sha256": sha256_hex(raw),
              "jws": raw.decode(errors="replace").strip(), "created_at": p.get("created_at"),
              "objects": objects, "model": p.get("model"), "key_broker": p.get("key_broker"),
              "claimed_batch_id": p.get("batch_id"), "claimed_tenant": p.get("tenant")}
    return float(p.get("created_at") or 0), ("batch_submitted", f"manifest:{key}:{sha256_hex(raw)}", fields)


def _receipt_entry(key: str, raw: bytes) -> tuple[float, Entry]:
    tenant, batch = _tenant_batch(key)
    token = raw.decode(errors="replace").strip()
    try:
        p = unverified_payload(token, what="receipt")
    except SignatureError:  # logged as stored, its fields empty: the auditor checks the JWS itself
        p = {}
    prefix = key.rsplit("/", 1)[0]
    fields = {"receipt_key": key, "receipt_sha256": sha256_hex(raw), "jws": token, "path_tenant": tenant,
              "path_batch_id": batch, "tenant": p.get("tenant"), "batch_id": p.get("batch_id"),
              "shard_index": p.get("shard_index"), "input": p.get("input"), "output": p.get("output"),
              "model": p.get("model"), "evidence_sha256": p.get("evidence_sha256"),
              "evidence_key": f"{prefix}/evidence/{p.get('evidence_sha256')}.json", "worker": p.get("worker"),
              "sessions": p.get("sessions"), "issued_at": p.get("issued_at")}
    return float(p.get("issued_at") or 0), ("receipt", f"receipt:{key}:{sha256_hex(raw)}", fields)


def _payload(raw: bytes, what: str) -> tuple[str, dict[str, Any]]:
    token = raw.decode(errors="replace").strip()
    try:
        return token, unverified_payload(token, what=what)
    except SignatureError:  # logged as stored, its fields empty: the auditor checks the JWS itself
        return token, {}


def _training_manifest_entry(key: str, raw: bytes) -> tuple[float, Entry]:
    tenant, job = _tenant_batch(key)
    _, p = _payload(raw, "training manifest")
    obj: dict[str, Any] = p["object"] if isinstance(p.get("object"), dict) else {}
    # Its JWS is not logged: it carries the owner's wrapped key share (ciphertext, but a key's).
    fields = {"tenant": tenant, "batch_id": job, "manifest_key": key, "manifest_sha256": sha256_hex(raw),
              "created_at": p.get("created_at"),
              "objects": [{k: obj.get(k) for k in ("key", "size", "sha256", "rows")}] if obj else [],
              "recipe": p.get("recipe"), "model": p.get("model"), "holdout": p.get("holdout"),
              "claimed_batch_id": p.get("job_id"), "claimed_tenant": p.get("tenant")}
    return float(p.get("created_at") or 0), ("training_submitted", f"training-manifest:{key}:{sha256_hex(raw)}", fields)


def _training_receipt_entry(key: str, raw: bytes) -> tuple[float, Entry]:
    token, p = _payload(raw, "training receipt")
    prefix = key.rsplit("/", 1)[0]
    fields = {"receipt_key": key, "receipt_sha256": sha256_hex(raw), "jws": token, "path_tenant": key.split("/")[1],
              "tenant": p.get("tenant"), "batch_id": p.get("job_id"), "path_batch_id": p.get("job_id"),
              "input": p.get("input"), "recipe": p.get("recipe"), "model": p.get("model"), "metrics": p.get("metrics"),
              "evidence_sha256": p.get("evidence_sha256"),
              "evidence_key": f"{prefix}/evidence/{p.get('evidence_sha256')}.json", "worker": p.get("worker"),
              "sessions": p.get("sessions"), "issued_at": p.get("issued_at")}
    return float(p.get("issued_at") or 0), ("training_receipt", f"training-receipt:{key}:{sha256_hex(raw)}", fields)


def _tuned_card_entry(key: str, raw: bytes) -> tuple[float, Entry]:
    _, p = _payload(raw, "tuned model card")
    lineage: dict[str, Any] = p["lineage"] if isinstance(p.get("lineage"), dict) else {}
    prefix = key.rsplit("/", 1)[0]
    # Its JWS is not logged (both wrapped key shares are in it): the auditor verifies the stored card by digest.
    fields = {"card_key": key, "card_sha256": sha256_hex(raw), "tenant": p.get("tenant"),
              "batch_id": lineage.get("job_id"), "name": p.get("name"), "version": p.get("version"),
              "digest": p.get("digest"), "lineage": lineage, "evidence_sha256": p.get("evidence_sha256"),
              "evidence_key": f"{prefix}/evidence/{p.get('evidence_sha256')}.json"}
    return 0.0, ("tuned_model", f"tuned-card:{key}:{sha256_hex(raw)}", fields)


def _result_manifest_entry(key: str, raw: bytes) -> tuple[float, Entry]:
    tenant, batch = _tenant_batch(key)
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    shard_fields = ("shard_index", "worker", "receipt_key", "receipt_sha256", "output_key", "output_sha256",
                    "rows", "reused")
    shards = [{k: s.get(k) for k in shard_fields} for s in doc.get("shards", [])]
    verdict_fields = ("broker", "accepted", "tee", "measurement", "root", "claims_digest")
    attestation = [{"worker": a.get("worker"), "verdicts": [{k: v.get(k) for k in verdict_fields}
                                                            for v in a.get("verdicts", [])]}
                   for a in doc.get("attestation", [])]
    fields = {"tenant": tenant, "batch_id": batch, "key": key, "sha256": sha256_hex(raw), "rows": doc.get("rows"),
              "run_id": doc.get("run_id"), "manifest_sha256": doc.get("manifest_sha256"), "model": doc.get("model"),
              "shards": shards, "attestation": attestation}
    return 0.0, ("batch_result", f"result-manifest:{key}:{sha256_hex(raw)}", fields)


def _status_entry(key: str, raw: bytes) -> tuple[float, Entry]:
    tenant, batch = _tenant_batch(key)
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    fields = {"tenant": tenant, "batch_id": batch, "key": key, "state": doc.get("state"), "reason": doc.get("reason"),
              "run_id": doc.get("run_id"), "manifest_sha256": doc.get("manifest_sha256"),
              "result_manifest": doc.get("result_manifest"), "updated_at": doc.get("updated_at")}
    return float(doc.get("updated_at") or 0), ("batch_status", f"status:{key}:{sha256_hex(raw)}", fields)
