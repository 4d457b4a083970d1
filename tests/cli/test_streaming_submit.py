"""`cscore owner submit` in bounded memory: emails checked and spooled encrypted, then uploaded part by part.

The spool (`sdk.spool`) holds no plaintext and refuses a changed file; `spool_emails` refuses a bad email
before anything is created; `submit_spooled` against a real local stack (moto and both key brokers, no
Airflow) uploads parts that decrypt, with the owner's own broker, to exactly the emails given, in order, and
never holds more than PARTS_IN_FLIGHT parts beyond the one being assembled.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import sdk.owner as owner_module
from enclave.pme import EncryptedParquet, PmeKeys
from enclave.signing import unverified_payload
from infra.local.stack import LocalStack
from sdk.emails import Email, EmailInputError
from sdk.journal import join_headers, journal_path, read_journal
from sdk.models import ModelListing
from sdk.owner import BatchError, OwnerKeys, spool_emails, submit_spooled
from sdk.party import Party
from sdk.spool import Spool
from sdk.storage import ObjectStore
from sdk.stream import Journal, Stream, StreamOptions
from tests.stacks import storage_stack

CANARY = "canary-7f3a9c plaintext that must never reach the disk"
SENDER = "sender-canary-52be"  # From headers: kept in the owner's local journal, never uploaded


def _emails(n: int) -> list[Email]:
    return [Email(f"id-{i:06d}", f"{CANARY} {i} free money " + "x" * (i % 97), sender=f"{SENDER} <{i}@example.com>",
                  subject=f"subject {i}", date=f"Tue, 3 Mar 2026 10:{i % 60:02d}:00 +0100") for i in range(n)]


def test_the_spool_holds_no_plaintext_and_gives_back_what_was_added(tmp_path: Path) -> None:
    tables = [pa.table({"message_id": [f"a{i}", f"b{i}"], "text": [CANARY, f"{CANARY} {i}"]}) for i in range(5)]
    with Spool(tmp_path) as spool:
        for table in tables:
            spool.add(table)
        assert list(tmp_path.iterdir()) == []  # unlinked at once: no name on disk, nothing left after a crash
        raw = os.pread(spool._file.fileno(), spool.bytes, 0)
        assert len(raw) == spool.bytes and CANARY.encode() not in raw and b"canary" not in raw
        assert spool.rows == 10
        assert [t.to_pylist() for t in spool.tables()] == [t.to_pylist() for t in tables]
        assert [t.to_pylist() for t in spool.tables()] == [t.to_pylist() for t in tables]  # read again


def test_a_changed_spool_file_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.add(pa.table({"message_id": ["a"], "text": ["hello"]}))
        spool.add(pa.table({"message_id": ["b"], "text": ["world"]}))
        fd = spool._file.fileno()
        last = os.pread(fd, 1, spool.bytes - 1)
        os.pwrite(fd, bytes([last[0] ^ 1]), spool.bytes - 1)  # one bit of the second record
        read = spool.tables()
        assert next(read).to_pylist() == [{"message_id": "a", "text": "hello"}]
        with pytest.raises(ValueError, match="spool record 1: expected it as written"):
            next(read)


def test_spool_emails_refuses_a_bad_email_naming_it(tmp_path: Path) -> None:
    emails = _emails(450)
    with pytest.raises(BatchError, match=r"email 450 \(given in code\): message_id 'id-000007' appears twice"):
        spool_emails([*emails, Email("id-000007", "again")], directory=tmp_path)
    with pytest.raises(EmailInputError, match=r"email 3 \(x.jsonl\): message_id holds a lone surrogate"):
        spool_emails([*emails[:3], Email("bad\udc80", "t", source="x.jsonl")], directory=tmp_path)
    flagged: list[str] = []
    with spool_emails([*emails, Email("f", "t", flags=("undecodable",))], flagged=lambda e: flagged.append(
            e.message_id), directory=tmp_path) as spool:
        assert spool.rows == 451 and flagged == ["f"]
        assert [t.num_rows for t in spool.tables()] == [200, 200, 51]  # row groups of ROW_GROUP_SIZE


def test_parts_are_gathered_from_row_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(owner_module, "PART_ROWS", 500)
    groups = [pa.table({"message_id": [f"{g}-{i}" for i in range(200)], "text": ["t"] * 200}) for g in range(6)]
    parts = list(owner_module._parts(iter(groups)))
    assert [p.num_rows for p in parts] == [500, 500, 200]
    assert pa.concat_tables(parts).to_pylist() == pa.concat_tables(groups).to_pylist()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with storage_stack(tmp_path_factory.mktemp("stream-submit")) as running:
        yield running


def test_a_batch_is_cut_into_about_eight_shards_within_their_bounds() -> None:
    sizes = {groups: owner_module.shard_row_groups(groups) for groups in (1, 13, 16, 17, 49, 200, 201, 5000)}
    assert sizes == {1: 2, 13: 2, 16: 2, 17: 3, 49: 7, 200: 25, 201: 25, 5000: 25}


def test_a_spooled_batch_uploads_parts_that_decrypt_to_the_emails(stack: LocalStack, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(owner_module, "PART_ROWS", 1000)
    events: list[str] = []
    lock = threading.Lock()
    parts = owner_module._parts

    def watched_parts(groups: Iterator[pa.Table]) -> Iterator[pa.Table]:
        for index, part in enumerate(parts(groups)):
            with lock:
                events.append(f"part {index}")
            yield part

    store = ObjectStore()
    put_large = store.put_large

    def watched_put(key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        put_large(key, data, content_type)
        with lock:
            events.append(f"uploaded {key}")

    monkeypatch.setattr(owner_module, "_parts", watched_parts)
    monkeypatch.setattr(store, "put_large", watched_put)
    emails = _emails(4 * 1000 + 333)
    emails[1234] = Email(emails[1234].message_id, emails[1234].text, flags=("undecodable base64",))
    owner = Party.from_env("owner")
    model = ModelListing("spam", 1, "ab" * 32, "signer", 0, True)
    with spool_emails(emails, directory=tmp_path) as spool:
        uploaded_rows: list[int] = []  # what the command's progress bar is told, part by part
        batch = submit_spooled(spool, model, tenant="acme", owner=owner, store=store, measurements=["00" * 48],
                               progress=uploaded_rows.append)
    assert batch.rows == len(emails) and sorted(uploaded_rows) == [333, 1000, 1000, 1000, 1000]
    # Bounded: a part is assembled only while at most PARTS_IN_FLIGHT earlier ones are not yet uploaded.
    made = uploaded = 0
    for event in events:
        made += event.startswith("part")
        uploaded += event.startswith("uploaded")
        assert made - uploaded <= owner_module.PARTS_IN_FLIGHT + 1, events
    manifest = unverified_payload(store.get(batch.manifest_key).decode(), what="manifest")
    assert [o["rows"] for o in manifest["objects"]] == [1000, 1000, 1000, 1000, 333]
    assert [o["row_groups"] for o in manifest["objects"]] == [5, 5, 5, 5, 2]
    assert manifest["shard_row_groups"] == 3  # 22 row groups in about 8 shards
    got: list[dict[str, str]] = []
    with PmeKeys(owner.broker().for_batch(batch.batch_id)) as keys:
        for obj in manifest["objects"]:
            data = store.get(obj["key"])
            assert hashlib.sha256(data).hexdigest() == obj["sha256"] and len(data) == obj["size"]
            assert CANARY.encode() not in data
            with EncryptedParquet(data, keys) as part:
                binding = json.loads(part.key_value_metadata[b"cscore.input"])
                assert binding["file_id"] == obj["file_id"] and binding["key"] == obj["key"]
                got.extend(part.read().to_pylist())
        # What was flagged travels PME-encrypted beside the inputs, pinned by the manifest.
        flags = store.get(manifest["flags"]["key"])
        assert hashlib.sha256(flags).hexdigest() == manifest["flags"]["sha256"]
        with EncryptedParquet(flags, keys) as table:
            assert table.read().to_pylist() == [{"message_id": "id-001234", "flags": ["undecodable base64"]}]
    assert got == [{"message_id": e.message_id, "text": e.text} for e in emails]  # no From, Subject or Date
    assert owner.broker().get_grant(batch.batch_id)["rows"] == len(emails)
    assert not [k for k in store.keys(f"incoming/acme/{batch.batch_id}/") if SENDER.encode() in store.get(k)]
    # From, Subject and Date stayed on this machine, in the journal, encrypted under the batch's keys.
    path = journal_path(owner.home, "acme", batch.batch_id)
    assert SENDER.encode() not in path.read_bytes()
    with PmeKeys(owner.broker().for_batch(batch.batch_id)) as keys:
        journal = read_journal(path, keys, tenant="acme", batch_id=batch.batch_id)
    assert journal.column("message_id").to_pylist() == [e.message_id for e in emails]
    assert journal.column("from").to_pylist()[7] == f"{SENDER} <7@example.com>"
    assert journal.column("date").to_pylist()[7] == datetime(2026, 3, 3, 9, 7, tzinfo=UTC)
    results = pa.table({"message_id": [emails[7].message_id, "id-999999"], "spam_probability": [0.9, 0.1],
                        "label": [1, 0], "flags": ["", ""]})
    joined = join_headers(results, journal).to_pylist()
    assert joined[0]["subject"] == "subject 7" and joined[1]["subject"] is None
    _pandas_reads_encrypted_results(owner, batch.batch_id, tmp_path)


def _pandas_reads_encrypted_results(owner: Party, batch_id: str, tmp_path: Path) -> None:
    """docs/OWNER.md's pandas path: a result object (PME under the batch's result key, as a worker writes it)
    read by pandas with pyarrow's decryption properties, the keys from the owner's own broker."""
    import pandas as pd

    result_key = OwnerKeys.for_batch("acme", batch_id).results
    table = pa.table({"message_id": ["a", "b"], "spam_probability": [0.25, 0.75], "label": [0, 1]})
    with PmeKeys(owner.broker()) as writer:
        (tmp_path / "shard-00000.parquet").write_bytes(
            writer.write(table, footer_key=result_key, column_key=result_key, row_group_size=100))
    with PmeKeys(owner.broker().for_batch(batch_id)) as keys:
        frame = pd.read_parquet(tmp_path / "shard-00000.parquet", engine="pyarrow",
                                decryption_properties=keys.decryption_properties())
    assert frame.to_dict("records") == table.to_pylist()
    with pytest.raises(OSError, match="(?i)decrypt|key"):  # without the broker's keys pandas gets nothing
        pd.read_parquet(tmp_path / "shard-00000.parquet", engine="pyarrow")


def test_a_streamed_batch_keeps_from_subject_date_and_flags_like_a_submitted_one(
        stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cscore owner stream`'s micro-batches write the same journal as `submit` (for `owner results` to join
    back), and carry what their reader flagged; neither leaves the owner's machine in plaintext."""
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    drop = tmp_path / "drop"
    drop.mkdir()
    bodies = ["aGVsbG8=", "aGVsbG8gd29y!!bGQ=", "aGVsbG8="]  # the second's two "!" cannot be decoded: flagged
    raws = [f"From: {SENDER} <{i}@example.com>\nSubject: streamed {i}\nDate: Tue, 3 Mar 2026 10:0{i}:00 +0100\n"
            f"Content-Transfer-Encoding: base64\n\n{body}\n" for i, body in enumerate(bodies)]
    (drop / "mail.jsonl").write_text("".join(json.dumps({"message_id": f"s-{i}", "raw": r}) + "\n"
                                             for i, r in enumerate(raws)))
    owner, store = Party.from_env("owner"), ObjectStore()
    events: list[dict[str, Any]] = []
    journal = Journal(tmp_path / "stream.sqlite", source=drop, tenant="acme")
    stream = Stream(drop, tmp_path / "out", journal, ModelListing("spam", 1, "ab" * 32, "signer", 0, True), "acme",
                    owner, store, ["00" * 48], verify=lambda batch_id: pytest.fail("nothing runs the batch here"),
                    emit=events.append, options=StreamOptions(settle_s=0))
    try:
        stream.read_new()
        stream.cut(force=True)
        stream.submit_cut()
    finally:
        journal.close()
    batch_id = next(e["batch_id"] for e in events if e["event"] == "submitted")
    path = journal_path(owner.home, "acme", batch_id)
    assert SENDER.encode() not in path.read_bytes()
    with PmeKeys(owner.broker().for_batch(batch_id)) as keys:
        headers = read_journal(path, keys, tenant="acme", batch_id=batch_id).to_pylist()
        manifest = unverified_payload(store.get(f"incoming/acme/{batch_id}/manifest.jws").decode(), what="manifest")
        with EncryptedParquet(store.get(manifest["flags"]["key"]), keys) as table:
            flags = table.read().to_pylist()
    assert headers == [{"message_id": f"s-{i}", "from": f"{SENDER} <{i}@example.com>", "subject": f"streamed {i}",
                        "date": datetime(2026, 3, 3, 9, i, tzinfo=UTC)} for i in range(3)]
    assert flags == [{"message_id": "s-1", "flags": ["base64 body: 2 character(s) could not be decoded and were "
                                                     "skipped"]}]
    assert not [k for k in store.keys(f"incoming/acme/{batch_id}/") if SENDER.encode() in store.get(k)]
