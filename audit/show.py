"""One batch's audit report: verified first, then told in causal order, in sections, for people and tools.

`batch_report(log, store, batch_id, findings)` builds a JSON-able dict (what `audit show --json` prints):

    {"batch_id", "tenant", "known": bool,
     "verdict": {"holds", "state", "receipts": {"verified", "total"}, "refusals", "checkpoint", "in_sync",
                 "sync", "brokers": {"heads": [{"broker", "seq", "synced_at"}], "said": str}, "problems": [str]},
     "summary": [str],                                  # three or four short lines
     "sections": [{"title", "columns": [{"key", "label"}], "rows": [{"position", "cells": {key: str},
                   "problems": [str], "alarm": bool}], "empty": str}]}

`render_text` and `render_html` draw that dict. The verdict comes from `audit.verify` findings passed in:
this module reads entries and never judges them itself. Order is the log's (each source's own order:
broker sequence numbers, object times), grouped by step, never by rounded wall-clock time.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from typing import Any

from audit.collect import RELEASE_OPS, Objects, storage_entries
from audit.log import AuditLog, LogError, Witness
from audit.verify import ERROR, Finding, bad_receipt_positions, changed_span, readable_entries, signed_workers

Entry = dict[str, Any]
Row = dict[str, Any]
OWNER_OWN_OPS = {"admin.unwrap", "admin.wrap"}
WHOLE_LOG_CHECKS = {"integrity", "witness", "sync"}  # findings about the whole log fail every batch's audit


def batch_report(log: AuditLog, store: Objects | None, batch_id: str, findings: Sequence[Finding], *,
                 witnesses: Sequence[Witness] = ()) -> dict[str, Any]:
    """The report of one batch (shape in the module docstring); `store` None skips the in-sync check."""
    entries = readable_entries(log)
    facts = _Facts(entries, batch_id, bad_receipt_positions(findings))
    problems = _problems_by_position(findings)
    sections = [
        _section("Submission and grants", _SUBMISSION_COLUMNS, facts.submission_rows(), problems,
                 "no submission or grant recorded"),
        _section("Attestation", _ATTESTATION_COLUMNS, facts.attestation_rows(), problems,
                 "no attestation recorded for this batch's releases"),
        _section("Key releases", _RELEASE_COLUMNS, facts.release_rows(), problems, "no key released"),
        _section("Shards", _SHARD_COLUMNS, facts.shard_rows(), problems, "no shard receipt"),
        *([_section("Training and lineage", _RESULT_COLUMNS, facts.training_rows(), problems,
                    "no training receipt or tuned model card")] if facts.training else []),
        _section("Results", _RESULT_COLUMNS, facts.result_rows(), problems, "no result manifest or status"),
        _section("Owner's decryption", _OWNER_COLUMNS, facts.owner_rows(), problems,
                 "the owner has not decrypted this batch's results (or decrypted them before this was logged)"),
        _section("Refusals", _REFUSAL_COLUMNS, facts.refusal_rows(), problems, "none"),
    ]
    verdict = _verdict(log, store, facts, findings, sections, witnesses)
    return {"batch_id": batch_id, "tenant": facts.tenant, "known": facts.known, "log": log.describe(),
            "log_size": log.size, "verdict": verdict, "summary": _summary(facts, verdict), "sections": sections}


def batch_verdicts(log: AuditLog, findings: Sequence[Finding]) -> list[dict[str, Any]]:
    """One line per batch in the log, in order of first mention: {batch_id, tenant, state, receipts
    ("verified/total"), refusals, holds, problems (count of errors about it, or about the whole log)}."""
    entries = readable_entries(log)
    ids = list(dict.fromkeys(str(e["batch_id"]) for e in entries if e.get("batch_id")
                             and e.get("kind") in {"batch_submitted", "training_submitted", "grant", "batch_status"}))
    whole_log = sum(1 for f in findings if f.severity == ERROR and f.check in WHOLE_LOG_CHECKS)
    out = []
    bad_receipts = bad_receipt_positions(findings)
    for batch_id in ids:
        facts = _Facts(entries, batch_id, bad_receipts)
        mine = facts.errors(findings)
        verified = sum(1 for e in facts.receipts if e.get("index") not in bad_receipts)
        out.append({"batch_id": batch_id, "tenant": facts.tenant, "state": facts.state,
                    "receipts": f"{verified}/{len(facts.receipts)}", "refusals": len(facts.refusal_rows()),
                    "holds": not mine and not whole_log, "problems": len(mine) + whole_log})
    return out


# -- what the log says about one batch -------------------------------------------------------------


class _Facts:
    """The entries about one batch, picked out of the whole log, in log order."""

    def __init__(self, entries: list[Entry], batch_id: str, bad_receipts: set[int]) -> None:
        self.batch_id = batch_id
        self.entries = entries
        mine = [e for e in entries if batch_id in (e.get("batch_id"), e.get("path_batch_id"))]
        self.known = bool(mine)
        self.positions = {int(e.get("index", -1)) for e in mine}
        self.submitted = [e for e in mine if e.get("kind") in ("batch_submitted", "training_submitted")]
        self.grants = [e for e in mine if e.get("kind") == "grant"]
        self.releases = [e for e in mine if e.get("kind") == "key_release" and e.get("operation") in RELEASE_OPS]
        self.owner_ops = [e for e in mine if e.get("kind") == "key_release" and e.get("operation") in OWNER_OWN_OPS]
        self.receipts = [e for e in mine if e.get("kind") in ("receipt", "training_receipt")]
        self.tuned = [e for e in mine if e.get("kind") == "tuned_model"]
        self.training = any(e.get("kind") in ("training_submitted", "training_receipt") for e in mine)
        self.results = [e for e in mine if e.get("kind") == "batch_result"]
        self.statuses = [e for e in mine if e.get("kind") == "batch_status"]
        self.tenant = next((str(e.get("tenant") or e.get("path_tenant")) for e in mine
                            if e.get("tenant") or e.get("path_tenant")), None)
        self.signed = signed_workers(entries, bad_receipts)  # (batch, claims digest) -> the enclave-signed worker
        self.claimed = _workers(entries)
        digests = {e.get("claims_digest") for e in self.releases if e.get("claims_digest")}
        self.attestations = [e for e in entries if e.get("kind") == "attestation" and e.get("decision") == "allow"
                             and e.get("claims_digest") in digests]
        # an untimed manifest (its JWS unreadable, logged with its fields empty) gives no start
        self.start = min((t for e in self.submitted if (t := _time(e)) != float("inf")), default=None)
        self.end = max((_time(e) for e in self.statuses if e.get("state") in {"failed", "succeeded"}), default=None)
        self.last_position = max((int(e.get("index", 0)) for e in mine), default=-1)

    def errors(self, findings: Sequence[Finding]) -> list[Finding]:
        """The errors about this batch: filed under it, or about an entry of it shown here (a receipt lying under
        another batch's path is filed under that batch, at its own position), besides the whole log's."""
        return [f for f in findings if f.severity == ERROR and f.check not in WHOLE_LOG_CHECKS
                and (f.batch_id == self.batch_id or f.index in self.positions)]

    @property
    def state(self) -> str:
        return str(self.statuses[-1].get("state")) if self.statuses else "unknown"

    def worker(self, e: Entry) -> str:
        """The worker a receipt signed for this claims digest; else "unproven" (with the platform's unsigned word)."""
        signed = self.signed.get((self.batch_id, str(e.get("claims_digest"))))
        if signed is not None:
            return signed.worker
        said = self.claimed.get(str(e.get("claims_digest")))
        return f"unproven (platform says {said})" if said else "unproven (no signed receipt)"

    def key_ids(self) -> set[str]:
        ids = {str(k) for g in self.grants for k in g.get("key_ids") or []}
        return ids | {str(e.get("key_id")) for e in self.releases}

    def submission_rows(self) -> list[Row]:
        rows = []
        for e in self.submitted:  # ranked after keys and grants: the SDK uploads the manifest last
            objects = e.get("objects") or []
            model = e.get("model") or {}
            if e.get("kind") == "training_submitted":
                recipe, holdout = e.get("recipe") or {}, e.get("holdout") or {}
                rows.append(_row(e, who=f"tenant {e.get('tenant')}", what="submitted the signed training manifest",
                                 detail=f"{_rows(objects)} labelled emails, {holdout.get('fraction')} held out; recipe "
                                        f"{recipe.get('name')}:{recipe.get('version')} ({_short(recipe.get('digest'))})"
                                        f"; tuned model {model.get('name')}:{model.get('version')}", rank=2))
                continue
            rows.append(_row(e, who=f"tenant {e.get('tenant')}", what="submitted the signed manifest",
                             detail=f"{len(objects)} object(s), {_rows(objects)} emails; model "
                                    f"{model.get('name')}:{model.get('version')}; manifest "
                                    f"{_short(e.get('manifest_sha256'))}", rank=2))
        keys = self.key_ids()
        for e in self.entries:
            if int(e.get("index", 0)) > self.last_position or str(e.get("key_id")) not in keys:
                continue
            if e.get("kind") == "policy_change" or (e.get("kind") == "key_release"
                                                    and str(e.get("operation")).startswith("admin.")
                                                    and e.get("operation") not in OWNER_OWN_OPS):
                rows.append(_row(e, who=f"{e.get('broker')} broker", what=_admin_what(e), detail=_key_detail(e)))
        for e in self.grants:
            rows.append(_row(e, who=f"{e.get('broker')} broker", what="recorded the owner's grant",
                             detail=f"keys {_list(e.get('key_ids'))} for model {_short(e.get('model_digest'))} "
                                    f"to measurements {_list(e.get('granted_measurements'), short=True)}",
                             rank=1))
        return sorted(rows, key=lambda r: (r["rank"], r["position"]))

    def attestation_rows(self) -> list[Row]:
        rows = []
        for e in self.attestations:
            before = self.start is not None and _time(e) < self.start
            named = e.get("batch_id")  # in runtime_data, so an accepted evidence binds it
            if named and named != self.batch_id:
                note = f"reused: attested for batch {named} (bound in its evidence)"
            elif named:
                note = "accepted: its evidence binds this batch"
            else:
                note = "reused: attested before this batch was submitted" if before else "accepted"
            rows.append(_row(e, who=str(e.get("broker")), worker=self.worker(e),
                             measurement=_short(e.get("measurement")), claims=_short(e.get("claims_digest")),
                             note=note))
        return _by_time(rows)

    def release_rows(self) -> list[Row]:
        return _by_time([_row(e, who=str(e.get("broker")), key=str(e.get("key_id")), op=str(e.get("operation")),
                              worker=self.worker(e), measurement=_short(e.get("measurement")),
                              clause=str(e.get("reason")), decision=str(e.get("decision")),
                              alarm=e.get("decision") != "allow") for e in self.releases])

    def training_rows(self) -> list[Row]:
        rows = []
        for e in self.receipts:
            if e.get("kind") != "training_receipt":
                continue
            model, recipe, m = e.get("model") or {}, e.get("recipe") or {}, e.get("metrics") or {}
            rows.append(_row(e, what=f"worker {e.get('worker')} trained {model.get('name')}:{model.get('version')}",
                             detail=f"model {_short(model.get('digest'))} from data "
                                    f"{_short((e.get('input') or {}).get('sha256'))} and recipe "
                                    f"{recipe.get('name')}:{recipe.get('version')} ({_short(recipe.get('digest'))}); "
                                    f"held out {m.get('holdout_rows')}: precision {m.get('precision')}, recall "
                                    f"{m.get('recall')}, F1 {m.get('f1')}"))
        for e in self.tuned:
            lineage = e.get("lineage") or {}
            rows.append(_row(e, what="enclave signed the tuned model's card",
                             detail=f"{e.get('tenant')}/{e.get('name')}:{e.get('version')} "
                                    f"({_short(e.get('digest'))}), lineage: job {lineage.get('job_id')}, data "
                                    f"{_short(lineage.get('input_sha256'))}, recipe "
                                    f"{_short((lineage.get('recipe') or {}).get('digest'))}; scores tenant "
                                    f"{e.get('tenant')}'s batches only"))
        return sorted(rows, key=lambda r: r["position"])

    def shard_rows(self) -> list[Row]:
        rows = []
        shards = [r for r in self.receipts if r.get("kind") == "receipt"]
        for e in sorted(shards, key=lambda r: (_int(r.get("shard_index")), int(r.get("index", 0)))):
            inp, out = e.get("input") or {}, e.get("output") or {}
            rows.append(_row(e, shard=str(e.get("shard_index")), row_groups=_half_open(inp.get("row_groups")),
                             input=_basename(inp.get("key")), worker=str(e.get("worker") or "unnamed"),
                             rows=str(out.get("rows")), output=_short(out.get("sha256")),
                             receipt=_basename(e.get("receipt_key"))))
        return rows

    def result_rows(self) -> list[Row]:
        rows = []
        for e in self.results:
            shards = e.get("shards") or []
            reused = sum(1 for s in shards if s.get("reused"))
            rows.append(_row(e, what="result manifest", detail=f"{len(shards)} shard(s), {e.get('rows')} rows"
                             + (f", {reused} reused from an earlier attempt" if reused else "")
                             + (f"; run {e.get('run_id')}" if e.get("run_id") else "")))
        for e in self.statuses:
            state = str(e.get("state"))
            detail = str(e.get("reason") or _basename(e.get("result_manifest")))
            rows.append(_row(e, what=f"status {state}", detail=detail + (f"; run {e.get('run_id')}"
                                                                           if e.get("run_id") else ""),
                             alarm=state == "failed"))
        return sorted(rows, key=lambda r: r["position"])

    def owner_rows(self) -> list[Row]:
        return _by_time([_row(e, who=str(e.get("broker")), key=str(e.get("key_id")), op=str(e.get("operation")),
                              detail=str(e.get("reason"))) for e in self.owner_ops])

    def refusal_rows(self) -> list[Row]:
        rows = [_row(e, who=f"{e.get('broker')} broker", what=f"refused {e.get('operation')}",
                     detail=f"key {e.get('key_id')}: {e.get('reason')}", alarm=True)
                for e in self.entries if e.get("decision") == "deny" and e.get("batch_id") == self.batch_id
                and e.get("kind") != "attestation"]
        end = self.end if self.end is not None else float("inf")
        for e in self.entries:
            if e.get("kind") != "attestation" or e.get("decision") != "deny":
                continue
            named = e.get("batch_id")
            during = self.start is not None and self.start <= _time(e) <= end
            if named == self.batch_id:
                rows.append(_row(e, who=f"{e.get('broker')} broker", what="refused an attestation for this batch",
                                 detail=f"{e.get('reason')} ({UNPROVEN_BATCH})", alarm=True))
            elif during:
                names = f"it names batch {named}" if named else "it names no batch"
                rows.append(_row(e, who=f"{e.get('broker')} broker", what="refused an attestation during this batch",
                                 detail=f"{e.get('reason')} ({names}; {UNPROVEN_BATCH})", alarm=True))
        rows += [_row(e, who="platform", what="marked the batch failed", detail=str(e.get("reason")), alarm=True)
                 for e in self.statuses if e.get("state") == "failed"]
        return _by_time(rows)


# A refused attestation's batch is what the requester put in runtime_data: refused evidence binds nothing.
UNPROVEN_BATCH = "batch as the requester named it, unproven: the platform could name another"


def _workers(entries: Iterable[Entry]) -> dict[str, str]:
    """claims digest -> worker name, as the platform's result manifests say (unsigned: shown, never trusted)."""
    names: dict[str, str] = {}
    for e in entries:
        for a in e.get("attestation") or [] if e.get("kind") == "batch_result" else []:
            for v in a.get("verdicts") or []:
                if v.get("claims_digest") and a.get("worker"):
                    names[str(v["claims_digest"])] = str(a["worker"])
    return names


def _by_time(rows: list[Row]) -> list[Row]:
    """Broker decisions by their own sub-second time (each broker's sequence is already in time order),
    ties and untimed rows by log position."""
    return sorted(rows, key=lambda r: (r["time"] if r["time"] is not None else float("inf"), r["position"]))


def _key_detail(e: Entry) -> str:
    """A key's policy change in words (the parsed fields, not the broker's reason with its list syntax)."""
    if e.get("kind") != "policy_change":
        return f"key {e.get('key_id')}: {e.get('reason')}"
    kind = f"{e['key_kind']} key" if e.get("key_kind") else "key"
    measurements = e.get("key_measurements")
    allowed = "unchanged" if measurements is None else _list(measurements, short=True)
    return f"{kind} {e.get('key_id')}; policy {e.get('policy') or 'default'}; measurements {allowed}"


def _admin_what(e: Entry) -> str:
    op = str(e.get("operation"))
    return {"admin.create_key": "created the key", "admin.set_policy": "changed the key's policy",
            "admin.put_resource": "stored a resource", "admin.rotate_key": "rotated the key",
            "admin.set_platform_floor": "set the platform floor"}.get(op, op)


# -- rows, sections, verdict -----------------------------------------------------------------------

_SUBMISSION_COLUMNS = [("position", "#"), ("when", "when"), ("who", "who"), ("what", "what"), ("detail", "detail")]
_ATTESTATION_COLUMNS = [("position", "#"), ("when", "when"), ("who", "broker"), ("worker", "worker"),
                        ("measurement", "measurement"), ("claims", "claims digest"), ("note", "note")]
_RELEASE_COLUMNS = [("position", "#"), ("when", "when"), ("who", "broker"), ("key", "key"), ("op", "op"),
                    ("worker", "to worker"), ("measurement", "measurement"), ("clause", "policy clause"),
                    ("decision", "decision")]
_SHARD_COLUMNS = [("position", "#"), ("when", "when"), ("shard", "shard"), ("row_groups", "row groups [start, end)"),
                  ("input", "input"), ("worker", "worker"), ("rows", "rows"), ("output", "output sha256"),
                  ("receipt", "receipt")]
_RESULT_COLUMNS = [("position", "#"), ("when", "when"), ("what", "what"), ("detail", "detail")]
_OWNER_COLUMNS = [("position", "#"), ("when", "when"), ("who", "broker"), ("key", "key"), ("op", "op"),
                  ("detail", "detail")]
_REFUSAL_COLUMNS = [("position", "#"), ("when", "when"), ("who", "who"), ("what", "what"), ("detail", "detail")]


def _row(e: Entry, *, alarm: bool = False, rank: int = 0, **cells: str) -> Row:
    position = int(e.get("index", -1))
    return {"position": position, "rank": rank, "time": _time(e) if _time(e) != float("inf") else None,
            "alarm": alarm,
            "cells": {"position": str(position), "when": _when(e), **cells}, "problems": []}


def _section(title: str, columns: list[tuple[str, str]], rows: list[Row], problems: dict[int, list[Finding]],
             empty: str) -> dict[str, Any]:
    for row in rows:
        found = problems.get(row["position"], [])
        row["problems"] = [f"{f.severity}: {f.message}" for f in found]
        row["alarm"] = row["alarm"] or any(f.severity == ERROR for f in found)
    return {"title": title, "columns": [{"key": k, "label": label} for k, label in columns], "rows": rows,
            "empty": empty}


def _problems_by_position(findings: Sequence[Finding]) -> dict[int, list[Finding]]:
    out: dict[int, list[Finding]] = {}
    for f in findings:
        if f.index is not None:
            out.setdefault(f.index, []).append(f)
    return out


def _verdict(log: AuditLog, store: Objects | None, facts: _Facts, findings: Sequence[Finding],
             sections: list[dict[str, Any]], witnesses: Sequence[Witness]) -> dict[str, Any]:
    integrity = [f for f in findings if f.check in WHOLE_LOG_CHECKS and f.severity == ERROR]
    mine = facts.errors(findings)
    bad_receipts = bad_receipt_positions(findings)  # not verified, whichever batch the error is filed under
    problems = [f.message for f in integrity + mine]
    span = changed_span(log) if any(f.check != "sync" for f in integrity) else None
    if span is not None:
        problems.append(f"log positions {span[0]} to {span[1] - 1} were changed after they were signed")
    refusals = next(len(s["rows"]) for s in sections if s["title"] == "Refusals")
    checkpoint, sync = _checkpoint(log, witnesses), _sync_state(log, store, facts.batch_id)
    return {"holds": facts.known and not problems, "state": facts.state, "refusals": refusals,
            "receipts": {"verified": sum(1 for e in facts.receipts if e.get("index") not in bad_receipts),
                         "total": len(facts.receipts)},
            "checkpoint": checkpoint, "in_sync": not sync, "sync": sync or ["every entry is signed and the bucket "
                                                                           "holds nothing unlogged for this batch"],
            "brokers": _broker_heads(facts.entries),
            "problems": problems, "changed_positions": list(span) if span else None}


def _checkpoint(log: AuditLog, witnesses: Sequence[Witness]) -> dict[str, Any] | None:
    try:
        cp = log.latest_checkpoint()
    except LogError:
        return None
    seen = [w.name for w in witnesses if (s := w.saved()) and s.get("checkpoint") == cp.note]
    return {"size": cp.size, "root": cp.root.hex(), "signed_at": cp.timestamp, "description": cp.describe(),
            "witnessed_by": seen}


def _sync_state(log: AuditLog, store: Objects | None, batch_id: str) -> list[str]:
    """What the log misses: unsigned entries, objects of this batch in the bucket it never recorded."""
    out = []
    try:
        unsigned = log.size - log.latest_checkpoint().size
    except LogError:
        unsigned = log.size
    if unsigned > 0:
        out.append(f"{unsigned} entries are not covered by a signed checkpoint")
    if store is not None:
        ids = log.ids()
        missing = [entry_id for _, entry_id, fields in storage_entries(store)
                   if batch_id in (fields.get("batch_id"), fields.get("path_batch_id")) and entry_id not in ids]
        if missing:
            out.append(f"the bucket holds {len(missing)} record(s) of this batch that the log does not "
                       "(run `cscore audit sync`)")
    return out


def _broker_heads(entries: list[Entry]) -> dict[str, Any]:
    """What the log holds of each broker's decision log: the head its latest sync saw, and when. Decisions a
    broker made after that are not in the log, and nothing here can see them (says so)."""
    heads: dict[str, Entry] = {}
    for e in entries:
        if e.get("kind") == "broker_head":
            heads[str(e.get("broker"))] = e
    listed = [{"broker": b, "seq": e.get("head_seq"), "synced_at": e.get("synced_at")}
              for b, e in sorted(heads.items())]
    if not listed:
        return {"heads": [], "said": "no broker log head recorded: broker decisions not yet synced cannot be seen "
                                     "here (run `cscore audit sync`)"}
    seen = ", ".join(_head_words(h) for h in listed)
    return {"heads": listed, "said": f"checked against {seen}; {LATER_DECISIONS}"}


LATER_DECISIONS = "later broker decisions are not in the log (run `cscore audit sync` to see them)"


def _head_words(head: dict[str, Any]) -> str:
    return f"{head['broker']}'s decisions 1 to {head['seq']} (synced {_clock(head['synced_at'])})"


def _clock(t: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t)))
    except (TypeError, ValueError):
        return "at an unknown time"


