"""The auditor's check: first that the log is intact, then that what it records is allowed and complete.

Integrity: every entry is canonical JSON at its own index; the entries hash to the root of the latest
signed checkpoint; every earlier checkpoint is consistent with it; every witness's (owner's, provider's)
remembered checkpoint is consistent with it.

Meaning: every key released to an enclave follows an attestation at the same broker and matches the key's
policy (its allowed measurements, or the batch's grant) and the auditor's own policy; every receipt
verifies (signature, evidence, attestation) and is the one logged; every result object matches the
receipt that names it; every receipt's batch had a grant for its model and measurement; no keys were
released for a batch that produced no receipt, unless the batch failed (then it says so).

Which worker got which key rests on signatures only: a verified receipt signs its worker's name and the
claims digests of the broker sessions its batch's keys came through (`wire.receipt`); a release whose
digest no verified receipt of its batch signs is noted as unproven, and a result manifest (written by the
platform, unsigned) that names another worker for a signed digest or shard is an error.

A training job counts as a batch: its enclave-signed receipt verifies like a shard's, its job had a grant for
its recipe and measurement, and its tuned model's card (signed by the same enclave key) names the receipt's
model, data and recipe digests (the model's lineage).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from attestation import Policy, TrustAnchors
from attestation.errors import AttestationError
from audit.collect import RELEASE_OPS, Objects
from audit.log import AuditLog, Checkpoint, LogError, Witness
from audit.merkle import ProofError, verify_consistency
from enclave.receipts import ReceiptError, VerifiedReceipt, verify_receipt
from enclave.signing import SignatureError, canonical_json
from wire.training import TRAINING_RECEIPT_TYPE, TUNED_CARD_TYPE
from wire.worker_config import config_digest_from_claims

ERROR, NOTE = "error", "note"
DECISION_KINDS = {"attestation", "grant", "policy_change", "key_release"}  # entries made from broker decisions
# Receipt fields the log's entry copies from the signed payload (audit.collect); each must equal the signed one.
SIGNED_RECEIPT_FIELDS = ("tenant", "batch_id", "shard_index", "input", "output", "model", "evidence_sha256",
                         "worker", "sessions", "issued_at")
SIGNED_TRAINING_FIELDS = ("tenant", "input", "recipe", "model", "metrics", "evidence_sha256", "worker", "sessions",
                          "issued_at")
RECEIPT_KINDS = ("receipt", "training_receipt")


@dataclass(frozen=True)
class Finding:
    """One thing the auditor should know: an `error` (the audit fails) or a `note` (said, not failed)."""

    severity: str
    check: str
    message: str
    batch_id: str | None = None
    index: int | None = None  # the log position of the entry it is about, when there is one

    def __str__(self) -> str:
        at = f" (log entry {self.index})" if self.index is not None else ""
        return f"[{self.severity}] {self.check}: {self.message}{at}"


def failed(findings: Sequence[Finding]) -> bool:
    """True when any finding is an error."""
    return any(f.severity == ERROR for f in findings)


def verify_audit(log: AuditLog, store: Objects, anchors: TrustAnchors, policy: Policy, *,
                 witnesses: Sequence[Witness] = ()) -> list[Finding]:
    """Check the log's integrity and meaning against storage; an empty list (or notes only) means all holds."""
    findings = check_integrity(log, witnesses)
    entries = readable_entries(log)
    findings += check_releases(entries, policy)
    receipts, receipt_findings = check_receipts(entries, store, anchors, policy)
    findings += receipt_findings
    findings += check_results(entries, store)
    findings += check_grants(entries, receipts)
    findings += check_worker_links(entries, receipt_findings)
    findings += check_broker_heads(entries)
    findings += check_training(entries, store, anchors, policy)
    findings += check_unreceipted_batches(entries)
    return findings


# -- integrity -------------------------------------------------------------------------------------


