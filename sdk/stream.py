"""`cscore owner stream`: watch a maildir or a drop folder, submit micro-batches, write each one's verified results.

Exactly once across restarts (kill -9 included), through a SQLite journal in the owner's home. Each step is one
transaction recorded after the action it stands for, and every action is safe to redo:

    file complete  -> its emails 'queued' (texts, From, Subject, Date and flags kept in the journal until their
                      results are written)
    cut            -> a batch with a deterministic id (`s-<stream>-<n>`) owns them
    submitted      -> its signed manifest is in the bucket (uploaded last by `submit_batch`, after the batch's own
                      encrypted header journal, `sdk.journal`, for `cscore owner results` to join back)
    written        -> its verified results are in OUT/<batch>.parquet (written whole, then renamed)

On restart a batch still 'cut' is submitted again under the same id unless its own signed manifest naming it is
already there (keys and grants are idempotent by id; parts are overwritten before the manifest exists); a batch
still 'submitted' is fetched, verified and its file rewritten whole. A file is read once: maildir entries only in
new/ and cur/ (complete by maildir's tmp/ -> new/ rename), drop-folder files once unchanged for `settle_s` and not
named as in-progress.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import sqlite3
import statistics
import time
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sdk.emails import Email, EmailInputError, check_emails, read_emails
from sdk.models import ModelListing
from sdk.owner import submit_batch
from sdk.party import Party
from sdk.platform_text import advice, shown
from sdk.results import ResultVerificationError, VerifiedResults, owner_manifest
from sdk.storage import ObjectStore

# Names that say "still being written": browsers, rsync, curl and most copy tools write these, then rename.
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".download")
Event = dict[str, Any]


class StreamError(RuntimeError):
    """The stream cannot run as asked (source missing, journal held by another process, ...)."""


@dataclass(frozen=True)
class Arrival:
    """A complete input file: `key` identifies it in the journal (maildir: its unique name, without flags)."""

    key: str
    path: Path
    size: int
    mtime_ns: int


@dataclass
class StreamOptions:
    """How batches are cut and how long to wait; seconds throughout."""

    batch_size: int = 500  # emails per batch at most
    max_age_s: float = 5.0  # a batch is cut once its oldest email has waited this long
    settle_s: float = 2.0  # drop folders: a file unchanged this long is complete
    poll_s: float = 0.5
    max_in_flight: int = 4  # batches submitted and not yet written (the DAG runs 4 at a time)
    wait_s: float = 900.0  # --once: how long to wait for the last batches
    max_read_per_pass: int = 2000  # emails read per pass, so batches flow while a large backlog is read


def is_maildir(source: Path) -> bool:
    return (source / "new").is_dir() and (source / "cur").is_dir()


def scan(source: Path, *, settle_s: float, now: float | None = None,
         read: Container[str] = ()) -> tuple[list[Arrival], int]:
    """(complete files, files not yet settled), oldest first. Maildir: every entry of new/ and cur/ (never tmp/)
    but those whose key is in `read` (a maildir file never changes: a stream's pass then costs the new mail, not
    a stat of every file kept); a drop folder: files (recursively) not hidden, not named in progress, unchanged
    for `settle_s`."""
    now = time.time() if now is None else now
    found: list[Arrival] = []
    waiting = 0
    if is_maildir(source):
        for sub in ("cur", "new"):
            for entry in _entries(source / sub):
                key = entry.name.split(":", 1)[0]
                if not entry.name.startswith(".") and key not in read:
                    stat = _stat(Path(entry.path))
                    if stat is not None:
                        found.append(Arrival(key, Path(entry.path), stat.st_size, stat.st_mtime_ns))
    else:
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source)
            if any(p.startswith(".") for p in rel.parts) or path.name.lower().endswith(IN_PROGRESS_SUFFIXES):
                continue
            stat = _stat(path)
            if stat is None or not path.is_file():
                continue
            if now - stat.st_mtime_ns / 1e9 < settle_s:
                waiting += 1
                continue
            found.append(Arrival(rel.as_posix(), path, stat.st_size, stat.st_mtime_ns))
    found.sort(key=lambda a: (a.mtime_ns, a.key))
    return found, waiting


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return [e for e in os.scandir(folder) if e.is_file()]
    except FileNotFoundError:
        return []


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:  # moved (maildir new/ -> cur/) or deleted since listed: seen again next pass
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (key TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, state TEXT NOT NULL,
                                  emails INTEGER NOT NULL, error TEXT, seen_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL UNIQUE,
                                     file_key TEXT NOT NULL, text TEXT, arrived_at REAL NOT NULL, batch_id TEXT);
CREATE INDEX IF NOT EXISTS messages_batch ON messages (batch_id);
CREATE TABLE IF NOT EXISTS batches (n INTEGER PRIMARY KEY, batch_id TEXT NOT NULL UNIQUE, emails INTEGER NOT NULL,
                                    state TEXT NOT NULL, cut_at REAL NOT NULL, submitted_at REAL, done_at REAL,
                                    reason TEXT, output TEXT);
"""