def _summary(facts: _Facts, verdict: dict[str, Any]) -> list[str]:
    sub = facts.submitted[-1] if facts.submitted else {}
    model = sub.get("model") or {}
    objects = sub.get("objects") or []
    workers = sorted({str(e.get("worker")) for e in facts.receipts if e.get("worker")})
    released = sum(1 for e in facts.releases if e.get("decision") == "allow")
    if facts.training:
        recipe = sub.get("recipe") or {}
        metrics = next((e.get("metrics") or {} for e in facts.receipts if e.get("kind") == "training_receipt"), {})
        lines = [f"Training job: {_rows(objects)} labelled emails, recipe {recipe.get('name')}:{recipe.get('version')}"
                 f" ({_short(recipe.get('digest'))}), tuned model {model.get('name')}:{model.get('version')}, tenant "
                 f"{facts.tenant}.",
                 f"Trained on {', '.join(workers) or 'no worker'}: held-out F1 {metrics.get('f1', '?')}; "
                 f"{released} key release(s), {verdict['refusals']} refusal(s).",
                 f"Job {verdict['state']}."]
        if facts.start is not None:
            lines.append(f"Submitted {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(facts.start))}.")
        return lines
    lines = [f"{_rows(objects)} emails in {len(objects)} object(s), model {model.get('name')}:{model.get('version')}"
             f" ({_short(model.get('digest'))}), tenant {facts.tenant}.",
             f"{len(facts.receipts)} shard(s) on {len(workers)} worker(s): {', '.join(workers) or 'none'}; "
             f"{released} key release(s), {verdict['refusals']} refusal(s).",
             f"Batch {verdict['state']}."]
    if facts.start is not None:
        lines.append(f"Submitted {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(facts.start))}.")
    return lines