def check_integrity(log: AuditLog, witnesses: Sequence[Witness] = ()) -> list[Finding]:
    """Entries, tree, signed checkpoints (latest and history) and every witness's view."""
    out = _check_entries(log)
    vkey, key_findings = _pinned_key(log, witnesses)
    out += key_findings
    try:
        latest = log.latest_checkpoint(vkey)
    except LogError as exc:
        return [*out, Finding(ERROR, "integrity", f"the log's latest checkpoint cannot be trusted: {exc}")]
    out += _check_head(log, latest)
    out += _check_history(log, latest, vkey or log.vkey())  # the key the head verified under, pinned or not
    for witness in witnesses:
        out += _check_witness(log, witness)
    return out


def _check_entries(log: AuditLog) -> list[Finding]:
    out = []
    for i, line in enumerate(log.lines()):
        try:
            entry = json.loads(line)
        except ValueError:
            out.append(Finding(ERROR, "integrity", f"entry at position {i} is not valid JSON: its bytes were altered"))
            continue
        if not isinstance(entry, dict) or canonical_json(entry) != line:
            out.append(Finding(ERROR, "integrity", f"entry at position {i} is not in canonical form: it was edited "
                                                   "after it was written"))
        elif entry.get("index") != i:
            out.append(Finding(ERROR, "integrity", f"position {i} holds the entry written as number "
                                                   f"{entry.get('index')}: entries were removed or reordered"))
    return out


def _pinned_key(log: AuditLog, witnesses: Sequence[Witness]) -> tuple[str | None, list[Finding]]:
    pinned = {w.name: s["log_key"] for w in witnesses if (s := w.saved())}
    if len(set(pinned.values())) > 1:
        return None, [Finding(ERROR, "witness", f"the witnesses pinned different log keys: {pinned}: "
                                                "they were shown two different logs")]
    if pinned:
        return next(iter(pinned.values())), []
    return log.vkey(), [Finding(NOTE, "witness", "no witness has pinned the log's key yet; the key stored "
                                                 "beside the log was trusted")] if witnesses else []


def _check_head(log: AuditLog, latest: Checkpoint) -> list[Finding]:
    size = log.size
    if latest.size > size:
        return [Finding(ERROR, "integrity", f"the signed checkpoint ({latest.describe()}) covers {latest.size} "
                                            f"entries but the log holds only {size}: entries were removed")]
    out = []
    root = log.tree().root(latest.size)
    if root != latest.root:
        out.append(Finding(ERROR, "integrity", f"the first {latest.size} entries hash to {root.hex()[:16]}…, not to "
                                               f"the root of the signed checkpoint ({latest.describe()}): an entry "
                                               f"was changed, removed or reordered{_where(log)}"))
    if size > latest.size:
        out.append(Finding(NOTE, "integrity", f"{size - latest.size} entries after the latest checkpoint are not "
                                              "signed yet (run a sync to sign them)"))
    return out


def _where(log: AuditLog) -> str:
    span = changed_span(log)
    if span is None:
        return ""
    kept = f"; the first {span[0]} entries still match their checkpoint" if span[0] else ""
    return f" (within positions {span[0]}..{span[1] - 1}{kept})"


def changed_span(log: AuditLog) -> tuple[int, int] | None:
    """Positions [start, end) between the last checkpoint the log still matches and the first it does not."""
    vkey, ok = log.vkey(), 0
    for note in log.history():
        try:
            cp = Checkpoint.open(note, vkey or "")
        except LogError:
            continue
        if cp.size > log.size or log.tree().root(cp.size) != cp.root:
            return ok, min(cp.size, log.size)
        ok = cp.size
    return None


def _check_history(log: AuditLog, latest: Checkpoint, vkey: str | None) -> list[Finding]:
    out = []
    for note in log.history():
        try:
            old = Checkpoint.open(note, vkey or "")
        except LogError as exc:
            out.append(Finding(ERROR, "integrity", f"a published checkpoint does not verify: {exc}"))
            continue
        if old.size > latest.size or latest.size > log.size:
            continue
        try:
            proof = log.consistency_proof(old.size, latest.size)
            verify_consistency(old.size, latest.size, proof, old.root, latest.root)
        except ProofError as exc:
            out.append(Finding(ERROR, "integrity", f"the checkpoint {old.describe()} is not consistent with the "
                                                   f"latest ({latest.describe()}): the log was rewritten ({exc})"))
    return out


