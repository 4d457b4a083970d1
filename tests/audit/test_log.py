"""The transparency log itself (audit/log.py): signed notes against the C2SP reference vector, verifier keys and
notes that are well-formed but wrong in one respect, checkpoints, entries, storage, the signing key file, and
witnesses shown a rolled-back, rewritten or re-keyed log. Each refusal is asserted word for word.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.log import (
    ENTRIES,
    VKEY,
    WITNESS_FILE,
    AuditLog,
    Checkpoint,
    DirStorage,
    LogError,
    S3Storage,
    Witness,
    key_id,
    load_or_create_key,
    open_note,
    parse_verifier_key,
    sign_note,
    verifier_key,
)
from audit.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from tests.audit.conftest import MemoryStore

# The example key and note of the reference implementation (golang.org/x/mod/sumdb/note): a note this module
# signs must be the one any C2SP witness reads, byte for byte (Ed25519 signatures are deterministic).
GO_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIG = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
GO_NOTE = f"{GO_TEXT}\n\u2014 PeterNeumann {GO_SIG}\n"
GO_KEY = Ed25519PrivateKey.from_private_bytes(GO_SEED)
ROOT = bytes(range(32))


def _vkey(seed: int, name: str = "log") -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return key, verifier_key(name, key.public_key())


def _refusal(call: object, *args: object) -> str:
    with pytest.raises(LogError) as err:
        call(*args)  # type: ignore[operator]
    return str(err.value)


# -- verifier keys and signed notes ------------------------------------------------------------------

def test_keys_and_notes_match_the_reference_vector_byte_for_byte() -> None:
    assert key_id("PeterNeumann", GO_KEY.public_key()).hex() == "c74f20a3"
    assert verifier_key("PeterNeumann", GO_KEY.public_key()) == GO_VKEY
    assert sign_note(GO_TEXT, "PeterNeumann", GO_KEY) == GO_NOTE
    name, public = parse_verifier_key(f" {GO_VKEY}\n")
    assert name == "PeterNeumann" and public == GO_KEY.public_key()
    assert open_note(GO_NOTE, GO_VKEY) == GO_TEXT


def test_a_verifier_key_whose_base64_holds_a_plus_is_read_whole() -> None:
    key, vkey = _vkey(8, "x")
    assert "+" in vkey.split("+", 2)[2]
    assert parse_verifier_key(vkey) == ("x", key.public_key())


def test_a_verifier_key_that_is_not_name_id_and_base64_is_refused() -> None:
    _, vkey = _vkey(8)
    name, kid, b64 = vkey.split("+", 2)
    long_name = "n" * 90 + "+" + kid
    for bad in (f"{name}+{kid}", f"{name}+{kid}+{b64[:10]}*{b64[10:]}", f"{name}+{kid}+{b64[:-4]}", long_name):
        assert _refusal(parse_verifier_key, bad) == f"log key: expected a vkey name+keyid+base64, got {bad[:80]!r}"


def test_a_verifier_key_of_another_type_or_key_id_is_refused() -> None:
    key, vkey = _vkey(8)
    name, kid, _ = vkey.split("+", 2)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    typed = f"{name}+{kid}+{base64.b64encode(bytes([2]) + raw).decode()}"  # the key id as for type 0x01
    assert _refusal(parse_verifier_key, typed) == f"log key {name}: key id {kid} does not match its Ed25519 public key"
    other_id = f"{name}+{kid[:-1]}{'0' if kid[-1] != '0' else '1'}+{vkey.split('+', 2)[2]}"
    assert _refusal(parse_verifier_key, other_id) == (f"log key {name}: key id {other_id.split('+')[1]} does not "
                                                      "match its Ed25519 public key")
    renamed = f"other+{kid}+{vkey.split('+', 2)[2]}"  # the key id binds the name too
    assert _refusal(parse_verifier_key, renamed) == f"log key other: key id {kid} does not match its Ed25519 public key"


def test_a_note_text_without_its_final_newline_is_not_signed() -> None:
    assert _refusal(sign_note, GO_TEXT.rstrip("\n"), "PeterNeumann", GO_KEY) == (
        "note text: expected it to end with a newline")


def test_a_note_without_a_blank_line_before_its_signatures_is_refused() -> None:
    assert _refusal(open_note, GO_NOTE.replace("\n\n", "\n"), GO_VKEY) == (
        "checkpoint note: expected text, a blank line and signature lines")


def test_a_note_whose_text_holds_a_blank_line_opens_to_its_whole_text() -> None:
    text = "first paragraph\n\nsecond paragraph\n"
    assert open_note(sign_note(text, "PeterNeumann", GO_KEY), GO_VKEY) == text


def test_the_signature_by_the_key_is_found_among_others() -> None:
    """A witness's cosignature first, then a line under the log's name by another key (another key id), then the
    log's own: each of the first two is passed over."""
    witness, _ = _vkey(3, "witness")
    impostor, _ = _vkey(4, "PeterNeumann")
    lines = [sign_note(GO_TEXT, "witness", witness).rsplit("\n\n", 1)[1],
             sign_note(GO_TEXT, "PeterNeumann", impostor).rsplit("\n\n", 1)[1],
             f"\u2014 PeterNeumann {GO_SIG}\n"]
    assert open_note(f"{GO_TEXT}\n{''.join(lines)}", GO_VKEY) == GO_TEXT


