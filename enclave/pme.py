"""Parquet Modular Encryption (PME) with master keys held by a key broker.

Used inside the enclave (keys unwrapped through an attested broker session) and on the owner's own
machine (keys unwrapped with the owner's admin credential): both hand in a `KeyWrapper`.
Every column and the footer are encrypted; only wrapped keys ever leave the process.
"""

from __future__ import annotations

import base64
import io
import itertools
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe

# Short: a released key should not outlive the shard that needed it by much.
KEY_CACHE_LIFETIME = timedelta(minutes=5)


class KeyWrapper(Protocol):
    """Wraps and unwraps data keys under a broker's master keys."""

    def wrap(self, key_id: str, key: bytes) -> bytes: ...

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes: ...


class EncryptionCoverageError(ValueError):
    """A column would be written in plaintext because no key covers it."""


class _BrokerKmsClient(pe.KmsClient):
    """pyarrow's KMS interface, delegating to a KeyWrapper."""

    def __init__(self, wrapper: KeyWrapper) -> None:
        # pyarrow requires the base initialiser (DESIGN §7).
        pe.KmsClient.__init__(self)
        self._wrapper = wrapper

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        wrapped = self._wrapper.wrap(master_key_identifier, bytes(key_bytes))
        return base64.b64encode(wrapped).decode("ascii")

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        return self._wrapper.unwrap(master_key_identifier, base64.b64decode(wrapped_key))


# pyarrow caches KMS clients by instance id; each wrapper gets its own id so that keys of one
# party or batch are never served from another's cache.
_registry: dict[str, KeyWrapper] = {}
_registry_lock = threading.Lock()
_ids = itertools.count()


def _factory_for(wrapper: KeyWrapper) -> tuple[pe.CryptoFactory, pe.KmsConnectionConfig]:
    with _registry_lock:
        instance_id = f"cscore-{id(wrapper)}-{next(_ids)}"
        _registry[instance_id] = wrapper

    def make_client(config: pe.KmsConnectionConfig) -> pe.KmsClient:
        return _BrokerKmsClient(_registry[config.kms_instance_id])

    return pe.CryptoFactory(make_client), pe.KmsConnectionConfig(kms_instance_id=instance_id)


def _release(config: pe.KmsConnectionConfig) -> None:
    with _registry_lock:
        _registry.pop(config.kms_instance_id, None)


def write_encrypted(
    table: pa.Table,
    wrapper: KeyWrapper,
    *,
    footer_key: str,
    column_key: str,
    row_group_size: int,
) -> bytes:
    """Serialise `table` as PME Parquet: footer under `footer_key`, every column under `column_key`."""
    columns = list(table.column_names)
    if not columns:
        raise EncryptionCoverageError("table: expected at least one column, got none")
    factory, connection = _factory_for(wrapper)
    try:
        # Fresh properties per file: reused properties share data keys across files (DESIGN §7).
        config = pe.EncryptionConfiguration(
            footer_key=footer_key,
            column_keys={column_key: columns},
            encryption_algorithm="AES_GCM_V1",
            double_wrapping=True,
            cache_lifetime=KEY_CACHE_LIFETIME,
        )
        properties = factory.file_encryption_properties(connection, config)
        sink = io.BytesIO()
        with pq.ParquetWriter(sink, table.schema, encryption_properties=properties) as writer:
            writer.write_table(table, row_group_size=row_group_size)
        return sink.getvalue()
    finally:
        _release(connection)


class EncryptedParquet:
    """An opened PME Parquet file; keys are unwrapped through the wrapper on open."""

    def __init__(self, data: bytes, wrapper: KeyWrapper) -> None:
        factory, self._connection = _factory_for(wrapper)
        try:
            properties = factory.file_decryption_properties(
                self._connection, pe.DecryptionConfiguration(cache_lifetime=KEY_CACHE_LIFETIME)
            )
            self._file = pq.ParquetFile(pa.BufferReader(data), decryption_properties=properties)
        except BaseException:
            _release(self._connection)
            raise

    def __enter__(self) -> EncryptedParquet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Forget the wrapper; column keys may be unwrapped lazily until then."""
        self._file.close()
        _release(self._connection)

    @property
    def num_row_groups(self) -> int:
        return self._file.num_row_groups

    @property
    def num_rows(self) -> int:
        return self._file.metadata.num_rows

    @property
    def schema(self) -> pa.Schema:
        return self._file.schema_arrow

    def read_row_groups(self, row_groups: Sequence[int], columns: Sequence[str] | None = None) -> pa.Table:
        return self._file.read_row_groups(list(row_groups), columns=list(columns) if columns else None)

    def read(self) -> pa.Table:
        return self._file.read()


def wrapper_from_callables(
    wrap: Callable[[str, bytes], bytes], unwrap: Callable[[str, bytes], bytes]
) -> KeyWrapper:
    """Adapt two functions to the KeyWrapper protocol."""

    class _Wrapper:
        def wrap(self, key_id: str, key: bytes) -> bytes:
            return wrap(key_id, key)

        def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
            return unwrap(key_id, wrapped)

    return _Wrapper()
