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
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
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


class NotEncryptedError(ValueError):
    """A file given to a PME reader does not end in the encrypted-footer magic ("PARE")."""


ENCRYPTED_FOOTER_MAGIC = b"PARE"


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


class PmeKeys:
    """PME through one KeyWrapper, for many files: pyarrow then caches the key-encryption keys it
    unwrapped (or created) for KEY_CACHE_LIFETIME, so a worker scoring many shards of one batch asks
    the broker a few times, not for every file. Data keys stay fresh per file. Close it when done."""

    def __init__(self, wrapper: KeyWrapper) -> None:
        self._factory, self._connection = _factory_for(wrapper)

    def __enter__(self) -> PmeKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Forget the wrapper (and with it pyarrow's cached keys for it)."""
        self._factory.remove_cache_entries_for_all_tokens()
        _release(self._connection)

    def write(self, table: pa.Table, *, footer_key: str, column_key: str, row_group_size: int,
              metadata: dict[str, str] | None = None) -> bytes:
        """Serialise `table` as PME Parquet: footer under `footer_key`, every column under `column_key`.

        `metadata` goes into the footer's key-value metadata, which the footer key encrypts and authenticates.
        """
        sink = io.BytesIO()
        with self.writer(sink, table.schema, footer_key=footer_key, column_key=column_key,
                         metadata=metadata) as writer:
            writer.write_table(table, row_group_size=row_group_size)
        return sink.getvalue()

    def writer(self, sink: str | Path | io.BytesIO, schema: pa.Schema, *, footer_key: str, column_key: str,
               metadata: dict[str, str] | None = None) -> pq.ParquetWriter:
        """A PME Parquet writer on `sink` (a path or a file object), for tables written one by one in bounded
        memory: footer under `footer_key`, every column under `column_key`, `metadata` in the encrypted footer.
        Close it to finish the file. Raises EncryptionCoverageError for a schema without columns."""
        if metadata:
            schema = schema.with_metadata({**(schema.metadata or {}), **metadata})
        columns = list(schema.names)
        if not columns:
            raise EncryptionCoverageError("table: expected at least one column, got none")
        # Fresh properties per file: reused properties share data keys across files (DESIGN §7).
        config = pe.EncryptionConfiguration(
            footer_key=footer_key,
            column_keys={column_key: columns},
            encryption_algorithm="AES_GCM_V1",
            double_wrapping=True,
            cache_lifetime=KEY_CACHE_LIFETIME,
        )
        properties = self._factory.file_encryption_properties(self._connection, config)
        # No column statistics: min/max of long texts made an input's footer ~2.4 KB per row group, and every
        # shard reads the footer (ranged reads); nothing here prunes by statistics.
        return pq.ParquetWriter(sink, schema, encryption_properties=properties, write_statistics=False)

    def decryption_properties(self) -> pe.FileDecryptionProperties:
        """pyarrow's decryption properties for PME files of these keys, for any pyarrow reader
        (`pq.read_table(path, decryption_properties=...)`, `pandas.read_parquet(path, engine="pyarrow",
        decryption_properties=...)`). A plaintext file is read too: check its magic (see `open`) when that matters."""
        return self._factory.file_decryption_properties(
            self._connection, pe.DecryptionConfiguration(cache_lifetime=KEY_CACHE_LIFETIME))

    def open(self, data: bytes | pa.NativeFile) -> pq.ParquetFile:
        """Open PME Parquet (bytes, or a file such as `enclave.ranged.open_ranged`'s); keys are unwrapped on
        open (and lazily per column)."""
        properties = self.decryption_properties()
        source = pa.BufferReader(data) if isinstance(data, bytes) else data
        # pyarrow opens a plaintext file even with decryption properties: whatever its footer says would then be
        # believed. Only an encrypted footer is authenticated (AES-GCM under the footer key), so require one.
        magic = source.read_at(len(ENCRYPTED_FOOTER_MAGIC), source.size() - len(ENCRYPTED_FOOTER_MAGIC))
        if magic != ENCRYPTED_FOOTER_MAGIC:
            raise NotEncryptedError(f"expected a Parquet file with an encrypted footer (ending "
                                    f"{ENCRYPTED_FOOTER_MAGIC!r}), got one ending {bytes(magic)!r}")
        # pre_buffer: the column chunks of the row groups read together come in one coalesced range request.
        return pq.ParquetFile(source, decryption_properties=properties, pre_buffer=True)


def write_encrypted(
    table: pa.Table,
    wrapper: KeyWrapper,
    *,
    footer_key: str,
    column_key: str,
    row_group_size: int,
    metadata: dict[str, str] | None = None,
) -> bytes:
    """One file's worth of `PmeKeys.write`."""
    with PmeKeys(wrapper) as keys:
        return keys.write(table, footer_key=footer_key, column_key=column_key, row_group_size=row_group_size,
                          metadata=metadata)


class EncryptedParquet:
    """An opened PME Parquet file, with its own keys (one-off use) or a shared `PmeKeys`."""

    def __init__(self, data: bytes | pa.NativeFile, keys: KeyWrapper | PmeKeys) -> None:
        self._own_keys = None if isinstance(keys, PmeKeys) else PmeKeys(keys)
        shared = keys if isinstance(keys, PmeKeys) else self._own_keys
        assert shared is not None
        try:
            self._file = shared.open(data)
        except BaseException:
            self._close_own_keys()
            raise

    def __enter__(self) -> EncryptedParquet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file; its own keys (if any) are forgotten: columns may be unwrapped lazily until then."""
        self._file.close()
        self._close_own_keys()

    def _close_own_keys(self) -> None:
        if self._own_keys is not None:
            self._own_keys.close()

    @property
    def num_row_groups(self) -> int:
        return self._file.num_row_groups

    @property
    def num_rows(self) -> int:
        return self._file.metadata.num_rows

    @property
    def schema(self) -> pa.Schema:
        return self._file.schema_arrow

    @property
    def key_value_metadata(self) -> dict[bytes, bytes]:
        """The footer's key-value metadata (authenticated with the footer: it decrypted)."""
        return dict(self._file.metadata.metadata or {})

    def rows_in(self, row_groups: Iterable[int]) -> int:
        """Rows in the given row groups, as the (authenticated) footer counts them."""
        metadata = self._file.metadata
        return sum(metadata.row_group(i).num_rows for i in row_groups)

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