def test_a_note_signed_only_by_another_key_under_the_same_name_is_refused() -> None:
    impostor, _ = _vkey(4, "PeterNeumann")
    note = sign_note(GO_TEXT, "PeterNeumann", impostor)
    assert _refusal(open_note, note, GO_VKEY) == ("checkpoint note: expected a signature by log key PeterNeumann, "
                                                  "found none")
    named = note.replace("\u2014 PeterNeumann ", "\u2014 PeterNeumannX ")  # another name, the key's own signature
    assert _refusal(open_note, named, GO_VKEY) == ("checkpoint note: expected a signature by log key PeterNeumann, "
                                                   "found none")


@pytest.mark.parametrize("damage", ["*", "!", "=", "\t"])
def test_a_signature_line_of_the_log_that_is_not_base64_is_refused_naming_it(damage: str) -> None:
    # a lenient decoder skips the stray character and reads the same signature: the note would open
    line = f"\u2014 PeterNeumann {GO_SIG[:8]}{damage}{GO_SIG[8:]}"
    note = f"{GO_TEXT}\n{line}\n"
    assert _refusal(open_note, note, GO_VKEY) == (
        f"checkpoint note: a signature line of PeterNeumann is not base64: {line[:80]!r}")


def test_a_note_whose_text_changed_after_signing_does_not_verify() -> None:
    changed = GO_NOTE.replace("problem is.", "problem was.")
    assert _refusal(open_note, changed, GO_VKEY) == ("checkpoint note: the signature of PeterNeumann does not verify "
                                                     "over its text")


# -- checkpoints -------------------------------------------------------------------------------------

def test_a_checkpoint_reads_back_from_its_c2sp_text() -> None:
    head = Checkpoint("origin.example/log", 7, ROOT, 1_700_000_000)
    text = f"origin.example/log\n7\n{base64.b64encode(ROOT).decode()}\ntime 1700000000\n"
    assert head.text() == text
    assert Checkpoint.parse(text, "the note") == Checkpoint("origin.example/log", 7, ROOT, 1_700_000_000, "the note")
    assert head.describe() == "size 7, root 0001020304050607…, signed 2023-11-14 22:13:20 UTC"
    extended = text.replace("time", "other extension\ntime")  # the time is found among extension lines
    assert Checkpoint.parse(extended).timestamp == 1_700_000_000 and Checkpoint.parse(extended).note == ""
    assert Checkpoint.parse(text.replace("\n7\n", "\n0\n")).size == 0  # an empty log's checkpoint


@pytest.mark.parametrize("text", [
    "origin\n7\n",                                                    # no root
    f"origin\nseven\n{base64.b64encode(ROOT).decode()}\ntime 1\n",      # size not a number
    f"origin\n7\n{base64.b64encode(ROOT).decode()[:-1]}*\ntime 1\n",   # root not base64
    f"origin\n7\n{base64.b64encode(ROOT).decode()[:8]}*{base64.b64encode(ROOT).decode()[8:]}\ntime 1\n",  # 32 bytes
    f"origin\n7\n{base64.b64encode(ROOT).decode()}\n",                 # no time line
    f"origin\n7\n{base64.b64encode(ROOT).decode()}\ntime x\n",         # time not a number
])
def test_a_checkpoint_without_its_lines_is_refused(text: str) -> None:
    assert _refusal(Checkpoint.parse, text) == (
        f"checkpoint: expected origin, size, base64 root and 'time N' lines, got {text!r}")


