"""The owner's verification of a batch's results, each refusal on a forgery correct in every other way.

The receipts are real: signed by an enclave receipt key bound into simulated SEV-SNP evidence through
report_data, exactly as a worker makes them. Only the object store is a dictionary (the platform's S3,
which the platform may fill with anything).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc.jwk import OKPKey

from attestation import Policy, TrustAnchors
from attestation.errors import ParseError, VerificationError
from enclave.kbs_client import _b64url
from enclave.measurement import code_measurement
from enclave.receipts import BrokerSession, evidence_document, sign_receipt
from enclave.tee import SimulatedSnpProvider
from sdk.results import (
    ResultVerificationError,
    _check_coverage,
    _check_rows,
    _EvidenceCache,
    _flags_object,
    _IdTally,
    _result_manifest,
    _shard_output,
    _verified_shard,
    owner_trust,
    simulated_advice,
)
from wire.canonical import canonical_json
from wire.shard import ShardSpec

TENANT, BATCH = "acme", "b-1"
PREFIX = f"results/{TENANT}/{BATCH}/"
MODEL = "sha256:" + "11" * 32
CONFIG = bytes.fromhex("cf" * 32)
INPUT = f"incoming/{TENANT}/{BATCH}/part-00000.parquet"
FILE_ID = "ef" * 16


class DictStore:
    """The platform's bucket: whatever it holds, by key."""

    bucket = "test"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def get_if_exists(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def get(self, key: str) -> bytes:
        return self.objects[key]


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulated firmware, of the process's one simulated hierarchy (RSA key generation is the slow part: a
    mutation run's forked children inherit it rather than make their own)."""
    from tests.keybroker.inproc import write_firmware

    return write_firmware(tmp_path_factory.mktemp("sim-tee"))


def _manifest() -> dict[str, Any]:
    return {"tenant": TENANT, "batch_id": BATCH, "model": {"digest": MODEL}, "results": {"prefix": PREFIX},
            "key_broker": {"name": "owner"},
            "objects": [{"key": INPUT, "sha256": "ab" * 32, "file_id": FILE_ID, "rows": 400, "row_groups": 2}]}


def _granted(measurement: str | None = None, config: str | None = None) -> dict[str, Any]:
    return {"measurements": [measurement or code_measurement().hex()], "config_digests": [config or CONFIG.hex()]}


def _spec(index: int = 0, model: str = MODEL, batch: str = BATCH) -> ShardSpec:
    results = f"results/{TENANT}/{batch}/shard-{index:05d}"
    return ShardSpec(tenant=TENANT, batch_id=batch, shard_index=index, input_key=f"incoming/{TENANT}/{batch}/"
                     "part-00000.parquet", input_sha256="ab" * 32, row_group_start=index, row_group_end=index + 1,
                     model_name="spam", model_version=1, model_digest=model, owner_broker="owner",
                     footer_key="f", column_key="c", result_key="r", output_key=f"{results}.parquet",
                     receipt_key=f"{results}.receipt.jws")


class Worker:
    """An enclave's receipt key and its evidence, stored where the owner will look for them."""

    def __init__(self, store: DictStore, sim_dir: Path, *, host_data: bytes = CONFIG) -> None:
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        runtime = {"nonce": "n", "tee_pubkey": {"kty": "EC"},
                   "receipt_pubkey": {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}}
        provider = SimulatedSnpProvider(sim_dir, code_measurement(), host_data=host_data)
        evidence = provider.get_evidence(hashlib.sha512(canonical_json(runtime)).digest())
        self.doc = evidence_document(evidence, runtime)
        self.digest = hashlib.sha256(canonical_json(self.doc)).hexdigest()
        store.objects[f"{PREFIX}evidence/{self.digest}.json"] = canonical_json(self.doc)
        self.store = store

    def shard(self, spec: ShardSpec, output: bytes = b"ciphertext", *, key: Ed25519PrivateKey | None = None,
              output_key: str | None = None, sha: str | None = None,
              sessions: tuple[BrokerSession, ...] = (BrokerSession("owner", ("ab" * 32,)),),
              rows: int = 200) -> dict[str, Any]:
        """Write an output and its receipt as a worker would; returns the result manifest's shard entry."""
        output_key = output_key or spec.output_key.replace(".parquet", ".a1.parquet")
        self.store.objects[output_key] = output
        token = sign_receipt(OKPKey.import_key(key or self.key), spec=spec, output_key=output_key,
                             input_sha256=spec.input_sha256, input_file_id=spec.input_file_id,
                             output_sha256=sha or hashlib.sha256(output).hexdigest(),
                             rows=rows, evidence_sha256=self.digest, worker="cscore-worker-1@vm",
                             sessions=sessions)
        receipt_key = f"{PREFIX}shard-{spec.shard_index:05d}.receipt.jws"
        self.store.objects[receipt_key] = token.encode()
        return {"receipt_key": receipt_key}


def _verify(store: DictStore, sim_dir: Path, entry: dict[str, Any], granted: dict[str, Any] | None = None) -> Any:
    policy = Policy.from_dict({"allowed_measurements": [code_measurement().hex()], "allowed_roots": ["simulated"]})
    receipt = _verified_shard(store, _manifest(), granted or _granted(), entry,  # type: ignore[arg-type]
                              _EvidenceCache(store, PREFIX), TrustAnchors.from_dir(sim_dir), policy)  # type: ignore[arg-type]
    return receipt, _shard_output(store, entry["receipt_key"], receipt)  # type: ignore[arg-type]


def test_an_honest_shard_verifies(sim_dir: Path) -> None:
    store = DictStore()
    receipt, output = _verify(store, sim_dir, Worker(store, sim_dir).shard(_spec()))
    assert output == b"ciphertext" and receipt.payload["output"]["rows"] == 200


def test_a_receipt_signed_by_a_key_not_bound_to_the_evidence_is_refused(sim_dir: Path) -> None:
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec(), key=Ed25519PrivateKey.generate())
    with pytest.raises(ResultVerificationError, match="receipt.signature"):
        _verify(store, sim_dir, entry)


