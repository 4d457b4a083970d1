"""The owner's decrypted results as a file: Parquet, CSV or JSON lines, chosen by name or by `--format`.

Never the wrong format silently: a file name whose extension says one format while `--format` says another,
or an extension this module does not know without `--format`, is refused before anything is fetched, with
what to do. The file appears whole or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa

FORMATS = {"parquet": (".parquet", ".pq"), "csv": (".csv",), "jsonl": (".jsonl", ".ndjson")}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")


class OutputFormatError(ValueError):
    """The output file's name and the format asked for disagree, or neither says a format."""


def output_format(path: Path, chosen: str | None) -> str:
    """The format to write `path` in: `chosen` ("parquet", "csv" or "jsonl") or the one its extension names.

    Raises OutputFormatError, saying what to do, when the extension names another format than `chosen`, when
    there is neither a known extension nor `chosen`, or for a compressed name (.gz, ...), which is not written.
    """
    suffix = path.suffix.lower()
    if suffix in _COMPRESSED:
        raise OutputFormatError(f"--out {path}: compressed output ({suffix}) is not written; write "
                                f"{path.with_suffix('')} and compress it afterwards")
    named = next((name for name, suffixes in FORMATS.items() if suffix in suffixes), None)
    if chosen is not None and chosen not in FORMATS:
        raise OutputFormatError(f"--format: expected one of {', '.join(FORMATS)}, got {chosen!r}")
    if named is not None and chosen is not None and named != chosen:
        raise OutputFormatError(f"--out {path} names {named} ({suffix}) but --format says {chosen}: name the file "
                                f"{path.with_suffix(FORMATS[chosen][0]).name}, or drop --format to write {named}")
    if named is None and chosen is None:
        known = ", ".join(s for suffixes in FORMATS.values() for s in suffixes)
        raise OutputFormatError(f"--out {path}: the extension {suffix or '(none)'} names no format; end the name "
                                f"in {known}, or add --format {'|'.join(FORMATS)}")
    return chosen or str(named)


def write_results_file(tables: Iterable[pa.Table | pa.RecordBatch], schema: pa.Schema, path: Path, fmt: str) -> None:
    """Write `tables` (each of `schema`, one at a time: memory holds one) to `path` as `fmt` (see FORMATS):
    Parquet keeps the types; CSV has a header row, dates in ISO 8601 UTC and empty fields for nulls; JSON lines
    hold one object per row, dates as ISO 8601 strings, nulls as null. Raises OutputFormatError for an unknown
    `fmt` or list columns in CSV, OSError when `path` cannot be written; a failure leaves no file at `path`."""
    if fmt not in FORMATS:
        raise OutputFormatError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    nested = [f.name for f in schema if pa.types.is_nested(f.type)]
    if fmt == "csv" and nested:
        raise OutputFormatError(f"CSV: column {nested[0]!r} holds lists ({schema.field(nested[0]).type}), "
                                "which CSV cannot hold; write .parquet or .jsonl instead")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as sink:
            _WRITERS[fmt](tables, schema, sink)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def _parquet(tables: Iterable[pa.Table | pa.RecordBatch], schema: pa.Schema, sink: BinaryIO) -> None:
    import pyarrow.parquet as pq

    with pq.ParquetWriter(sink, schema) as writer:
        for table in tables:
            writer.write(table)


def _csv(tables: Iterable[pa.Table | pa.RecordBatch], schema: pa.Schema, sink: BinaryIO) -> None:
    import pyarrow.csv as pacsv

    with pacsv.CSVWriter(sink, schema) as writer:
        for table in tables:
            writer.write(table)


def _jsonl(tables: Iterable[pa.Table | pa.RecordBatch], schema: pa.Schema, sink: BinaryIO) -> None:
    for table in tables:
        sink.write("".join(json.dumps(row, ensure_ascii=False, default=_json_value) + "\n"
                           for row in table.to_pylist()).encode("utf-8"))


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"results: cannot write {type(value).__name__} as JSON")


_WRITERS = {"parquet": _parquet, "csv": _csv, "jsonl": _jsonl}