def test_a_checkpoint_of_a_short_root_or_a_negative_size_is_refused() -> None:
    short = f"origin\n7\n{base64.b64encode(ROOT[:31]).decode()}\ntime 1\n"
    assert _refusal(Checkpoint.parse, short) == (
        "checkpoint: expected a 32-byte root and size >= 0, got 31 bytes, size 7")
    negative = f"origin\n-1\n{base64.b64encode(ROOT).decode()}\ntime 1\n"
    assert _refusal(Checkpoint.parse, negative) == (
        "checkpoint: expected a 32-byte root and size >= 0, got 32 bytes, size -1")


def test_a_checkpoint_opens_only_under_the_key_that_signed_it() -> None:
    key, vkey = _vkey(5)
    note = sign_note(Checkpoint("log", 3, ROOT, 9).text(), "log", key)
    assert Checkpoint.open(note, vkey) == Checkpoint("log", 3, ROOT, 9, note)
    _, other = _vkey(6)
    assert _refusal(Checkpoint.open, note, other) == "checkpoint note: expected a signature by log key log, found none"


# -- the log -----------------------------------------------------------------------------------------

def test_entries_are_canonical_lines_with_kind_id_and_position(tmp_path: Path) -> None:
    log = AuditLog.open_dir(tmp_path / "log")
    assert log.append("grant", "g1", {"batch_id": "b1"}) == 0
    assert log.append("receipt", "r1", {"b": 1, "a": [2]}) == 1
    assert log.append("grant", "g1", {"batch_id": "other"}) is None  # the same id: nothing appended
    stored = (tmp_path / "log" / ENTRIES).read_bytes()
    assert stored == (b'{"batch_id":"b1","id":"g1","index":0,"kind":"grant"}\n'
                      b'{"a":[2],"b":1,"id":"r1","index":1,"kind":"receipt"}\n')
    again = AuditLog.open_dir(tmp_path / "log")
    assert again.entries() == [{"batch_id": "b1", "id": "g1", "index": 0, "kind": "grant"},
                               {"a": [2], "b": 1, "id": "r1", "index": 1, "kind": "receipt"}]
    assert again.size == 2 and again.ids() == {"g1", "r1"}
    assert again.append("receipt", "r1", {}) is None and again.append("grant", "g2", {}) == 2


def test_an_entry_of_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    log = AuditLog.open_dir(tmp_path / "log")
    assert _refusal(log.append, "grants", "g1", {}) == (
        "entry kind: expected one of ('key_release', 'attestation', 'policy_change', 'grant', 'receipt', "
        "'batch_submitted', 'batch_status', 'batch_result', 'broker_head', 'training_submitted', "
        "'training_receipt', 'tuned_model'), got 'grants'")
    assert log.size == 0


@pytest.mark.parametrize(("fields", "said"), [
    ({"Material": "k"}, "grant.Material"),
    ({"shard": {"plaintext": "x"}}, "grant.shard.plaintext"),
    ({"shards": [{"ok": 1}, {"SCORE": 0.9}]}, "grant.shards[1].SCORE"),
    ({"rows": [[1], [{"dek": "k"}]]}, "grant.rows[1][0].dek"),
])
def test_an_entry_holding_a_key_plaintext_or_score_is_refused_anywhere_in_it(tmp_path: Path, fields: dict[str, object],
                                                                             said: str) -> None:
    log = AuditLog.open_dir(tmp_path / "log")
    assert _refusal(log.append, "grant", "g1", fields) == f"{said}: a log entry never holds keys, plaintext or scores"
    assert log.size == 0 and (tmp_path / "log" / ENTRIES).exists() is False


@pytest.mark.parametrize(("line", "said"), [(b'{"a": ', "expected JSON, got undecodable bytes"),
                                             (b"[1, 2]", "expected a JSON object")])
