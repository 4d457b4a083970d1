"""A shard reads only its own bytes (footer + its row groups), and a file served under another name is refused.

Input files are written by the owner's own code (`sdk.owner.encode_part`) with real PME (AES-GCM) under a
stand-in broker that holds every batch's master keys: a real broker would already refuse another batch's keys,
so these tests show that the footer binding alone refuses the substitution.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from enclave.pme import PmeKeys, write_encrypted
from enclave.ranged import TAIL_BYTES, BytesSource
from enclave.worker import ShardInputError, ShardReader, _check_binding, read_shard
from sdk.contracts import DIGITS_CONTRACT, DIGITS_TASK
from sdk.owner import ROW_GROUP_SIZE, OwnerKeys, encode_part
from tests.enclave.test_pme import LocalWrapper
from wire.card import CARD_TYPE, ModelCard
from wire.shard import INPUT_BINDING_KEY, ShardSpec, input_binding

TENANT = "acme"


def _table(rows: int, tag: str) -> pa.Table:
    return pa.table({"message_id": [f"{tag}-{i}" for i in range(rows)],
                     "text": [f"{tag} email {i} " + "lorem ipsum dolor " * 40 for i in range(rows)]})


def _part(wrapper: LocalWrapper, batch: str, index: int, rows: int) -> tuple[bytes, str, str]:
    key = f"incoming/{TENANT}/{batch}/part-{index:05d}.parquet"
    data, file_id = encode_part(_table(rows, f"{batch}.{index}"), wrapper, OwnerKeys.for_batch(TENANT, batch),
                                tenant=TENANT, batch_id=batch, key=key)
    return data, file_id, key


def _spec(batch: str, key: str, file_id: str, start: int = 0, end: int = 2, **changes: Any) -> ShardSpec:
    keys = OwnerKeys.for_batch(TENANT, batch)
    fields: dict[str, Any] = {
        "tenant": TENANT, "batch_id": batch, "shard_index": 0, "input_key": key, "input_sha256": "",
        "input_file_id": file_id, "row_group_start": start, "row_group_end": end, "model_name": "spam-filter",
        "model_version": 1, "model_digest": "sha256:" + "cd" * 32, "owner_broker": "owner",
        "footer_key": keys.footer, "column_key": keys.emails, "result_key": keys.results,
        "output_key": f"results/{TENANT}/{batch}/shard-00000.parquet",
        "receipt_key": f"results/{TENANT}/{batch}/shard-00000.receipt.jws", **changes}
    return ShardSpec.from_dict(fields)


def test_a_shard_reads_its_footer_and_own_row_groups_whatever_the_files_size() -> None:
    wrapper = LocalWrapper()
    for rows in (20_000, 100_000):  # 100 and 500 row groups (PART_ROWS is 10,000)
        data, file_id, key = _part(wrapper, "b-1", 0, rows)
        source = BytesSource(data)
        with PmeKeys(wrapper) as keys:
            table = read_shard(_spec("b-1", key, file_id, 6, 8), source, keys)
            metadata = keys.open(data).metadata  # column metadata decrypts lazily: used while the keys are open
            own = sum(metadata.row_group(g).column(c).total_compressed_size for g in (6, 7) for c in (0, 1))
        assert table.column("message_id").to_pylist() == [f"b-1.0-{i}" for i in range(6 * ROW_GROUP_SIZE,
                                                                                      8 * ROW_GROUP_SIZE)]
        footer = int.from_bytes(data[-8:-4], "little") + 8
        # The tail (footer and trailer, up to TAIL_BYTES in one request), the rest of a longer footer, and
        # the shard's own column chunks in one coalesced request: nothing of the other row groups.
        assert source.bytes_read <= max(footer, TAIL_BYTES) + own, (rows, source.bytes_read, footer, own)
        assert source.requests <= 3, source.requests
    assert len(data) > 4 * TAIL_BYTES and source.bytes_read < 0.25 * len(data), (source.bytes_read, len(data))


def test_another_file_of_the_same_batch_served_under_this_key_is_refused() -> None:
    wrapper = LocalWrapper()
    _, first_id, first_key = _part(wrapper, "b-1", 0, 1_000)
    second, _, _ = _part(wrapper, "b-1", 1, 1_000)  # same owner, same batch, same keys
    with PmeKeys(wrapper) as keys, pytest.raises(ShardInputError) as refused:
        read_shard(_spec("b-1", first_key, first_id), BytesSource(second), keys)
    message = str(refused.value)
    assert message.startswith(f"input {first_key}: expected the owner's file bound to ")
    assert '"key":"incoming/acme/b-1/part-00001.parquet"' in message and "restore it or resubmit" in message


def test_another_batchs_file_is_refused_even_with_its_keys_at_hand() -> None:
    wrapper = LocalWrapper()
    _, own_id, own_key = _part(wrapper, "b-1", 0, 1_000)
    other, _, _ = _part(wrapper, "b-2", 0, 1_000)  # another batch of the same owner: part-00000 too
    with PmeKeys(wrapper) as keys, pytest.raises(ShardInputError, match='"batch_id":"b-2"'):
        read_shard(_spec("b-1", own_key, own_id), BytesSource(other), keys)


def test_the_same_name_written_again_is_refused_by_its_file_id() -> None:
    wrapper = LocalWrapper()
    _, listed_id, key = _part(wrapper, "b-1", 0, 1_000)  # the file the signed manifest lists
    rewritten, rewritten_id, _ = _part(wrapper, "b-1", 0, 1_000)  # same owner, batch and name: a new file id
    with PmeKeys(wrapper) as keys, pytest.raises(ShardInputError, match=f'"file_id":"{rewritten_id}"'):
        read_shard(_spec("b-1", key, listed_id), BytesSource(rewritten), keys)


def test_a_file_under_the_batch_keys_without_a_binding_is_refused() -> None:
    wrapper = LocalWrapper()
    keys_ = OwnerKeys.for_batch(TENANT, "b-1")
    data = write_encrypted(_table(1_000, "x"), wrapper, footer_key=keys_.footer, column_key=keys_.emails,
                           row_group_size=ROW_GROUP_SIZE)
    key = f"incoming/{TENANT}/b-1/part-00000.parquet"
    with PmeKeys(wrapper) as keys, pytest.raises(ShardInputError, match="got no binding"):
        read_shard(_spec("b-1", key, "00" * 16), BytesSource(data), keys)


def test_a_plaintext_file_with_a_forged_binding_is_refused() -> None:
    """pyarrow opens a plaintext file even with decryption properties: its footer (binding included) is then
    the platform's word. Only an encrypted footer is authenticated, so only one is accepted."""
    wrapper = LocalWrapper()
    _, file_id, key = _part(wrapper, "b-1", 0, 1_000)
    forged = _table(1_000, "platform").replace_schema_metadata(
        {INPUT_BINDING_KEY: input_binding(TENANT, "b-1", key, file_id)})
    sink = io.BytesIO()
    pq.write_table(forged, sink, row_group_size=ROW_GROUP_SIZE)
    refusal = r"expected a Parquet file with an encrypted footer \(ending b'PARE'\), got one ending b'PAR1'"
    with PmeKeys(wrapper) as keys, pytest.raises(ShardInputError, match=refusal):
        read_shard(_spec("b-1", key, file_id), BytesSource(sink.getvalue()), keys)