# -- formatting helpers ----------------------------------------------------------------------------


def _time(e: Entry) -> float:
    t = e.get("time") or e.get("updated_at") or e.get("issued_at") or e.get("created_at")
    try:
        return float(t) if t else float("inf")
    except (TypeError, ValueError):
        return float("inf")


def _when(e: Entry) -> str:
    t = _time(e)
    if t == float("inf"):
        return ""
    clock = time.strftime("%H:%M:%S", time.gmtime(t))
    return clock + (f".{int((t % 1) * 1000):03d}" if t % 1 else "")


def _short(value: Any) -> str:
    text = str(value or "?")
    return text[:12] + "…" if len(text) > 16 else text


def _list(values: Any, *, short: bool = False) -> str:
    if not values:
        return "none"
    return ", ".join(_short(v) if short else str(v) for v in values)


def _rows(objects: list[Entry]) -> int:
    return sum(_int(o.get("rows")) for o in objects)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _half_open(groups: Any) -> str:
    if not isinstance(groups, list) or len(groups) != 2:
        return "?"
    start, end = _int(groups[0]), _int(groups[1])
    count = end - start
    return f"[{start}, {end}) = {count} group{'s' if count != 1 else ''}"


def _basename(key: Any) -> str:
    return str(key or "?").rsplit("/", 1)[-1]