def test_an_entry_that_is_not_a_json_object_is_named_at_its_position(tmp_path: Path, line: bytes, said: str) -> None:
    log = AuditLog.open_dir(tmp_path / "log")
    log.append("grant", "g1", {})
    with (tmp_path / "log" / ENTRIES).open("ab") as f:
        f.write(line + b"\n\n")  # a blank line is no entry
    again = AuditLog.open_dir(tmp_path / "log")
    assert again.size == 2
    assert _refusal(again.entries) == f"entry at position 1: {said}"


def test_the_tree_follows_appends_and_proofs_verify_against_checkpoints(tmp_path: Path) -> None:
    log = AuditLog.open_dir(tmp_path / "log")
    log.append("grant", "g1", {})
    first = log.publish_checkpoint(now=1)
    assert first.root == log.tree().root() == MerkleTree(log.lines()).root()
    for i in range(2, 6):
        log.append("grant", f"g{i}", {})
    head = log.publish_checkpoint(now=2)
    assert head.size == 5 and head.root == MerkleTree(log.lines()).root()  # the cached tree took every append
    verify_consistency(1, 5, log.consistency_proof(1), first.root, head.root)
    verify_consistency(1, 3, log.consistency_proof(1, 3), first.root, MerkleTree(log.lines()[:3]).root())
    verify_inclusion(3, 5, leaf_hash(log.lines()[3]), log.inclusion_proof(3), head.root)
    verify_inclusion(1, 2, leaf_hash(log.lines()[1]), log.inclusion_proof(1, 2), MerkleTree(log.lines()[:2]).root())


def test_a_checkpoint_is_signed_kept_and_filed_by_size(tmp_path: Path) -> None:
    log = AuditLog.open_dir(tmp_path / "log", origin="example.org/log")
    assert (tmp_path / "log" / "log-key.pem").is_file()
    vkey = log.vkey()
    assert vkey == verifier_key("example.org/log", load_or_create_key(tmp_path / "log" / "log-key.pem").public_key())
    assert (tmp_path / "log" / VKEY).read_text() == f"{vkey}\n"
    log.append("grant", "g1", {})
    head = log.publish_checkpoint(now=1_700_000_000)
    assert head.origin == "example.org/log" and head.size == 1 and head.timestamp == 1_700_000_000
    assert head.note == log.checkpoint_note() == (tmp_path / "log" / "checkpoints" / "1").read_text()
    assert log.latest_checkpoint() == head == Checkpoint.open(head.note, str(vkey))
    empty = AuditLog.open_dir(tmp_path / "empty").publish_checkpoint(now=0)
    assert (empty.size, empty.timestamp, empty.root) == (0, 0, MerkleTree([]).root())


def test_a_checkpoint_signed_without_a_time_given_is_dated_now(tmp_path: Path) -> None:
    import time

    before = int(time.time())
    head = AuditLog.open_dir(tmp_path / "log").publish_checkpoint()
    assert before <= head.timestamp <= int(time.time())


def test_the_history_lists_every_checkpoint_by_size_not_by_name(tmp_path: Path) -> None:
    log = AuditLog.open_dir(tmp_path / "log")
    notes = {}
    for i in range(11):
        log.append("grant", f"g{i}", {})
        if i in (1, 8, 10):  # sizes 2, 9, 11: "11" sorts before "2" and "9" as a name
            notes[i + 1] = log.publish_checkpoint(now=i).note
    (tmp_path / "log" / "checkpoints" / "ignored").mkdir()  # a folder there is no checkpoint
    assert log.history() == [notes[2], notes[9], notes[11]]
    assert AuditLog.open_dir(tmp_path / "other").history() == []


def test_a_log_without_its_key_is_read_only(tmp_path: Path) -> None:
    AuditLog.open_dir(tmp_path / "log").append("grant", "g1", {})
    read_only = AuditLog.open_dir(tmp_path / "log", key_path=tmp_path / "elsewhere.pem", create=False)
    assert not (tmp_path / "elsewhere.pem").exists()
    assert _refusal(read_only.publish_checkpoint) == (
        f"log {tmp_path / 'log'}: opened without its signing key, cannot sign a checkpoint")
    assert _refusal(read_only.latest_checkpoint) == (
        f"log {tmp_path / 'log'}: expected a signed checkpoint and a log key, found none")
    keyed = AuditLog.open_dir(tmp_path / "log", create=False)  # its key exists: it signs
    assert keyed.publish_checkpoint(now=1).size == 1 and keyed.vkey() == read_only.vkey()


