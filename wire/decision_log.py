"""A key broker's decision log as it is served: hash-chained entries, paged, each page with a signed head.

Each entry carries LOG_FIELDS plus `prev_hash` and `hash`, where hash = sha256 hex of prev_hash (hex text) ||
the canonical JSON (RFC 8785) of the entry's LOG_FIELDS; the first entry follows GENESIS. `GET
/admin/v0/decisions?after=N` answers at most PAGE_LIMIT entries with seq > N, oldest first, and a `checkpoint`:
an ES256 JWS typed CHECKPOINT_TYPE, by the broker's token key, over the head {seq, hash, broker, time}: the
page's last entry, or the log's head when the page is empty. A client reads pages until an empty one, whose
signed head says where the log ends (`sdk.broker_admin.BrokerAdmin.decisions`).
"""

from __future__ import annotations

from typing import Any

from wire.canonical import canonical_json, sha256_hex

GENESIS = "0" * 64
LOG_FIELDS = ("seq", "time", "operation", "key_id", "batch_id", "model_digest",
              "decision", "reason", "claims_digest", "measurement")
PAGE_LIMIT = 10_000
CHECKPOINT_TYPE = "kbs-log-checkpoint"


def entry_hash(prev_hash: str, entry: dict[str, Any]) -> str:
    """Chain hash of one decision: sha256 hex of prev_hash || canonical JSON of the entry's LOG_FIELDS."""
    body = {k: entry.get(k) for k in LOG_FIELDS}
    return sha256_hex(prev_hash.encode() + canonical_json(body))


def verify_chain(entries: list[dict[str, Any]], start_hash: str = GENESIS) -> str:
    """The last entry's hash (start_hash when none); ValueError at the first entry whose prev_hash or hash does
    not follow from its predecessor, naming its seq, the expected and the actual value."""
    prev = start_hash
    for entry in entries:
        if entry.get("prev_hash") != prev:
            raise ValueError(f"decision {entry.get('seq')}: prev_hash expected {prev}, actual {entry.get('prev_hash')}")
        expected = entry_hash(prev, entry)
        if entry.get("hash") != expected:
            raise ValueError(f"decision {entry.get('seq')}: hash expected {expected}, actual {entry.get('hash')}")
        prev = expected
    return prev