def test_row_groups_beyond_the_file_are_refused_and_named() -> None:
    wrapper = LocalWrapper()
    data, file_id, key = _part(wrapper, "b-1", 0, 1_000)  # 5 row groups
    refusal = r"expected row groups \[4, 6\), the file has 5"
    with PmeKeys(wrapper) as keys, pytest.raises(ShardInputError, match=refusal):
        read_shard(_spec("b-1", key, file_id, 4, 6), BytesSource(data), keys)


def _flipped_in_row_group(wrapper: LocalWrapper, data: bytes, row_group: int) -> bytes:
    """``data`` with one bit flipped inside the text column's first data page of ``row_group``."""
    with PmeKeys(wrapper) as keys:
        start = keys.open(data).metadata.row_group(row_group).column(1).data_page_offset
    tampered = bytearray(data)
    tampered[start + 40] ^= 0x01
    return bytes(tampered)


def test_a_flipped_byte_in_the_shards_row_groups_fails_authentication() -> None:
    wrapper = LocalWrapper()
    data, file_id, key = _part(wrapper, "b-1", 0, 1_000)
    tampered = _flipped_in_row_group(wrapper, data, 1)
    with PmeKeys(wrapper) as keys, pytest.raises(OSError):
        read_shard(_spec("b-1", key, file_id, 0, 2), BytesSource(tampered), keys)



