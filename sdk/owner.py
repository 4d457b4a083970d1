"""The data owner's jobs: register with the platform, submit a batch, fetch and verify its results."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from enclave.pme import EncryptedParquet, KeyWrapper, PmeKeys, write_encrypted
from enclave.signing import sign_json
from sdk.emails import Email, check_email, check_emails
from sdk.journal import HEADER_COLUMNS, JournalWriter, journal_path
from sdk.models import ModelListing
from sdk.party import Party
from sdk.platform import config_for_owner, published_worker_config
from sdk.platform_text import shown
from sdk.spool import Spool
from sdk.storage import ObjectStore
from wire.shard import INPUT_BINDING_KEY, input_binding
from wire.tenant import TenantKey, request_key, sign_request, verify_request

MANIFEST_TYPE = "cscore.manifest/v1"
ROW_GROUP_SIZE = 200  # emails per row group: the unit of sharding
# Row groups per shard: a batch is cut into about SHARDS_TARGET shards (work for every worker of a pool), each of
# SHARD_MIN_ROW_GROUPS to SHARD_MAX_ROW_GROUPS. Besides scoring, a shard costs a worker ~9 S3 requests and a task
# round trip: in shards of 400 emails the workers spent 1.13 s outside scoring per second of it, in shards of
# 5,000 0.25-0.31 s (48,360 emails a batch, one stack, sizes alternated; issue 12).
SHARDS_TARGET = 8
SHARD_MIN_ROW_GROUPS = 2
SHARD_MAX_ROW_GROUPS = 25
# Emails per input object. Shards read by ranges, so an object's size costs a worker only its footer (~0.9 KB per
# row group); but a range GET on moto (the local stack) copies the whole object (~1 ms per MB), and one
# 100,000-row object (~110 MB) made every shard's reads cost ~250 ms. 10,000 rows: ~11 MB objects.
PART_ROWS = 10_000
FLAGS_NAME = "flags.parquet"  # beside the inputs; not a data object of the manifest (the platform never reads it)
# Parts encrypted and uploaded while the next is assembled (each upload itself multipart, 4 requests at once):
# with the one being assembled, what bounds a submit's memory (~PART_ROWS emails each), whatever the batch's
# size. 2 in flight peaked at 529 MB for 1M emails (bench.owner_memory --format parquet).
PARTS_IN_FLIGHT = 1
EMAIL_COLUMNS = ("message_id", "text")


class BatchError(ValueError):
    """The batch cannot be submitted as given."""


class NoSuchBatch(LookupError):
    """No batch of this id was ever submitted for this tenant (its signed manifest is absent)."""


@dataclass(frozen=True)
class OwnerKeys:
    """The owner's master key ids at its broker, one set per batch."""

    footer: str
    emails: str
    results: str

    @classmethod
    def for_batch(cls, tenant: str, batch_id: str) -> OwnerKeys:
        # Per batch: a grant for one batch can then never unwrap another batch's keys.
        prefix = f"{tenant}.{batch_id}"
        return cls(f"{prefix}.footer", f"{prefix}.emails", f"{prefix}.results")

    def all(self) -> list[str]:
        return [self.footer, self.emails, self.results]


@dataclass(frozen=True)
class SubmittedBatch:
    tenant: str
    batch_id: str
    manifest_key: str
    rows: int


def register_tenant(owner: Party, tenant: str, store: ObjectStore) -> TenantKey:
    """Ask the platform to register the tenant: upload a request signed by the owner's manifest key.

    The request (wire.tenant) goes to `registrations/<tenant>/request.jws`; it counts once the platform operator
    approves it. Give the operator the returned key's thumbprint out of band: it approves only that key.
    """
    token = sign_request(tenant, owner.signing_key(), now=time.time())
    store.put(request_key(tenant), token.encode(), content_type="application/jose")
    return verify_request(token)


