"""Parquet Modular Encryption as the project configures it, with a real AES-GCM key wrapper."""

from __future__ import annotations

import io
import os
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave import pme
from enclave.pme import (
    EncryptedParquet,
    EncryptionCoverageError,
    NotEncryptedError,
    PmeKeys,
    wrapper_from_callables,
    write_encrypted,
)

CANARY = "CANARY-PME-5d1e"


class LocalWrapper:
    """Master keys in memory (a stand-in broker); counts the calls a broker would see."""

    def __init__(self) -> None:
        self.masters: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []

    def wrap(self, key_id: str, key: bytes) -> bytes:
        self.calls.append(("wrap", key_id))
        master = self.masters.setdefault(key_id, AESGCM.generate_key(256))
        nonce = os.urandom(12)
        return nonce + AESGCM(master).encrypt(nonce, key, key_id.encode())

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        self.calls.append(("unwrap", key_id))
        return AESGCM(self.masters[key_id]).decrypt(wrapped[:12], wrapped[12:], key_id.encode())


def _table(n: int = 600) -> pa.Table:
    return pa.table({"message_id": [f"m{i}" for i in range(n)], "text": [f"{CANARY} body {i}" for i in range(n)]})


def test_every_column_and_the_footer_are_encrypted() -> None:
    data = write_encrypted(_table(), LocalWrapper(), footer_key="f", column_key="c", row_group_size=200)
    assert CANARY.encode() not in data and b"message_id" not in data  # footer (schema) encrypted too
    with pytest.raises(OSError, match="encrypted"):
        pq.ParquetFile(pa.BufferReader(data))


def test_round_trip_reads_selected_row_groups() -> None:
    wrapper = LocalWrapper()
    data = write_encrypted(_table(), wrapper, footer_key="f", column_key="c", row_group_size=200)
    with EncryptedParquet(data, wrapper) as source:
        assert (source.num_row_groups, source.num_rows) == (3, 600)
        part = source.read_row_groups([1], ["message_id", "text"])
    assert part.column("message_id").to_pylist()[0] == "m200"


def test_another_brokers_keys_cannot_open_it() -> None:
    data = write_encrypted(_table(), LocalWrapper(), footer_key="f", column_key="c", row_group_size=200)
    with pytest.raises(KeyError):
        EncryptedParquet(data, LocalWrapper())


def test_a_shared_context_asks_the_broker_once_per_key_not_per_file() -> None:
    wrapper = LocalWrapper()
    with PmeKeys(wrapper) as keys:
        files = [keys.write(_table(50), footer_key="f", column_key="c", row_group_size=50) for _ in range(5)]
        assert sorted(wrapper.calls) == [("wrap", "c"), ("wrap", "f")]
        for data in files:
            with EncryptedParquet(data, keys) as source:
                assert source.num_rows == 50
    assert len([c for c in wrapper.calls if c[0] == "unwrap"]) <= 2
    assert len(set(files)) == 5  # fresh data keys (and nonces) per file


def test_a_table_without_columns_is_refused() -> None:
    with pytest.raises(EncryptionCoverageError) as refused:
        write_encrypted(pa.table({}), LocalWrapper(), footer_key="f", column_key="c", row_group_size=10)
    assert str(refused.value) == "table: expected at least one column, got none"


def test_a_plaintext_parquet_file_is_refused_and_the_readers_own_keys_forgotten() -> None:
    """pyarrow would open a plaintext file despite decryption properties and believe its footer: the platform's
    own file, written in the owner's place. Only an encrypted footer is authenticated."""
    sink = io.BytesIO()
    pq.write_table(_table(10), sink)
    held = len(pme._registry)
    with pytest.raises(NotEncryptedError) as refused:
        EncryptedParquet(sink.getvalue(), LocalWrapper())
    assert str(refused.value) == ("expected a Parquet file with an encrypted footer (ending b'PARE'), got one ending "
                                  "b'PAR1'")
    assert len(pme._registry) == held  # the reader's own keys (and the wrapper) forgotten on the refusal