def test_a_shard_is_read_in_slices_in_order_counting_its_rows_from_the_footer_first() -> None:
    wrapper = LocalWrapper()
    data, file_id, key = _part(wrapper, "b-1", 0, 3_000)  # 15 row groups; the shard takes 2 to 14
    source = BytesSource(data)
    with PmeKeys(wrapper) as keys, ShardReader(_spec("b-1", key, file_id, 2, 14), source, keys) as reader:
        opened = source.bytes_read
        assert reader.rows == 12 * ROW_GROUP_SIZE and source.bytes_read == opened  # counted before any row is read
        slices = list(reader.slices(5))
    assert [s.num_rows for s in slices] == [5 * ROW_GROUP_SIZE, 5 * ROW_GROUP_SIZE, 2 * ROW_GROUP_SIZE]
    ids = pa.concat_tables(slices).column("message_id").to_pylist()
    assert ids == [f"b-1.0-{i}" for i in range(2 * ROW_GROUP_SIZE, 14 * ROW_GROUP_SIZE)]


def test_a_flipped_byte_in_a_later_slice_fails_authentication_when_that_slice_is_read() -> None:
    wrapper = LocalWrapper()
    data, file_id, key = _part(wrapper, "b-1", 0, 2_000)
    tampered = _flipped_in_row_group(wrapper, data, 7)
    with PmeKeys(wrapper) as keys, ShardReader(_spec("b-1", key, file_id, 0, 10), BytesSource(tampered),
                                               keys) as reader:
        slices = reader.slices(5)
        assert next(slices).num_rows == 5 * ROW_GROUP_SIZE  # row groups 0-4: untouched
        with pytest.raises(OSError):
            next(slices)


def test_a_shard_reads_only_the_columns_its_models_contract_names_up_to_the_files_last_row_group() -> None:
    """A digits model's card names `file` (its id) and `image`: the owner's file holds a `notes` column too,
    which the enclave never reads, in any slice; the shard ends at the file's last row group, which is in the file."""
    wrapper = LocalWrapper()
    key = f"incoming/{TENANT}/b-1/part-00000.parquet"
    rows = 8 * ROW_GROUP_SIZE  # the shard's 6 row groups are read in two slices (SLICE_ROW_GROUPS is 5)
    table = pa.table({"file": [f"f{i}.png" for i in range(rows)], "image": [b"png"] * rows,
                      "notes": ["the owner's own column"] * rows})
    data, file_id = encode_part(table, wrapper, OwnerKeys.for_batch(TENANT, "b-1"), tenant=TENANT, batch_id="b-1",
                                key=key)
    card = ModelCard.parse({"type": CARD_TYPE, "name": "digits", "version": 1, "protection": "none",
                            "digest": "sha256:" + "dd" * 32, "object_key": "models/digits/1/model.onnx",
                            "task": DIGITS_TASK, "contract": DIGITS_CONTRACT})
    with PmeKeys(wrapper) as keys:
        read = read_shard(_spec("b-1", key, file_id, 2, 8), BytesSource(data), keys, card)
    assert read.column_names == ["file", "image"] and read.num_rows == 6 * ROW_GROUP_SIZE
    assert read.column("file").to_pylist() == [f"f{i}.png" for i in range(2 * ROW_GROUP_SIZE, rows)]
    # The owner's emails named for the digits model: refused naming the shard's input and the missing column.
    emails, emails_id, emails_key = _part(wrapper, "b-2", 0, 1_000)
    with PmeKeys(wrapper) as keys, pytest.raises(ShardInputError) as refused:
        read_shard(_spec("b-2", emails_key, emails_id), BytesSource(emails), keys, card)
    assert str(refused.value) == (f"input {emails_key}: expected columns ['file', 'image'] (model digits:1's "
                                  "contract), column 'file' is missing; submit the data for this model's inputs")


def test_a_binding_of_another_file_is_shown_to_300_characters_whatever_its_bytes() -> None:
    """The refusal shows what the footer holds, decoded with replacement characters and cut at 300 characters."""
    spec = _spec("b-1", f"incoming/{TENANT}/b-1/part-00000.parquet", "ab" * 16)
    found = b"\xff" + ("x" * 299).encode() + b"beyond"
    with pytest.raises(ShardInputError) as refused:
        _check_binding(spec, found)
    expected = input_binding(TENANT, "b-1", spec.input_key, "ab" * 16)
    assert str(refused.value) == (
        f"input {spec.input_key}: expected the owner's file bound to {expected} (footer entry {INPUT_BINDING_KEY}, "
        f"authenticated by PME), got \ufffd{'x' * 299}; the object under this key is not the one the signed "
        "manifest lists: restore it or resubmit the batch")
