"""A complete audit scenario without Airflow: moto S3, fake brokers with real hash chains, real receipts.

Receipts are signed by an enclave receipt key bound into simulated SEV-SNP evidence, exactly as a worker
does, so verify_receipt runs its whole path (chain, policy, binding, signature).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from attestation import Policy, TrustAnchors
from audit.log import AuditLog, Witness
from enclave.receipts import BrokerSession, evidence_document, sign_receipt
from enclave.signing import canonical_json, generate_signing_key, sign_json
from enclave.tee import SimulatedSnpProvider
from sdk.storage import ObjectStore
from wire.decision_log import GENESIS, LOG_FIELDS, entry_hash
from wire.shard import ShardSpec

MEASUREMENT = bytes(range(48))
OTHER_MEASUREMENT = bytes(48)
MODEL = "sha256:" + "ab" * 32
RECIPE = "sha256:" + "5e" * 32
TENANT = "acme"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MemoryStore:
    """`sdk.storage.ObjectStore`'s reads and writes over a dict; `keys` lists newest first (callers must sort)."""

    bucket = "logs"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def get_if_exists(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def put(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def keys(self, prefix: str) -> list[str]:
        return [k for k in reversed(list(self.objects)) if k.startswith(prefix)]


@dataclass
class FakeBroker:
    """Decision log with the broker's exact chain (sha256(prev || canonical JSON of LOG_FIELDS))."""

    name: str
    log: list[dict[str, Any]] = field(default_factory=list)

    def decide(self, operation: str, decision: str, reason: str, **fields: Any) -> dict[str, Any]:
        claims = fields.pop("claims", None)
        entry = {k: None for k in LOG_FIELDS}
        entry.update(fields, operation=operation, decision=decision, reason=reason, seq=len(self.log) + 1,
                     time=round(time.time(), 6))
        if claims:
            entry["claims_digest"] = _sha(canonical_json(claims))
            entry["measurement"] = claims["measurement"]
        prev = self.log[-1]["hash"] if self.log else GENESIS
        entry.update(prev_hash=prev, hash=entry_hash(prev, entry))
        self.log.append(entry)
        return entry

    def create_key(self, key_id: str, kind: str = "data", measurements: list[str] | None = None) -> None:
        self.decide("admin.create_key", "allow", f"created {kind} key; policy: default; measurements: "
                    f"{measurements or []}", key_id=key_id)

    def grant(self, batch: str, model: str, measurements: list[str], key_ids: list[str],
              config_digests: list[str] | None = None) -> None:
        # With `config_digests`, the reason a broker writes since the measured worker configuration.
        configs = "" if config_digests is None else f"; worker configurations {config_digests}; 20 rows"
        self.decide("admin.grant", "allow", f"grant keys {key_ids} to measurements {measurements}{configs}",
                    batch_id=batch, model_digest=model)

    def decisions(self, after: int = 0, *, verify: bool = True) -> list[dict[str, Any]]:
        return [dict(e) for e in self.log if e["seq"] > after]


@dataclass
class Scenario:
    """Two brokers, a bucket, a state dir; `run_batch` plays one batch through every party."""

    state: Path
    store: ObjectStore
    sim_dir: Path
    owner: FakeBroker = field(default_factory=lambda: FakeBroker("owner"))
    provider: FakeBroker = field(default_factory=lambda: FakeBroker("provider"))
    owner_key: Any = field(default_factory=generate_signing_key)
    last_claims: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key_id in ("acme/footer", "acme/emails", "acme/results"):
            self.owner.create_key(key_id)
        self.provider.create_key("model/spam", kind="model", measurements=[MEASUREMENT.hex()])
        self.provider.create_key("recipe.spam-recipe", kind="model", measurements=[MEASUREMENT.hex()])

    @property
    def brokers(self) -> dict[str, FakeBroker]:
        return {"owner": self.owner, "provider": self.provider}

    def log(self) -> AuditLog:
        return AuditLog.open_dir(self.state / "audit")

    def witnesses(self) -> list[Witness]:
        return [Witness(self.state / "owner", "owner"), Witness(self.state / "provider", "provider")]

    def anchors_policy(self) -> tuple[TrustAnchors, Policy]:
        return TrustAnchors.from_dir(self.sim_dir), Policy.from_dict(
            {"allowed_measurements": [MEASUREMENT.hex()], "allowed_roots": ["simulated"]})

    def run_batch(self, batch: str, *, shards: int = 2, fail: str | None = None, grant: bool = True,
                  measurement: bytes = MEASUREMENT, reuse_attestation: bool = False,
                  host_data: bytes = bytes(32)) -> None:
        """Submit, grant, attest (or reuse the previous batch's attestation), release keys, score shards
        (receipts, by a worker launched with `host_data`), finish (or fail with `fail`)."""
        self._submit(batch, shards)
        if grant:
            self.owner.grant(batch, MODEL, [MEASUREMENT.hex()], ["acme/footer", "acme/emails", "acme/results"])
        claims = {"measurement": measurement.hex(), "tee": "sev-snp", "root": "simulated", "debug": False,
                  "nonce": secrets.token_hex(8)}
        if reuse_attestation:
            claims = self.last_claims
        else:
            for broker in (self.owner, self.provider):  # the batch as the worker bound it into its runtime_data
                broker.decide("attest", "allow", "evidence verified and bound", claims=claims, batch_id=batch)
        self.last_claims = claims
        self.provider.decide("unwrap", "allow", "default model policy holds", key_id="model/spam",
                             batch_id=batch, model_digest=MODEL, claims=claims)
        for key_id in ("acme/footer", "acme/emails"):
            self.owner.decide("unwrap", "allow", "default data policy holds", key_id=key_id, batch_id=batch,
                              model_digest=MODEL, claims=claims)
        if fail:
            self._status(batch, "failed", reason=fail)
            return
        outcomes = [self._shard(batch, i, measurement, claims, host_data) for i in range(shards)]
        prefix = f"results/{TENANT}/{batch}/"
        self.store.put(prefix + "result-manifest.json", json.dumps({
            "type": "cscore.result-manifest/v1", "tenant": TENANT, "batch_id": batch, "rows": 10 * shards,
            "shards": outcomes, "run_id": "run-1",
            "attestation": [{"worker": "w1", "verdicts": [{"broker": "http://owner", "accepted": True,
                                                           "tee": "sev-snp", "measurement": measurement.hex(),
                                                           "root": "simulated",
                                                           "claims_digest": _sha(canonical_json(claims))}]}]})
                       .encode())
        self._status(batch, "succeeded", result_manifest=prefix + "result-manifest.json")

    def run_training(self, job: str, *, version: int = 1, signed_sessions: bool = True,
                     host_data: bytes = bytes(32), config_digests: list[str] | None = None) -> None:
        """A training job as cscore_train runs it: keys and grant for the recipe, attestation, the recipe and
        the owner's data and share released, the enclave's tuned card and receipt (same key as its evidence);
        `signed_sessions=False`: a receipt that signs no broker session (its releases tie to no worker)."""
        from enclave.training import Metrics, TrainedModel, sign_training_receipt, tuned_card
        from wire.recipe import RecipeCard
        from wire.training import TrainingSpec

        data_key, share_key = f"acme.{job}.train", f"acme.{job}.share"
        for key_id in (data_key, share_key):
            self.owner.create_key(key_id)
        self.owner.grant(job, RECIPE, [MEASUREMENT.hex()], [data_key, share_key], config_digests)
        manifest = {"type": "cscore.training-manifest/v1", "tenant": TENANT, "job_id": job,
                    "created_at": int(time.time()),
                    "object": {"key": f"incoming/{TENANT}/{job}/train.parquet", "size": 100, "sha256": "ee" * 32,
                               "rows": 300, "spam": 150},
                    "recipe": {"name": "spam-recipe", "version": 1, "digest": RECIPE},
                    "model": {"name": "spam-filter-tuned", "version": version}, "holdout": {"fraction": 0.3, "seed": 0},
                    "key_broker": {"name": "owner", "url": "http://owner", "data_key": data_key,
                                   "share_key": share_key, "share_wrapped": "AAAA"}}
        self.store.put(f"incoming/{TENANT}/{job}/training.jws", sign_json(manifest, self.owner_key).encode())
        self._status(job, "processing", run_id="run-t")
        claims = {"measurement": MEASUREMENT.hex(), "tee": "sev-snp", "root": "simulated", "debug": False,
                  "nonce": secrets.token_hex(8)}
        for broker in (self.owner, self.provider):
            broker.decide("attest", "allow", "evidence verified and bound", claims=claims)
        self.provider.decide("unwrap", "allow", "default model policy holds", key_id="recipe.spam-recipe",
                             batch_id=job, model_digest=RECIPE, claims=claims)
        for key_id in (data_key, share_key):
            self.owner.decide("unwrap", "allow", "default data policy holds", key_id=key_id, batch_id=job,
                              model_digest=RECIPE, claims=claims)
        spec = TrainingSpec(TENANT, job, manifest["object"]["key"], "ee" * 32, "spam-recipe", 1, RECIPE, "owner",
                            "spam-filter-tuned", version, share_key, "AAAA",
                            f"tuned/{TENANT}/spam-filter-tuned/{version}/receipt.jws")
        onnx = secrets.token_bytes(64)  # stands for the tuned model's ONNX bytes
        trained = TrainedModel(onnx, "sha256:" + _sha(onnx), Metrics(0.97, 0.98, 0.975, 210, 90, 45))
        recipe = RecipeCard("spam-recipe", 1, RECIPE, "recipes/spam-recipe/1/recipe.json.enc", "provider",
                            "recipe.spam-recipe", "AAAA", {"broker_url": "http://provider"})
        receipt_key = generate_signing_key()
        runtime = {"nonce": secrets.token_hex(16), "receipt_pubkey": receipt_key.as_dict(private=False)}
        evidence = SimulatedSnpProvider(self.sim_dir, MEASUREMENT, host_data=host_data).get_evidence(
            hashlib.sha512(canonical_json(runtime)).digest())
        doc = evidence_document(evidence, runtime)
        evidence_sha = _sha(canonical_json(doc))
        self.store.put(f"{spec.prefix}evidence/{evidence_sha}.json", canonical_json(doc))
        self.store.put(spec.prefix + "model.onnx.enc", secrets.token_bytes(92))
        self.store.put(spec.prefix + "card.jws", sign_json(tuned_card(spec, trained, recipe,
                                                                      evidence_sha256=evidence_sha),
                                                           receipt_key).encode())
        digest = _sha(canonical_json(claims))  # the worker's sessions at both brokers carried these claims
        sessions = [BrokerSession("owner", (digest,)), BrokerSession("provider", (digest,))] if signed_sessions else []
        self.store.put(spec.receipt_key, sign_training_receipt(receipt_key, spec=spec, trained=trained,
                                                               evidence_sha256=evidence_sha, worker="w1",
                                                               sessions=sessions).encode())
        self._status(job, "succeeded", receipt_key=spec.receipt_key)

    def _submit(self, batch: str, shards: int) -> None:
        objects = [{"key": f"incoming/{TENANT}/{batch}/part-00000.parquet", "size": 100, "sha256": "cd" * 32,
                    "rows": 10 * shards, "row_groups": shards}]
        manifest = {"type": "cscore.manifest/v1", "tenant": TENANT, "batch_id": batch,
                    "created_at": int(time.time()), "objects": objects,
                    "model": {"name": "spam", "version": 1, "digest": MODEL},
                    "results": {"prefix": f"results/{TENANT}/{batch}/"},
                    "key_broker": {"name": "owner", "url": "http://owner", "footer_key": "acme/footer",
                                   "column_key": "acme/emails",
                                   "result_key": "acme/results"}}
        self.store.put(f"incoming/{TENANT}/{batch}/manifest.jws", sign_json(manifest, self.owner_key).encode())
        self._status(batch, "processing", run_id="run-1")

    def _status(self, batch: str, state: str, **details: Any) -> None:
        body = {"state": state, "batch_id": batch, "tenant": TENANT, "updated_at": time.time(), **details}
        self.store.put(f"status/{TENANT}/{batch}.json", json.dumps(body).encode())

    def _shard(self, batch: str, index: int, measurement: bytes, claims: dict[str, Any],
               host_data: bytes = bytes(32)) -> dict[str, Any]:
        prefix = f"results/{TENANT}/{batch}/"
        receipt_key = generate_signing_key()
        runtime = {"nonce": secrets.token_hex(16), "receipt_pubkey": receipt_key.as_dict(private=False)}
        evidence = SimulatedSnpProvider(self.sim_dir, measurement, host_data=host_data).get_evidence(
            hashlib.sha512(canonical_json(runtime)).digest())
        doc = evidence_document(evidence, runtime)
        evidence_sha = _sha(canonical_json(doc))
        output = b"PAR1" + secrets.token_bytes(64)  # stands for an encrypted Parquet file
        spec = ShardSpec(tenant=TENANT, batch_id=batch, shard_index=index,
                         input_key=f"incoming/{TENANT}/{batch}/part-00000.parquet", input_sha256="cd" * 32,
                         input_file_id="cd" * 16, row_group_start=index, row_group_end=index + 1, model_name="spam",
                         model_version=1,
                         model_digest=MODEL, owner_broker="owner", footer_key="acme/footer",
                         column_key="acme/emails", result_key="acme/results",
                         output_key=f"{prefix}shard-{index:05d}.parquet",
                         receipt_key=f"{prefix}shard-{index:05d}.receipt.jws")
        digest = _sha(canonical_json(claims))  # the worker's sessions at both brokers carried these claims
        receipt = sign_receipt(receipt_key, spec=spec, output_key=spec.output_key, input_sha256="",
                               input_file_id="cd" * 16, output_sha256=_sha(output), rows=10,
                               evidence_sha256=evidence_sha, worker="w1",
                               sessions=[BrokerSession("owner", (digest,)), BrokerSession("provider", (digest,))])
        self.store.put(f"{prefix}evidence/{evidence_sha}.json", canonical_json(doc))
        self.store.put(spec.output_key, output)
        self.store.put(spec.receipt_key, receipt.encode())
        self.owner.decide("wrap", "allow", "default data policy holds", key_id="acme/results", batch_id=batch,
                          model_digest=MODEL, claims=claims)
        return {"shard_index": index, "output_key": spec.output_key, "output_sha256": _sha(output),
                "receipt_key": spec.receipt_key, "receipt_sha256": _sha(receipt.encode()), "rows": 10,
                "worker": "w1", "reused": False}


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from attestation.simulated import create_simulated_firmware

    folder = tmp_path_factory.mktemp("audit-sim-tee")
    create_simulated_firmware(folder)
    return folder


@pytest.fixture
def scenario(tmp_path: Path, sim_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scenario]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CSCORE_S3_ENDPOINT", raising=False)
    with mock_aws():
        store = ObjectStore("cscore")
        store._s3.create_bucket(Bucket="cscore")
        yield Scenario(tmp_path, store, sim_dir)
