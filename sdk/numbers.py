"""The data owner's table reader for a model whose card takes numbers: a CSV or Parquet file -> the table it reads.

Every row and field is checked against the card's contract before anything is uploaded (the enclave checks
again, `enclave.preprocess`): the id column and each column the contract names are there; each id is a
non-empty, unique value; each input value is a finite number that fits the input's dtype (float32 or float64);
each CSV row has the header's width. A refusal names the file, the row (data rows counted from 1; a CSV's
line too), the column, what was expected and what was found. Only the id and the contract's columns are
uploaded: any other column of the file stays on the owner's machine.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sdk.paths import not_readable
from wire.contract import Contract

_SHOWN_REFUSALS = 10  # in the exception's message
_KEPT_REFUSALS = 1000  # in a report: the rest are counted, not kept (a broken file may have a million)
_PARQUET_MAGIC = b"PAR1"
_RANGE = {"float32": float(np.finfo(np.float32).max), "float64": float(np.finfo(np.float64).max)}


class NumbersInputError(ValueError):
    """The owner's table does not fit the model's contract; the message names each refused field."""


@dataclass(frozen=True)
class NumbersReport:
    """One input file checked: its data rows, the columns the model reads, and the refusals (file, row, column,
    expected, found; the first `_KEPT_REFUSALS`, `refused` counts them all)."""

    file: str
    rows: int
    columns: tuple[str, ...]
    errors: tuple[str, ...]
    refused: int


def numbers_columns(contract: Contract, model: str) -> dict[str, str]:
    """{column: dtype} the contract's numbers inputs read, in order; NumbersInputError when it takes other inputs."""
    kinds = [i.kind for i in contract.inputs]
    if any(kind != "numbers" for kind in kinds):
        raise NumbersInputError(f"model {model}: expected a model that takes numeric columns, its contract takes "
                                f"{kinds}; choose a tabular model (`cscore models --task tabular-classification` "
                                "or `--task regression`)")
    wanted: dict[str, str] = {}
    for spec in contract.inputs:
        for column in spec.columns:  # a column read by float32 and float64 inputs must fit both: float32's range
            wanted[column] = "float32" if "float32" in (spec.dtype, wanted.get(column)) else spec.dtype
    return wanted


def check_numbers(path: Path, contract: Contract, model: str = "the model") -> NumbersReport:
    """Read and check `path` (CSV, or Parquet by its magic bytes) as a submit would; uploads nothing.

    Raises NumbersInputError when the file cannot be read at all (absent, neither CSV nor Parquet, no header,
    a column missing); every refused field is in the report.
    """
    return _load(Path(path), contract, model)[1]


def read_numbers(path: Path, contract: Contract, model: str = "the model") -> pa.Table:
    """The table to submit: the contract's id column (as text) and its numeric columns (float64).

    Raises NumbersInputError naming every refused field (the first ten, and how many in all) before any upload.
    """
    table, report = _load(Path(path), contract, model)
    if report.refused:
        shown = "\n  ".join(report.errors[:_SHOWN_REFUSALS])
        more = f"\n  ... and {report.refused - _SHOWN_REFUSALS} more" if report.refused > _SHOWN_REFUSALS else ""
        raise NumbersInputError(f"{path}: {report.refused} field(s) refused for {model}; nothing was uploaded:"
                                f"\n  {shown}{more}")
    if report.rows == 0:
        raise NumbersInputError(f"{path}: expected at least one row, found only the header")
    return table


class _Checker:
    """Collects the converted columns and the refusals of one file."""

    def __init__(self, name: str, id_column: str, wanted: dict[str, str], model: str, *, text: bool) -> None:
        self.name, self.id_column, self.wanted, self.model = name, id_column, wanted, model
        self.text = text  # CSV: every field is text, parsed; Parquet: typed values, a string is no number
        self.ids: list[str] = []
        self.first: dict[str, int] = {}
        self.values: dict[str, list[float]] = {c: [] for c in wanted}
        self.errors: list[str] = []
        self.refused = 0

    def refuse(self, message: str) -> None:
        self.refused += 1
        if len(self.errors) < _KEPT_REFUSALS:
            self.errors.append(message)

    def row(self, where: str, row: int, fields: dict[str, object]) -> None:
        """One data row: its id and each wanted column's value (a CSV's text or a Parquet value)."""
        ident = fields[self.id_column]
        text = "" if ident is None else str(ident)
        if not text.strip():
            self.refuse(f"{where}, column {self.id_column!r}: expected a non-empty id, found {_shown(ident)}")
        elif text in self.first:
            self.refuse(f"{where}, column {self.id_column!r}: expected a unique id, found {text!r} again (first "
                        f"at row {self.first[text]})")
        else:
            self.first[text] = row
        self.ids.append(text)
        for column, dtype in self.wanted.items():
            value, problem = _number(fields[column], dtype, parse=self.text)
            if problem:
                self.refuse(f"{where}, column {column!r}: expected {problem}, found {_shown(fields[column])}")
            self.values[column].append(value)

    def result(self, rows: int) -> tuple[pa.Table, NumbersReport]:
        table = pa.table({self.id_column: pa.array(self.ids, pa.string()),
                          **{c: pa.array(v, pa.float64()) for c, v in self.values.items()}})
        return table, NumbersReport(self.name, rows, tuple(self.wanted), tuple(self.errors), self.refused)