def _check_witness(log: AuditLog, witness: Witness) -> list[Finding]:
    if witness.saved() is None:
        return [Finding(NOTE, "witness", f"the {witness.name} has not seen any checkpoint of this log yet")]
    try:
        witness.check(log)
    except LogError as exc:
        return [Finding(ERROR, "witness", str(exc))]
    return []


def readable_entries(log: AuditLog) -> list[dict[str, Any]]:
    """Every entry that still parses as a JSON object, in log order (unreadable lines are skipped)."""
    out = []
    for line in log.lines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


# -- key releases ----------------------------------------------------------------------------------


@dataclass
class _BrokerState:
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    grants: dict[str, dict[str, Any]] = field(default_factory=dict)
    attested: set[str] = field(default_factory=set)


def check_releases(entries: list[dict[str, Any]], policy: Policy) -> list[Finding]:
    """Replay the brokers' decisions in order; every release to an enclave must have been allowed."""
    state: dict[str, _BrokerState] = defaultdict(_BrokerState)
    out: list[Finding] = []
    custom_noted: set[tuple[str, str]] = set()
    for e in entries:
        broker = state[str(e.get("broker"))]
        if e.get("decision") != "allow":
            continue
        if e["kind"] == "policy_change":
            _apply_policy(broker, e)
        elif e["kind"] == "grant":
            broker.grants[str(e.get("batch_id"))] = e
        elif e["kind"] == "attestation" and e.get("claims_digest"):
            broker.attested.add(e["claims_digest"])
        elif e["kind"] == "key_release" and e.get("operation") in RELEASE_OPS:
            out += _check_release(e, broker, policy, custom_noted)
    return out


def _apply_policy(broker: _BrokerState, e: dict[str, Any]) -> None:
    key_id = str(e.get("key_id"))
    current = broker.keys.setdefault(key_id, {"kind": "resource" if key_id.startswith("res/") else None,
                                              "measurements": []})
    if e.get("key_kind"):
        current["kind"] = e["key_kind"]
    current["policy"] = e.get("policy")
    if e.get("key_measurements") is not None:
        current["measurements"] = e["key_measurements"]


def _check_release(e: dict[str, Any], broker: _BrokerState, policy: Policy,
                   custom_noted: set[tuple[str, str]]) -> list[Finding]:
    what = (f"broker {e.get('broker')} released key {e.get('key_id')} ({e.get('operation')}, decision "
            f"{e.get('seq')}) for batch {e.get('batch_id')}")
    m, batch, at = e.get("measurement"), e.get("batch_id"), e.get("index")
    if not m:
        return [Finding(ERROR, "release", f"{what} without an attested measurement", batch, at)]
    out = []
    if policy.allowed_measurements is not None and m not in policy.allowed_measurements:
        out.append(Finding(ERROR, "release", f"{what} to measurement {m[:16]}…, which the auditor's policy "
                                             "does not allow", batch, at))
    if e.get("claims_digest") not in broker.attested:
        out.append(Finding(ERROR, "release", f"{what}, but no successful attestation at that broker with the "
                                             "same claims comes before it", batch, at))
    key = broker.keys.get(str(e.get("key_id")))
    if key is None:
        return [*out, Finding(ERROR, "release", f"{what}, but the log never saw that key created", batch, at)]
    if key.get("policy"):
        tag = (str(e.get("broker")), str(e.get("key_id")))
        if tag not in custom_noted:
            custom_noted.add(tag)
            out.append(Finding(NOTE, "release", f"key {e.get('key_id')} at broker {e.get('broker')} has a custom "
                                                f"policy ({key['policy']}); its releases were judged by the broker "
                                                f"({e.get('reason')}), re-read the policy by hand", batch, at))
        return out
    return out + _check_default_policy(e, key, broker, what, m)


