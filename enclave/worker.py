"""The confidential worker's core: attest, obtain keys, decrypt, score, encrypt, sign a receipt.

Everything secret (released keys, the model, emails, scores) stays inside this process's memory;
what leaves is ciphertext, digests, counts and signed receipts.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import secrets
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import OKPKey

from enclave.kbs_client import AttestedSession
from enclave.pme import EncryptedParquet, KeyWrapper, PmeKeys
from enclave.receipts import evidence_document, sign_receipt
from enclave.scoring import ModelSession, session_for
from enclave.shard import ShardSpec
from enclave.signing import canonical_json
from enclave.tee import EvidenceProvider, SimulatedSnpProvider

log = logging.getLogger(__name__)

INPUT_COLUMNS = ("message_id", "text")
RESULT_ROW_GROUP_SIZE = 65_536
BATCH_KEY_CONTEXTS = 8  # batches whose key contexts a worker keeps; older ones are forgotten


class ShardInputError(ValueError):
    """The shard's input does not match what the signed manifest promised."""


class ModelIntegrityError(ValueError):
    """The decrypted model is not the one the owner chose."""


class PlaintextRefused(PermissionError):
    """A plaintext (baseline) shard was sent to a worker on a real TEE."""


@dataclass(frozen=True)
class ScoredShard:
    """A finished shard, ready to upload: only ciphertext and signed metadata."""

    output_key: str  # per attempt: concurrent attempts never overwrite each other's output
    output: bytes
    output_sha256: str
    rows: int
    receipt: str
    evidence: dict[str, Any]
    evidence_sha256: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _BatchKeys(KeyWrapper):
    """PME keys of one batch, through the owner's broker, with the batch's grant context."""

    def __init__(self, session: AttestedSession, batch_id: str, model_digest: str) -> None:
        self._session = session
        self._context = {"batch_id": batch_id, "model_digest": model_digest}

    def wrap(self, key_id: str, key: bytes) -> bytes:
        return self._session.wrap(key_id, key, **self._context)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        return self._session.unwrap(key_id, wrapped, **self._context)


def _row_groups(spec: ShardSpec) -> range:
    return range(spec.row_group_start, spec.row_group_end)


def _scored(spec: ShardSpec, table: pa.Table, model: ModelSession) -> pa.Table:
    probabilities, labels = model.score(table.column("text").to_pylist())
    return pa.table(
        {
            "message_id": table.column("message_id"),
            "spam_probability": pa.array(probabilities, pa.float32()),
            "label": pa.array(labels, pa.int8()),
            "model_digest": pa.array([spec.model_digest] * table.num_rows, pa.string()).dictionary_encode(),
        }
    )


