"""The owner's checked emails between the check and the upload, in bounded memory and never in plaintext on disk.

`cscore owner submit` reads its input once: every email is checked (and refused, naming it) before any key
is created or any byte uploaded, so the batch is held somewhere until the check is done. Not in memory (a
million emails are gigabytes) and not as plaintext on disk: each row group is an Arrow IPC stream (lz4),
sealed with AES-256-GCM under a key that exists only in this process, appended to an unlinked temporary file.
The file is gone when the spool is closed or the process ends; its bytes are useless without the key.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_LENGTH = 8  # bytes of each record's length prefix
_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


class Spool:
    """Tables (one row group each) appended, then read back in order, once or more. Close it when done."""

    def __init__(self, directory: Path | None = None) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)  # unlinked at once: nothing left behind on a crash
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._records = 0
        self.rows = 0
        self.bytes = 0
        self.flags: dict[str, list[str]] = {}  # what could not be read right, by id (few: kept in memory)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def add(self, table: pa.Table) -> None:
        """Append one table (bounded by the caller: a row group)."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema, options=_OPTIONS) as writer:
            writer.write_table(table)
        index = self._records.to_bytes(_LENGTH, "big")
        sealed = self._aead.encrypt(index.rjust(12, b"\0"), sink.getvalue().to_pybytes(), index)
        self._file.seek(0, os.SEEK_END)
        self._file.write(len(sealed).to_bytes(_LENGTH, "big") + sealed)
        self._file.flush()  # what the file holds is sealed: nothing waits in a buffer
        self._records += 1
        self.rows += table.num_rows
        self.bytes += _LENGTH + len(sealed)

    def tables(self) -> Iterator[pa.Table]:
        """The tables in the order added; raises ValueError if the file was changed (authentication fails)."""
        self._file.seek(0)
        for record in range(self._records):
            size = int.from_bytes(self._file.read(_LENGTH), "big")
            index = record.to_bytes(_LENGTH, "big")
            try:
                plain = self._aead.decrypt(index.rjust(12, b"\0"), self._file.read(size), index)
            except Exception as exc:  # cryptography's InvalidTag: the spool file was changed under us
                raise ValueError(f"spool record {record}: expected it as written, its authentication failed") \
                    from exc
            position = self._file.tell()
            yield pa.ipc.open_stream(plain).read_all()
            self._file.seek(position)  # a caller may read another spool's file between two records