@pytest.mark.parametrize(("spec", "field"), [
    (_spec(model="sha256:" + "22" * 32), "model.digest"),  # scored with another model
    (_spec(batch="b-other"), "batch_id"),  # another batch's receipt
])
def test_a_receipt_for_another_model_or_batch_is_refused(sim_dir: Path, spec: ShardSpec, field: str) -> None:
    store = DictStore()
    entry = Worker(store, sim_dir).shard(spec, output_key=f"{PREFIX}shard-00000.x.parquet")
    with pytest.raises(ResultVerificationError, match=field):
        _verify(store, sim_dir, entry)


def test_an_output_that_is_not_the_receipts_is_refused(sim_dir: Path) -> None:
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec(), sha="00" * 32)
    with pytest.raises(ResultVerificationError, match="output.sha256"):
        _verify(store, sim_dir, entry)


def test_an_output_outside_the_batch_is_refused(sim_dir: Path) -> None:
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec(), output_key="results/other/b-9/shard-00000.parquet")
    with pytest.raises(ResultVerificationError, match="output.key expected under"):
        _verify(store, sim_dir, entry)


def test_a_worker_the_owner_did_not_grant_is_refused(sim_dir: Path) -> None:
    store = DictStore()
    with pytest.raises(ResultVerificationError, match="measurement expected one of"):
        _verify(store, sim_dir, Worker(store, sim_dir).shard(_spec()), _granted(measurement="ab" * 48))
    other = DictStore()
    launched_elsewhere = Worker(other, sim_dir, host_data=bytes.fromhex("ee" * 32))
    with pytest.raises(ResultVerificationError, match=r"worker configuration \(host_data\)"):
        _verify(other, sim_dir, launched_elsewhere.shard(_spec()))


def test_a_receipt_without_a_session_at_the_owners_broker_is_refused(sim_dir: Path) -> None:
    store = DictStore()
    elsewhere = Worker(store, sim_dir).shard(_spec(), sessions=(BrokerSession("provider", ("ab" * 32,)),))
    with pytest.raises(ResultVerificationError, match=r"sessions expected a session at your broker 'owner'.*"
                                                      r"got brokers \['provider'\]"):
        _verify(store, sim_dir, elsewhere)


def test_missing_or_malformed_platform_objects_are_named(sim_dir: Path) -> None:
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec())
    worker_evidence = [k for k in store.objects if "/evidence/" in k][0]
    del store.objects[worker_evidence]
    with pytest.raises(ResultVerificationError, match="expected the attestation evidence a receipt names"):
        _verify(store, sim_dir, entry)
    store.objects[f"{PREFIX}result-manifest.json"] = b"{not json"
    with pytest.raises(ResultVerificationError, match="result-manifest.json: expected JSON"):
        _result_manifest(store, f"{PREFIX}result-manifest.json")  # type: ignore[arg-type]
    store.objects[f"{PREFIX}result-manifest.json"] = json.dumps({"shards": [{"receipt": 1}]}).encode()
    with pytest.raises(ResultVerificationError, match="shards expected a list"):
        _result_manifest(store, f"{PREFIX}result-manifest.json")  # type: ignore[arg-type]
    with pytest.raises(ResultVerificationError, match="receipt_key expected under"):
        _verify(store, sim_dir, {"receipt_key": "results/other/b/shard-00000.receipt.jws"})


def _payload(start: int, end: int, key: str = INPUT, file_id: str = FILE_ID) -> dict[str, Any]:
    return {"input": {"key": key, "file_id": file_id, "row_groups": [start, end]}}


@pytest.mark.parametrize(("payloads", "why"), [
    ([_payload(0, 1)], "a row group left out"),
    ([_payload(0, 1), _payload(1, 2), _payload(1, 2)], "a row group twice (a replayed receipt)"),
    ([_payload(0, 2), _payload(1, 2)], "overlapping ranges"),
    ([_payload(0, 1), _payload(1, 2, file_id="cd" * 16)], "another file (its id)"),
    ([_payload(0, 1), _payload(1, 2, key=f"incoming/{TENANT}/{BATCH}/part-00001.parquet")], "another object"),
])
def test_coverage_is_every_row_group_exactly_once(payloads: list[dict[str, Any]], why: str) -> None:
    with pytest.raises(ResultVerificationError, match="exactly once"):
        _check_coverage(_manifest(), payloads)
    _check_coverage(_manifest(), [_payload(0, 1), _payload(1, 2)])  # the honest split holds


def test_evidence_that_does_not_verify_is_a_named_refusal_not_a_crash(sim_dir: Path) -> None:
    """Simulated evidence for an owner who trusts only AMD's roots (no --accept-simulated): an attestation
    error, turned into the owner tool's one-line refusal naming the receipt, the evidence and the check."""
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec())
    policy = Policy.from_dict({"allowed_measurements": [code_measurement().hex()], "allowed_roots": ["amd"]})
    with pytest.raises(ResultVerificationError, match=r"shard-00000.receipt.jws \(evidence .*evidence/.*\.json\): "
                                                      r"evidence.cert_chain.ark"):
        _verified_shard(store, _manifest(), _granted(), entry, _EvidenceCache(store, PREFIX),  # type: ignore[arg-type]
                        TrustAnchors.amd(), policy)


def test_a_receipt_stored_under_another_shards_key_is_refused(sim_dir: Path) -> None:
    """The platform moves shard 1's genuine receipt and output to shard 0's place: its index names it."""
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec(1))
    moved = f"{PREFIX}shard-00000.receipt.jws"
    store.objects[moved] = store.objects.pop(entry["receipt_key"])
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, {"receipt_key": moved})
    assert str(refused.value) == f"{moved}: shard_index expected 0, got 1"


def test_a_receipt_under_a_name_that_is_no_shards_is_refused(sim_dir: Path) -> None:
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec())
    renamed = f"{PREFIX}shard-0.receipt.jws"  # under the prefix, but no shard's name: no index to stand for
    store.objects[renamed] = store.objects.pop(entry["receipt_key"])
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, {"receipt_key": renamed})
    assert str(refused.value) == f"{renamed}: shard_index expected None, got 0"