class Enclave:
    """One per worker process: its evidence provider, attested broker sessions and model cache."""

    def __init__(self, provider: EvidenceProvider, *, name: str | None = None) -> None:
        self._provider = provider
        self._sessions: dict[str, AttestedSession] = {}
        self._batch_keys: OrderedDict[tuple[str, str, str], PmeKeys] = OrderedDict()
        self._lock = threading.Lock()
        self.name = name or socket.gethostname()
        self._baseline_key = OKPKey.generate_key("Ed25519", private=True)  # unattested: baseline runs only

    def session(self, broker_url: str, party: str = "") -> AttestedSession:
        """The attested session with one broker, created (and attested) on first use; `party` names it in errors."""
        with self._lock:
            if broker_url not in self._sessions:
                self._sessions[broker_url] = AttestedSession(broker_url, self._provider)
            session = self._sessions[broker_url]
            session.party = party or session.party
            return session

    def attest(self, broker_urls: list[str]) -> dict[str, Any]:
        """Attest to each broker (a still-valid attestation is reused); returns what the platform may see."""
        verdicts = []
        for url in broker_urls:
            result = self.session(url).current()
            claims = result.claims
            # The digest the broker logged for this attestation: it names this worker in the audit log.
            verdicts.append({"broker": url, "accepted": True, "tee": claims.get("tee"),
                             "measurement": claims.get("measurement"), "root": claims.get("root"),
                             "claims_digest": sha256_hex(canonical_json(claims)), "expires_at": result.expires_at})
        return {"worker": self.name, "verdicts": verdicts}

    def score_shard(
        self,
        spec: ShardSpec,
        input_parquet: bytes,
        card: dict[str, Any],
        model_ciphertext: Callable[[], bytes],
    ) -> ScoredShard:
        """Decrypt the shard's rows, score them with the chosen model, encrypt results, sign a receipt."""
        if sha256_hex(input_parquet) != spec.input_sha256:
            raise ShardInputError(
                f"input {spec.input_key}: expected sha256 {spec.input_sha256} (from the signed manifest), "
                f"got {sha256_hex(input_parquet)}"
            )
        if card.get("digest") != spec.model_digest:
            raise ModelIntegrityError(
                f"model card {spec.model_name}:{spec.model_version}: expected digest {spec.model_digest} "
                f"(the owner's choice), got {card.get('digest')}"
            )
        output_key = spec.output_key.removesuffix(".parquet") + f".{secrets.token_hex(8)}.parquet"
        if spec.protection == "none":
            return self._score_plaintext(spec, output_key, input_parquet, model_ciphertext)
        owner = self.session(spec.owner_broker_url, "owner")
        keys = self._keys_for(spec, owner)
        model = session_for(spec.model_digest, lambda: self._decrypt_model(spec, card, model_ciphertext()))
        with EncryptedParquet(input_parquet, keys) as source:
            table = source.read_row_groups(_row_groups(spec), INPUT_COLUMNS)
        results = _scored(spec, table, model)
        # Results go back under the broker that released the inputs: only the real owner broker
        # could have unwrapped them, so the platform cannot redirect results to a key it holds.
        output = keys.write(results, footer_key=spec.result_key, column_key=spec.result_key,
                            row_group_size=RESULT_ROW_GROUP_SIZE)
        return self._receipted(spec, owner, output_key, input_parquet, output, table.num_rows)

    def _keys_for(self, spec: ShardSpec, owner: AttestedSession) -> PmeKeys:
        """One PME key context per batch, so its shards on this worker share unwrapped key-encryption keys."""
        key = (spec.owner_broker_url, spec.batch_id, spec.model_digest)
        with self._lock:
            if key not in self._batch_keys:
                self._batch_keys[key] = PmeKeys(_BatchKeys(owner, spec.batch_id, spec.model_digest))
            self._batch_keys.move_to_end(key)
            while len(self._batch_keys) > BATCH_KEY_CONTEXTS:
                self._batch_keys.popitem(last=False)[1].close()
            return self._batch_keys[key]

    def _score_plaintext(
        self, spec: ShardSpec, output_key: str, source: bytes, model_bytes: Callable[[], bytes]
    ) -> ScoredShard:
        """The benchmark's baseline: same reading, scoring and writing, without PME, brokers or evidence.

        Only on the simulated TEE: on a real one, the platform could otherwise run a released model on
        its own inputs and read the scores.
        """
        if not isinstance(self._provider, SimulatedSnpProvider):
            raise PlaintextRefused(
                f"shard.protection: expected 'pme' on a real TEE, got 'none' (plaintext is for benchmarks on the "
                f"simulated TEE only); batch {spec.batch_id} refused"
            )
        model = session_for(spec.model_digest, model_bytes)
        table = pq.ParquetFile(pa.BufferReader(source)).read_row_groups(_row_groups(spec), INPUT_COLUMNS)
        sink = io.BytesIO()
        pq.write_table(_scored(spec, table, model), sink, row_group_size=RESULT_ROW_GROUP_SIZE)
        output = sink.getvalue()
        receipt = sign_receipt(self._baseline_key, spec=spec, output_key=output_key, input_sha256=sha256_hex(source),
                               output_sha256=sha256_hex(output), rows=table.num_rows, evidence_sha256="",
                               worker=self.name)
        return ScoredShard(output_key, output, sha256_hex(output), table.num_rows, receipt, {}, "")

    def _receipted(
        self, spec: ShardSpec, owner: AttestedSession, output_key: str, source: bytes, output: bytes, rows: int
    ) -> ScoredShard:
        if owner.evidence is None or owner.runtime_data is None:
            raise RuntimeError("receipt: expected an attested owner session, got none")
        evidence = evidence_document(owner.evidence, owner.runtime_data)
        evidence_sha256 = sha256_hex(canonical_json(evidence))
        output_sha256 = sha256_hex(output)
        receipt = sign_receipt(
            OKPKey.import_key(owner.receipt_private_key),
            spec=spec,
            output_key=output_key,
            input_sha256=sha256_hex(source),
            output_sha256=output_sha256,
            rows=rows,
            evidence_sha256=evidence_sha256,
            worker=self.name,
        )
        log.info(
            "scored shard %d of batch %s: %d rows, output sha256 %s",
            spec.shard_index, spec.batch_id, rows, output_sha256,
        )
        return ScoredShard(output_key, output, output_sha256, rows, receipt, evidence, evidence_sha256)

    def _decrypt_model(self, spec: ShardSpec, card: dict[str, Any], ciphertext: bytes) -> bytes:
        provider = self.session(card["broker_url"], "provider")
        dek = provider.unwrap(
            card["key_id"],
            base64.b64decode(card["wrapped_dek"]),
            batch_id=spec.batch_id,
            model_digest=spec.model_digest,
        )
        aad = f"{card['name']}:{card['version']}".encode()
        try:
            onnx_bytes = AESGCM(dek).decrypt(ciphertext[:12], ciphertext[12:], aad)
        except InvalidTag as exc:
            raise ModelIntegrityError(
                f"model {card['name']}:{card['version']}: expected ciphertext authenticated by its data key, "
                "got a tag mismatch (the object was altered or belongs to another model)"
            ) from exc
        digest = "sha256:" + sha256_hex(onnx_bytes)
        if digest != spec.model_digest:
            raise ModelIntegrityError(
                f"model {card['name']}:{card['version']}: expected digest {spec.model_digest} "
                f"(the owner's choice), got {digest}"
            )
        return onnx_bytes