def test_a_file_opened_from_a_native_file_and_read_by_row_group_column_and_footer() -> None:
    wrapper = LocalWrapper()
    table = _table(250)
    data = write_encrypted(table, wrapper, footer_key="f", column_key="c", row_group_size=100,
                           metadata={"cscore.input": "file-id-1"})
    with PmeKeys(wrapper) as keys, EncryptedParquet(pa.BufferReader(data), keys) as source:
        assert (source.num_row_groups, source.num_rows, source.rows_in([0, 2])) == (3, 250, 150)
        assert source.schema.names == ["message_id", "text"]
        assert source.key_value_metadata[b"cscore.input"] == b"file-id-1"  # authenticated with the footer
        assert source.read().equals(table.replace_schema_metadata(source.schema.metadata))
        assert source.read_row_groups([2]).column_names == ["message_id", "text"]
        assert source.read_row_groups([2], ["text"]).column_names == ["text"]
        assert source.read_row_groups([1, 2], []).num_rows == 150  # no columns named: every column


def test_the_footer_metadata_adds_to_the_schemas_own() -> None:
    wrapper = LocalWrapper()
    table = _table(5).replace_schema_metadata({"owner": "acme"})
    data = write_encrypted(table, wrapper, footer_key="f", column_key="c", row_group_size=5, metadata={"k": "v"})
    with EncryptedParquet(data, wrapper) as source:
        assert {b"owner": b"acme", b"k": b"v"}.items() <= source.key_value_metadata.items()
    bare = write_encrypted(table, wrapper, footer_key="f", column_key="c", row_group_size=5)
    with EncryptedParquet(bare, wrapper) as source:
        assert b"k" not in source.key_value_metadata and source.key_value_metadata[b"owner"] == b"acme"


def test_columns_carry_no_statistics() -> None:
    """min/max statistics of long texts made every footer large (each shard reads the footer); none are written."""
    wrapper = LocalWrapper()
    data = write_encrypted(_table(20), wrapper, footer_key="f", column_key="c", row_group_size=10)
    with PmeKeys(wrapper) as keys:
        metadata = pq.ParquetFile(pa.BufferReader(data), decryption_properties=keys.decryption_properties()).metadata
        columns = [metadata.row_group(g).column(c) for g in range(2) for c in range(2)]
        assert len(columns) == 4 and not any(column.is_stats_set for column in columns)


def test_closing_twice_is_harmless_and_forgets_the_wrapper() -> None:
    held = len(pme._registry)
    keys = PmeKeys(LocalWrapper())
    assert len(pme._registry) == held + 1
    keys.close()
    keys.close()
    assert len(pme._registry) == held


def test_a_failed_open_with_shared_keys_leaves_them_usable() -> None:
    wrapper = LocalWrapper()
    data = write_encrypted(_table(10), wrapper, footer_key="f", column_key="c", row_group_size=10)
    with PmeKeys(wrapper) as keys:
        with pytest.raises(NotEncryptedError):
            EncryptedParquet(b"not parquet at all", keys)
        held = len(pme._registry)
        with EncryptedParquet(data, keys) as source:
            assert source.num_rows == 10 and len(pme._registry) == held  # the shared keys: none of its own


def test_callables_adapt_to_a_key_wrapper() -> None:
    local = LocalWrapper()
    wrapper = wrapper_from_callables(local.wrap, local.unwrap)
    data = write_encrypted(_table(10), wrapper, footer_key="f", column_key="c", row_group_size=10)
    with EncryptedParquet(data, wrapper) as source:
        assert source.read().num_rows == 10
    assert sorted(set(local.calls)) == [("unwrap", "c"), ("unwrap", "f"), ("wrap", "c"), ("wrap", "f")]


class _Recorded:
    """The configurations the module hands pyarrow, read back from pyarrow's own objects."""

    def __init__(self) -> None:
        self.encryption: list[pe.EncryptionConfiguration] = []
        self.decryption: list[pe.DecryptionConfiguration] = []