# Kept with each queued email until its results are written (Email's sender, subject, date; flags as JSON).
_HELD_COLUMNS = ("sender", "subject", "date", "flags")


class Journal:
    """The stream's durable record (SQLite, WAL, fsync on commit); one process at a time (an flock beside it)."""

    def __init__(self, path: Path, *, source: Path, tenant: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = (path.parent / (path.name + ".lock")).open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StreamError(f"{path}: another `cscore owner stream` holds this journal; stop it first") from None
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only a killed process
        self.db.executescript(_SCHEMA)
        with self.tx():
            self._add_held_columns()
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('stream_id', ?)", (secrets.token_hex(4),))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('source', ?)", (str(source.resolve()),))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('tenant', ?)", (tenant,))
        for name, wanted in (("source", str(source.resolve())), ("tenant", tenant)):
            held = self.meta(name)
            if held != wanted:
                self.close()
                raise StreamError(f"{path}: this journal streams {name} {held!r}, not {wanted!r}; "
                                  "give another --journal for another source or tenant")

    def _add_held_columns(self) -> None:
        # A journal from before they were kept gains them (its queued emails then have none).
        present = {row[1] for row in self.db.execute("PRAGMA table_info(messages)")}
        for column in _HELD_COLUMNS:
            if column not in present:
                self.db.execute(f"ALTER TABLE messages ADD COLUMN {column} TEXT")

    def meta(self, key: str) -> str:
        return str(self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
        self._lock.close()


def default_journal(owner: Party, source: Path, tenant: str) -> Path:
    """`<owner home>/streams/<tenant>-<digest of the source's path>.sqlite`."""
    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    return owner.home / "streams" / f"{tenant}-{digest}.sqlite"


@dataclass
class Stream:
    """One source streamed into one output folder. `verify(batch_id)` returns the batch's verified results (the
    owner's `fetch_results` with its trust anchors); `emit` receives every event (no email text, no score)."""

    source: Path
    out: Path
    journal: Journal
    model: ModelListing
    tenant: str
    owner: Party
    store: ObjectStore
    measurements: list[str]
    verify: Callable[[str], VerifiedResults]
    emit: Callable[[Event], None]
    options: StreamOptions = field(default_factory=StreamOptions)
    problems: int = 0  # refused files and failed batches seen by this process

    def __post_init__(self) -> None:
        if not self.source.is_dir():
            raise StreamError(f"{self.source}: expected a maildir (new/ and cur/) or a drop folder, "
                              "found no such folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self._stream_id = self.journal.meta("stream_id")
        self._known = {k: (s, m, st) for k, s, m, st in
                       self.journal.db.execute("SELECT key, size, mtime_ns, state FROM files")}

    # --- one pass -------------------------------------------------------------------------------------------

    def resume(self) -> None:
        """Say what the journal holds from an earlier run (kill -9 included) before the first pass."""
        counts = dict(self.journal.db.execute("SELECT state, count(*) FROM batches GROUP BY state").fetchall())
        queued = self._queued_count()
        if counts or queued:
            self.emit({"event": "resumed", "journal": str(self.journal.path), "queued": queued,
                       "batches": counts})

    def step(self, *, final: bool = False) -> int:
        """Read new files, cut, submit and collect once; returns the files still settling."""
        waiting = self.read_new()
        self.cut(force=final and waiting == 0)
        self.submit_cut()
        self.collect()
        return waiting

    def read_new(self) -> int:
        """Read the complete files not read yet, in one transaction (one fsync a pass, not one a file); their
        events follow the commit. Returns the files still settling."""
        read, known = 0, dict(self._known)
        arrivals, waiting = scan(self.source, settle_s=self.options.settle_s,
                                 read={key for key, (_, _, state) in known.items() if state != "refused"})
        events: list[Event] = []
        with self.journal.tx():
            for a in arrivals:
                seen = known.get(a.key)
                if seen is not None and (seen[2] != "refused" or seen[:2] == (a.size, a.mtime_ns)):
                    continue  # read once; a refused file is read again only once it changed
                read += self._read_file(a, known, events)
                if read >= self.options.max_read_per_pass:
                    break
        self._known = known
        for event in events:
            self.emit(event)
        return waiting

    def _read_file(self, a: Arrival, known: dict[str, tuple[int, int, str]], events: list[Event]) -> int:
        try:
            emails = list(read_emails(a.path))
            check_emails(emails)
        except EmailInputError as exc:
            return self._refuse(a, str(exc), known, events)
        except FileNotFoundError:
            return 0  # moved between the scan and the read: next pass
        taken: set[str] = set()
        rows = []
        for index, e in enumerate(emails):
            # Ids are unique over the stream (a Message-ID seen before, in another delivery): the file's own name.
            mid, n = e.message_id, 1
            while mid in taken or self._id_exists(mid):
                n += 1
                mid = f"{a.key}#{index + 1}" + (f"~{n}" if n > 2 else "")
            taken.add(mid)
            rows.append((mid, a.key, e.text, a.mtime_ns / 1e9, e.sender, e.subject, e.date,
                         json.dumps(list(e.flags)) if e.flags else None))
            if e.flags:
                events.append({"event": "flagged", "file": a.key, "message_id": mid, "problems": list(e.flags)})
        db = self.journal.db
        db.execute("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)",
                   (a.key, a.size, a.mtime_ns, "read", len(rows), None, time.time()))
        db.executemany("INSERT INTO messages (message_id, file_key, text, arrived_at, sender, subject, date, flags) "
                       "VALUES (?,?,?,?,?,?,?,?)", rows)
        known[a.key] = (a.size, a.mtime_ns, "read")
        events.append({"event": "read", "file": a.key, "emails": len(rows)})
        return len(rows)

    def _id_exists(self, message_id: str) -> bool:
        found = self.journal.db.execute("SELECT 1 FROM messages WHERE message_id=?", (message_id,)).fetchone()
        return found is not None

    def _refuse(self, a: Arrival, error: str, known: dict[str, tuple[int, int, str]], events: list[Event]) -> int:
        self.journal.db.execute("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)",
                                (a.key, a.size, a.mtime_ns, "refused", 0, error, time.time()))
        known[a.key] = (a.size, a.mtime_ns, "refused")
        self.problems += 1
        events.append({"event": "refused", "file": a.key, "error": error})
        return 0

    def _queued_count(self) -> int:
        return int(self.journal.db.execute("SELECT count(*) FROM messages WHERE batch_id IS NULL").fetchone()[0])

    def cut(self, *, force: bool = False) -> None:
        """Cut full batches, and a partial one once its oldest email is `max_age_s` old (or at once if `force`)
        and the pipeline has a place for it: while `max_in_flight` batches are submitted or waiting, a partial
        batch grows toward `batch_size` instead of queueing behind them (small batches queued there cost a
        batch's fixed time each: p99 of 284 s at 3-second batches)."""
        size = self.options.batch_size
        while True:
            rows = self.journal.db.execute("SELECT seq, arrived_at FROM messages WHERE batch_id IS NULL "
                                           "ORDER BY seq LIMIT ?", (size,)).fetchall()
            if not rows:
                return
            oldest = min(r[1] for r in rows)
            if len(rows) < size and (self._in_flight() + self._waiting() >= self.options.max_in_flight
                                     or not force and time.time() - oldest < self.options.max_age_s):
                return
            with self.journal.tx() as db:
                n = int(db.execute("SELECT coalesce(max(n), 0) + 1 FROM batches").fetchone()[0])
                batch_id = f"s-{self._stream_id}-{n:06d}"
                db.execute("INSERT INTO batches (n, batch_id, emails, state, cut_at) VALUES (?,?,?,?,?)",
                           (n, batch_id, len(rows), "cut", time.time()))
                db.executemany("UPDATE messages SET batch_id=? WHERE seq=?", [(batch_id, r[0]) for r in rows])
            self.emit({"event": "cut", "batch_id": batch_id, "emails": len(rows)})

    def submit_cut(self) -> None:
        for batch_id, count in self.journal.db.execute(
                "SELECT batch_id, emails FROM batches WHERE state='cut' ORDER BY n").fetchall():
            if self._in_flight() >= self.options.max_in_flight:
                return
            started = time.monotonic()
            redone = self._submitted_before(batch_id)
            if not redone:
                submit_batch(self._emails(batch_id), self.model, tenant=self.tenant, owner=self.owner, store=self.store,
                             measurements=self.measurements, batch_id=batch_id)
            with self.journal.tx() as db:
                db.execute("UPDATE batches SET state='submitted', submitted_at=? WHERE batch_id=?",
                           (time.time(), batch_id))
            self.emit({"event": "submitted", "batch_id": batch_id, "emails": count,
                       "seconds": round(time.monotonic() - started, 3),
                       **({"found_in_bucket": True} if redone else {})})

    def _submitted_before(self, batch_id: str) -> bool:
        """Whether the submit before a crash completed: its manifest, uploaded last, is there. Only this owner's
        signed manifest naming this batch counts: one the platform planted must not make the stream skip a submit."""
        try:
            owner_manifest(self.store, self.owner, self.tenant, batch_id)
        except ResultVerificationError:
            return False
        return True

    def _emails(self, batch_id: str) -> list[Email]:
        """The batch's emails as read: `submit_batch` writes their From, Subject and Date to the batch's journal."""
        rows = self.journal.db.execute("SELECT message_id, text, file_key, sender, subject, date, flags FROM messages "
                                       "WHERE batch_id=? ORDER BY seq", (batch_id,))
        return [Email(mid, text, source, tuple(json.loads(flags)) if flags else (), sender or "", subject or "",
                      date or "") for mid, text, source, sender, subject, date, flags in rows]

    def _in_flight(self) -> int:
        return int(self.journal.db.execute("SELECT count(*) FROM batches WHERE state='submitted'").fetchone()[0])

    def _waiting(self) -> int:
        return int(self.journal.db.execute("SELECT count(*) FROM batches WHERE state='cut'").fetchone()[0])

    def collect(self) -> None:
        """Write the verified results of every submitted batch whose run ended. A failed batch is watched on: once
        resubmitted (`cscore owner submit --resubmit BATCH`) and succeeded, its results are written too."""
        for batch_id, count, state in self.journal.db.execute(
                "SELECT batch_id, emails, state FROM batches WHERE state IN ('submitted', 'failed') ORDER BY n"
        ).fetchall():
            status = _status(self.store.get_if_exists(f"status/{self.tenant}/{batch_id}.json"))
            if status.get("state") == "failed" and state != "failed":
                self._end(batch_id, "failed", reason=shown(status.get("reason")))  # the platform wrote it
            elif status.get("state") == "succeeded":
                try:
                    results = self.verify(batch_id)
                except ResultVerificationError as exc:  # nothing decrypted, nothing written: say so, go on
                    self._end(batch_id, "rejected", reason=str(exc))
                    continue
                self._write(batch_id, count, results)

    def _write(self, batch_id: str, count: int, results: VerifiedResults) -> None:
        sources = dict(self.journal.db.execute("SELECT message_id, file_key FROM messages WHERE batch_id=?",
                                               (batch_id,)).fetchall())
        arrived = [r[0] for r in self.journal.db.execute("SELECT arrived_at FROM messages WHERE batch_id=?",
                                                         (batch_id,))]
        table = results.table
        ids = table.column(0).to_pylist()
        if sorted(ids) != sorted(sources):  # verified against the manifest already; this guards the journal
            raise StreamError(f"batch {batch_id}: results name {len(ids)} messages, the journal {len(sources)}")
        table = table.append_column("source", pa.array([sources[i] for i in ids], pa.string()))
        target = self.out / f"{batch_id}.parquet"
        partial = target.with_name(f".{target.name}.partial")
        pq.write_table(table, partial)
        with partial.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, target)  # whole or absent: a rerun after a crash rewrites the same file
        _fsync_dir(self.out)
        now = time.time()
        with self.journal.tx() as db:
            db.execute("UPDATE batches SET state='written', done_at=?, output=? WHERE batch_id=?",
                       (now, str(target), batch_id))
            db.execute("UPDATE messages SET text=NULL, sender=NULL, subject=NULL, date=NULL, flags=NULL "
                       "WHERE batch_id=?", (batch_id,))  # kept no longer: the batch's own journal holds the headers
        waits = sorted(now - a for a in arrived)
        self.emit({"event": "written", "batch_id": batch_id, "emails": count, "output": str(target),
                   "receipts_verified": len(results.receipts),
                   "arrival_to_verified_s": {"p50": round(statistics.median(waits), 2), "max": round(waits[-1], 2)}})

    def _end(self, batch_id: str, state: str, *, reason: str) -> None:
        with self.journal.tx() as db:
            db.execute("UPDATE batches SET state=?, done_at=?, reason=? WHERE batch_id=?",
                       (state, time.time(), reason, batch_id))
        self.problems += 1
        self.emit({"event": state, "batch_id": batch_id, "reason": reason,
                   "advice": self._advice(batch_id, state, reason)})

    def _advice(self, batch_id: str, state: str, reason: str) -> str:
        """What to run: for a failed batch, what its reason allows (a resubmit only where it can help; the stream
        watches a resubmitted batch and writes its results); a rejected one is not retried here."""
        if state == "failed":
            text = advice(reason, batch_id, self.tenant)
            return text + (" This stream writes its results once it succeeds." if "--resubmit" in text else "")
        return (f"once the cause is fixed, cscore owner results {batch_id} --tenant {self.tenant} --out FILE "
                "verifies and writes them (this stream does not verify a rejected batch again)")

    # --- loops ----------------------------------------------------------------------------------------------

    def pending(self) -> int:
        """Batches cut or submitted and not yet ended, plus emails queued and not yet cut."""
        open_batches = self.journal.db.execute(
            "SELECT count(*) FROM batches WHERE state IN ('cut', 'submitted')").fetchone()[0]
        return int(open_batches) + self._queued_count()

    def run_once(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Everything in the source now, through to written results; raises TimeoutError after `wait_s`."""
        deadline = time.monotonic() + self.options.wait_s
        self.resume()
        while not should_stop():
            waiting = self.step(final=True)
            if not waiting and not self.pending():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream --once: {self.pending()} batches or emails still open after "
                                   f"{self.options.wait_s:.0f} s; run it again to go on where it stopped")
            time.sleep(self.options.poll_s)

    def run_forever(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Pass after pass until `should_stop()`; says "idle" once each time the work runs out."""
        self.resume()
        busy = True
        while not should_stop():
            self.step()
            if busy and not self.pending():
                self.emit({"event": "idle"})
            busy = bool(self.pending())
            time.sleep(self.options.poll_s)


def _status(raw: bytes | None) -> dict[str, Any]:
    """The platform's status document of a batch; anything but a JSON object reads as not ended yet."""
    try:
        status = json.loads(raw) if raw else None
    except ValueError:  # the platform writes it: garbage must not end the stream (each restart would end again)
        status = None
    return status if isinstance(status, dict) else {"state": "submitted"}


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def latencies(journal_path: Path) -> list[float]:
    """Seconds from each written email's arrival (its file's mtime) to its batch's results being written."""
    db = sqlite3.connect(journal_path)
    try:
        return [r[0] for r in db.execute("SELECT b.done_at - m.arrived_at FROM messages m JOIN batches b "
                                         "ON m.batch_id = b.batch_id WHERE b.state='written'")]
    finally:
        db.close()
