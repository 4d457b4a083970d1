"""Fetch a batch's results, verify every receipt, then decrypt: the owner trusts no platform word."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from attestation import Policy, TrustAnchors
from attestation.errors import AttestationError
from enclave.pme import PmeKeys
from enclave.receipts import VerifiedReceipt, verify_receipt
from enclave.signing import SignatureError, unverified_payload, verify_json
from sdk.owner import decrypt_flags, decrypt_results
from sdk.party import Party
from sdk.storage import ObjectStore
from wire.receipt import parse_sessions
from wire.worker_config import config_digest_from_claims

# Shard outputs fetched and decrypted ahead of the one being written: memory holds these, not the batch.
OUTPUTS_IN_FLIGHT = 4
_T = TypeVar("_T")
_R = TypeVar("_R")


class ResultVerificationError(ValueError):
    """The results do not prove what they claim; nothing was decrypted."""


@dataclass(frozen=True)
class VerifiedResults:
    # the card contract's result columns, its id column first (message_id, spam_probability, label), then for email
    # batches `flags`: what the owner's reader could not read right in that email, "" for none
    table: pa.Table
    receipts: list[VerifiedReceipt]
    measurements: list[str]


def owner_trust(*, accept_simulated: bool, measurements: Sequence[str]) -> tuple[TrustAnchors, Policy]:
    """AMD's roots and the launch `measurements` (hex) the owner granted; the simulated root (from
    $CSCORE_SIM_TEE_DIR) only when `accept_simulated` (a development stack). Raises ParseError for a measurement
    that is not hex."""
    sim_dir = os.environ.get("CSCORE_SIM_TEE_DIR")
    simulated = accept_simulated and sim_dir is not None
    anchors = TrustAnchors.from_dir(Path(sim_dir)) if simulated and sim_dir else TrustAnchors.amd()
    policy = Policy.from_dict({"allowed_measurements": list(measurements),
                               "allowed_roots": ["amd", "simulated"] if simulated else ["amd"]})
    return anchors, policy


def simulated_advice(exc: AttestationError) -> str:
    """What to do when `exc` refused the root of this development stack's simulated TEE ($CSCORE_SIM_TEE_DIR),
    which is trusted only with --accept-simulated; "" for any other refusal."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    sim_dir = os.environ.get("CSCORE_SIM_TEE_DIR")
    if exc.field != "evidence.cert_chain.ark" or not sim_dir:
        return ""
    try:
        ark = x509.load_pem_x509_certificate((Path(sim_dir) / "ark.pem").read_bytes())
    except (OSError, ValueError):  # no simulated firmware here: nothing to advise
        return ""
    if f"(sha256 {ark.fingerprint(hashes.SHA256()).hex()})" not in str(exc.actual):
        return ""
    return (f"; that root is the simulated TEE of this development stack ({sim_dir}): pass --accept-simulated to "
            "accept it there (no hardware protected this work; never in production)")


@dataclass(frozen=True)
class VerifiedResultsFile:
    """A batch's verified results in a Parquet file: the columns of `VerifiedResults.table`, one row group or more
    per shard, in the result manifest's order."""

    path: Path
    rows: int
    columns: list[str]
    receipts: list[VerifiedReceipt]
    measurements: list[str]


def fetch_results(
    tenant: str, batch_id: str, *, owner: Party, store: ObjectStore, anchors: TrustAnchors, policy: Policy
) -> VerifiedResults:
    """`write_results` read back into one table: for batches that fit in memory. Raises as `write_results`."""
    with tempfile.TemporaryDirectory(prefix="cscore-results-") as folder:
        written = write_results(Path(folder) / "results.parquet", tenant, batch_id, owner=owner, store=store,
                                anchors=anchors, policy=policy)
        table = pq.read_table(written.path)
    return VerifiedResults(table, written.receipts, written.measurements)