def _record(monkeypatch: pytest.MonkeyPatch, other_defaults: dict[str, Any] | None = None) -> _Recorded:
    """Record every PME configuration the module builds. ``other_defaults``: what pyarrow would use for a setting
    left out (or given as None), as a future pyarrow might: the module must not rely on today's defaults."""
    recorded = _Recorded()
    changed = other_defaults or {}

    class Encryption(pe.EncryptionConfiguration):
        def __init__(self, **given: Any) -> None:
            super().__init__(**given)
            for name, default in changed.items():
                if given.get(name) is None:
                    setattr(self, name, default)
            recorded.encryption.append(self)

    class Decryption(pe.DecryptionConfiguration):
        def __init__(self, **given: Any) -> None:
            super().__init__(**given)
            if given.get("cache_lifetime") is None and "cache_lifetime" in changed:
                self.cache_lifetime = changed["cache_lifetime"]
            recorded.decryption.append(self)

    monkeypatch.setattr(pe, "EncryptionConfiguration", Encryption)
    monkeypatch.setattr(pe, "DecryptionConfiguration", Decryption)
    return recorded


def test_released_keys_are_cached_for_key_cache_lifetime_not_pyarrows_ten_minutes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow keeps unwrapped key-encryption keys for its configuration's lifetime (10 minutes by default); a key
    released for a shard should not outlive it by much: the writer's and the reader's configurations say 5."""
    recorded = _record(monkeypatch)
    wrapper = LocalWrapper()
    data = write_encrypted(_table(10), wrapper, footer_key="f", column_key="c", row_group_size=10)
    with EncryptedParquet(data, wrapper) as source:
        assert source.num_rows == 10
    assert pme.KEY_CACHE_LIFETIME == timedelta(minutes=5)
    assert [c.cache_lifetime for c in recorded.encryption] == [timedelta(minutes=5)]
    assert [c.cache_lifetime for c in recorded.decryption] == [timedelta(minutes=5)]


def test_the_cipher_wrapping_and_lifetime_are_pinned_not_pyarrows_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pyarrow whose defaults differ (CTR pages are not authenticated; single wrapping asks the broker per file)
    still gets AES-GCM pages, double wrapping and the module's lifetime: each is set, not left to the default."""
    recorded = _record(monkeypatch, {"encryption_algorithm": "AES_GCM_CTR_V1", "double_wrapping": False,
                                     "cache_lifetime": timedelta(hours=1)})
    wrapper = LocalWrapper()
    with PmeKeys(wrapper) as keys:
        files = [keys.write(_table(10), footer_key="f", column_key="c", row_group_size=10) for _ in range(3)]
        with EncryptedParquet(files[0], keys) as source:
            assert source.num_rows == 10
    assert sorted(c for c in wrapper.calls if c[0] == "wrap") == [("wrap", "c"), ("wrap", "f")]  # once a key
    settings = {(c.encryption_algorithm, c.double_wrapping, c.cache_lifetime) for c in recorded.encryption}
    assert settings == {("AES_GCM_V1", True, timedelta(minutes=5))}
    assert [c.cache_lifetime for c in recorded.decryption] == [timedelta(minutes=5)]


class _CountedReads(io.BytesIO):
    """A file whose reads are counted: each would be one range request to object storage."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)


class _NotPreBuffering(pq.ParquetFile):
    """pyarrow's ParquetFile as it was before pre-buffering became its default (False)."""

    def __init__(self, source: Any, *, pre_buffer: bool = False, **given: Any) -> None:
        super().__init__(source, pre_buffer=pre_buffer, **given)


@pytest.mark.parametrize("reader_default", ["pyarrow's", "not pre-buffering"])
def test_the_column_chunks_of_a_row_group_come_in_one_read(monkeypatch: pytest.MonkeyPatch,
                                                           reader_default: str) -> None:
    """The reader pre-buffers, whatever pyarrow's default: a row group's column chunks (two here) come in one
    coalesced read (a range request from object storage), not one each."""
    if reader_default == "not pre-buffering":
        monkeypatch.setattr(pq, "ParquetFile", _NotPreBuffering)
    wrapper = LocalWrapper()
    data = write_encrypted(_table(600), wrapper, footer_key="f", column_key="c", row_group_size=200)
    counted = _CountedReads(data)
    with EncryptedParquet(pa.PythonFile(counted, mode="r"), wrapper) as source:
        before = counted.reads
        part = source.read_row_groups([1], ["message_id", "text"])
        assert (part.num_rows, counted.reads - before) == (200, 1)