def _load(path: Path, contract: Contract, model: str) -> tuple[pa.Table, NumbersReport]:
    wanted = numbers_columns(contract, model)
    if not path.is_file():
        raise NumbersInputError(not_readable(path, f"a CSV or Parquet file of the columns {model} reads "
                                                   f"({[contract.id_column, *wanted]})"))
    with path.open("rb") as f:
        parquet = f.read(len(_PARQUET_MAGIC)) == _PARQUET_MAGIC
    checker = _Checker(path.name, contract.id_column, wanted, model, text=not parquet)
    rows = _parquet_rows(path, checker) if parquet else _csv_rows(path, checker)
    return checker.result(rows)


def _header(path: Path, names: Sequence[str], checker: _Checker) -> None:
    """Every column the model reads is present (the id first in the message), each name once."""
    needed = [checker.id_column, *checker.wanted]
    missing = [c for c in needed if c not in names]
    if missing:
        raise NumbersInputError(f"{path}: model {checker.model} reads columns {needed}, column {missing[0]!r} is "
                                f"missing (found {list(names)})")
    repeated = sorted({c for c in needed if list(names).count(c) > 1})
    if repeated:
        raise NumbersInputError(f"{path}: expected each column once, found {repeated[0]!r} "
                                f"{list(names).count(repeated[0])} times in the header")


def _csv_rows(path: Path, checker: _Checker) -> int:
    """Check a CSV file (header row first, UTF-8, an optional BOM); returns its data rows."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise NumbersInputError(f"{path}: expected a header row naming the columns, found an empty file")
            _header(path, header, checker)
            at = {c: header.index(c) for c in [checker.id_column, *checker.wanted]}
            rows = 0
            for rows, fields in enumerate(_records(reader), start=1):
                where = f"{checker.name} row {rows} (line {reader.line_num})"
                if len(fields) != len(header):
                    checker.refuse(f"{where}: expected {len(header)} fields (the header's), found {len(fields)}")
                    continue
                checker.row(where, rows, {c: fields[i] for c, i in at.items()})
            return rows
    except UnicodeDecodeError as exc:
        raise NumbersInputError(f"{path}: expected UTF-8 text (CSV) or a Parquet file, found bytes that are "
                                f"neither at offset {exc.start}") from None
    except csv.Error as exc:
        raise NumbersInputError(f"{path}: expected CSV, the reader stopped: {exc}") from None


def _records(reader: Iterator[list[str]]) -> Iterator[list[str]]:
    """The data rows, blank lines skipped (a trailing newline is no row)."""
    return (fields for fields in reader if fields)


def _parquet_rows(path: Path, checker: _Checker) -> int:
    """Check a Parquet file, column types included (a string column is refused value by value)."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise NumbersInputError(f"{path}: expected a Parquet file, pyarrow could not open it: {exc}") from None
    _header(path, parquet.schema_arrow.names, checker)
    needed = [checker.id_column, *checker.wanted]
    rows = 0
    for batch in parquet.iter_batches(columns=needed):
        columns = {c: batch.column(c).to_pylist() for c in needed}
        for i in range(batch.num_rows):
            rows += 1
            checker.row(f"{checker.name} row {rows}", rows, {c: columns[c][i] for c in needed})
    return rows


def _number(value: object, dtype: str, *, parse: bool) -> tuple[float, str | None]:
    """(the value as a float, None) or (nan, what was expected instead); `parse`: a string is a CSV field."""
    if parse and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return math.nan, "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan, "a number"
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf if value > 0 else -math.inf
    if not math.isfinite(number) and not isinstance(value, int):
        return math.nan, "a finite number (the model's contract refuses NaN and infinities)"
    if not math.isfinite(number) or abs(number) > _RANGE[dtype]:
        return math.nan, f"a number within {dtype}'s range (the model reads {dtype}, at most {_RANGE[dtype]:.7g})"
    return number, None


def _shown(value: object) -> str:
    """A found value as the owner would recognise it in their file."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return "an empty field" if not value.strip() else repr(value)
    return f"{value!r} ({type(value).__name__})"
