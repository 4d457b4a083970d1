"""Parquet Modular Encryption as the project configures it, with a real AES-GCM key wrapper."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.pme import EncryptedParquet, EncryptionCoverageError, PmeKeys, write_encrypted

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
    with pytest.raises(EncryptionCoverageError, match="expected at least one column"):
        write_encrypted(pa.table({}), LocalWrapper(), footer_key="f", column_key="c", row_group_size=10)