def test_a_receipt_for_another_tenant_is_refused(sim_dir: Path) -> None:
    store = DictStore()
    entry = Worker(store, sim_dir).shard(dataclasses.replace(_spec(), tenant="globex"))
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry)
    assert str(refused.value) == f"{entry['receipt_key']}: tenant expected 'acme', got 'globex'"


def test_refusals_word_for_word(sim_dir: Path) -> None:
    """Each names the object, the field, what the owner's own manifest expects and what was found."""
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec(model="sha256:" + "22" * 32))
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry)
    assert str(refused.value) == (f"{entry['receipt_key']}: model.digest expected {MODEL!r}, "
                                  f"got {'sha256:' + '22' * 32!r}")
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec(batch="b-other"), output_key=f"{PREFIX}shard-00000.x.parquet")
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry)
    assert str(refused.value) == f"{entry['receipt_key']}: batch_id expected 'b-1', got 'b-other'"
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec(), sha="00" * 32)
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry)
    actual = hashlib.sha256(b"ciphertext").hexdigest()
    assert str(refused.value) == f"{entry['receipt_key']}: output.sha256 expected {'00' * 32!r}, got {actual!r}"
    store = DictStore()
    worker = Worker(store, sim_dir)
    entry = worker.shard(_spec(), output_key="results/other/b-9/shard-00000.parquet")
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry)
    assert str(refused.value) == (f"{entry['receipt_key']}: output.key expected under {PREFIX}, "
                                  "got results/other/b-9/shard-00000.parquet")
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, {"receipt_key": "results/other/b/shard-00000.receipt.jws"})
    assert str(refused.value) == ("result manifest: receipt_key expected under results/acme/b-1/, "
                                  "got results/other/b/shard-00000.receipt.jws")
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, {"receipt_key": f"{PREFIX}shard-00009.receipt.jws"})
    assert str(refused.value) == f"s3://test/{PREFIX}shard-00009.receipt.jws: expected a shard receipt, found nothing"


def test_grant_refusals_name_the_grant_and_the_value(sim_dir: Path) -> None:
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec())
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry, _granted(measurement="ab" * 48))
    assert str(refused.value) == (f"{entry['receipt_key']}: measurement expected one of {['ab' * 48]} (your grant), "
                                  f"got {code_measurement().hex()}")
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry, _granted(config="ee" * 32))
    assert str(refused.value) == (f"{entry['receipt_key']}: worker configuration (host_data) expected one of "
                                  f"{['ee' * 32]} (your grant), got {CONFIG.hex()}")
    with pytest.raises(ResultVerificationError, match="measurement expected one of None"):
        _verify(store, sim_dir, entry, {"config_digests": [CONFIG.hex()]})  # a grant without measurements
    with pytest.raises(ResultVerificationError, match=r"host_data\) expected one of None"):
        _verify(store, sim_dir, entry, {"measurements": [code_measurement().hex()]})


def test_evidence_that_is_not_a_json_object_is_named(sim_dir: Path) -> None:
    store = DictStore()
    worker = Worker(store, sim_dir)
    entry = worker.shard(_spec())
    key = f"{PREFIX}evidence/{worker.digest}.json"
    store.objects[key] = b"[1, 2]"
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry)
    assert str(refused.value) == f"{entry['receipt_key']}: {key}: expected a JSON object, got list"


def test_one_evidence_document_serves_every_shard_of_a_worker(sim_dir: Path) -> None:
    store = DictStore()
    worker = Worker(store, sim_dir)
    cache = _EvidenceCache(store, PREFIX)  # type: ignore[arg-type]
    first = cache.get(worker.digest)
    del store.objects[f"{PREFIX}evidence/{worker.digest}.json"]  # read once: a second shard needs no second read
    assert cache.get(worker.digest) is first and first == worker.doc


@pytest.mark.parametrize(("ids", "why"), [
    (["m0", "m1", "m2"], "a row missing"),
    (["m0", "m1", "m2", "m3", "m4"], "a row added"),
    (["m0", "m1", "m2", "m2"], "a row given twice"),
])
def test_results_hold_every_message_of_the_manifest_once(ids: list[str], why: str) -> None:
    manifest = {"objects": [{"rows": 3}, {"rows": 1}]}
    with pytest.raises(ResultVerificationError) as refused:
        _check_rows(manifest, len(ids), _distinct([ids[:2], ids[2:]]))
    assert str(refused.value) == (f"results: expected 4 distinct messages, got {len(ids)} rows with "
                                  f"{len(set(ids))} distinct ids")
    _check_rows(manifest, 4, _distinct([["m0", "m1"], ["m2", "m3"]]))  # every message once: fine


def _distinct(parts: list[list[Any]]) -> int:
    """Distinct ids as `write_results` counts them: parts tallied as written, read again only for clashes."""
    tally = _IdTally(1)  # grows past what the manifest said, as a forged count would make it
    for part in parts:
        tally.add(pa.array(part))
    return tally.distinct(lambda: iter(parts))


def test_ids_whose_hashes_clash_are_compared_exactly() -> None:
    assert hash(-1) == hash(-2)  # CPython: two distinct ids with one hash, as a 64-bit clash would be
    assert _distinct([[-1, 5], [-2]]) == 3
    assert _distinct([[-1, -2], [-1]]) == 2
    tally = _IdTally(2)
    tally.add(pa.array(["a", "b"]))

    def read_again() -> list[list[Any]]:
        raise AssertionError("no two hashes clash: no id is read again")

    assert tally.distinct(read_again) == 2


def test_coverage_refusal_counts_what_was_covered() -> None:
    with pytest.raises(ResultVerificationError) as refused:
        _check_coverage(_manifest(), [_payload(0, 1), _payload(0, 1)])
    assert str(refused.value) == "receipts: expected each of 2 input row groups exactly once, got 2 covering 1"