def write_results(
    path: Path, tenant: str, batch_id: str, *, owner: Party, store: ObjectStore, anchors: TrustAnchors,
    policy: Policy, progress: Callable[[int, int], None] = lambda rows, total: None,
) -> VerifiedResultsFile:
    """Verify the batch's receipts against the owner's own manifest, then fetch, check, decrypt and write its shards
    one by one into Parquet at `path` (mode 0600).

    Memory holds OUTPUTS_IN_FLIGHT shards and 8 bytes per row (the duplicate-id check), whatever the batch's size.
    Rows go to a temporary file beside `path`, moved there only once every check passed: a refusal leaves no new
    file (and whatever was at `path` untouched). `progress(rows, total)` is called as each shard's rows are
    written (total: the batch's rows). Raises ResultVerificationError naming the object and the check.
    """
    manifest = owner_manifest(store, owner, tenant, batch_id)
    result_manifest = _result_manifest(store, f"{manifest['results']['prefix']}result-manifest.json")
    evidence = _EvidenceCache(store, manifest["results"]["prefix"])
    # What this owner granted, from its own broker (it may have re-granted after a refusal): the only list
    # of measurements and worker configurations whose receipts it accepts.
    granted = owner.broker().get_grant(batch_id)
    # Shards are independent: overlap their storage reads and broker round trips.
    with ThreadPoolExecutor(8) as pool:
        receipts = list(pool.map(lambda s: _verified_shard(store, manifest, granted, s, evidence, anchors, policy),
                                 result_manifest["shards"]))
        _check_coverage(manifest, [r.payload for r in receipts])
        flags_data = _flags_object(store, manifest)
        # One key context: each key-encryption key unwrapped once, each unwrap logged under this batch.
        with PmeKeys(owner.broker().for_batch(batch_id)) as keys:
            flags = None if flags_data is None else decrypt_flags(flags_data, keys)
            keyed = zip([s["receipt_key"] for s in result_manifest["shards"]], receipts, strict=True)
            parts = _in_order(pool, lambda kr: _shard_part(store, *kr, keys), keyed, OUTPUTS_IN_FLIGHT)
            rows = sum(r.payload["output"]["rows"] for r in receipts)
            columns = _write_verified(path, manifest, _reported(parts, lambda n: progress(n, rows)), flags)
    return VerifiedResultsFile(path, rows, columns, receipts, sorted({r.claims.measurement for r in receipts}))


def _shard_part(store: ObjectStore, receipt_key: str, receipt: VerifiedReceipt, keys: PmeKeys
                ) -> tuple[str, pa.Table]:
    """A shard's output key and rows: fetched, checked against its receipt (sha256, rows), then decrypted."""
    output = receipt.payload["output"]
    part = decrypt_results(_shard_output(store, receipt_key, receipt), keys)
    _expect(output["key"], "output.rows", output["rows"], part.num_rows)
    return output["key"], part.drop_columns([c for c in ("model_digest",) if c in part.column_names])


def _reported(parts: Iterator[tuple[str, pa.Table]], progress: Callable[[int], None]
              ) -> Iterator[tuple[str, pa.Table]]:
    """`parts`, `progress` told each one's rows once it was written (when the next is asked for, or at the end)."""
    for key, part in parts:
        yield key, part
        progress(part.num_rows)


def _in_order(pool: ThreadPoolExecutor, fn: Callable[[_T], _R], items: Iterable[_T], window: int) -> Iterator[_R]:
    """`pool.map(fn, items)` with at most `window` results done or running ahead of the one consumed."""
    running: deque[Future[_R]] = deque()
    try:
        for item in items:
            running.append(pool.submit(fn, item))
            if len(running) >= window:
                yield running.popleft().result()
        while running:
            yield running.popleft().result()
    finally:
        for future in running:
            future.cancel()