def submit_batch(
    emails: Sequence[Email],
    model: ModelListing,
    *,
    tenant: str,
    owner: Party,
    store: ObjectStore,
    measurements: list[str],
    batch_id: str | None = None,
    plaintext_baseline: bool = False,
) -> SubmittedBatch:
    """Encrypt the emails (PME), upload them, record the grant, then upload the signed manifest last.

    `plaintext_baseline` skips encryption, brokers and grants: only for measuring what confidentiality costs.
    """
    if not emails:
        raise BatchError("emails: expected at least one email, got an empty batch")
    ids = [e.message_id for e in emails]
    if len(set(ids)) != len(ids):
        raise BatchError("emails.message_id: expected unique ids, got duplicates")
    check_emails(emails)  # every refusal before any broker key is created or any byte uploaded
    _check_columns(EMAIL_COLUMNS, model)
    table = _email_table(emails)
    parts = (table.slice(start, PART_ROWS) for start in range(0, table.num_rows, PART_ROWS))
    return _submit_parts(parts, model, tenant=tenant, owner=owner, store=store, measurements=measurements,
                         batch_id=batch_id, plaintext_baseline=plaintext_baseline, journal=True,
                         flags={e.message_id: list(e.flags) for e in emails if e.flags})


def _email_table(emails: Sequence[Email]) -> pa.Table:
    """message_id and text (what is uploaded), then from, subject and date (kept in the owner's journal)."""
    return pa.table({"message_id": [e.message_id for e in emails], "text": [e.text for e in emails],
                     "from": [e.sender for e in emails], "subject": [e.subject for e in emails],
                     "date": [e.date for e in emails]})


def submit_table(
    table: pa.Table,
    model: ModelListing,
    *,
    tenant: str,
    owner: Party,
    store: ObjectStore,
    measurements: list[str],
    batch_id: str | None = None,
    plaintext_baseline: bool = False,
    flags: Mapping[str, Sequence[str]] | None = None,
) -> SubmittedBatch:
    """`submit_batch` for any model: `table` holds the columns its card's contract reads (the id column first).

    `flags` ({id: [problem, ...]}, what could not be read right) travel PME-encrypted in `flags.parquet` beside
    the inputs, pinned by the signed manifest, for `sdk.results.fetch_results` to join back; a plaintext baseline
    keeps none. Raises BatchError naming a missing column, a duplicate id or an empty table, before anything is
    uploaded.
    """
    _check_table(table, model)
    parts = (table.slice(start, PART_ROWS) for start in range(0, table.num_rows, PART_ROWS))
    return _submit_parts(parts, model, tenant=tenant, owner=owner, store=store, measurements=measurements,
                         batch_id=batch_id, plaintext_baseline=plaintext_baseline, flags=flags)


def spool_emails(emails: Iterable[Email], *, flagged: Callable[[Email], None] = lambda _: None,
                 directory: Path | None = None) -> Spool:
    """Check every email as it is read (ids non-empty, unique and Unicode; texts Unicode) and spool them by row
    groups (`sdk.spool`): memory holds one row group and the ids, whatever the batch's size.

    `flagged` is called with each email that has flags (kept in `spool.flags`, {id: [problem, ...]}). Raises
    EmailInputError or BatchError naming the email before `submit_spooled` creates any key or uploads any byte
    (the reader's own refusals pass through).
    """
    spool = Spool(directory)
    try:
        seen: set[str] = set()
        held: list[Email] = []
        for index, email in enumerate(emails):
            check_email(email, index)
            if email.message_id in seen:
                raise BatchError(f"email {index} ({email.source or 'given in code'}): message_id "
                                 f"{email.message_id!r} appears twice; expected unique ids")
            seen.add(email.message_id)
            if email.flags:
                spool.flags[email.message_id] = list(email.flags)
                flagged(email)
            held.append(email)
            if len(held) == ROW_GROUP_SIZE:
                spool.add(_email_table(held))
                held = []
        if held:
            spool.add(_email_table(held))
    except BaseException:
        spool.close()
        raise
    return spool