def test_the_result_manifest_shape_the_owner_relies_on() -> None:
    store, key = DictStore(), f"{PREFIX}result-manifest.json"
    with pytest.raises(ResultVerificationError) as refused:
        _result_manifest(store, key)  # type: ignore[arg-type]
    assert str(refused.value) == f"s3://test/{key}: expected the batch's result manifest, found nothing"
    honest = {"shards": [{"receipt_key": f"{PREFIX}shard-00000.receipt.jws", "worker": "w"}], "extra": 1}
    store.objects[key] = json.dumps(honest).encode()
    assert _result_manifest(store, key) == honest  # type: ignore[arg-type]
    for shards, shown in [([{"receipt_key": 1}], "[{'receipt_key': 1}]"), ([["a"]], "[['a']]"), (None, "None"),
                          ("s" * 200, "s" * 120), ([{"receipt_key": "k"}, 5], "[{'receipt_key': 'k'}, 5]")]:
        store.objects[key] = json.dumps({"shards": shards}).encode()
        with pytest.raises(ResultVerificationError) as refused:
            _result_manifest(store, key)  # type: ignore[arg-type]
        assert str(refused.value) == f"{key}: shards expected a list of {{receipt_key: str, ...}}, got {shown}"


def test_the_flags_object_is_the_one_the_signed_manifest_pins() -> None:
    store, key = DictStore(), f"incoming/{TENANT}/{BATCH}/flags.parquet"
    assert _flags_object(store, _manifest()) is None  # type: ignore[arg-type]  # a batch without flags
    pinned = {**_manifest(), "flags": {"key": key, "sha256": hashlib.sha256(b"sealed flags").hexdigest()}}
    with pytest.raises(ResultVerificationError) as refused:
        _flags_object(store, pinned)  # type: ignore[arg-type]
    assert str(refused.value) == f"s3://test/{key}: expected the batch's flags (your submit wrote them), found nothing"
    store.objects[key] = b"sealed flags"
    assert _flags_object(store, pinned) == b"sealed flags"  # type: ignore[arg-type]
    store.objects[key] = b"other flags"  # swapped by the platform
    with pytest.raises(ResultVerificationError) as refused:
        _flags_object(store, pinned)  # type: ignore[arg-type]
    assert str(refused.value) == (f"{key}: sha256 expected {pinned['flags']['sha256']!r}, "
                                  f"got {hashlib.sha256(b'other flags').hexdigest()!r}")


def test_a_receipt_that_is_not_text_is_a_named_refusal(sim_dir: Path) -> None:
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec())
    store.objects[entry["receipt_key"]] = b"\xff\xfe" + store.objects[entry["receipt_key"]]
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry)
    assert str(refused.value).startswith(f"{entry['receipt_key']}: ")


# -- fetch_results end to end: the owner's broker in process, real PME outputs, real receipts -----------

class _Owner:
    """The owner's side as fetch_results uses it: its signing key and its broker (in process here)."""

    def __init__(self, admin: Any) -> None:
        from enclave.signing import generate_signing_key

        self.key, self.admin = generate_signing_key(), admin

    def signing_key(self) -> OKPKey:
        return self.key

    def broker(self) -> Any:
        return self.admin


def _batch(tmp_path: Path, sim_dir: Path, rows: tuple[int, ...] = (200, 200), *, flags: bool = False,
           manifest_extra: dict[str, Any] | None = None, claimed: int = 200,
           id_of: Any = lambda shard, i: f"m{shard}-{i}") -> tuple[DictStore, _Owner, dict[str, Any]]:
    """Shards' encrypted outputs (`rows` each; each receipt says `claimed`) and receipts, the owner's signed
    manifest (one input of `claimed` rows per shard) and its broker's grant."""
    from enclave.pme import PmeKeys
    from enclave.signing import sign_json
    from tests.keybroker.inproc import Env

    env = Env(tmp_path / "broker")
    env.admin.create_key("footer-1")
    env.admin.create_key("column-1")
    env.admin.grant(BATCH, MODEL, [code_measurement().hex()], ["footer-1", "column-1"],
                    config_digests=[CONFIG.hex()], rows=claimed * len(rows))
    owner, store = _Owner(env.admin), DictStore()
    worker = Worker(store, sim_dir)
    shards = []
    with PmeKeys(env.admin.for_batch(BATCH)) as keys:
        for index, count in enumerate(rows):
            ids = [id_of(index, i) for i in range(count)]
            table = pa.table({"message_id": ids, "spam_probability": [0.25] * count,
                              "model_digest": [MODEL] * count})
            output = keys.write(table, footer_key="footer-1", column_key="column-1", row_group_size=1000)
            shards.append(worker.shard(dataclasses.replace(_spec(index), input_file_id=FILE_ID), output,
                                       rows=claimed))
        manifest = {**_manifest(), **(manifest_extra or {})}
        manifest["objects"] = [{**manifest["objects"][0], "rows": claimed * len(rows), "row_groups": len(rows)}]
        if flags:
            sealed = keys.write(pa.table({"message_id": ["m0-1"], "flags": [["charset"]]}), footer_key="footer-1",
                                column_key="column-1", row_group_size=1000)
            manifest["flags"] = {"key": f"incoming/{TENANT}/{BATCH}/flags.parquet",
                                 "sha256": hashlib.sha256(sealed).hexdigest()}
            store.objects[manifest["flags"]["key"]] = sealed
    store.objects[f"incoming/{TENANT}/{BATCH}/manifest.jws"] = sign_json(manifest, owner.key).encode()
    store.objects[f"{PREFIX}result-manifest.json"] = json.dumps({"shards": shards}).encode()
    return store, owner, manifest


def _trust(sim_dir: Path) -> dict[str, Any]:
    policy = Policy.from_dict({"allowed_measurements": [code_measurement().hex()], "allowed_roots": ["simulated"]})
    return {"anchors": TrustAnchors.from_dir(sim_dir), "policy": policy}


