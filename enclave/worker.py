"""The confidential worker's core: attest, obtain keys, decrypt, score, encrypt, sign a receipt.

Everything secret (released keys, the model, emails, scores) stays inside this process's memory;
what leaves is ciphertext, digests, counts and signed receipts and usage records.

Whom the worker trusts comes only from its measured configuration (`wire.worker_config`): brokers are
named in shard specs and model cards, and their URL and TLS CA are looked up there. Per batch, the model
key is released afresh against the owner broker's model grant; results are wrapped under the batch's
result key, released by the owner's broker, never under a key the platform could substitute.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import logging
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import OKPKey

from enclave.kbs_client import AttestedSession, EnclaveKeys
from enclave.limits import LimitExceeded, RunLimits
from enclave.pme import EncryptedParquet, KeyWrapper, NotEncryptedError, PmeKeys
from enclave.ranged import RangeSource, open_ranged
from enclave.receipts import BrokerSession, evidence_document, sign_receipt, sign_usage
from enclave.runner import ContractSession, contract_session_for
from enclave.signing import canonical_json, sign_json, unverified_payload
from enclave.tee import EvidenceProvider
from enclave.training import encrypt_model, joint_key, sign_training_receipt, train_job, tuned_card
from wire.card import ModelCard, verify_card
from wire.keywrap import wrap_key
from wire.recipe import RecipeCard, verify_recipe_card
from wire.shard import INPUT_BINDING_KEY, LIMITS_VARIABLE, ShardSpec, input_binding
from wire.training import TUNED_CARD_TYPE, TrainingSpec, TunedCard
from wire.worker_config import BrokerIdentity, WorkerConfig

log = logging.getLogger(__name__)

INPUT_COLUMNS = ("message_id", "text")  # what a shard reads without a card (the spam contract's columns)
RESULT_ROW_GROUP_SIZE = 65_536
# Row groups read at a time (1,000 emails of the owner's 200-row groups): the next slice is fetched and decrypted
# while this one is scored; a shard's memory holds two slices of input, not its whole input twice.
SLICE_ROW_GROUPS = 5
BATCH_CONTEXTS = 8  # batches whose key contexts and model authorisations a worker keeps; older ones are forgotten


class ShardInputError(ValueError):
    """The shard's input does not match what the signed manifest promised."""


class ModelIntegrityError(ValueError):
    """The decrypted model is not the one the owner chose, or its card is not the provider's."""


class TunedModelRefused(PermissionError):
    """A tuned model named for a batch it does not belong to (another tenant's, another owner broker's)."""


class PlaintextRefused(PermissionError):
    """A plaintext (baseline) shard was sent where the configuration or the model does not allow one."""


class UsageExceeded(PermissionError):
    """More rows of a batch than its grant counted were sent to this worker."""


@dataclass(frozen=True)
class ScoredShard:
    """A finished shard, ready to upload: only ciphertext and signed metadata."""

    output_key: str  # per attempt: concurrent attempts never overwrite each other's output
    output: bytes
    output_sha256: str
    rows: int
    receipt: str
    usage: str  # signed usage record for the provider (rows, no content); "" for the plaintext baseline
    evidence: dict[str, Any]
    evidence_sha256: str
    # Seconds per phase inside the worker (keys, read, score, write, sign): for `cscore bench`. Durations only,
    # which the platform could time from outside anyway.
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class TrainedJob:
    """A finished training job, ready to upload: the tuned model's ciphertext and signed metadata only."""

    model_key: str
    model: bytes
    card: str  # the tuned model's card, signed by the enclave's receipt key
    receipt: str
    metrics: dict[str, Any]
    evidence: dict[str, Any]
    evidence_sha256: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _BatchKeys(KeyWrapper):
    """PME keys of one batch: inputs unwrapped by the owner's broker under the batch grant, results wrapped
    locally under the batch's result key, which that broker released to this attested session."""

    def __init__(self, session: AttestedSession, spec: ShardSpec) -> None:
        self._session = session
        self._context = {"batch_id": spec.batch_id, "model_digest": spec.model_digest}
        self._result_key_id = spec.result_key
        self._released: tuple[bytes, int] | None = None
        self._lock = threading.Lock()

    def wrap(self, key_id: str, key: bytes) -> bytes:
        if key_id != self._result_key_id:
            raise PermissionError(f"wrap: expected the batch's result key {self._result_key_id}, got {key_id}")
        with self._lock:
            if self._released is None:
                self._released = self._session.release(key_id, **self._context)
            master, version = self._released
        return wrap_key(master, key_id, key, version)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        return self._session.unwrap(key_id, wrapped, **self._context)