def _check_default_policy(e: dict[str, Any], key: dict[str, Any], broker: _BrokerState, what: str,
                          m: str) -> list[Finding]:
    batch, at = e.get("batch_id"), e.get("index")
    if key.get("kind") in {"model", "resource"}:
        if m not in key.get("measurements", []):
            return [Finding(ERROR, "release", f"{what} to measurement {m[:16]}…, not among the key's allowed "
                                              f"measurements {key.get('measurements')}", batch, at)]
        return []
    grant = broker.grants.get(str(batch))
    if grant is None:
        return [Finding(ERROR, "release", f"{what}, but the owner recorded no grant for that batch before it",
                        batch, at)]
    problems = []
    if m not in (grant.get("granted_measurements") or []):
        problems.append(f"measurement {m[:16]}… is not among the granted {grant.get('granted_measurements')}")
    if e.get("key_id") not in (grant.get("key_ids") or []):
        problems.append(f"the key is not among the granted keys {grant.get('key_ids')}")
    if e.get("model_digest") != grant.get("model_digest"):
        problems.append(f"model {e.get('model_digest')} is not the granted {grant.get('model_digest')}")
    return [Finding(ERROR, "release", f"{what} against its grant: {p}", batch, at) for p in problems]


# -- receipts and results --------------------------------------------------------------------------


def check_receipts(entries: list[dict[str, Any]], store: Objects, anchors: TrustAnchors,
                   policy: Policy) -> tuple[list[VerifiedReceipt], list[Finding]]:
    """Each logged receipt is still the one in storage and verifies; each stored receipt was logged."""
    logged = [e for e in entries if e.get("kind") == "receipt"]
    verified, out = [], []
    for e in logged:
        receipt, findings = _check_receipt(e, store, anchors, policy)
        out += findings
        if receipt is not None:
            verified.append(receipt)
    known = {e.get("receipt_sha256") for e in logged}
    for key in store.keys("results/"):
        if key.endswith(".receipt.jws") and _sha(_get(store, key)) not in known:
            out.append(Finding(ERROR, "receipt", f"receipt {key} in storage is not in the log: it was written or "
                                                 "replaced after the last sync", _batch_of(key)))
    return verified, out


def _check_receipt(e: dict[str, Any], store: Objects, anchors: TrustAnchors,
                   policy: Policy) -> tuple[VerifiedReceipt | None, list[Finding]]:
    key, batch, at = str(e.get("receipt_key")), e.get("path_batch_id"), e.get("index")
    out = []
    stored = _get(store, key)
    if stored is None:
        out.append(Finding(ERROR, "receipt", f"receipt {key} is in the log but no longer in storage", batch, at))
    elif _sha(stored) != e.get("receipt_sha256"):
        out.append(Finding(ERROR, "receipt", f"receipt {key} in storage (sha256 {_sha(stored)[:16]}…) is not the "
                                             f"one logged ({str(e.get('receipt_sha256'))[:16]}…): it was replaced",
                           batch, at))
    evidence_raw = _get(store, str(e.get("evidence_key")))
    if evidence_raw is None:
        return None, [*out, Finding(ERROR, "receipt", f"receipt {key}: its evidence {e.get('evidence_key')} is "
                                                      "missing, so nobody can check which code signed it", batch, at)]
    try:
        issued = datetime.fromtimestamp(float(e["issued_at"]), UTC) if e.get("issued_at") else None
        receipt = verify_receipt(str(e.get("jws")), json.loads(evidence_raw), anchors=anchors, policy=policy, at=issued)
    except (ReceiptError, SignatureError, AttestationError, ValueError, KeyError) as exc:
        return None, [*out, Finding(ERROR, "receipt", f"receipt {key} does not verify, it is forged or altered: "
                                                      f"{exc}", batch, at)]
    p = receipt.payload
    for name in SIGNED_RECEIPT_FIELDS:  # what show and the worker links read from the entry is what was signed
        if e.get(name) != p.get(name):
            out.append(Finding(ERROR, "receipt", f"the log's copy of receipt {key} says {name} {e.get(name)!r}, "
                                                 f"but its signature covers {p.get(name)!r}", batch, at))
    prefix = f"results/{e.get('path_tenant')}/{batch}/"
    if p.get("batch_id") != batch or p.get("tenant") != e.get("path_tenant") or \
            not str(p.get("output", {}).get("key", "")).startswith(prefix):
        out.append(Finding(ERROR, "receipt", f"receipt {key} lies under batch {batch} but speaks of batch "
                                             f"{p.get('batch_id')} (output {p.get('output', {}).get('key')})", batch,
                           at))
    return receipt, out