def test_a_signed_checkpoint_without_a_log_key_is_not_read(tmp_path: Path) -> None:
    log = AuditLog.open_dir(tmp_path / "log")
    log.publish_checkpoint(now=1)
    (tmp_path / "log" / VKEY).unlink()
    assert _refusal(log.latest_checkpoint) == (
        f"log {tmp_path / 'log'}: expected a signed checkpoint and a log key, found none")
    _, other = _vkey(7, "cscore.local/audit")
    assert _refusal(log.latest_checkpoint, other) == ("checkpoint note: expected a signature by log key "
                                                      "cscore.local/audit, found none")


def test_a_second_signer_does_not_replace_the_stored_key(tmp_path: Path) -> None:
    log = AuditLog.open_dir(tmp_path / "log")
    first = log.vkey()
    AuditLog.open_dir(tmp_path / "log", key_path=tmp_path / "other.pem")
    assert log.vkey() == first


def test_reload_reads_what_another_writer_appended(tmp_path: Path) -> None:
    reader, writer = AuditLog.open_dir(tmp_path / "log"), AuditLog.open_dir(tmp_path / "log")
    assert reader.size == 0 and reader.ids() == set() and reader.tree().size == 0
    writer.append("grant", "g1", {})
    assert reader.size == 0  # cached until reloaded
    reader.reload()
    assert reader.size == 1 and reader.ids() == {"g1"} and reader.tree().root() == writer.tree().root()


# -- storage -----------------------------------------------------------------------------------------

def test_a_directory_storage_writes_appends_and_lists(tmp_path: Path) -> None:
    storage = DirStorage(tmp_path / "log")
    assert storage.read("checkpoints/1") is None and storage.names("checkpoints/") == []
    storage.write("checkpoints/1", b"one")
    storage.write("checkpoints/1", b"uno")
    storage.write("checkpoints/2", b"two")
    storage.append("deep/entries", b"a\n")
    storage.append("deep/entries", b"b\n")
    assert storage.read("checkpoints/1") == b"uno" and storage.read("deep/entries") == b"a\nb\n"
    assert storage.names("checkpoints/") == ["checkpoints/1", "checkpoints/2"]
    assert sorted(p.name for p in (tmp_path / "log" / "checkpoints").iterdir()) == ["1", "2"]  # no temporary left
    assert storage.describe() == str(tmp_path / "log")
    fresh = DirStorage(tmp_path / "new" / "log")  # appended to before anything was written: folders made
    fresh.append("entries", b"a\n")
    assert fresh.read("entries") == b"a\n"


def test_an_object_store_log_lives_under_its_prefix(tmp_path: Path) -> None:
    store = MemoryStore()
    assert S3Storage(store).prefix == "audit/"
    assert S3Storage(store, "logs/a").prefix == "logs/a/" and S3Storage(store, "").prefix == ""
    log = AuditLog(S3Storage(store, "logs/a"), signer=GO_KEY, origin="PeterNeumann")
    log.append("grant", "g1", {})
    log.append("grant", "g2", {})
    log.publish_checkpoint(now=1)
    log.append("grant", "g3", {})
    log.publish_checkpoint(now=2)
    assert set(store.objects) == {"logs/a/log-key.vkey", "logs/a/entries.jsonl", "logs/a/checkpoint",
                                  "logs/a/checkpoints/2", "logs/a/checkpoints/3"}
    assert store.objects["logs/a/log-key.vkey"] == f"{GO_VKEY}\n".encode()
    assert store.objects["logs/a/entries.jsonl"].count(b"\n") == 3
    storage = S3Storage(store, "logs/a/")
    assert storage.names("checkpoints/") == ["checkpoints/2", "checkpoints/3"]
    assert storage.read("missing") is None and storage.describe() == "s3://logs/logs/a/"
    again = AuditLog(storage)
    assert [e["id"] for e in again.entries()] == ["g1", "g2", "g3"] and again.latest_checkpoint().size == 3
    assert store.objects["logs/a/checkpoint"].decode() == again.history()[-1]


# -- the signing key file ----------------------------------------------------------------------------

def test_the_signing_key_is_created_private_once_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys" / "log-key.pem"
    key = load_or_create_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(path).public_key() == key.public_key()