def _fetch(store: DictStore, owner: _Owner, sim_dir: Path) -> Any:
    from sdk.results import fetch_results

    return fetch_results(TENANT, BATCH, owner=owner, store=store, **_trust(sim_dir))  # type: ignore[arg-type]


def test_fetch_results_verifies_decrypts_and_joins_every_shard(tmp_path: Path, sim_dir: Path) -> None:
    store, owner, _ = _batch(tmp_path, sim_dir)
    results = _fetch(store, owner, sim_dir)
    assert results.table.column_names == ["message_id", "spam_probability"]  # model_digest dropped
    assert results.table.column("message_id").to_pylist() == [f"m{s}-{i}" for s in range(2) for i in range(200)]
    assert [r.payload["shard_index"] for r in results.receipts] == [0, 1]
    assert results.measurements == [code_measurement().hex()]
    unwraps = [e for e in owner.admin.decisions() if e["operation"] == "admin.unwrap"]
    assert unwraps and {e["batch_id"] for e in unwraps} == {BATCH}  # each key the owner used, logged under its batch


def test_fetch_results_joins_the_owners_flags(tmp_path: Path, sim_dir: Path) -> None:
    store, owner, _ = _batch(tmp_path, sim_dir, flags=True)
    table = _fetch(store, owner, sim_dir).table
    assert table.column_names == ["message_id", "spam_probability", "flags"]
    flagged = dict(zip(table.column("message_id").to_pylist(), table.column("flags").to_pylist(), strict=True))
    assert flagged["m0-1"] == "charset" and {v for k, v in flagged.items() if k != "m0-1"} == {""}


def test_fetch_results_refuses_a_shard_whose_rows_are_not_its_receipts(tmp_path: Path, sim_dir: Path) -> None:
    store, owner, _ = _batch(tmp_path, sim_dir, rows=(200, 199))  # the receipt says 200 rows
    with pytest.raises(ResultVerificationError) as refused:
        _fetch(store, owner, sim_dir)
    assert str(refused.value) == f"{PREFIX}shard-00001.a1.parquet: output.rows expected 200, got 199"


def test_fetch_results_refuses_a_manifest_the_owner_did_not_sign(tmp_path: Path, sim_dir: Path) -> None:
    from enclave.signing import generate_signing_key, sign_json

    store, owner, manifest = _batch(tmp_path, sim_dir)
    store.objects[f"incoming/{TENANT}/{BATCH}/manifest.jws"] = sign_json(manifest, generate_signing_key()).encode()
    with pytest.raises(ResultVerificationError) as forged:  # a refusal the stream names, not a crash
        _fetch(store, owner, sim_dir)
    assert str(forged.value).startswith(f"manifest.signature: expected a valid Ed25519 signature by key "
                                        f"{owner.key.thumbprint()}, ")
    del store.objects[f"incoming/{TENANT}/{BATCH}/manifest.jws"]
    with pytest.raises(ResultVerificationError) as refused:
        _fetch(store, owner, sim_dir)
    assert str(refused.value) == (f"s3://test/incoming/{TENANT}/{BATCH}/manifest.jws: expected your signed manifest, "
                                  "found nothing")


def test_fetch_results_refuses_another_batchs_signed_manifest_under_this_batchs_key(tmp_path: Path,
                                                                                     sim_dir: Path) -> None:
    """The platform copies the owner's own signed manifest of batch b-1 (its results all there and genuine) to
    where batch b-2's is: the owner asking for b-2 must not be handed b-1's scores as b-2's."""
    store, owner, _ = _batch(tmp_path, sim_dir)
    owner.admin.grant("b-2", MODEL, [code_measurement().hex()], ["footer-1", "column-1"],
                      config_digests=[CONFIG.hex()], rows=400)  # the owner submitted b-2 as well
    store.objects[f"incoming/{TENANT}/b-2/manifest.jws"] = store.objects[f"incoming/{TENANT}/{BATCH}/manifest.jws"]
    from sdk.results import fetch_results

    with pytest.raises(ResultVerificationError) as refused:
        fetch_results(TENANT, "b-2", owner=owner, store=store, **_trust(sim_dir))  # type: ignore[arg-type]
    assert str(refused.value) == (f"incoming/{TENANT}/b-2/manifest.jws: batch_id expected 'b-2', got '{BATCH}'")


def test_fetch_results_refuses_flags_for_ids_no_result_carries(tmp_path: Path, sim_dir: Path) -> None:
    from enclave.pme import PmeKeys
    from enclave.signing import sign_json

    store, owner, manifest = _batch(tmp_path, sim_dir, flags=True)
    with PmeKeys(owner.admin.for_batch(BATCH)) as keys:  # flags the owner's submit never wrote, pinned anew
        sealed = keys.write(pa.table({"message_id": ["m0-1", "ghost"], "flags": [["charset"], ["x"]]}),
                            footer_key="footer-1", column_key="column-1", row_group_size=1000)
    store.objects[manifest["flags"]["key"]] = sealed
    manifest["flags"]["sha256"] = hashlib.sha256(sealed).hexdigest()
    store.objects[f"incoming/{TENANT}/{BATCH}/manifest.jws"] = sign_json(manifest, owner.key).encode()
    with pytest.raises(ResultVerificationError) as refused:
        _fetch(store, owner, sim_dir)
    assert str(refused.value) == f"{manifest['flags']['key']}: flags for 1 id(s) that no result carries"


def test_fetch_results_refuses_coverage_with_a_shard_missing(tmp_path: Path, sim_dir: Path) -> None:
    store, owner, _ = _batch(tmp_path, sim_dir)
    listed = json.loads(store.objects[f"{PREFIX}result-manifest.json"])
    store.objects[f"{PREFIX}result-manifest.json"] = json.dumps({"shards": listed["shards"][:1]}).encode()
    with pytest.raises(ResultVerificationError) as refused:
        _fetch(store, owner, sim_dir)
    assert str(refused.value) == "receipts: expected each of 2 input row groups exactly once, got 1 covering 1"


