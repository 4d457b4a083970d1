"""A shard's input read by byte ranges: the footer and the shard's own column chunks, never the whole file.

The platform serves the bytes (S3 `Range` GETs); nothing here trusts them: Parquet Modular Encryption
authenticates the footer and every page (AES-GCM), and the worker checks the footer's binding to the batch
and the object (`enclave.worker`). Imports only the standard library and pyarrow (measured TCB).
"""

from __future__ import annotations

import io
import threading
from typing import Protocol

import pyarrow as pa

# One request at open: the 8-byte trailer and the whole footer of files up to ~1,000 row groups (an input
# footer is ~0.9 KB per row group; sdk.owner.PART_ROWS makes 50). A request costs more than a megabyte.
TAIL_BYTES = 1024 * 1024


class RangeSource(Protocol):
    """An object read by byte ranges (S3 `Range` GETs in the worker, memory in tests)."""

    def tail(self, length: int) -> tuple[bytes, int]:
        """The last `length` bytes (fewer if the object is shorter) and the object's size in bytes."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer only at the end of the object)."""
        ...

    def read_all(self) -> bytes:
        """Every byte (only the plaintext baseline, which hashes the whole file)."""
        ...


class BytesSource:
    """A RangeSource over bytes in memory; counts the bytes and requests served (tests, benchmarks)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.bytes_read = 0
        self.requests = 0

    def tail(self, length: int) -> tuple[bytes, int]:
        chunk = self._data[max(0, len(self._data) - length):]
        self._count(len(chunk))
        return chunk, len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        chunk = self._data[offset:offset + length]
        self._count(len(chunk))
        return chunk

    def read_all(self) -> bytes:
        self._count(len(self._data))
        return self._data

    def _count(self, n: int) -> None:
        self.bytes_read += n
        self.requests += 1


class RangedFile(io.RawIOBase):
    """A read-only, seekable file over a RangeSource, for `pyarrow.parquet.ParquetFile`.

    Opening fetches the object's tail (size and footer in one request); a footer longer than that is completed
    by one more request and kept; every other read is one range request of exactly what pyarrow asked for (a
    column chunk).
    """

    def __init__(self, source: RangeSource, tail_bytes: int = TAIL_BYTES) -> None:
        super().__init__()
        tail, self._size = source.tail(tail_bytes)
        self._tail_start = self._size - len(tail)
        self._tail = tail
        self._source = source
        self._position = 0
        self._lock = threading.Lock()  # pyarrow may read from more than one thread

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"seek: expected a position >= 0, got {base + offset}")
        self._position = base + offset
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        with self._lock:
            start = self._position
            end = self._size if size is None or size < 0 else min(self._size, start + size)
            data = self._range(start, end)
            self._position = start + len(data)
            return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        memoryview(buffer)[:len(data)] = data
        return len(data)

    def _range(self, start: int, end: int) -> bytes:
        if start >= end:
            return b""
        if end <= self._tail_start:
            return self._source.read(start, end - start)
        if start < self._tail_start:  # a footer longer than the tail: fetch what is missing, keep it cached
            self._tail = self._source.read(start, self._tail_start - start) + self._tail
            self._tail_start = start
        return self._tail[start - self._tail_start:end - self._tail_start]

    def size(self) -> int:
        return self._size


def open_ranged(source: RangeSource) -> pa.PythonFile:
    """The pyarrow file to hand to ParquetFile."""
    return pa.PythonFile(RangedFile(source), mode="r")
