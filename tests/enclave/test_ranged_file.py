"""`RangedFile` is a file over the object's bytes: every read, seek and tell answers as `io.BytesIO` over the same
bytes, with one request at open (the tail) and one range request per read outside it, counted exactly."""

from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from enclave.ranged import BytesSource, RangedFile, open_ranged

DATA = bytes(range(256)) * 40  # 10,240 bytes, each offset's byte distinct from its neighbours'
TAIL = 1_000


def _opened(data: bytes = DATA, tail: int = TAIL) -> tuple[RangedFile, BytesSource]:
    source = BytesSource(data)
    return RangedFile(source, tail_bytes=tail), source


def test_reads_seeks_and_tells_answer_as_the_bytes_themselves() -> None:
    ranged, _ = _opened()
    plain = io.BytesIO(DATA)
    assert (ranged.readable(), ranged.seekable(), ranged.size(), ranged.tell()) == (True, True, len(DATA), 0)
    # (offset, whence) seeks; (size, None) reads
    steps: list[tuple[int | None, int | None]] = [
        (5, None), (0, None), (100, io.SEEK_SET), (50, None), (20, io.SEEK_CUR), (7, None), (-10, io.SEEK_CUR),
        (3, None), (-1_500, io.SEEK_END), (600, None), (2_000, None), (9_000, io.SEEK_SET), (None, None),
        (-30, io.SEEK_END), (-1, None), (10, None), (len(DATA) + 5, io.SEEK_SET), (4, None)]
    for number, whence in steps:
        if whence is not None:
            assert number is not None
            assert ranged.seek(number, whence) == plain.seek(number, whence), (number, whence)
        else:
            assert ranged.read(number) == plain.read(number), number
        assert ranged.tell() == plain.tell(), (number, whence)


def test_readinto_fills_the_buffer_with_the_next_bytes_and_counts_them() -> None:
    ranged, _ = _opened()
    ranged.seek(len(DATA) - 6)
    buffer = bytearray(b"\xff" * 10)
    assert ranged.readinto(buffer) == 6  # only 6 bytes are left: the rest of the buffer is untouched
    assert buffer == bytearray(DATA[-6:] + b"\xff" * 4) and ranged.tell() == len(DATA)
    ranged.seek(3)
    view = memoryview(bytearray(4))
    assert ranged.readinto(view) == 4 and view.tobytes() == DATA[3:7]


@pytest.mark.parametrize(("offset", "whence", "position"),
                         [(-1, io.SEEK_SET, -1), (-11, io.SEEK_CUR, -1), (-len(DATA) - 2, io.SEEK_END, -2)])
def test_a_seek_before_the_start_is_refused_naming_the_position(offset: int, whence: int, position: int) -> None:
    ranged, _ = _opened()
    ranged.seek(10)
    with pytest.raises(ValueError) as refused:
        ranged.seek(offset, whence)
    assert str(refused.value) == f"seek: expected a position >= 0, got {position}"
    assert ranged.tell() == 10
    assert ranged.seek(-len(DATA), io.SEEK_END) == 0  # the first byte itself is a position


def test_one_request_at_open_then_one_per_read_before_the_tail_and_none_inside_it() -> None:
    ranged, source = _opened()
    assert (source.requests, source.bytes_read) == (1, TAIL)  # the object's last TAIL bytes and its size
    ranged.seek(len(DATA) - TAIL)
    assert ranged.read(TAIL) == DATA[-TAIL:] and (source.requests, source.bytes_read) == (1, TAIL)
    ranged.seek(200)
    assert ranged.read(0) == b"" and (source.requests, source.bytes_read) == (1, TAIL)  # nothing asked: no request
    assert ranged.read(300) == DATA[200:500] and (source.requests, source.bytes_read) == (2, TAIL + 300)
    ranged.seek(len(DATA) - TAIL - 40)  # a read ending where the tail starts asks for it, caches nothing
    assert ranged.read(40) == DATA[-TAIL - 40:-TAIL] and (source.requests, source.bytes_read) == (3, TAIL + 340)
    ranged.seek(len(DATA) - TAIL - 40)
    assert ranged.read(40) == DATA[-TAIL - 40:-TAIL] and (source.requests, source.bytes_read) == (4, TAIL + 380)


def test_a_footer_longer_than_the_tail_is_fetched_once_and_kept() -> None:
    ranged, source = _opened()
    start = len(DATA) - TAIL - 250
    ranged.seek(start)
    assert ranged.read(260) == DATA[start:start + 260]  # 250 bytes before the tail, 10 inside it
    assert (source.requests, source.bytes_read) == (2, TAIL + 250)  # only what was missing
    ranged.seek(start)
    assert ranged.read(None) == DATA[start:] and (source.requests, source.bytes_read) == (2, TAIL + 250)
    ranged.seek(len(DATA) - TAIL)  # the tail's own first byte: nothing missing, nothing asked
    assert ranged.read(1) == DATA[-TAIL:-TAIL + 1] and source.requests == 2


def test_an_object_shorter_than_the_tail_is_read_whole_at_open() -> None:
    ranged, source = _opened(DATA[:700])
    assert (source.requests, source.bytes_read, ranged.size()) == (1, 700, 700)
    assert ranged.read() == DATA[:700] and (source.requests, source.bytes_read) == (1, 700)


def test_opening_asks_for_the_last_mebibyte_in_one_request() -> None:
    data = DATA * 250  # 2.4 MiB
    source = BytesSource(data)
    ranged = RangedFile(source)
    assert (source.requests, source.bytes_read) == (1, 1024 * 1024)
    assert ranged.read(3) == data[:3] and (source.requests, source.bytes_read) == (2, 1024 * 1024 + 3)


def test_parquet_read_through_a_short_tail_is_the_files_own_table_by_ranges() -> None:
    """A footer longer than the tail: what pyarrow asks for the footer (its last 64 KiB) completes the tail once;
    then one row group's chunks, nothing of the others."""
    texts = [hashlib.sha256(b"%d" % i).hexdigest() * 4 for i in range(5_000)]  # incompressible: chunks of ~130 KB
    table = pa.table({"id": list(range(5_000)), "text": texts})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=500)  # 10 row groups: a footer of a few KB
    data = sink.getvalue()
    footer = int.from_bytes(data[-8:-4], "little") + 8
    source = BytesSource(data)
    parquet = pq.ParquetFile(pa.PythonFile(RangedFile(source, tail_bytes=64), mode="r"))
    assert footer > 64 and parquet.metadata.num_row_groups == 10
    assert parquet.read_row_groups([3]) == table.slice(1_500, 500)
    chunks = sum(parquet.metadata.row_group(3).column(c).total_compressed_size for c in (0, 1))
    assert source.bytes_read <= max(footer, 64 * 1024) + chunks < len(data) / 2, (source.bytes_read, footer, chunks)


def test_open_ranged_is_a_read_only_pyarrow_file_over_the_object() -> None:
    source = BytesSource(DATA)
    opened = open_ranged(source)
    assert (opened.mode, opened.size(), opened.readable(), opened.writable()) == ("rb", len(DATA), True, False)
    assert opened.read_at(4, 600) == DATA[600:604] and (source.requests, source.bytes_read) == (1, len(DATA))


def test_the_whole_object_is_one_request_of_every_byte() -> None:
    source = BytesSource(DATA)
    assert source.read_all() == DATA and (source.requests, source.bytes_read) == (1, len(DATA))
    assert source.read_all() == DATA and (source.requests, source.bytes_read) == (2, 2 * len(DATA))