class DiskStore(DictStore):
    """The bucket on disk: every read is fresh bytes, as an S3 download is (so memory held is memory read)."""

    def __init__(self, objects: dict[str, bytes], folder: Path) -> None:
        super().__init__()
        self.folder = folder
        for key, data in objects.items():
            (folder / key).parent.mkdir(parents=True, exist_ok=True)
            (folder / key).write_bytes(data)

    def get_if_exists(self, key: str) -> bytes | None:
        path = self.folder / key
        return path.read_bytes() if path.is_file() else None


def test_write_results_holds_a_few_shards_in_memory_not_the_batch(tmp_path: Path, sim_dir: Path) -> None:
    """60 shards of 1,000 rows. Python's peak (outputs read, receipts, 8 bytes a row for the duplicate check) stays
    under the batch's ciphertext, Arrow's (decrypted tables) a fraction of its rows: holding every shard, as
    before, cost over 3x the ciphertext in Python and all the rows in Arrow."""
    import tracemalloc

    import pyarrow.parquet as pq

    from sdk.results import write_results

    built, owner, _ = _batch(tmp_path, sim_dir, rows=(1000,) * 60, claimed=1000,
                             id_of=lambda shard, i: f"<{shard:03d}.{i:05d}.{_hex(shard, i)}@mail.example.com>")
    store = DiskStore(built.objects, tmp_path / "bucket")
    outputs = [data for key, data in built.objects.items() if key.endswith(".a1.parquet")]
    ciphertext = sum(len(data) for data in outputs)
    del built
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        written = write_results(tmp_path / "results.parquet", TENANT, BATCH, owner=owner,  # type: ignore[arg-type]
                                store=store, **_trust(sim_dir))  # type: ignore[arg-type]
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(previous)
    table = pq.read_table(written.path)
    assert written.rows == table.num_rows == 60_000 and table.column_names == written.columns
    assert table.column("message_id").to_pylist()[999::1000] == [f"<{s:03d}.00999.{_hex(s, 999)}@mail.example.com>"
                                                                 for s in range(60)]
    assert len(written.receipts) == 60
    assert python_peak < 0.75 * ciphertext, (python_peak, ciphertext)
    assert pool.max_memory() < 0.25 * table.nbytes, (pool.max_memory(), table.nbytes)


def _hex(shard: int, i: int) -> str:
    """A Message-ID's random-looking part (ids that compress like real ones, not like a counter)."""
    return hashlib.sha256(f"{shard}-{i}".encode()).hexdigest()[:32]


@pytest.mark.parametrize("fault", ["rows", "sha256", "duplicate"])
def test_a_refusal_at_the_last_shard_leaves_no_results_file(tmp_path: Path, sim_dir: Path, fault: str) -> None:
    """The last shard: its rows not its receipt's, its bytes not its receipt's, or an id an earlier shard gave
    (found only once every shard was read). The shards before it were written to a temporary file, never to
    `--out`: no file appears, an earlier one stays as it was, and no temporary file is left."""
    from sdk.results import write_results

    last = 5
    rows = (200,) * last + ((199,) if fault == "rows" else (200,))
    store, owner, _ = _batch(tmp_path, sim_dir, rows=rows,
                             id_of=lambda shard, i: "m0-0" if fault == "duplicate" and (shard, i) == (last, 7)
                             else f"m{shard}-{i}")
    output_key = f"{PREFIX}shard-{last:05d}.a1.parquet"
    if fault == "sha256":
        store.objects[output_key] = store.objects[output_key][:-1] + bytes([store.objects[output_key][-1] ^ 1])
    folder = tmp_path / "out"
    folder.mkdir()
    expected = {"rows": f"{output_key}: output.rows expected 200, got 199",
                "sha256": f"{PREFIX}shard-{last:05d}.receipt.jws: output.sha256 expected ",
                "duplicate": "results: expected 1200 distinct messages, got 1200 rows with 1199 distinct ids"}[fault]
    with pytest.raises(ResultVerificationError) as refused:
        write_results(folder / "results.parquet", TENANT, BATCH, owner=owner,  # type: ignore[arg-type]
                      store=store, **_trust(sim_dir))  # type: ignore[arg-type]
    assert str(refused.value).startswith(expected)
    assert list(folder.iterdir()) == []
    (folder / "results.parquet").write_bytes(b"an earlier run's results")
    with pytest.raises(ResultVerificationError):
        write_results(folder / "results.parquet", TENANT, BATCH, owner=owner,  # type: ignore[arg-type]
                      store=store, **_trust(sim_dir))  # type: ignore[arg-type]
    assert [p.name for p in folder.iterdir()] == ["results.parquet"]
    assert (folder / "results.parquet").read_bytes() == b"an earlier run's results"


def test_write_results_reports_each_shards_rows_once_written(tmp_path: Path, sim_dir: Path) -> None:
    """What `cscore owner results` draws its progress bar from: each shard's rows, out of the batch's."""
    from sdk.results import write_results

    store, owner, _ = _batch(tmp_path, sim_dir, rows=(200, 200, 200), id_of=lambda shard, i: f"m{shard}-{i}")
    told: list[tuple[int, int]] = []
    written = write_results(tmp_path / "results.parquet", TENANT, BATCH, owner=owner,  # type: ignore[arg-type]
                            store=store,  # type: ignore[arg-type]
                            progress=lambda rows, total: told.append((rows, total)), **_trust(sim_dir))
    assert told == [(200, 600)] * 3 and written.rows == 600


@pytest.mark.parametrize("sessions", [(BrokerSession("provider", ("ab" * 32,)),), (BrokerSession("owner", ()),)])
def test_owner_session_refusal_word_for_word(sim_dir: Path, sessions: tuple[BrokerSession, ...]) -> None:
    """No session at the owner's broker, or one there without the claims digests its releases are tied by."""
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec(), sessions=sessions)
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry)
    assert str(refused.value) == (f"{entry['receipt_key']}: sessions expected a session at your broker 'owner' with "
                                  f"its claims digests, got brokers {[s.broker for s in sessions]}")