def check_results(entries: list[dict[str, Any]], store: Objects) -> list[Finding]:
    """Every result object in storage has the SHA-256 its receipt signed."""
    by_output: dict[str, dict[str, Any]] = {}
    by_digest: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.get("kind") == "receipt" and isinstance(e.get("output"), dict):
            by_output[str(e["output"].get("key"))] = e
            by_digest[str(e["output"].get("sha256"))] = e
    out = []
    for key in store.keys("results/"):
        if not key.endswith(".parquet"):
            continue
        receipt = by_output.get(key)
        if receipt is None:
            out.append(Finding(ERROR, "result", f"result object {key} has no receipt in the log", _batch_of(key)))
            continue
        digest = _sha(_get(store, key))
        if digest != receipt["output"].get("sha256"):
            other = by_digest.get(digest)
            hint = (f"; it is the output of {other['receipt_key']} (batch {other.get('batch_id')})" if other else "")
            out.append(Finding(ERROR, "result", f"result object {key} does not match its receipt "
                                                f"{receipt['receipt_key']}: sha256 {digest[:16]}…, the receipt signed "
                                                f"{str(receipt['output'].get('sha256'))[:16]}…{hint}", _batch_of(key),
                               receipt.get("index")))
    return out


def check_grants(entries: list[dict[str, Any]], receipts: list[VerifiedReceipt]) -> list[Finding]:
    """Every verified receipt's batch had a grant for its model and its enclave's measurement."""
    grants = {e.get("batch_id"): e for e in entries if e.get("kind") == "grant" and e.get("decision") == "allow"}
    out = []
    for r in receipts:
        batch, where = r.payload.get("batch_id"), f"receipt of shard {r.payload.get('shard_index')}"
        grant = grants.get(batch)
        if grant is None:
            out.append(Finding(ERROR, "grant", f"batch {batch}: {where} exists but the owner never granted the "
                                               "batch", batch))
            continue
        if r.payload.get("model", {}).get("digest") != grant.get("model_digest"):
            out.append(Finding(ERROR, "grant", f"batch {batch}: {where} used model {r.payload['model'].get('digest')}"
                                               f", the grant names {grant.get('model_digest')}", batch))
        if r.claims.measurement not in (grant.get("granted_measurements") or []):
            out.append(Finding(ERROR, "grant", f"batch {batch}: {where} was signed by measurement "
                                               f"{r.claims.measurement[:16]}…, not granted", batch))
        config = _ungranted_config(grant, r)
        if config is not None:
            out.append(Finding(ERROR, "grant", f"batch {batch}: {where} was signed by a worker launched with "
                                               f"configuration {config[:16]}…, not one the grant names "
                                               f"({grant.get('granted_config_digests')})", batch))
    return out


def _ungranted_config(grant: dict[str, Any], receipt: VerifiedReceipt) -> str | None:
    """The receipt's worker configuration (HOST_DATA / MRCONFIGID) when its grant names others, else None: the
    platform launches the granted code with a configuration of its choosing (its own broker as the owner's).
    A grant logged before the measured configuration names none (None): nothing to hold it to."""
    granted = grant.get("granted_config_digests")
    config = config_digest_from_claims(receipt.claims.host_data or "")
    return config if granted is not None and config not in granted else None


@dataclass(frozen=True)
class SignedWorker:
    """A worker as a verified receipt names it: its signed name, and the log position of that receipt."""

    worker: str
    receipt_index: int


def signed_workers(entries: list[dict[str, Any]], bad_receipts: set[int]) -> dict[tuple[str, str], SignedWorker]:
    """(batch id, claims digest) -> the worker whose receipt of that batch signs that digest in its sessions.

    `bad_receipts`: log positions of receipts with an error finding (not verified, or their logged fields
    differ from the signed ones); they link nothing. The first receipt to sign a digest is kept.
    """
    links: dict[tuple[str, str], SignedWorker] = {}
    for e in entries:
        if e.get("kind") not in RECEIPT_KINDS or e.get("index") in bad_receipts or \
                not isinstance(e.get("sessions"), list):
            continue
        for session in e["sessions"]:
            for digest in session.get("claims_digests") or [] if isinstance(session, dict) else []:
                links.setdefault((str(e.get("batch_id")), str(digest)),
                                 SignedWorker(str(e.get("worker")), int(e.get("index", -1))))
    return links