class _UnwrapOnly(KeyWrapper):
    """A training job's PME key client: data keys unwrapped by the owner's broker under the job's grant."""

    def __init__(self, session: AttestedSession, context: dict[str, str]) -> None:
        self._session, self._context = session, context

    def wrap(self, key_id: str, key: bytes) -> bytes:
        raise PermissionError(f"wrap {key_id}: a training job writes no Parquet")

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        return self._session.unwrap(key_id, wrapped, **self._context)


@dataclass
class _Batch:
    """What a worker keeps per batch: its PME key context, the model grant's row count, rows scored."""

    keys: PmeKeys
    granted_rows: int = 0
    scored_rows: int = 0
    model_dek: bytes | None = None  # released by the provider's broker for this batch; memory only


def _row_groups(spec: ShardSpec) -> range:
    return range(spec.row_group_start, spec.row_group_end)


def read_shard(spec: ShardSpec, source: RangeSource, keys: PmeKeys, card: ModelCard | None = None) -> pa.Table:
    """The shard's rows, read by ranges: the footer and the shard's own row groups. Columns: those the card's
    contract reads (its id first), or (message_id, text) without a card. Checks as `ShardReader`."""
    with ShardReader(spec, source, keys, card) as reader:
        return pa.concat_tables(reader.slices())


class ShardReader:
    """A shard's input opened by ranges (the footer, then the shard's own row groups), read in slices.

    Integrity without the whole file: PME authenticates the footer and every page, and the footer's binding
    must name this tenant, batch, object key and the manifest's file id (ShardInputError otherwise), so the
    platform can serve neither another object of the batch nor another batch's under this key. `rows` (the
    shard's row count) comes from that authenticated footer, before any row is read.
    """

    def __init__(self, spec: ShardSpec, source: RangeSource, keys: PmeKeys, card: ModelCard | None = None) -> None:
        try:
            self._parquet = EncryptedParquet(open_ranged(source), keys)
        except NotEncryptedError as exc:
            raise ShardInputError(f"input {spec.input_key}: {exc}; the owner's inputs are all PME-encrypted") from None
        try:
            _check_binding(spec, self._parquet.key_value_metadata.get(INPUT_BINDING_KEY.encode()))
            if spec.row_group_end > self._parquet.num_row_groups:
                raise ShardInputError(f"input {spec.input_key}: expected row groups [{spec.row_group_start}, "
                                      f"{spec.row_group_end}), the file has {self._parquet.num_row_groups}")
            self.columns = INPUT_COLUMNS if card is None else _input_columns(spec, card, self._parquet.schema)
            self.rows = self._parquet.rows_in(_row_groups(spec))
        except BaseException:
            self._parquet.close()
            raise
        self._groups = list(_row_groups(spec))

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._parquet.close()

    def slices(self, row_groups: int = SLICE_ROW_GROUPS) -> Iterator[pa.Table]:
        """The shard's rows in order, `row_groups` row groups at a time; the next slice is fetched and decrypted in
        a background thread while the caller works on this one (pyarrow and the socket release the GIL)."""
        cuts = [self._groups[i:i + row_groups] for i in range(0, len(self._groups), row_groups)]
        with ThreadPoolExecutor(1, thread_name_prefix="shard-read") as pool:
            pending = pool.submit(self._parquet.read_row_groups, cuts[0], self.columns)
            for following in [*cuts[1:], None]:
                table = pending.result()
                if following is not None:
                    pending = pool.submit(self._parquet.read_row_groups, following, self.columns)
                yield table