def test_a_receipt_that_names_no_evidence_or_is_no_jws_is_named(sim_dir: Path) -> None:
    from enclave.signing import sign_json

    store = DictStore()
    worker = Worker(store, sim_dir)
    entry = worker.shard(_spec())
    store.objects[entry["receipt_key"]] = sign_json({"batch_id": BATCH}, OKPKey.import_key(worker.key)).encode()
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry)
    assert str(refused.value) == (f"{entry['receipt_key']}: s3://test/{PREFIX}evidence/.json: expected the "
                                  "attestation evidence a receipt names, found nothing")
    store.objects[entry["receipt_key"]] = b"not a jws"
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry)
    assert str(refused.value).startswith(f"{entry['receipt_key']}: receipt: expected a compact JWS, got ")


def test_an_output_the_platform_did_not_store_is_named(sim_dir: Path) -> None:
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec())
    output_key = f"{PREFIX}shard-00000.a1.parquet"
    del store.objects[output_key]
    with pytest.raises(ResultVerificationError) as refused:
        _verify(store, sim_dir, entry)
    assert str(refused.value) == f"s3://test/{output_key}: expected a shard's encrypted results, found nothing"



@pytest.mark.parametrize(("accept", "env"), [(False, True), (True, False)])
def test_simulated_evidence_is_refused_unless_the_owner_accepts_it_and_names_its_firmware(
        sim_dir: Path, monkeypatch: pytest.MonkeyPatch, accept: bool, env: bool) -> None:
    """Simulated evidence is forgeable by anyone holding the simulated firmware: an owner who did not pass
    --accept-simulated, or who did on a machine without $CSCORE_SIM_TEE_DIR, trusts AMD's roots only."""
    if env:
        monkeypatch.setenv("CSCORE_SIM_TEE_DIR", str(sim_dir))
    else:
        monkeypatch.delenv("CSCORE_SIM_TEE_DIR", raising=False)
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec())
    anchors, policy = owner_trust(accept_simulated=accept, measurements=[code_measurement().hex()])
    with pytest.raises(ResultVerificationError) as refused:
        _verified_shard(store, _manifest(), _granted(), entry, _EvidenceCache(store, PREFIX),  # type: ignore[arg-type]
                        anchors, policy)
    message = str(refused.value)
    assert message.startswith(f"{PREFIX}shard-00000.receipt.jws (evidence {PREFIX}evidence/")
    assert "evidence.cert_chain.ark: expected one of the trusted ARKs (CN=ARK-Milan,O=Advanced Micro Devices" in message
    advice = (f"; that root is the simulated TEE of this development stack ({sim_dir}): pass --accept-simulated to "
              "accept it there (no hardware protected this work; never in production)")
    # on the development stack ($CSCORE_SIM_TEE_DIR names this firmware) the refusal says what to pass; elsewhere not
    assert message.endswith("; the chain ends in a root this verifier does not trust" + (advice if env else ""))


