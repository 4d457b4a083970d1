"""The story of one batch, in order, from the audit log: for a person to read, or to look at as HTML."""

from __future__ import annotations

import html
import time
from typing import Any

from audit.collect import Objects
from audit.log import AuditLog


def batch_story(log: AuditLog, store: Objects | None, batch_id: str) -> list[str]:
    """Sentences, oldest first: submission, grant, attestations, key releases and refusals, shards, outcome.

    `store` is only used to say whether the result objects are still present; pass None to skip that.
    """
    entries = log.entries()
    digests = {e.get("claims_digest") for e in entries if e.get("batch_id") == batch_id and e.get("claims_digest")}
    lines: list[str] = []
    last: tuple[Any, ...] | None = None
    repeat = 0
    mine = sorted((e for e in entries if _concerns(e, batch_id, digests)), key=lambda e: (_time(e), e.get("index", 0)))
    for e in mine:
        sentence = _sentence(e, store)
        if sentence is None:
            continue
        group = (e.get("kind"), e.get("broker"), e.get("operation"), e.get("key_id"), e.get("decision"), sentence)
        if group == last and e.get("kind") in {"key_release", "attestation"}:
            repeat += 1
            lines[-1] = f"{sentence} (×{repeat + 1})"
            continue
        last, repeat = group, 0
        lines.append(sentence)
    return lines or [f"The audit log holds nothing about batch {batch_id}."]


def _concerns(e: dict[str, Any], batch_id: str, digests: set[Any]) -> bool:
    if e.get("batch_id") == batch_id or e.get("path_batch_id") == batch_id:
        return True
    return e.get("kind") == "attestation" and e.get("claims_digest") in digests


def _time(e: dict[str, Any]) -> float:
    """When it happened, as its source says (a result manifest has no time: it sorts after its receipts)."""
    t = e.get("time") or e.get("updated_at") or e.get("issued_at") or e.get("created_at")
    return float(t) if t else float("inf")


def _when(e: dict[str, Any]) -> str:
    t = _time(e)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + " " if t != float("inf") else ""


def _run(e: dict[str, Any]) -> str:
    return f" (run {e['run_id']})" if e.get("run_id") else ""


def _short(value: Any) -> str:
    text = str(value or "?")
    return text[:16] + "…" if len(text) > 20 else text


def _sentence(e: dict[str, Any], store: Objects | None) -> str | None:
    kind = e.get("kind")
    writer = {"batch_submitted": _submitted, "grant": _grant, "attestation": _attestation,
              "key_release": _release, "receipt": _receipt, "batch_result": _result,
              "batch_status": _status}.get(str(kind))
    if writer is None:
        return None
    text = writer(e)
    if kind == "receipt" and store is not None and isinstance(e.get("output"), dict):
        present = _exists(store, str(e["output"].get("key")))
        text += "" if present else " The result object is no longer in storage."
    return _when(e) + text


def _submitted(e: dict[str, Any]) -> str:
    objects = e.get("objects") or []
    rows = sum(int(o.get("rows") or 0) for o in objects)
    model = e.get("model") or {}
    return (f"Tenant {e.get('tenant')} submitted batch {e.get('batch_id')}: {len(objects)} object(s), {rows} "
            f"emails, model {model.get('name')}:{model.get('version')} ({_short(model.get('digest'))}); signed "
            f"manifest sha256 {_short(e.get('manifest_sha256'))}; keys held by "
            f"{(e.get('key_broker') or {}).get('url')}.")


def _grant(e: dict[str, Any]) -> str:
    return (f"The {e.get('broker')} broker recorded the owner's grant: keys {e.get('key_ids')} for model "
            f"{_short(e.get('model_digest'))} to enclaves measuring "
            f"{[_short(m) for m in e.get('granted_measurements') or []]}.")


def _attestation(e: dict[str, Any]) -> str:
    if e.get("decision") == "allow":
        return (f"A worker attested to the {e.get('broker')} broker with measurement {_short(e.get('measurement'))}"
                f" (claims {_short(e.get('claims_digest'))}): accepted.")
    return f"The {e.get('broker')} broker refused an attestation: {e.get('reason')}."


def _release(e: dict[str, Any]) -> str:
    op, key = e.get("operation"), e.get("key_id")
    if str(op).startswith("admin."):
        return f"The key's owner used key {key} at the {e.get('broker')} broker itself ({op}): {e.get('reason')}."
    if e.get("decision") == "allow":
        return (f"The {e.get('broker')} broker released key {key} ({op}) to measurement "
                f"{_short(e.get('measurement'))}: {e.get('reason')}.")
    return (f"The {e.get('broker')} broker REFUSED key {key} ({op}) to measurement {_short(e.get('measurement'))}: "
            f"{e.get('reason')}.")


def _receipt(e: dict[str, Any]) -> str:
    inp, out = e.get("input") or {}, e.get("output") or {}
    groups = inp.get("row_groups") or ["?", "?"]
    return (f"Shard {e.get('shard_index')} (row groups {groups[0]}–{groups[1]} of {inp.get('key')}) ran on "
            f"worker {e.get('worker')}: {out.get('rows')} rows out to {out.get('key')} (sha256 "
            f"{_short(out.get('sha256'))}); receipt {e.get('receipt_key')}, evidence "
            f"{_short(e.get('evidence_sha256'))}.")


def _result(e: dict[str, Any]) -> str:
    workers = [f"{a.get('worker')} ({', '.join(_short(v.get('measurement')) for v in a.get('verdicts') or [])})"
               for a in e.get("attestation") or []]
    reused = sum(1 for s in e.get("shards") or [] if s.get("reused"))
    return (f"The result manifest lists {len(e.get('shards') or [])} shard(s), {e.get('rows')} rows{_run(e)}; "
            f"workers attested: {', '.join(workers) or 'none recorded'}"
            + (f"; {reused} shard(s) reused from an earlier attempt." if reused else "."))


def _status(e: dict[str, Any]) -> str:
    state = e.get("state")
    if state == "failed":
        return f"The batch FAILED{_run(e)}: {e.get('reason')}. It may be submitted again."
    if state == "succeeded":
        return f"The batch succeeded{_run(e)}; result manifest {e.get('result_manifest')}."
    return f"The batch is {state}{_run(e)}."


def _exists(store: Objects, key: str) -> bool:
    getter = getattr(store, "get_if_exists", None)
    try:
        return (getter(key) if getter else store.get(key)) is not None
    except Exception:  # noqa: BLE001 - for the story, unreadable means absent
        return False


def render_html(story: list[str], *, title: str = "Batch story") -> str:
    """A self-contained HTML page of the story (every sentence escaped; refusals and failures highlighted)."""
    items = []
    for line in story:
        alarm = "REFUSED" in line or "FAILED" in line or "no longer in storage" in line
        items.append(f'<li class="{"alarm" if alarm else "ok"}">{html.escape(line)}</li>')
    body = "\n".join(items)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }}
h1 {{ font-size: 1.4rem; }} ol {{ padding-left: 1.5rem; }}
li {{ margin: .4rem 0; padding: .3rem .6rem; border-left: 4px solid #4a8; background: #f6fbf8; }}
li.alarm {{ border-color: #c33; background: #fdf2f2; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
<ol>
{body}
</ol></body></html>
"""