def bad_receipt_positions(findings: Sequence[Finding]) -> set[int]:
    """Log positions of receipts (shard or training) with an error finding."""
    return {f.index for f in findings
            if f.check in ("receipt", "training") and f.severity == ERROR and f.index is not None}


def check_worker_links(entries: list[dict[str, Any]], receipt_findings: Sequence[Finding]) -> list[Finding]:
    """Releases tied to workers by signed receipts; the platform's result manifests must not contradict them.

    A release whose claims digest no verified receipt of its batch signs is a note (a worker that failed its
    shard got keys and signed nothing; which worker that was is the platform's word only), in batches that
    have receipts at all. A result manifest naming another worker than the signed one is an error.
    """
    bad = bad_receipt_positions(receipt_findings)
    links = signed_workers(entries, bad)
    receipted = {str(e.get("batch_id")) for e in entries if e.get("kind") in RECEIPT_KINDS}
    by_receipt_key = {str(e.get("receipt_key")): e for e in entries
                      if e.get("kind") == "receipt" and e.get("index") not in bad}
    claimed = _manifest_workers(entries)
    out = []
    for e in entries:
        batch, digest = e.get("batch_id"), e.get("claims_digest")
        if (e.get("kind") == "key_release" and e.get("decision") == "allow" and e.get("operation") in RELEASE_OPS
                and batch and str(batch) in receipted and (str(batch), str(digest)) not in links):
            said = claimed.get((str(batch), str(digest)))
            out.append(Finding(NOTE, "worker", f"broker {e.get('broker')} released key {e.get('key_id')} (decision "
                                               f"{e.get('seq')}) to claims {str(digest)[:12]}…, which no verified "
                                               f"receipt of batch {batch} signs: which worker got it is not proven"
                                               + (f" (the platform's unsigned result manifest says {said})"
                                                  if said else ""), str(batch), e.get("index")))
        if e.get("kind") == "batch_result":
            out += _check_manifest_workers(e, links, by_receipt_key)
    return out