def test_a_training_receipt_of_the_simulated_tee_refused_says_to_pass_accept_simulated(
        sim_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`owner train` and `models --tenant` verify enclave-signed documents as `owner results` does: same advice."""
    from sdk.owner_training import TrainingJobError, _enclave_signed

    monkeypatch.setenv("CSCORE_SIM_TEE_DIR", str(sim_dir))
    store = DictStore()
    entry = Worker(store, sim_dir).shard(_spec())
    anchors, policy = owner_trust(accept_simulated=False, measurements=[code_measurement().hex()])
    with pytest.raises(TrainingJobError) as refused:
        _enclave_signed(store, entry["receipt_key"], PREFIX, "cscore.training-receipt/v1", anchors,  # type: ignore[arg-type]
                        policy)
    assert str(refused.value).endswith(
        f"; the chain ends in a root this verifier does not trust; that root is the simulated TEE of this development "
        f"stack ({sim_dir}): pass --accept-simulated to accept it there (no hardware protected this work; never in "
        "production)")


def test_no_accept_simulated_advice_for_another_untrusted_root(sim_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A root that is not this stack's simulated one (a rogue ARK, however named) gets no advice to accept it."""
    monkeypatch.setenv("CSCORE_SIM_TEE_DIR", str(sim_dir))
    rogue = VerificationError("evidence.cert_chain.ark", "one of the trusted ARKs",
                              f"CN=SIMULATED ARK-Milan NOT AMD (sha256 {'ab' * 32})", "the chain ends in a root ...")
    assert simulated_advice(rogue) == ""
    other_field = VerificationError("evidence.signature", "a valid signature", "another", "")
    assert simulated_advice(other_field) == ""


def test_no_accept_simulated_advice_where_no_simulated_firmware_is(sim_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """$CSCORE_SIM_TEE_DIR unset, naming a folder without an ARK, or an ARK that is not a certificate: no advice."""
    fingerprint = "ab" * 32
    refusal = VerificationError("evidence.cert_chain.ark", "one of the trusted ARKs",
                                f"CN=SIMULATED ARK-Milan NOT AMD (sha256 {fingerprint})", "")
    monkeypatch.delenv("CSCORE_SIM_TEE_DIR", raising=False)
    assert simulated_advice(refusal) == ""
    monkeypatch.setenv("CSCORE_SIM_TEE_DIR", str(tmp_path))
    assert simulated_advice(refusal) == ""
    (tmp_path / "ark.pem").write_text("not a certificate")
    assert simulated_advice(refusal) == ""


def test_the_owner_accepting_simulated_evidence_still_holds_it_to_the_granted_measurements(
        sim_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCORE_SIM_TEE_DIR", str(sim_dir))
    store = DictStore()
    worker = Worker(store, sim_dir)
    entry = worker.shard(_spec())
    anchors, policy = owner_trust(accept_simulated=True, measurements=[code_measurement().hex()])
    receipt = _verified_shard(store, _manifest(), _granted(), entry, _EvidenceCache(store, PREFIX),  # type: ignore[arg-type]
                              anchors, policy)
    assert receipt.payload["evidence_sha256"] == worker.digest
    anchors, policy = owner_trust(accept_simulated=True, measurements=["00" * 48])
    with pytest.raises(ResultVerificationError) as refused:
        _verified_shard(store, _manifest(), _granted(), entry, _EvidenceCache(store, PREFIX),  # type: ignore[arg-type]
                        anchors, policy)
    assert str(refused.value) == (
        f"{PREFIX}shard-00000.receipt.jws (evidence {PREFIX}evidence/{worker.digest}.json): measurement: expected one "
        f"of ['{'00' * 48}'], got {code_measurement().hex()}; this is not an approved build of the worker")
    with pytest.raises(ParseError) as not_hex:
        owner_trust(accept_simulated=True, measurements=["zz"])
    assert (not_hex.value.field, not_hex.value.expected, not_hex.value.actual) == (
        "policy.allowed_measurements", "hex strings", ["zz"])


def test_an_owner_not_accepting_simulated_evidence_has_a_policy_that_refuses_it_whatever_the_anchors(
        sim_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two locks, not one: even beside anchors that chain the simulated root (a mistake elsewhere), the policy of
    an owner who did not pass --accept-simulated admits AMD's roots only, and names the root it refused."""
    monkeypatch.setenv("CSCORE_SIM_TEE_DIR", str(sim_dir))
    store = DictStore()
    worker = Worker(store, sim_dir)
    entry = worker.shard(_spec())
    _, policy = owner_trust(accept_simulated=False, measurements=[code_measurement().hex()])
    with pytest.raises(ResultVerificationError) as refused:
        _verified_shard(store, _manifest(), _granted(), entry, _EvidenceCache(store, PREFIX),  # type: ignore[arg-type]
                        TrustAnchors.from_dir(sim_dir), policy)
    assert str(refused.value) == (
        f"{PREFIX}shard-00000.receipt.jws (evidence {PREFIX}evidence/{worker.digest}.json): root: expected one of "
        "['amd'], got simulated; simulated evidence is for development; production policies accept AMD roots only")


def test_rows_are_written_to_a_hidden_partial_file_beside_the_results_until_every_check_passed(
        tmp_path: Path, sim_dir: Path) -> None:
    """Beside `--out` (one filesystem: the final move is atomic), named for it and marked partial; `--out` itself
    appears only at the end, so no one reads a batch's first shards as its results."""
    import re

    from sdk.results import write_results

    store, owner, _ = _batch(tmp_path, sim_dir, rows=(200, 200, 200))
    folder = tmp_path / "out"
    folder.mkdir()
    seen: list[list[str]] = []
    written = write_results(folder / "results.parquet", TENANT, BATCH, owner=owner,  # type: ignore[arg-type]
                            store=store,  # type: ignore[arg-type]
                            progress=lambda rows, total: seen.append(sorted(os.listdir(folder))), **_trust(sim_dir))
    assert len(seen) == 3 and all(len(names) == 1 and re.fullmatch(r"\.results\.parquet\.[^.]+\.partial", names[0])
                                  for names in seen), seen
    assert len({names[0] for names in seen}) == 1  # one file, grown shard by shard
    assert os.listdir(folder) == ["results.parquet"] and written.path == folder / "results.parquet"


def test_shards_are_fetched_at_most_the_window_ahead_of_the_one_written() -> None:
    """The memory bound of `write_results` (OUTPUTS_IN_FLIGHT): at most the window fetched or decrypted at once."""
    from concurrent.futures import ThreadPoolExecutor

    from sdk.results import _in_order

    pulled: list[int] = []

    def items() -> Any:
        for i in range(10):
            pulled.append(i)
            yield i

    with ThreadPoolExecutor(8) as pool:
        results = _in_order(pool, lambda i: i * i, items(), 3)
        assert next(results) == 0 and len(pulled) == 3  # the first written with two more in flight, not three
        assert next(results) == 1 and len(pulled) == 4
        assert list(results) == [i * i for i in range(2, 10)]


def test_a_shard_whose_columns_are_not_the_first_shards_is_named_with_both(tmp_path: Path) -> None:
    """One results file holds one schema: a shard of other columns (or types) is refused naming both."""
    from sdk.results import _write_parts

    first = pa.table({"message_id": ["m0"], "spam_probability": [0.5]})
    other = pa.table({"message_id": ["m1"], "spam_probability": ["0.5"]})
    with pytest.raises(ResultVerificationError) as refused:
        _write_parts(tmp_path / "r.parquet", iter([("k0", first), ("k1", other)]), None, _IdTally(2), set())
    assert str(refused.value) == ("k1: columns expected ['message_id', 'spam_probability'] ([DataType(string), "
                                  "DataType(double)]), got ['message_id', 'spam_probability'] ([DataType(string), "
                                  "DataType(string)])")
    assert _write_parts(tmp_path / "none.parquet", iter([]), None, _IdTally(1), set()) == []  # no shard: no columns


def test_the_owners_manifest_of_another_tenant_or_not_text_is_refused(tmp_path: Path, sim_dir: Path) -> None:
    """The platform copies the owner's signed manifest under another tenant's folder, or stores bytes that are not
    text where it belongs: each a named refusal, not another tenant's results or a crash."""
    from sdk.results import owner_manifest

    store, owner, _ = _batch(tmp_path, sim_dir, rows=(200,))
    signed = store.objects[f"incoming/{TENANT}/{BATCH}/manifest.jws"]
    store.objects[f"incoming/globex/{BATCH}/manifest.jws"] = signed
    with pytest.raises(ResultVerificationError) as refused:
        owner_manifest(store, owner, "globex", BATCH)  # type: ignore[arg-type]
    assert str(refused.value) == f"incoming/globex/{BATCH}/manifest.jws: tenant expected 'globex', got '{TENANT}'"
    store.objects[f"incoming/{TENANT}/{BATCH}/manifest.jws"] = b"\xff\xfe" + signed
    with pytest.raises(ResultVerificationError) as refused:
        owner_manifest(store, owner, TENANT, BATCH)  # type: ignore[arg-type]
    assert str(refused.value).startswith(f"manifest.signature: expected a valid Ed25519 signature by key "
                                         f"{owner.key.thumbprint()}, got ")