def submit_spooled(spool: Spool, model: ModelListing, *, tenant: str, owner: Party, store: ObjectStore,
                   measurements: list[str], batch_id: str | None = None,
                   progress: Callable[[int], None] = lambda rows: None) -> SubmittedBatch:
    """`submit_batch` for emails checked and spooled by `spool_emails`: parts assembled from the spool's row
    groups, encrypted and uploaded a few at a time (`progress(rows)` after each part's upload, from the uploading
    thread). Raises BatchError for an empty spool or a model whose card reads other columns, before any key is
    created."""
    if spool.rows == 0:
        raise BatchError("emails: expected at least one email, got an empty batch")
    _check_columns(EMAIL_COLUMNS, model)
    return _submit_parts(_parts(spool.tables()), model, tenant=tenant, owner=owner, store=store,
                         measurements=measurements, batch_id=batch_id, flags=spool.flags, journal=True,
                         progress=progress)


def _parts(row_groups: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """Row groups gathered into parts of PART_ROWS rows (the last may be shorter)."""
    held: list[pa.Table] = []
    rows = 0
    for group in row_groups:
        held.append(group)
        rows += group.num_rows
        if rows >= PART_ROWS:
            whole = pa.concat_tables(held)
            yield whole.slice(0, PART_ROWS)
            rest = whole.slice(PART_ROWS)
            held, rows = ([rest] if rest.num_rows else []), rest.num_rows
    if rows:
        yield pa.concat_tables(held)


def _submit_parts(parts: Iterator[pa.Table], model: ModelListing, *, tenant: str, owner: Party, store: ObjectStore,
                  measurements: list[str], batch_id: str | None = None, plaintext_baseline: bool = False,
                  flags: Mapping[str, Sequence[str]] | None = None, journal: bool = False,
                  progress: Callable[[int], None] = lambda rows: None) -> SubmittedBatch:
    """Create the batch's keys, encrypt and upload `parts` (PARTS_IN_FLIGHT at a time) and `flags`, record the
    grant, then upload the signed manifest last.

    `journal`: the parts also hold HEADER_COLUMNS, which are never uploaded: they go to the owner's local
    journal (`sdk.journal`, under the batch's keys; none for a plaintext baseline), complete before the manifest.
    """
    batch_id = batch_id or f"b-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    keys = OwnerKeys.for_batch(tenant, batch_id)
    broker = None if plaintext_baseline else owner.broker()
    provider = model.card.broker if model.card else None  # whose card keys the workers would take its card by
    config_digests = [] if plaintext_baseline else [config_for_owner(
        published_worker_config(store), owner.broker_name, owner.broker_url, provider=provider,
        trusted_keys=owner.trusted_providers())]
    if broker is not None:
        for key_id in keys.all():
            broker.create_key(key_id, kind="result" if key_id == keys.results else "data")
    prefix = f"incoming/{tenant}/{batch_id}/"

    def upload(index: int, chunk: pa.Table) -> dict[str, Any]:
        key = f"{prefix}part-{index:05d}.parquet"
        data, file_id = encode_part(chunk, broker, keys, tenant=tenant, batch_id=batch_id, key=key)
        store.put_large(key, data)
        progress(chunk.num_rows)
        return {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "rows": chunk.num_rows, "row_groups": -(-chunk.num_rows // ROW_GROUP_SIZE),
                **({"file_id": file_id} if file_id else {})}

    objects: list[dict[str, Any]] = []
    writer = None if not journal or broker is None else JournalWriter(
        journal_path(owner.home, tenant, batch_id), broker, footer_key=keys.footer, column_key=keys.emails,
        tenant=tenant, batch_id=batch_id)
    with ThreadPoolExecutor(PARTS_IN_FLIGHT) as pool:
        pending: deque[Future[dict[str, Any]]] = deque()
        try:
            for index, chunk in enumerate(parts):
                if len(pending) >= PARTS_IN_FLIGHT:  # at most this many parts (and the next one) in memory
                    objects.append(pending.popleft().result())
                if journal:
                    if writer is not None:
                        writer.write(chunk.select(["message_id", *HEADER_COLUMNS]))
                    chunk = chunk.drop_columns(list(HEADER_COLUMNS))
                pending.append(pool.submit(upload, index, chunk))
            objects.extend(f.result() for f in pending)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    if writer is not None:
        writer.close()
    rows = sum(o["rows"] for o in objects)
    flags_entry = {}
    if flags is not None and broker is not None:
        data = encode_flags(flags, broker, keys)
        store.put(prefix + FLAGS_NAME, data)
        flags_entry = {"flags": {"key": prefix + FLAGS_NAME, "sha256": hashlib.sha256(data).hexdigest()}}
    if broker:
        broker.grant(batch_id, model.digest, measurements, keys.all() + list(model.owner_keys),
                     config_digests=config_digests, rows=rows)
    manifest = {
        "protection": "none" if plaintext_baseline else "pme",
        "type": MANIFEST_TYPE, "tenant": tenant, "batch_id": batch_id, "created_at": int(time.time()),
        "objects": objects, "model": {"name": model.name, "version": model.version, "digest": model.digest},
        "results": {"prefix": f"results/{tenant}/{batch_id}/"},
        "key_broker": {"name": owner.broker_name, "url": owner.broker_url, "footer_key": keys.footer,
                       "column_key": keys.emails, "result_key": keys.results},
        "shard_row_groups": shard_row_groups(sum(o["row_groups"] for o in objects)),
        **flags_entry,
    }
    manifest_key = prefix + "manifest.jws"
    # Uploaded last: its creation event is what starts processing.
    store.put(manifest_key, sign_json(manifest, owner.signing_key()).encode(), "application/jose")
    return SubmittedBatch(tenant, batch_id, manifest_key, rows)


def shard_row_groups(row_groups: int) -> int:
    """Row groups per shard for a batch of `row_groups` in all: about SHARDS_TARGET shards, each of
    SHARD_MIN_ROW_GROUPS to SHARD_MAX_ROW_GROUPS row groups (ROW_GROUP_SIZE emails each)."""
    return max(SHARD_MIN_ROW_GROUPS, min(SHARD_MAX_ROW_GROUPS, -(-row_groups // SHARDS_TARGET)))


def _check_table(table: pa.Table, model: ModelListing) -> None:
    """The columns the card's contract reads are there (the id column first), ids unique, rows present."""
    _check_columns(table.column_names, model)
    if table.num_rows == 0:
        raise BatchError("batch table: expected at least one row, got an empty batch")
    id_column = model.card.contract.id_column if model.card is not None else table.column_names[0]
    ids = table.column(id_column).to_pylist()
    if len(set(ids)) != len(ids):
        raise BatchError(f"batch table.{id_column}: expected unique ids, got duplicates")


def _check_columns(names: Sequence[str], model: ModelListing) -> None:
    """The columns the card's contract reads are among `names`; raises BatchError naming the first missing."""
    if model.card is not None:
        contract = model.card.contract
        wanted = [contract.id_column, *contract.input_columns]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise BatchError(f"batch table: model {model.name}:{model.version} reads columns {wanted}, column "
                             f"{missing[0]!r} is missing (found {list(names)})")


def encode_part(table: pa.Table, broker: KeyWrapper | None, keys: OwnerKeys, *, tenant: str, batch_id: str,
                key: str) -> tuple[bytes, str]:
    """One input object: (Parquet bytes, file id). PME when `broker` is given (file id: 32 hex), plain Parquet
    for the baseline (file id ""). A PME file names its tenant, batch, object key and a fresh file id in its
    encrypted footer, so a worker reading it by ranges refuses it anywhere else (`enclave.worker.read_shard`)."""
    if broker is None:
        sink = io.BytesIO()
        pq.write_table(table, sink, row_group_size=ROW_GROUP_SIZE)
        return sink.getvalue(), ""
    file_id = secrets.token_hex(16)
    binding = {INPUT_BINDING_KEY: input_binding(tenant, batch_id, key, file_id)}
    return write_encrypted(table, broker, footer_key=keys.footer, column_key=keys.emails,
                           row_group_size=ROW_GROUP_SIZE, metadata=binding), file_id


def encode_flags(flags: Mapping[str, Sequence[str]], broker: KeyWrapper, keys: OwnerKeys) -> bytes:
    """The batch's flags as PME Parquet (message_id: string, flags: list<string>; only flagged emails, maybe
    none), under the batch's footer and emails keys: what was flagged is as secret as the emails."""
    table = pa.table({"message_id": pa.array(list(flags), pa.string()),
                      "flags": pa.array([list(f) for f in flags.values()], pa.list_(pa.string()))})
    return write_encrypted(table, broker, footer_key=keys.footer, column_key=keys.emails,
                           row_group_size=ROW_GROUP_SIZE)


def resubmit_batch(tenant: str, batch_id: str, store: ObjectStore) -> str:
    """Upload the same signed manifest again (after a failure), which starts the batch again. Raises NoSuchBatch
    for a batch the tenant never submitted, BatchError for one that succeeded (the platform passes it over)."""
    key = f"incoming/{tenant}/{batch_id}/manifest.jws"
    manifest = store.get_if_exists(key)
    if manifest is None:
        raise NoSuchBatch(f"batch {batch_id!r}: no such batch for tenant {tenant!r} ({key} is absent in bucket "
                          f"{store.bucket}); check the id `cscore owner submit` printed and --tenant")
    raw = store.get_if_exists(f"status/{tenant}/{batch_id}.json")
    try:
        state = json.loads(raw).get("state") if raw else None
    except (ValueError, AttributeError):  # the platform wrote it: unreadable is "not succeeded"
        state = None
    if state == "succeeded":
        raise BatchError(f"batch {batch_id!r}: expected a failed batch to resubmit, got one that succeeded (the "
                         f"platform would pass it over); `cscore owner results {batch_id} --tenant {tenant}` fetches "
                         "its results")
    store.put(key, manifest, "application/jose")
    return key


def wait_for_batch(
    store: ObjectStore, tenant: str, batch_id: str, *, timeout: float = 900.0,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Poll the batch's status until it succeeded or failed; returns the status document.

    Raises NoSuchBatch at once when the tenant never submitted the batch, TimeoutError after `timeout` s.
    """
    manifest_key = f"incoming/{tenant}/{batch_id}/manifest.jws"
    if not store.exists(f"status/{tenant}/{batch_id}.json") and not store.exists(manifest_key):
        raise NoSuchBatch(f"batch {batch_id!r}: no such batch for tenant {tenant!r} ({manifest_key} is absent "
                          f"in bucket {store.bucket}); check the id `cscore owner submit` printed and --tenant")
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        raw = store.get_if_exists(f"status/{tenant}/{batch_id}.json")
        status: dict[str, Any] = json.loads(raw) if raw else {"state": "submitted"}
        if status["state"] == "failed" and _uploaded_since(store, manifest_key, f"status/{tenant}/{batch_id}.json"):
            status = {"state": "resubmitted"}  # that failure is the last run's: wait for the platform's next one
        if status["state"] != last:
            progress(shown(status["state"]))  # the platform wrote it: no escape reaches the owner's terminal
            last = status["state"]
        if status["state"] in {"succeeded", "failed"}:
            return status
        time.sleep(float(os.environ.get("CSCORE_POLL_S", "0.25")))
    raise TimeoutError(f"batch {batch_id}: expected it to finish within {timeout:.0f} s, still {last!r}; "
                       f"in the Airflow UI, its cscore_batch run's id starts with batch__{tenant}__{batch_id}__")


def _uploaded_since(store: ObjectStore, key: str, than: str) -> bool:
    """Whether `key` was written after `than`, both by the bucket's clock (S3 keeps whole seconds: a tie is not)."""
    uploaded, written = store.modified(key), store.modified(than)
    return uploaded is not None and written is not None and uploaded > written


def decrypt_flags(data: bytes, keys: PmeKeys) -> dict[str, str]:
    """`encode_flags`' object read back: {message_id: "problem; problem"} for the flagged emails."""
    with EncryptedParquet(data, keys) as flagged:
        table = flagged.read()
    return {i: "; ".join(f) for i, f in zip(table.column("message_id").to_pylist(),
                                             table.column("flags").to_pylist(), strict=True)}


def decrypt_results(data: bytes, keys: PmeKeys) -> pa.Table:
    """Decrypt one result object; `keys` is `PmeKeys(owner.broker())`, shared by a batch's objects."""
    with EncryptedParquet(data, keys) as results:
        return results.read()