def _manifest_workers(entries: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(batch id, claims digest) -> worker, as the platform's result manifests say (unsigned)."""
    out: dict[tuple[str, str], str] = {}
    for e in entries:
        if e.get("kind") == "batch_result":
            for a in e.get("attestation") or []:
                for v in a.get("verdicts") or []:
                    if v.get("claims_digest") and a.get("worker"):
                        out[(str(e.get("batch_id")), str(v["claims_digest"]))] = str(a["worker"])
    return out


def _check_manifest_workers(e: dict[str, Any], links: dict[tuple[str, str], SignedWorker],
                            by_receipt_key: dict[str, dict[str, Any]]) -> list[Finding]:
    batch, at, out = str(e.get("batch_id")), e.get("index"), []
    where = f"the result manifest {e.get('key')} (written by the platform, unsigned)"
    for a in e.get("attestation") or []:
        for v in a.get("verdicts") or []:
            signed = links.get((batch, str(v.get("claims_digest"))))
            if signed is not None and signed.worker != a.get("worker"):
                out.append(Finding(ERROR, "worker", f"{where} names worker {a.get('worker')!r} for attested claims "
                                                    f"{str(v.get('claims_digest'))[:12]}…, but the enclave's receipt "
                                                    f"at log position {signed.receipt_index} signs "
                                                    f"{signed.worker!r}", batch, at))
    for shard in e.get("shards") or []:
        receipt = by_receipt_key.get(str(shard.get("receipt_key")))
        if receipt is not None and shard.get("worker") and shard.get("worker") != receipt.get("worker"):
            out.append(Finding(ERROR, "worker", f"{where} names worker {shard.get('worker')!r} for shard "
                                                f"{shard.get('shard_index')}, but its receipt signs "
                                                f"{receipt.get('worker')!r}", batch, at))
    return out


def check_broker_heads(entries: list[dict[str, Any]]) -> list[Finding]:
    """Every broker head a sync recorded is backed by the log: decisions 1..head_seq of that broker are all in
    it, and the one at head_seq has the recorded chain hash (a sync that dropped a refusal is caught)."""
    seen: dict[str, dict[int, str]] = defaultdict(dict)
    out = []
    for e in entries:
        broker = str(e.get("broker"))
        if e.get("kind") in DECISION_KINDS and isinstance(e.get("seq"), int):
            seen[broker][e["seq"]] = str(e.get("chain_hash"))
        elif e.get("kind") == "broker_head":
            head, logged = int(e.get("head_seq") or 0), seen[broker]
            missing = [n for n in range(1, head + 1) if n not in logged]
            if missing:
                out.append(Finding(ERROR, "sync", f"a sync recorded broker {broker}'s log up to decision {head}, but "
                                                  f"the log lacks decision(s) {_ranges(missing)} before it",
                                   index=e.get("index")))
            elif logged.get(head) != e.get("head_hash"):
                out.append(Finding(ERROR, "sync", f"a sync recorded broker {broker}'s decision {head} with chain hash "
                                                  f"{str(e.get('head_hash'))[:16]}…, the log holds "
                                                  f"{str(logged.get(head))[:16]}…", index=e.get("index")))
    return out


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    parts, start = [], numbers[0]
    for prev, n in zip(numbers, [*numbers[1:], None], strict=True):
        if n != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = n if n is not None else start
    return ", ".join(parts)


def check_training(entries: list[dict[str, Any]], store: Objects, anchors: TrustAnchors,
                   policy: Policy) -> list[Finding]:
    """Each training receipt verifies and is the one stored; its job had a grant naming its recipe and its
    measurement; the tuned model's card verifies under the same evidence and names the receipt's digests."""
    grants = {e.get("batch_id"): e for e in entries if e.get("kind") == "grant" and e.get("decision") == "allow"}
    cards = {(e.get("tenant"), e.get("name"), e.get("version")): e for e in entries if e.get("kind") == "tuned_model"}
    logged = [e for e in entries if e.get("kind") == "training_receipt"]
    out = []
    for e in logged:
        job, at = e.get("batch_id"), e.get("index")
        receipt, found = _check_signed(e, "receipt", store, anchors, policy, TRAINING_RECEIPT_TYPE, job)
        out += found
        if receipt is None:
            continue
        p = receipt.payload
        model, recipe, key = p.get("model") or {}, p.get("recipe") or {}, str(e.get("receipt_key"))
        out += [Finding(ERROR, "training", f"the log's copy of training receipt {key} says {name} {e.get(name)!r}, "
                                           f"but its signature covers {p.get(name)!r}", job, at)
                for name in SIGNED_TRAINING_FIELDS if e.get(name) != p.get(name)]
        if key != f"tuned/{p.get('tenant')}/{model.get('name')}/{model.get('version')}/receipt.jws":
            out.append(Finding(ERROR, "training", f"training receipt {key} speaks of tenant {p.get('tenant')}, model "
                                                  f"{model.get('name')}:{model.get('version')}", job, at))
        grant = grants.get(job)
        if grant is None or grant.get("model_digest") != recipe.get("digest") or \
                receipt.claims.measurement not in (grant.get("granted_measurements") or []):
            out.append(Finding(ERROR, "grant", f"training job {job}: trained with recipe {recipe.get('digest')} by "
                                               f"measurement {receipt.claims.measurement[:16]}…, which the owner's "
                                               f"grant ({'none' if grant is None else grant.get('model_digest')}) "
                                               "does not name", job, at))
        elif (config := _ungranted_config(grant, receipt)) is not None:
            out.append(Finding(ERROR, "grant", f"training job {job}: trained by a worker launched with configuration "
                                               f"{config[:16]}…, not one the owner's grant names "
                                               f"({grant.get('granted_config_digests')})", job, at))
        card_entry = cards.get((p.get("tenant"), model.get("name"), model.get("version")))
        if card_entry is None:
            out.append(Finding(ERROR, "training", f"training job {job}: no tuned model card logged for "
                                                  f"{model.get('name')}:{model.get('version')}", job, at))
            continue
        card, found = _check_signed(card_entry, "card", store, anchors, policy, TUNED_CARD_TYPE, job)
        out += found
        lineage = (card.payload.get("lineage") or {}) if card else {}
        if card is not None and (card.payload.get("digest"), lineage.get("input_sha256"),
                                 (lineage.get("recipe") or {}).get("digest"), lineage.get("job_id")) != (
                model.get("digest"), (p.get("input") or {}).get("sha256"), recipe.get("digest"), job):
            out.append(Finding(ERROR, "training", f"tuned model {card_entry.get('card_key')}: its digest and "
                                                  f"lineage are not its training receipt's {key}", job,
                               card_entry.get("index")))
    known = {e.get("receipt_sha256") for e in logged} | {e.get("card_sha256") for e in cards.values()}
    for key in store.keys("tuned/"):
        if key.endswith(("/receipt.jws", "/card.jws")) and _sha(_get(store, key)) not in known:
            out.append(Finding(ERROR, "training", f"{key} in storage is not in the log: it was written or replaced "
                                                  "after the last sync"))
    return out


def _check_signed(e: dict[str, Any], what: str, store: Objects, anchors: TrustAnchors, policy: Policy, kind: str,
                  job: Any) -> tuple[VerifiedReceipt | None, list[Finding]]:
    """A logged enclave-signed document (training receipt or tuned card): still the one stored, and it verifies."""
    key, at = str(e.get(f"{what}_key")), e.get("index")
    stored = _get(store, key)
    out = []
    if stored is None or _sha(stored) != e.get(f"{what}_sha256"):
        out.append(Finding(ERROR, "training", f"{key} in storage is not the one logged: it was "
                                              f"{'removed' if stored is None else 'replaced'}", job, at))
    evidence_raw = _get(store, str(e.get("evidence_key")))
    try:
        if evidence_raw is None:
            raise ValueError(f"its evidence {e.get('evidence_key')} is missing")
        token = e.get("jws") or (stored or b"").decode(errors="replace")  # a card is verified as stored
        return verify_receipt(str(token), json.loads(evidence_raw), anchors=anchors, policy=policy,
                              expected_type=kind), out
    except (ReceiptError, SignatureError, AttestationError, ValueError, KeyError) as exc:
        return None, [*out, Finding(ERROR, "training", f"{key} does not verify, it is forged or altered: {exc}",
                                    job, at)]


def check_unreceipted_batches(entries: list[dict[str, Any]]) -> list[Finding]:
    """Keys released for a batch that produced no receipt: an error, unless the batch failed (then a note)."""
    released: dict[str, int] = defaultdict(int)
    receipted, status = set(), {}
    for e in entries:
        kind, batch = e.get("kind"), e.get("batch_id")
        if kind == "key_release" and e.get("decision") == "allow" and e.get("operation") in RELEASE_OPS and batch:
            released[batch] += 1
        elif kind in ("receipt", "training_receipt"):
            receipted.add(e.get("path_batch_id"))
        elif kind == "batch_status":
            status[batch] = e
    out = []
    for batch, count in sorted(released.items()):
        if batch in receipted:
            continue
        st = status.get(batch, {})
        if st.get("state") == "failed":
            out.append(Finding(NOTE, "batch", f"batch {batch}: {count} key release(s) but no receipt, because the "
                                              f"batch failed: {st.get('reason')}", batch))
        else:
            out.append(Finding(ERROR, "batch", f"batch {batch}: {count} key release(s) but no receipt and no "
                                               f"recorded failure (status: {st.get('state', 'none')})", batch))
    return out


def _get(store: Objects, key: str) -> bytes | None:
    getter = getattr(store, "get_if_exists", None)
    if getter is not None:
        data: bytes | None = getter(key)
        return data
    try:
        return store.get(key)
    except Exception:  # noqa: BLE001 - any storage error means "not there" for the auditor
        return None


def _sha(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def _batch_of(key: str) -> str | None:
    parts = key.split("/")
    return parts[2] if len(parts) > 2 else None