def _write_verified(path: Path, manifest: dict[str, Any], parts: Iterator[tuple[str, pa.Table]],
                    flags: dict[str, str] | None) -> list[str]:
    """Write `parts` (the owner's flags joined) to a temporary file beside `path`, check every id
    once and every flag claimed, then move it to `path`. Returns the columns written."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    partial = Path(name)
    try:
        tally, flagged = _IdTally(sum(o["rows"] for o in manifest["objects"])), set[str]()
        columns = _write_parts(partial, parts, flags, tally, flagged)
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        _check_rows(manifest, tally.rows, tally.distinct(lambda: _ids_in(partial)))
        if flags is not None and len(flagged) != len(flags):
            raise ResultVerificationError(f"{manifest['flags']['key']}: flags for {len(flags) - len(flagged)} id(s) "
                                          "that no result carries")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return columns


def _write_parts(path: Path, parts: Iterator[tuple[str, pa.Table]], flags: dict[str, str] | None, tally: _IdTally,
                 flagged: set[str]) -> list[str]:
    """Each part as row groups of `path`, its ids tallied and the flags it carries noted; returns the columns."""
    writer: pq.ParquetWriter | None = None
    try:
        for key, part in parts:
            if flags is not None:  # email batches: the owner's reader's flags per email ("" when read right)
                ids = part.column(0).to_pylist()
                flagged.update(i for i in ids if i in flags)
                part = part.append_column("flags", pa.array([flags.get(i, "") for i in ids], pa.string()))
            if writer is None:
                writer = pq.ParquetWriter(path, part.schema)
            elif part.schema != writer.schema:
                raise ResultVerificationError(f"{key}: columns expected {writer.schema.names} ({writer.schema.types}), "
                                              f"got {part.schema.names} ({part.schema.types})")
            tally.add(part.column(0))
            writer.write_table(part)
    finally:
        if writer is not None:
            writer.close()
    return [] if writer is None else writer.schema.names


def _ids_in(path: Path) -> Iterator[list[Any]]:
    """The id column (the first) of a results file, a row group at a time."""
    with pq.ParquetFile(path) as results:
        for group in range(results.num_row_groups):
            yield results.read_row_group(group, columns=[results.schema_arrow.names[0]]).column(0).to_pylist()


class _IdTally:
    """The result ids seen, kept as 64-bit hashes (8 bytes a row), so duplicates are counted without the ids."""

    def __init__(self, capacity: int) -> None:
        self._hashes = np.empty(capacity, np.int64)  # the rows the owner's manifest signs; grown past them if need be
        self.rows = 0

    def add(self, ids: pa.Array | pa.ChunkedArray) -> None:
        values = ids.to_pylist()
        if self.rows + len(values) > len(self._hashes):
            self._hashes = np.resize(self._hashes, max(2 * len(self._hashes), self.rows + len(values)))
        self._hashes[self.rows:self.rows + len(values)] = np.fromiter(map(hash, values), np.int64, len(values))
        self.rows += len(values)

    def distinct(self, ids_again: Callable[[], Iterable[list[Any]]]) -> int:
        """Distinct ids, exactly: ids whose hashes repeat are read again from `ids_again()` and compared."""
        hashes = self._hashes[:self.rows]
        hashes.sort()
        repeated = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
        if not repeated:
            return self.rows
        clashing = [i for chunk in ids_again() for i in chunk if hash(i) in repeated]
        return self.rows - len(clashing) + len(set(clashing))


class _EvidenceCache:
    """Evidence documents by digest: a batch's shards share a few workers' evidence."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self._store, self._prefix = store, prefix
        self._docs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> dict[str, Any]:
        with self._lock:
            if digest in self._docs:
                return self._docs[digest]
        key = f"{self._prefix}evidence/{digest}.json"
        doc = _json_object(_get(self._store, key, "the attestation evidence a receipt names"), key)
        with self._lock:
            return self._docs.setdefault(digest, doc)


