"""The owner's own record of what it submitted: each email's From, Subject and Date, to join results back.

Kept on the owner's machine only, at `<owner home>/journal/<tenant>/<batch>.parquet`, and never uploaded: the
platform and the workers never see a sender or a date (the workers score the subject and body only). It is
PME Parquet under the batch's own footer and emails keys at the owner's broker, like the inputs, so the file
alone, copied off the machine, holds no plaintext. Its encrypted footer names the tenant and the batch: a
journal renamed to stand for another batch is refused.
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType

import pyarrow as pa

from enclave.pme import EncryptedParquet, KeyWrapper, PmeKeys

HEADER_COLUMNS = ("from", "subject", "date")  # beside message_id in the spool; the journal's date is a timestamp
SCHEMA = pa.schema([("message_id", pa.string()), ("from", pa.string()), ("subject", pa.string()),
                    ("date", pa.timestamp("us", tz="UTC"))])
BINDING_KEY = "cscore.journal"  # footer metadata: "<tenant>/<batch>"


class JournalError(ValueError):
    """The journal on this machine does not belong to the batch it is read for."""


def journal_path(home: Path, tenant: str, batch_id: str) -> Path:
    """Where the owner whose home is `home` keeps the journal of `tenant`'s batch `batch_id`."""
    return home / "journal" / tenant / f"{batch_id}.parquet"


def parse_date(text: str) -> datetime | None:
    """A Date header (RFC 5322, or ISO 8601 as JSON and Parquet inputs may hold it) in UTC; None when absent
    or unreadable. A date without a zone is taken as UTC."""
    if not text.strip():
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class JournalWriter:
    """Writes a batch's journal table by table (message_id, from, subject, date as written), then puts it in
    place on `close()`; `abort()` (or leaving a `with` block by an exception) leaves nothing behind."""

    def __init__(self, path: Path, wrapper: KeyWrapper, *, footer_key: str, column_key: str, tenant: str,
                 batch_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._path, self._partial = path, path.with_name(path.name + ".partial")
        self._keys = PmeKeys(wrapper)
        self._writer = self._keys.writer(str(self._partial), SCHEMA, footer_key=footer_key, column_key=column_key,
                                         metadata={BINDING_KEY: f"{tenant}/{batch_id}"})

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, table: pa.Table) -> None:
        """Append the rows of `table` (columns message_id and HEADER_COLUMNS, strings)."""
        dates = [parse_date(d or "") for d in table.column("date").to_pylist()]
        self._writer.write_table(pa.table([table.column("message_id"), table.column("from"), table.column("subject"),
                                           pa.array(dates, SCHEMA.field("date").type)], schema=SCHEMA))

    def close(self) -> None:
        self._writer.close()
        self._keys.close()
        os.replace(self._partial, self._path)

    def abort(self) -> None:
        self._writer.close()
        self._keys.close()
        self._partial.unlink(missing_ok=True)


def open_journal(path: Path, keys: KeyWrapper | PmeKeys, *, tenant: str, batch_id: str) -> EncryptedParquet:
    """The journal at `path`, opened (columns as SCHEMA; close it when done); raises JournalError when its footer
    names another batch, and pyarrow's errors when it is not PME Parquet under the batch's keys."""
    journal = EncryptedParquet(pa.OSFile(str(path)), keys)
    bound = journal.key_value_metadata.get(BINDING_KEY.encode(), b"").decode()
    if bound != f"{tenant}/{batch_id}":
        journal.close()
        raise JournalError(f"{path}: expected the journal of {tenant}/{batch_id}, it is that of {bound or '?'}")
    return journal


def read_journal(path: Path, keys: KeyWrapper | PmeKeys, *, tenant: str, batch_id: str) -> pa.Table:
    """`open_journal`'s whole table."""
    with open_journal(path, keys, tenant=tenant, batch_id=batch_id) as journal:
        return journal.read()


def join_headers(results: pa.Table, journal: pa.Table | None) -> pa.Table:
    """`results` (message_id first) with from, subject and date after message_id, matched by message_id (nulls
    where the journal has no row, or for every row without a journal); the rows and their order are the
    results'."""
    ids = results.column(0).to_pylist()
    by_id: dict[str, int] = {}
    if journal is not None:
        by_id = {i: n for n, i in enumerate(journal.column("message_id").to_pylist())}
    rows = pa.array([by_id.get(i) for i in ids], pa.int64())
    headers = [journal.column(name).take(rows) if journal is not None else pa.nulls(len(ids), SCHEMA.field(name).type)
               for name in HEADER_COLUMNS]
    return _with(results, headers)


def _with(results: pa.Table, headers: list[pa.Array | pa.ChunkedArray]) -> pa.Table:
    rest = [n for n in results.column_names[1:] if n not in HEADER_COLUMNS]
    return pa.table([results.column(0), *headers, *(results.column(n) for n in rest)],
                    names=[results.column_names[0], *HEADER_COLUMNS, *rest])


class HeaderJoin:
    """`join_headers` for a results file read batch by batch, in bounded memory when the results come in the
    journal's order (submit writes the journal in input order, and results follow it shard by shard): each batch
    is matched with the journal's next rows, their ids compared. At the first batch that does not match, the whole
    journal is read once and every later batch is joined by id."""

    def __init__(self, journal: EncryptedParquet | None) -> None:
        self._journal = journal
        self._groups = iter(range(journal.num_row_groups)) if journal is not None else iter(())
        self._ahead: pa.Table | None = None  # journal rows read, not yet matched
        self._whole: pa.Table | None = None  # the whole journal, once the orders differ

    def schema(self, results: pa.Schema) -> pa.Schema:
        """The joined batches' schema, for `results`' schema (message_id first)."""
        rest = [f for f in results][1:]
        return pa.schema([results.field(0), *(SCHEMA.field(n) for n in HEADER_COLUMNS),
                          *(f for f in rest if f.name not in HEADER_COLUMNS)])

    def __call__(self, results: pa.RecordBatch | pa.Table) -> pa.Table:
        table = pa.Table.from_batches([results]) if isinstance(results, pa.RecordBatch) else results
        if self._journal is None:
            return join_headers(table, None)
        if self._whole is None:
            head = self._next_rows(table.num_rows)
            if head.num_rows == table.num_rows and head.column("message_id").equals(table.column(0)):
                return _with(table, [head.column(n) for n in HEADER_COLUMNS])
            self._whole = self._journal.read()
        return join_headers(table, self._whole)

    def _next_rows(self, count: int) -> pa.Table:
        assert self._journal is not None
        held = [self._ahead] if self._ahead is not None else []
        rows = sum(t.num_rows for t in held)
        for group in self._groups:
            if rows >= count:
                self._groups = itertools.chain([group], self._groups)
                break
            held.append(self._journal.read_row_groups([group]))
            rows += held[-1].num_rows
        whole = pa.concat_tables(held) if held else SCHEMA.empty_table()
        self._ahead = whole.slice(count)
        return whole.slice(0, count)