def _check_binding(spec: ShardSpec, found: bytes | None) -> None:
    expected = input_binding(spec.tenant, spec.batch_id, spec.input_key, spec.input_file_id)
    if found != expected.encode():
        actual = found.decode(errors="replace")[:300] if found else "no binding"
        raise ShardInputError(
            f"input {spec.input_key}: expected the owner's file bound to {expected} (footer entry "
            f"{INPUT_BINDING_KEY}, authenticated by PME), got {actual}; the object under this key is not the one "
            "the signed manifest lists: restore it or resubmit the batch")


def _scored(spec: ShardSpec, table: pa.Table, model: ContractSession, digits: int | None) -> pa.Table:
    """The result table the card's contract names (its id, then each output's column), and the model digest."""
    contract = model.contract
    columns = {name: table.column(name).to_pylist() for name in contract.input_columns}
    limits = RunLimits(ms_per_row=spec.max_ms_per_row, memory_mib=spec.max_memory_mib)
    try:
        results = model.results(table.column(contract.id_column).combine_chunks(), columns, digits, limits)
    except LimitExceeded as exc:
        raise LimitExceeded(f"shard {spec.shard_index} of batch {spec.batch_id}, model {spec.model_name}:"
                            f"{spec.model_version}: {exc}; choose a lighter model, or ask the platform's operator "
                            f"to raise {LIMITS_VARIABLE}") from None
    results["model_digest"] = pa.array([spec.model_digest] * table.num_rows, pa.string()).dictionary_encode()
    return pa.table(results)


def _input_columns(spec: ShardSpec, card: ModelCard, schema: pa.Schema) -> list[str]:
    """The columns the card's contract reads; a shard whose file lacks one is refused naming it."""
    wanted = [card.contract.id_column, *card.contract.input_columns]
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise ShardInputError(f"input {spec.input_key}: expected columns {wanted} (model {card.name}:{card.version}'s "
                              f"contract), column {missing[0]!r} is missing; submit the data for this model's inputs")
    return wanted


