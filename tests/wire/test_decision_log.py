"""wire/decision_log.py on its own: the entry hash byte for byte, and each chain refusal word for word."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from wire.decision_log import GENESIS, LOG_FIELDS, entry_hash, verify_chain


def _chain(count: int, start: str = GENESIS) -> list[dict[str, Any]]:
    """`count` well-formed entries following `start`, as the broker's store writes them."""
    entries, prev = [], start
    for seq in range(1, count + 1):
        entry: dict[str, Any] = {"seq": seq, "time": 1700000000.25 + seq, "operation": "unwrap", "key_id": "k",
                                 "batch_id": f"b{seq}", "model_digest": "sha256:" + "ab" * 32, "decision": "allow",
                                 "reason": "ok", "claims_digest": "c" * 64, "measurement": "ab" * 48}
        entry["prev_hash"], entry["hash"] = prev, entry_hash(prev, entry)
        prev = entry["hash"]
        entries.append(entry)
    return entries


def test_the_entry_hash_is_sha256_of_the_previous_hash_text_then_the_rfc8785_log_fields() -> None:
    entry = {"seq": 7, "operation": "unwrap", "key_id": "k", "decision": "allow", "extra": "not hashed"}
    # RFC 8785 by hand: keys sorted, no spaces; absent fields hashed as null
    canonical = (b'{"batch_id":null,"claims_digest":null,"decision":"allow","key_id":"k","measurement":null,'
                 b'"model_digest":null,"operation":"unwrap","reason":null,"seq":7,"time":null}')
    assert entry_hash("1" * 64, entry) == hashlib.sha256(b"1" * 64 + canonical).hexdigest()
    assert LOG_FIELDS == ("seq", "time", "operation", "key_id", "batch_id", "model_digest", "decision", "reason",
                          "claims_digest", "measurement")


def test_a_chain_ends_at_its_last_hash_and_an_empty_one_where_it_started() -> None:
    entries = _chain(3)
    assert verify_chain(entries) == entries[-1]["hash"]  # from GENESIS by default
    assert verify_chain(entries, GENESIS) == entries[-1]["hash"]
    assert verify_chain(entries[1:], entries[0]["hash"]) == entries[-1]["hash"]
    assert verify_chain([]) == GENESIS and verify_chain([], "f" * 64) == "f" * 64
    assert GENESIS == "0" * 64


def test_a_chain_read_from_anywhere_but_its_start_is_refused_naming_the_entry() -> None:
    entries = _chain(3)
    with pytest.raises(ValueError) as err:
        verify_chain(entries[1:])  # the tail of a log offered as the whole log
    assert str(err.value) == f"decision 2: prev_hash expected {GENESIS}, actual {entries[0]['hash']}"


@pytest.mark.parametrize("field", ["reason", "decision", "batch_id", "seq", "time", "measurement"])
def test_an_entry_edited_after_it_was_chained_is_refused_naming_its_hash(field: str) -> None:
    entries = _chain(3)
    edited = {**entries[1], field: "deny" if field != "seq" else 9}
    recomputed = entry_hash(entries[0]["hash"], edited)
    with pytest.raises(ValueError) as err:
        verify_chain([entries[0], edited, entries[2]])
    assert str(err.value) == f"decision {edited['seq']}: hash expected {recomputed}, actual {entries[1]['hash']}"


def test_an_entry_whose_hash_was_recomputed_breaks_the_next_link() -> None:
    entries = _chain(3)
    edited = {**entries[1], "decision": "deny"}
    edited["hash"] = entry_hash(entries[0]["hash"], edited)  # a consistent edit of one entry
    with pytest.raises(ValueError) as err:
        verify_chain([entries[0], edited, entries[2]])
    assert str(err.value) == f"decision 3: prev_hash expected {edited['hash']}, actual {entries[1]['hash']}"


def test_an_entry_without_its_links_is_refused_naming_none() -> None:
    entries = _chain(1)
    with pytest.raises(ValueError) as err:
        verify_chain([{k: v for k, v in entries[0].items() if k != "prev_hash"}])
    assert str(err.value) == f"decision 1: prev_hash expected {GENESIS}, actual None"
    with pytest.raises(ValueError) as err:
        verify_chain([{k: v for k, v in entries[0].items() if k != "hash"}])
    assert str(err.value) == f"decision 1: hash expected {entries[0]['hash']}, actual None"