def test_a_signing_key_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log-key.pem"
    path.write_bytes(generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert _refusal(load_or_create_key, path) == f"{path}: expected an Ed25519 private key"


# -- witnesses ---------------------------------------------------------------------------------------

def _signed(folder: Path, ids: list[str], key: Path) -> AuditLog:
    log = AuditLog.open_dir(folder, key_path=key)
    for entry_id in ids:
        log.append("grant", entry_id, {})
    log.publish_checkpoint(now=1_700_000_000)
    return log


def test_a_witness_pins_the_first_key_and_checkpoint_it_sees(tmp_path: Path) -> None:
    log = _signed(tmp_path / "log", ["g1"], tmp_path / "k.pem")
    owner = Witness(tmp_path / "homes" / "owner", "owner")
    assert owner.saved() is None
    assert owner.check(log) == log.latest_checkpoint() and owner.saved() is None  # checking remembers nothing
    seen = owner.observe(log)
    saved = owner.saved()
    assert saved is not None and (tmp_path / "homes" / "owner" / WITNESS_FILE).is_file()
    assert saved["log_key"] == log.vkey() and saved["checkpoint"] == seen.note == log.checkpoint_note()
    assert isinstance(saved["accepted_at"], int)
    log.append("grant", "g2", {})
    log.publish_checkpoint(now=1_700_000_001)
    assert owner.observe(log).size == 2 and json.loads((tmp_path / "homes" / "owner" / WITNESS_FILE).read_text())[
        "checkpoint"] == log.checkpoint_note()


def test_a_log_that_drops_its_key_file_does_not_unpin_the_witness(tmp_path: Path) -> None:
    log = _signed(tmp_path / "log", ["g1"], tmp_path / "k.pem")
    owner = Witness(tmp_path / "owner", "owner")
    owner.observe(log)
    pinned = log.vkey()
    (tmp_path / "log" / VKEY).unlink()
    log.append("grant", "g2", {})
    log.publish_checkpoint(now=1_700_000_001)
    assert log.vkey() is None and owner.observe(log).size == 2
    saved = owner.saved()
    assert saved is not None and saved["log_key"] == pinned
    # a head signed by another key beside no key file is refused under the pinned one
    AuditLog(log.storage, signer=Ed25519PrivateKey.generate(), origin=log.origin).publish_checkpoint(now=3)
    (tmp_path / "log" / VKEY).unlink()
    assert _refusal(owner.check, log) == (f"checkpoint note: expected a signature by log key {log.origin}, "
                                          "found none")


def test_a_rolled_back_log_is_refused_with_both_sizes(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    log = _signed(tmp_path / "log", ["g1", "g2", "g3"], key)
    owner = Witness(tmp_path / "owner", "owner")
    seen = owner.observe(log)
    rolled = _signed(tmp_path / "rolled", ["g1", "g2"], key)  # signed by the log key: only shorter
    assert _refusal(owner.check, rolled) == (f"the owner saw the log at {seen.describe()}, but it now has only 2 "
                                             "entries: entries were removed (the log was rolled back)")


def test_a_fork_that_is_longer_is_refused_as_a_rewrite(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    log = _signed(tmp_path / "log", ["g1", "g2"], key)
    owner = Witness(tmp_path / "owner", "owner")
    seen = owner.observe(log)
    fork = _signed(tmp_path / "fork", ["g1", "g2-other", "g3"], key)
    head = fork.latest_checkpoint()
    message = _refusal(owner.check, fork)
    assert message.startswith(f"the log's checkpoint ({head.describe()}) is not an extension of the one the owner "
                              f"saw ({seen.describe()}): the log was rewritten or forked (consistency proof: ")
    assert owner.saved() is not None and owner.saved()["checkpoint"] == seen.note  # type: ignore[index]


def test_entries_appended_after_the_latest_checkpoint_do_not_fail_the_witness(tmp_path: Path) -> None:
    """The proof is asked up to the checkpoint's size, not to the log's: a log is checked while it grows."""
    log = _signed(tmp_path / "log", ["g1", "g2"], tmp_path / "k.pem")
    owner = Witness(tmp_path / "owner", "owner")
    owner.observe(log)
    log.append("grant", "g3", {})
    log.publish_checkpoint(now=1_700_000_001)
    log.append("grant", "g4", {})  # not yet under a checkpoint
    assert owner.check(log).size == 3 and log.size == 4