# -- drawing ---------------------------------------------------------------------------------------

TEXT_CELL = 26  # widest cell in the terminal table; longer values end in "…" (the JSON has them whole)
TEXT_WIDE = {"detail": 60, "clause": 30, "what": 32}  # columns allowed wider


def render_text(report: dict[str, Any]) -> str:
    """The report for a terminal: verdict banner, summary, then one table per section."""
    out = _banner_lines(report) + [""] + [f"  {line}" for line in report["summary"]]
    for section in report["sections"]:
        out += ["", f"== {section['title']} =="]
        out += _table(section) if section["rows"] else [f"  ({section['empty']})"]
    return "\n".join(out)


def _banner_lines(report: dict[str, Any]) -> list[str]:
    v = report["verdict"]
    holds = "HOLDS" if v["holds"] else "DOES NOT HOLD"
    cp = v["checkpoint"]
    lines = [f"Batch {report['batch_id']}: audit {holds}; batch {v['state']}",
             f"  receipts    {v['receipts']['verified']}/{v['receipts']['total']} verified",
             f"  refusals    {v['refusals']}",
             f"  checkpoint  {cp['description'] if cp else 'none'}"
             + (f"; seen by {', '.join(cp['witnessed_by'])}" if cp and cp["witnessed_by"] else ""),
             f"  log         {'in sync' if v['in_sync'] else 'NOT in sync'}: {'; '.join(v['sync'])}",
             *_broker_lines(v["brokers"])]
    lines += [f"  PROBLEM     {p}" for p in v["problems"]]
    return lines