def _verified_shard(
    store: ObjectStore, manifest: dict[str, Any], granted: dict[str, Any], shard: dict[str, Any],
    evidence: _EvidenceCache, anchors: TrustAnchors, policy: Policy,
) -> VerifiedReceipt:
    """The shard's verified receipt (its output is fetched later, by `_shard_output`)."""
    prefix = manifest["results"]["prefix"]
    if not shard["receipt_key"].startswith(prefix):
        raise ResultVerificationError(f"result manifest: receipt_key expected under {prefix}, "
                                      f"got {shard['receipt_key']}")
    token = _get(store, shard["receipt_key"], "a shard receipt").decode(errors="replace")
    digest = ""
    try:
        digest = _unverified_evidence_digest(token)
        receipt = verify_receipt(token, evidence.get(digest), anchors=anchors, policy=policy)
    except AttestationError as exc:  # the evidence does not verify, is not granted, or does not bind the receipt key
        raise ResultVerificationError(f"{shard['receipt_key']} (evidence {prefix}evidence/{digest}.json): {exc}"
                                      f"{simulated_advice(exc)}") from exc
    except (ValueError, KeyError, TypeError) as exc:  # signature and shape errors name the check
        raise ResultVerificationError(f"{shard['receipt_key']}: {exc}") from exc
    _check_granted(shard["receipt_key"], granted, receipt)
    p = receipt.payload
    _expect(shard["receipt_key"], "batch_id", manifest["batch_id"], p["batch_id"])
    # Where each receipt is stored says which shard it stands for: one moved there from another shard is named.
    _expect(shard["receipt_key"], "shard_index", _index_in_key(shard["receipt_key"]), p["shard_index"])
    _expect(shard["receipt_key"], "tenant", manifest["tenant"], p["tenant"])
    _expect(shard["receipt_key"], "model.digest", manifest["model"]["digest"], p["model"]["digest"])
    _check_owner_session(shard["receipt_key"], manifest, p)
    if not p["output"]["key"].startswith(prefix):
        raise ResultVerificationError(f"{shard['receipt_key']}: output.key expected under {prefix}, "
                                      f"got {p['output']['key']}")
    return receipt


def _shard_output(store: ObjectStore, receipt_key: str, receipt: VerifiedReceipt) -> bytes:
    """The encrypted output a verified receipt (stored at `receipt_key`) names, checked against the sha256 it
    signs."""
    p = receipt.payload
    output = _get(store, p["output"]["key"], "a shard's encrypted results")
    _expect(receipt_key, "output.sha256", p["output"]["sha256"], hashlib.sha256(output).hexdigest())
    return output


def _flags_object(store: ObjectStore, manifest: dict[str, Any]) -> bytes | None:
    """The encrypted flags object the owner's signed manifest pins by sha256; None when it pins none."""
    entry = manifest.get("flags")
    if entry is None:
        return None
    data = _get(store, entry["key"], "the batch's flags (your submit wrote them)")
    _expect(entry["key"], "sha256", entry["sha256"], hashlib.sha256(data).hexdigest())
    return data


def _index_in_key(receipt_key: str) -> int | None:
    """The shard index a receipt's key names (`.../shard-00003.receipt.jws`: 3), None for another name."""
    found = re.search(r"/shard-(\d{5})\.receipt\.jws$", receipt_key)
    return int(found.group(1)) if found else None


def owner_manifest(store: ObjectStore, owner: Party, tenant: str, batch_id: str) -> dict[str, Any]:
    """The batch's manifest at `incoming/<tenant>/<batch_id>/manifest.jws`, verified: signed by this owner's key
    and naming this tenant and batch. Raises ResultVerificationError naming the object and the check (also when
    nothing is there)."""
    manifest_key = f"incoming/{tenant}/{batch_id}/manifest.jws"
    try:
        manifest = verify_json(_get(store, manifest_key, "your signed manifest").decode(errors="replace"),
                               owner.signing_key().as_dict(private=False), what="manifest")
    except SignatureError as exc:  # the platform may store anything there: a refusal naming it, not a crash
        raise ResultVerificationError(str(exc)) from None
    # Signed by this owner is not enough: the platform may store another of its batches' manifests here.
    _expect(manifest_key, "tenant", tenant, manifest.get("tenant"))
    _expect(manifest_key, "batch_id", batch_id, manifest.get("batch_id"))
    return manifest