class Enclave:
    """One per worker process: its configuration, evidence provider, attested broker sessions, model cache."""

    def __init__(self, provider: EvidenceProvider, config: WorkerConfig, *, name: str | None = None) -> None:
        self._provider = provider
        self.config = config
        self._sessions: dict[str, AttestedSession] = {}
        self._keys = EnclaveKeys()  # one tee key and receipt key for every broker session of this process
        self._batches: OrderedDict[tuple[str, str, str], _Batch] = OrderedDict()
        self._lock = threading.Lock()
        self.name = name or socket.gethostname()
        self._baseline_key = OKPKey.generate_key("Ed25519", private=True)  # unattested: baseline runs only

    def session(self, broker: BrokerIdentity) -> AttestedSession:
        """The attested session with one configured broker, created (and attested) on first use."""
        party = "owner" if broker in self.config.owners else "provider"  # names it when it does not answer
        with self._lock:
            if broker.name not in self._sessions:
                self._sessions[broker.name] = AttestedSession(broker.url, self._provider, ca_pem=broker.ca_pem,
                                                              keys=self._keys, party=party, broker_name=broker.name)
            return self._sessions[broker.name]

    def attest(self, broker_names: list[str], batch_id: str = "") -> dict[str, Any]:
        """Attest to each named broker (a still-valid attestation is reused) for `batch_id`, which a new
        attestation binds and the broker logs; returns what the platform may see."""
        verdicts = []
        for name in broker_names:
            broker = self._broker(name)
            result = self.session(broker).current(batch_id or None)
            claims = result.claims
            # The digest the broker logged for this attestation: it names this worker in the audit log.
            verdicts.append({"broker": broker.name, "url": broker.url, "accepted": True, "tee": claims.get("tee"),
                             "measurement": claims.get("measurement"), "root": claims.get("root"),
                             "host_data": claims.get("host_data"), "claims_digest": sha256_hex(canonical_json(claims)),
                             "expires_at": result.expires_at})
        return {"worker": self.name, "config_digest": self.config.digest_hex(), "verdicts": verdicts}

    def _broker(self, name: str) -> BrokerIdentity:
        owners = {b.name: b for b in self.config.owners}
        return owners[name] if name in owners else self.config.provider(name)

    def score_shard(
        self,
        spec: ShardSpec,
        source: RangeSource,
        card_token: str,
        model_object: Callable[[str], bytes],
    ) -> ScoredShard:
        """Decrypt the shard's rows, score them with the chosen model, encrypt results, sign a receipt.

        `source` serves the input object by byte ranges: a PME shard reads its footer and its own row groups
        only (`read_shard`); the plaintext baseline reads and hashes the whole file.
        `card_token` is the model card as stored (a JWS); `model_object(key)` fetches the model's object.
        Raises ShardInputError, ModelIntegrityError, PlaintextRefused, UsageExceeded, wire FormatError, KbsError.
        """
        clock = _Clock()
        card, tuned = self._scoring_card(spec, card_token)
        output_key = spec.output_key.removesuffix(".parquet") + f".{secrets.token_hex(8)}.parquet"
        if spec.protection == "none" or card.protection == "none":
            return self._score_plaintext(spec, card, output_key, source, model_object, clock)
        owner = self.session(self.config.owner(spec.owner_broker))
        batch = self._batch(spec, owner)
        model = self._authorised_model(spec, card, owner, batch, model_object, tuned)
        clock.lap("keys")  # attestation, model release and load when not cached
        with ShardReader(spec, source, batch.keys, card) as reader:
            self._count_rows(spec, batch, reader.rows)  # from the authenticated footer, before any row is scored
            try:
                results = pa.concat_tables(self._scored_slices(spec, reader, model, card, clock))
            except Exception:
                self._count_rows(spec, batch, -reader.rows)  # no score left the enclave: the rows stay granted
                raise
        output = batch.keys.write(results, footer_key=spec.result_key, column_key=spec.result_key,
                                  row_group_size=RESULT_ROW_GROUP_SIZE)
        clock.lap("write")
        scored = self._receipted(spec, card, owner, output_key, output, results.num_rows)
        clock.lap("sign")
        return dataclasses.replace(scored, seconds=clock.laps)

    @staticmethod
    def _scored_slices(spec: ShardSpec, reader: ShardReader, model: ContractSession, card: ModelCard,
                       clock: _Clock) -> Iterator[pa.Table]:
        """Each slice's results in order; "read" laps the wait for a slice (the rest overlaps scoring)."""
        for table in reader.slices():
            clock.lap("read")
            yield _scored(spec, table, model, card.probability_digits)
            clock.lap("score")

    def train(self, spec: TrainingSpec, data: bytes, recipe_card_token: str,
              recipe_object: Callable[[str], bytes]) -> TrainedJob:
        """Train the owner's tuned model: recipe key from the provider's broker against the owner broker's grant
        for this job (naming the recipe's digest), data keys and the owner's key share from the owner's broker
        under the same grant; the model is encrypted under both shares (`enclave.training.joint_key`).

        Raises TrainingInputError, wire FormatError, KbsError.
        """
        card = self._verified_recipe_card(spec, recipe_card_token)
        owner = self.session(self.config.owner(spec.owner_broker))
        provider = self.session(self.config.provider(card.broker))
        context = {"batch_id": spec.job_id, "model_digest": spec.recipe_digest}
        grant = owner.model_grant(**context)
        recipe_dek = provider.unwrap(card.key_id, base64.b64decode(card.wrapped_dek), **context, grant=grant)
        data_keys = _UnwrapOnly(owner, context)
        trained = train_job(spec, data, data_keys, card, recipe_dek, recipe_object(card.object_key))
        owner_share = owner.unwrap(spec.owner_share_key, base64.b64decode(spec.owner_share_wrapped), **context)
        ciphertext = encrypt_model(trained.onnx_bytes, joint_key(owner_share, recipe_dek, model=spec.model),
                                   model=spec.model)
        if owner.evidence is None or owner.runtime_data is None:
            raise RuntimeError("training receipt: expected an attested owner session, got none")
        evidence = evidence_document(owner.evidence, owner.runtime_data)
        evidence_sha256 = sha256_hex(canonical_json(evidence))
        key = OKPKey.import_key(owner.receipt_private_key)
        tuned = sign_json(tuned_card(spec, trained, card, evidence_sha256=evidence_sha256), key)
        receipt = sign_training_receipt(key, spec=spec, trained=trained, evidence_sha256=evidence_sha256,
                                        worker=self.name, sessions=self._sessions_for(spec.job_id))
        log.info("trained %s for %s (job %s): model %s", spec.model, spec.tenant, spec.job_id, trained.digest)
        return TrainedJob(spec.prefix + "model.onnx.enc", ciphertext, tuned, receipt,
                          dict(trained.metrics.__dict__), evidence, evidence_sha256)

    def _verified_recipe_card(self, spec: TrainingSpec, token: str) -> RecipeCard:
        """The recipe card, verified against the card keys of the provider it names in the measured configuration."""
        provider = unverified_payload(token, what="recipe card").get("broker")
        keys = [k for p in self.config.providers if provider in (None, p.name) for k in p.card_keys]
        return verify_recipe_card(token, keys, what=f"recipes/{spec.recipe_name}/{spec.recipe_version}/card.jws")

    def _scoring_card(self, spec: ShardSpec, token: str) -> tuple[ModelCard, TunedCard | None]:
        """A provider's card, verified against its card keys; or a tuned model's card, checked to be this batch's
        tenant's and owner broker's (its signature is the training enclave's: the owner checked it; here the
        key does: only an enclave holding both shares could write a ciphertext that opens under them)."""
        payload = unverified_payload(token, what="model card")
        if payload.get("type") != TUNED_CARD_TYPE:
            return self._verified_card(spec, token), None
        tuned = TunedCard.parse(payload)
        if tuned.tenant != spec.tenant or tuned.owner_broker != spec.owner_broker:
            raise TunedModelRefused(
                f"tuned model {tuned.reference}: belongs to tenant {tuned.tenant!r} (owner broker "
                f"{tuned.owner_broker!r}); batch {spec.batch_id} is tenant {spec.tenant!r}'s (owner broker "
                f"{spec.owner_broker!r}): a tuned model scores only its owner's batches")
        card = tuned.model_card()
        if (card.name, card.version, card.digest) != (spec.model_name, spec.model_version, spec.model_digest):
            raise ModelIntegrityError(
                f"tuned model card {card.name}:{card.version} ({card.digest}): expected {spec.model_name}:"
                f"{spec.model_version} with digest {spec.model_digest} (the owner's choice)")
        return card, tuned

    def _verified_card(self, spec: ShardSpec, token: str) -> ModelCard:
        """The card, verified against the card keys of the provider it names in the measured configuration."""
        claimed = unverified_payload(token, what="model card")
        provider = claimed.get("broker")
        keys = [k for p in self.config.providers if provider in (None, p.name) for k in p.card_keys]
        card = verify_card(token, keys, what=f"models/{spec.model_name}/{spec.model_version}/card.jws")
        if card.digest != spec.model_digest or (card.name, card.version) != (spec.model_name, spec.model_version):
            raise ModelIntegrityError(
                f"model card {card.name}:{card.version} ({card.digest}): expected {spec.model_name}:"
                f"{spec.model_version} with digest {spec.model_digest} (the owner's choice)")
        return card

    def _batch(self, spec: ShardSpec, owner: AttestedSession) -> _Batch:
        """One key context per batch and model, so its shards on this worker share unwrapped key-encryption keys."""
        # The model's digest too: a model key released for this batch must never stand for another model's.
        key = (spec.owner_broker, spec.batch_id, spec.model_digest)
        with self._lock:
            if key not in self._batches:
                self._batches[key] = _Batch(PmeKeys(_BatchKeys(owner, spec)))
            self._batches.move_to_end(key)
            while len(self._batches) > BATCH_CONTEXTS:
                self._batches.popitem(last=False)[1].keys.close()
            return self._batches[key]

    def _authorised_model(self, spec: ShardSpec, card: ModelCard, owner: AttestedSession, batch: _Batch,
                          model_object: Callable[[str], bytes], tuned: TunedCard | None = None) -> ContractSession:
        """The model for this batch: the provider's broker releases its key against this batch's grant,
        every batch afresh, so a revoked measurement or owner stops the next batch even with a warm cache.

        A tuned model's key is rebuilt from both shares: the provider's (its recipe key, released as above)
        and the owner's, which the owner's broker unwraps only when this batch's grant names its key."""
        if card.broker is None or card.key_id is None or card.wrapped_dek is None:
            raise ModelIntegrityError(f"model card {card.name}:{card.version}: expected an encrypted model")
        provider = self.session(self.config.provider(card.broker))
        with self._lock:
            dek = batch.model_dek
        if dek is None:
            grant = owner.model_grant(batch_id=spec.batch_id, model_digest=spec.model_digest)
            dek = provider.unwrap(card.key_id, base64.b64decode(card.wrapped_dek), batch_id=spec.batch_id,
                                  model_digest=spec.model_digest, grant=grant)
            if tuned is not None:
                share = owner.unwrap(tuned.owner_key_id, base64.b64decode(tuned.owner_wrapped),
                                     batch_id=spec.batch_id, model_digest=spec.model_digest)
                dek = joint_key(share, dek, model=tuned.reference)
            rows = int(unverified_payload(grant, what="model grant").get("rows", 0))
            with self._lock:
                batch.granted_rows, batch.model_dek = rows, dek
        released = dek
        # The cache is reached only after this batch's own release: a warm cache skips decryption, not consent.
        # Its namespace is whose keys that release was: another provider's card naming the same digest (public in
        # every card), or a tuned card naming another share, must open the bytes itself, never reach a cached one.
        namespace = _tuned_namespace(tuned) if tuned is not None else f"provider:{card.broker}"
        return contract_session_for(card.digest, card.contract, lambda: _decrypt_model(card, released, model_object),
                                    namespace=namespace)

    def _count_rows(self, spec: ShardSpec, batch: _Batch, rows: int) -> None:
        with self._lock:
            if batch.scored_rows + rows > batch.granted_rows:
                raise UsageExceeded(f"batch {spec.batch_id}: the owner's grant counts {batch.granted_rows} rows; "
                                    f"{batch.scored_rows} scored here already, {rows} more refused")
            batch.scored_rows += rows

    def _score_plaintext(self, spec: ShardSpec, card: ModelCard, output_key: str, input_object: RangeSource,
                         model_object: Callable[[str], bytes], clock: _Clock) -> ScoredShard:
        """The benchmark's baseline: same reading, scoring and writing, without PME, brokers or evidence.

        Only where the measured configuration says so (simulated TEE), and only for a model its provider
        published unencrypted: otherwise the platform could score a confidential model on its own inputs.
        """
        if spec.protection != "none":  # an encrypted shard, naming a model published unencrypted
            raise PlaintextRefused(f"model {card.name}:{card.version}: expected an encrypted model for "
                                   f"shard.protection {spec.protection!r}, got card.protection 'none'; "
                                   f"batch {spec.batch_id} refused")
        if not self.config.insecure_plaintext_baseline:
            raise PlaintextRefused(f"shard.protection: expected 'pme', got 'none': this worker's configuration "
                                   f"forbids the plaintext baseline; batch {spec.batch_id} refused")
        if card.protection != "none":
            raise PlaintextRefused(f"model {card.name}:{card.version}: expected a model published unencrypted "
                                   f"(card.protection 'none') for a plaintext shard, got card.protection "
                                   f"{card.protection!r}")
        model = contract_session_for(card.digest, card.contract, lambda: _plain_model(card, model_object),
                                     namespace="plaintext")
        clock.lap("keys")
        source = input_object.read_all()  # the baseline keeps the whole-file hash: no PME authenticates it
        if sha256_hex(source) != spec.input_sha256:
            raise ShardInputError(f"input {spec.input_key}: expected sha256 {spec.input_sha256} (from the signed "
                                  f"manifest), got {sha256_hex(source)}")
        parquet = pq.ParquetFile(pa.BufferReader(source))
        table = parquet.read_row_groups(_row_groups(spec), _input_columns(spec, card, parquet.schema_arrow))
        clock.lap("read")
        results = _scored(spec, table, model, card.probability_digits)
        clock.lap("score")
        sink = io.BytesIO()
        pq.write_table(results, sink, row_group_size=RESULT_ROW_GROUP_SIZE)
        output = sink.getvalue()
        clock.lap("write")
        receipt = sign_receipt(self._baseline_key, spec=spec, output_key=output_key, input_sha256=sha256_hex(source),
                               input_file_id="", output_sha256=sha256_hex(output), rows=table.num_rows,
                               evidence_sha256="", worker=self.name, sessions=())
        clock.lap("sign")
        return ScoredShard(output_key, output, sha256_hex(output), table.num_rows, receipt, "", {}, "", clock.laps)

    def _receipted(self, spec: ShardSpec, card: ModelCard, owner: AttestedSession, output_key: str,
                   output: bytes, rows: int) -> ScoredShard:
        if owner.evidence is None or owner.runtime_data is None:
            raise RuntimeError("receipt: expected an attested owner session, got none")
        evidence = evidence_document(owner.evidence, owner.runtime_data)
        evidence_sha256 = sha256_hex(canonical_json(evidence))
        output_sha256 = sha256_hex(output)
        key = OKPKey.import_key(owner.receipt_private_key)
        # The input is named by the file id its authenticated footer carries (read_shard checked it).
        receipt = sign_receipt(key, spec=spec, output_key=output_key, input_sha256="",
                               input_file_id=spec.input_file_id, output_sha256=output_sha256, rows=rows,
                               evidence_sha256=evidence_sha256, worker=self.name,
                               sessions=self._sessions_for(spec.batch_id))
        usage = sign_usage(key, spec=spec, provider=card.broker or "", rows=rows, evidence_sha256=evidence_sha256)
        log.info("scored shard %d of batch %s: %d rows, output sha256 %s",
                 spec.shard_index, spec.batch_id, rows, output_sha256)
        return ScoredShard(output_key, output, output_sha256, rows, receipt, usage, evidence, evidence_sha256)


    def _sessions_for(self, batch_id: str) -> list[BrokerSession]:
        """Each broker this batch's key requests went to, with the claims digests they carried: signed in the
        receipt, so the audit ties that broker's releases to this worker without the platform's word."""
        with self._lock:
            sessions = dict(self._sessions)
        return [BrokerSession(name, digests) for name, session in sorted(sessions.items())
                if (digests := session.claims_digests(batch_id))]