def _broker_lines(brokers: dict[str, Any]) -> list[str]:
    if not brokers["heads"]:
        return [f"  brokers     {brokers['said']}"]
    lines = [f"  {'brokers' if i == 0 else '':<12}{_head_words(h)}" for i, h in enumerate(brokers["heads"])]
    return [*lines, f"  {'':<12}{LATER_DECISIONS}"]


def _table(section: dict[str, Any]) -> list[str]:
    keys = [c["key"] for c in section["columns"]]
    header = [c["label"] for c in section["columns"]]
    cells = [[_clip(row["cells"].get(k, ""), TEXT_WIDE.get(k, TEXT_CELL)) for k in keys] for row in section["rows"]]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    out = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row, values in zip(section["rows"], cells, strict=True):
        mark = "✗ " if row["alarm"] else "  "
        out.append(mark + "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip())
        out += [f"      ^ {p}" for p in row["problems"]]
    return out


def _clip(value: str, width: int) -> str:
    return value if len(value) <= width else value[:width - 1] + "…"


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 80rem; margin: 1.5rem auto; color: #222; padding: 0 1rem; }
h1 { font-size: 1.3rem; margin: 0 0 .5rem; } h2 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; }
.verdict { border: 2px solid #2a7; background: #f1faf4; padding: .6rem 1rem; border-radius: 6px; }
.verdict.fail { border-color: #c33; background: #fdf1f1; }
.verdict dl { display: grid; grid-template-columns: 9rem 1fr; margin: .3rem 0 0; }
.verdict dt { color: #555; } .verdict dd { margin: 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f4f4f4; } td.mono { font-family: ui-monospace, monospace; }
tr.alarm td { background: #fdf1f1; } tr.problem td { color: #a00; font-size: 12px; border-bottom: 1px solid #c33; }
p.empty { color: #666; font-style: italic; } ul.summary { margin: .5rem 0; }
"""


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page (no script, no external resource; every value escaped) of the report."""
    e = html.escape
    v = report["verdict"]
    cp = v["checkpoint"]
    facts = [("batch state", v["state"]), ("receipts", f"{v['receipts']['verified']}/{v['receipts']['total']} "
                                                      "verified"),
             ("refusals", str(v["refusals"])), ("checkpoint", cp["description"] if cp else "none"),
             ("witnessed by", ", ".join(cp["witnessed_by"]) if cp and cp["witnessed_by"] else "nobody yet"),
             ("log", ("in sync: " if v["in_sync"] else "NOT in sync: ") + "; ".join(v["sync"])),
             ("broker logs", v["brokers"]["said"])]
    facts += [("problem", p) for p in v["problems"]]
    banner = "".join(f"<dt>{e(k)}</dt><dd>{e(val)}</dd>" for k, val in facts)
    holds = "holds" if v["holds"] else "does NOT hold"
    parts = [f'<section class="verdict{"" if v["holds"] else " fail"}" id="verdict">'
             f'<h1>Batch {e(report["batch_id"])}: audit {e(holds)}</h1><dl>{banner}</dl></section>',
             '<ul class="summary">' + "".join(f"<li>{e(s)}</li>" for s in report["summary"]) + "</ul>"]
    for section in report["sections"]:
        parts.append(f"<h2>{e(section['title'])}</h2>" + (_html_table(section) if section["rows"]
                                                          else f'<p class="empty">{e(section["empty"])}</p>'))
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>Audit of batch {e(report['batch_id'])}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def _html_table(section: dict[str, Any]) -> str:
    e = html.escape
    keys = [c["key"] for c in section["columns"]]
    head = "".join(f"<th>{e(c['label'])}</th>" for c in section["columns"])
    body = []
    for row in section["rows"]:
        cls = ' class="alarm"' if row["alarm"] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{e(str(row['cells'].get(k, '')))}</td>" for k in keys) + "</tr>")
        body += [f'<tr class="problem"><td colspan="{len(keys)}">{e(p)}</td></tr>' for p in row["problems"]]
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