def _get(store: ObjectStore, key: str, what: str) -> bytes:
    """An object the platform should have written; its absence is a verification failure, not a crash."""
    data = store.get_if_exists(key)
    if data is None:
        raise ResultVerificationError(f"s3://{store.bucket}/{key}: expected {what}, found nothing")
    return data


def _json_object(data: bytes, key: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ResultVerificationError(f"{key}: expected JSON, got undecodable bytes ({exc})") from exc
    if not isinstance(doc, dict):
        raise ResultVerificationError(f"{key}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _result_manifest(store: ObjectStore, key: str) -> dict[str, Any]:
    """The platform-written result manifest, checked for the shape the owner relies on (nothing else)."""
    doc = _json_object(_get(store, key, "the batch's result manifest"), key)
    shards = doc.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("receipt_key"), str)
                                               for s in shards):
        raise ResultVerificationError(f"{key}: shards expected a list of {{receipt_key: str, ...}}, "
                                      f"got {str(shards)[:120]}")
    return doc


def _check_granted(where: str, granted: dict[str, Any], receipt: VerifiedReceipt) -> None:
    """The receipt's worker ran the measured code and configuration this owner granted (its broker's grant)."""
    claims = receipt.claims
    if claims.measurement not in granted.get("measurements", []):
        raise ResultVerificationError(f"{where}: measurement expected one of {granted.get('measurements')} "
                                      f"(your grant), got {claims.measurement}")
    config = config_digest_from_claims(claims.host_data or "")
    if config not in granted.get("config_digests", []):
        raise ResultVerificationError(f"{where}: worker configuration (host_data) expected one of "
                                      f"{granted.get('config_digests')} (your grant), got {config}")


def _check_owner_session(where: str, manifest: dict[str, Any], payload: dict[str, Any]) -> None:
    """The receipt signs a session at this owner's broker: the one its batch's keys came from, whose releases
    the auditor ties to this worker by the digests signed there (`wire.receipt`)."""
    broker = manifest["key_broker"]["name"]
    sessions = parse_sessions(payload)
    if not any(s.broker == broker and s.claims_digests for s in sessions):
        raise ResultVerificationError(f"{where}: sessions expected a session at your broker {broker!r} with its claims "
                                      f"digests, got brokers {[s.broker for s in sessions]}")


def _unverified_evidence_digest(token: str) -> str:
    return str(unverified_payload(token, what="receipt").get("evidence_sha256", ""))


def _check_coverage(manifest: dict[str, Any], payloads: list[dict[str, Any]]) -> None:
    """Every row group of every signed input is covered by exactly one receipt, naming the input by the file id
    the manifest lists (the worker found it in the file's authenticated footer)."""
    expected = {(o["key"], o["file_id"], g) for o in manifest["objects"] for g in range(o["row_groups"])}
    seen: list[tuple[str, str, int]] = []
    for p in payloads:
        start, end = p["input"]["row_groups"]
        seen.extend((p["input"]["key"], p["input"].get("file_id"), g) for g in range(start, end))
    if len(seen) != len(set(seen)) or set(seen) != expected:
        raise ResultVerificationError(
            f"receipts: expected each of {len(expected)} input row groups exactly once, got {len(seen)} "
            f"covering {len(set(seen) & expected)}")


def _check_rows(manifest: dict[str, Any], rows: int, distinct: int) -> None:
    """`rows` results with `distinct` ids (the contract's id column: message_id, file, ...): every input once."""
    expected = sum(o["rows"] for o in manifest["objects"])
    if rows != expected or distinct != expected:
        raise ResultVerificationError(f"results: expected {expected} distinct messages, got {rows} rows with "
                                      f"{distinct} distinct ids")


def _expect(where: str, field: str, expected: Any, actual: Any) -> None:
    if expected != actual:
        raise ResultVerificationError(f"{where}: {field} expected {expected!r}, got {actual!r}")