class _Clock:
    """Seconds between laps, by phase name."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = round(self.laps.get(phase, 0.0) + now - self._last, 6)
        self._last = now


def _tuned_namespace(tuned: TunedCard) -> str:
    """A tuned model's cache namespace: its reference and both shares, broker, key and wrapped bytes (what opened
    it: the same key id wraps another recipe version's key)."""
    shares = [tuned.owner_broker, tuned.owner_key_id, tuned.owner_wrapped,
              tuned.provider_broker, tuned.provider_key_id, tuned.provider_wrapped]
    return f"tuned:{tuned.reference}:{sha256_hex(canonical_json(shares))}"


def _decrypt_model(card: ModelCard, dek: bytes, model_object: Callable[[str], bytes]) -> bytes:
    ciphertext = model_object(card.object_key)
    try:
        onnx_bytes = AESGCM(dek).decrypt(ciphertext[:12], ciphertext[12:], card.aad)
    except InvalidTag as exc:
        raise ModelIntegrityError(
            f"model {card.name}:{card.version}: expected ciphertext authenticated by its data key, "
            "got a tag mismatch (the object was altered or belongs to another model)") from exc
    return _checked(card, onnx_bytes)


def _plain_model(card: ModelCard, model_object: Callable[[str], bytes]) -> bytes:
    return _checked(card, model_object(card.object_key))


def _checked(card: ModelCard, onnx_bytes: bytes) -> bytes:
    digest = "sha256:" + sha256_hex(onnx_bytes)
    if digest != card.digest:
        raise ModelIntegrityError(f"model {card.name}:{card.version}: expected digest {card.digest} "
                                  f"(the owner's choice), got {digest}")
    return onnx_bytes
