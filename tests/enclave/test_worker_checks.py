"""The worker's own checks on what the platform hands it: each refusal on an input correct but for one thing.

No broker is reached here: every check below holds before the worker asks one for a key (the broker side
of the same story is in tests/keybroker and tests/adversary).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import OKPKey

from enclave.limits import LimitExceeded
from enclave.measurement import code_measurement
from enclave.ranged import BytesSource
from enclave.runner import ContractSession
from enclave.scoring import CHUNK_ROWS, ModelSession
from enclave.signing import generate_signing_key, sign_json, unverified_payload
from enclave.tee import SimulatedSnpProvider
from enclave.training import Metrics, TrainedModel, tuned_card
from enclave.worker import (
    Enclave,
    ModelIntegrityError,
    PlaintextRefused,
    ShardInputError,
    TunedModelRefused,
    UsageExceeded,
    _Batch,
    _BatchKeys,
    _Clock,
    _decrypt_model,
    _scored,
)
from sdk.contracts import SPAM_CONTRACT, SPAM_TASK
from sdk.training import export_onnx, train_spam_model
from tests.enclave.heavy_models import CONTRACT, columns, slow_model
from wire.card import CARD_TYPE, Contract, ModelCard
from wire.errors import FormatError
from wire.recipe import RecipeCard
from wire.shard import ShardSpec
from wire.training import TrainingSpec
from wire.worker_config import BrokerIdentity, WorkerConfig

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
TEXTS = ["win money now", "cheap pills offer", "meeting at noon", "lunch tomorrow?", "free prize claim",
         "project status report"] * 5


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return export_onnx(train_spam_model(TEXTS, [1, 1, 0, 0, 1, 0] * 5, max_features=50))


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from attestation.simulated import create_simulated_firmware

    path = tmp_path_factory.mktemp("sim-tee")
    create_simulated_firmware(path)
    return path


PROVIDER_KEY = generate_signing_key()
RIVAL_KEY = generate_signing_key()  # another provider's card key, also in the measured configuration


def _public(key: Any) -> dict[str, Any]:
    return dict(OKPKey.import_key(key.as_dict(private=False)).as_dict(private=False))


def _config(plaintext: bool = True) -> WorkerConfig:
    return WorkerConfig("simulated-sev-snp", (BrokerIdentity("owner", "https://127.0.0.1:1", CA),),
                        (BrokerIdentity("provider", "https://127.0.0.1:2", CA, (_public(PROVIDER_KEY),)),
                         BrokerIdentity("rival", "https://127.0.0.1:3", CA, (_public(RIVAL_KEY),))),
                        insecure_plaintext_baseline=plaintext)


def _enclave(sim_dir: Path, plaintext: bool = True) -> Enclave:
    config = _config(plaintext)
    return Enclave(SimulatedSnpProvider(sim_dir, code_measurement(), host_data=config.digest()), config,
                   name="cscore-worker-1@test")


def _card(onnx: bytes, *, protection: str = "none", digits: int | None = None, key: Any = None,
          digest: str | None = None, version: int = 1) -> str:
    card: dict[str, Any] = {"type": CARD_TYPE, "name": "spam", "version": version, "protection": protection,
                            "digest": digest or "sha256:" + hashlib.sha256(onnx).hexdigest(),
                            "object_key": "models/spam/1/model.onnx", "output": {"probability_digits": digits},
                            "task": SPAM_TASK, "contract": SPAM_CONTRACT}
    if protection != "none":
        card.update(broker="provider", key_id="model.spam", wrapped_dek="AAAA")
    return sign_json(card, key or PROVIDER_KEY)


def _input() -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"message_id": [f"m{i}" for i in range(len(TEXTS))], "text": TEXTS}), sink,
                   row_group_size=len(TEXTS))
    return sink.getvalue()


def _spec(data: bytes, onnx: bytes, **changes: Any) -> ShardSpec:
    values: dict[str, Any] = dict(
        tenant="acme", batch_id="b-1", shard_index=0, input_key="incoming/acme/b-1/part-00000.parquet",
        input_sha256=hashlib.sha256(data).hexdigest(), row_group_start=0, row_group_end=1, model_name="spam",
        model_version=1, model_digest="sha256:" + hashlib.sha256(onnx).hexdigest(), owner_broker="owner",
        footer_key="f", column_key="c", result_key="r", output_key="results/acme/b-1/shard-00000.parquet",
        receipt_key="results/acme/b-1/shard-00000.receipt.jws", protection="none")
    values.update(changes)
    return ShardSpec(**values)


def test_the_plaintext_baseline_scores_with_the_cards_precision(sim_dir: Path, onnx_bytes: bytes,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("enclave.worker.RESULT_ROW_GROUP_SIZE", 7)  # results are written in row groups of this size
    data = _input()
    scored = _enclave(sim_dir).score_shard(_spec(data, onnx_bytes), BytesSource(data), _card(onnx_bytes, digits=2),
                                           {"models/spam/1/model.onnx": onnx_bytes}.__getitem__)  # the card's key
    table = pq.read_table(pa.BufferReader(scored.output))
    expected, _ = ModelSession(onnx_bytes).score(TEXTS)
    got = np.asarray(table.column("spam_probability").to_pylist(), dtype=np.float32)
    assert np.array_equal(got, np.round(expected.astype(np.float64), 2).astype(np.float32))
    assert scored.rows == len(TEXTS)
    # A baseline is unattested: no evidence, no usage record (no provider's broker), in the receipt or beside it.
    assert (scored.usage, scored.evidence, scored.evidence_sha256) == ("", {}, "")
    # Every row names the model that scored it (dictionary-encoded: one string per shard).
    assert table.column("model_digest").to_pylist() == ["sha256:" + hashlib.sha256(onnx_bytes).hexdigest()] * len(TEXTS)
    assert table.schema.field("model_digest").type == pa.dictionary(pa.int32(), pa.string())
    assert list(scored.seconds) == ["keys", "read", "score", "write", "sign"]  # phases for `cscore bench`
    assert pq.ParquetFile(pa.BufferReader(scored.output)).num_row_groups == 5  # 30 rows, 7 a group
    # The baseline's receipt names the input by its whole-file SHA-256 (no PME footer to name it by).
    receipt = unverified_payload(scored.receipt, what="receipt")
    assert receipt["input"] == {"key": "incoming/acme/b-1/part-00000.parquet", "file_id": "", "row_groups": [0, 1],
                                "sha256": hashlib.sha256(data).hexdigest()}
    assert receipt["output"] == {"key": scored.output_key, "sha256": hashlib.sha256(scored.output).hexdigest(),
                                 "rows": len(TEXTS)} and scored.output_sha256 == receipt["output"]["sha256"]
    assert (receipt["evidence_sha256"], receipt["worker"], receipt["sessions"]) == ("", "cscore-worker-1@test", [])
    assert scored.output_key.startswith("results/acme/b-1/shard-00000.") and scored.output_key.endswith(".parquet")


def test_labels_only_cards_give_no_probabilities(sim_dir: Path, onnx_bytes: bytes) -> None:
    data = _input()
    scored = _enclave(sim_dir).score_shard(_spec(data, onnx_bytes), BytesSource(data), _card(onnx_bytes, digits=0),
                                           lambda key: onnx_bytes)
    table = pq.read_table(pa.BufferReader(scored.output))
    assert table.column("spam_probability").null_count == len(TEXTS)
    assert table.column("label").null_count == 0


def test_input_other_than_the_manifests_is_refused(sim_dir: Path, onnx_bytes: bytes) -> None:
    data = _input()
    with pytest.raises(ShardInputError) as refused:
        _enclave(sim_dir).score_shard(_spec(data, onnx_bytes, input_sha256="00" * 32), BytesSource(data),
                                      _card(onnx_bytes),
                                      lambda key: onnx_bytes)
    assert str(refused.value) == (f"input incoming/acme/b-1/part-00000.parquet: expected sha256 {'00' * 32} (from the "
                                  f"signed manifest), got {hashlib.sha256(data).hexdigest()}")


def test_a_card_not_signed_by_a_configured_provider_is_refused(sim_dir: Path, onnx_bytes: bytes) -> None:
    data = _input()
    forged = _card(onnx_bytes, key=generate_signing_key())  # the platform's own key: terms stripped at will
    with pytest.raises(FormatError) as refused:
        _enclave(sim_dir).score_shard(_spec(data, onnx_bytes), BytesSource(data), forged, lambda key: onnx_bytes)
    # A card naming no broker is checked against every configured provider's keys (two), named by where it is.
    assert (refused.value.field, refused.value.expected, refused.value.actual, refused.value.hint) == (
        "card.signature", "an Ed25519 signature by one of 2 pinned provider key(s)", "none verifies",
        "models/spam/1/card.jws: only cards signed by a trusted provider are used")


def test_a_card_for_another_model_is_refused(sim_dir: Path, onnx_bytes: bytes) -> None:
    data = _input()
    other = _card(onnx_bytes, digest="sha256:" + "22" * 32)
    with pytest.raises(ModelIntegrityError, match="expected spam:1 with digest"):  # before any key is asked for
        _enclave(sim_dir).score_shard(_spec(data, onnx_bytes), BytesSource(data), other, lambda key: onnx_bytes)


def test_a_model_object_swapped_under_a_genuine_card_is_refused(sim_dir: Path, onnx_bytes: bytes) -> None:
    data = _input()
    # A model no test has loaded yet (a cached session for the card's digest would never read the object).
    chosen = export_onnx(train_spam_model(TEXTS, [1, 0, 1, 0, 1, 0] * 5, max_features=30))
    other_model = export_onnx(train_spam_model(TEXTS, [0, 1, 1, 0, 1, 0] * 5, max_features=40))
    with pytest.raises(ModelIntegrityError, match="expected digest"):
        _enclave(sim_dir).score_shard(_spec(data, chosen), BytesSource(data), _card(chosen), lambda key: other_model)


def test_plaintext_needs_the_configuration_and_an_unencrypted_card(sim_dir: Path, onnx_bytes: bytes) -> None:
    data = _input()
    with pytest.raises(PlaintextRefused) as refused:
        _enclave(sim_dir, plaintext=False).score_shard(_spec(data, onnx_bytes), BytesSource(data), _card(onnx_bytes),
                                                       lambda key: onnx_bytes)
    assert str(refused.value) == ("shard.protection: expected 'pme', got 'none': this worker's configuration forbids "
                                  "the plaintext baseline; batch b-1 refused")
    confidential = _card(onnx_bytes, protection="aes-256-gcm")
    with pytest.raises(PlaintextRefused) as refused:  # a confidential model, scored in clear
        _enclave(sim_dir).score_shard(_spec(data, onnx_bytes), BytesSource(data), confidential, lambda key: onnx_bytes)
    assert str(refused.value) == ("model spam:1: expected a model published unencrypted (card.protection 'none') "
                                  "for a plaintext shard, got card.protection 'aes-256-gcm'")
    for plaintext in (True, False):  # a model published unencrypted, on an encrypted shard: named as such either way
        with pytest.raises(PlaintextRefused) as refused:
            _enclave(sim_dir, plaintext=plaintext).score_shard(_spec(data, onnx_bytes, protection="pme"),
                                                               BytesSource(data), _card(onnx_bytes),
                                                               lambda key: onnx_bytes)
        assert str(refused.value) == ("model spam:1: expected an encrypted model for shard.protection 'pme', got "
                                      "card.protection 'none'; batch b-1 refused")


def test_an_owner_broker_the_configuration_does_not_name_is_refused(sim_dir: Path, onnx_bytes: bytes) -> None:
    data = _input()
    spec = _spec(data, onnx_bytes, owner_broker="platform-relay", protection="pme")
    with pytest.raises(FormatError) as refused:
        _enclave(sim_dir).score_shard(spec, BytesSource(data), _card(onnx_bytes, protection="aes-256-gcm"),
                                      lambda key: onnx_bytes)
    assert refused.value.field == "owner_broker" and refused.value.actual == "platform-relay"


def test_more_rows_than_the_grant_counts_are_refused(sim_dir: Path, onnx_bytes: bytes) -> None:
    enclave, data = _enclave(sim_dir), _input()
    batch = _Batch(keys=None, granted_rows=40)  # type: ignore[arg-type]
    enclave._count_rows(_spec(data, onnx_bytes), batch, 30)
    with pytest.raises(UsageExceeded) as refused:
        enclave._count_rows(_spec(data, onnx_bytes), batch, 11)
    assert str(refused.value) == "batch b-1: the owner's grant counts 40 rows; 30 scored here already, 11 more refused"
    enclave._count_rows(_spec(data, onnx_bytes), batch, 10)  # exactly the granted count: allowed
    with pytest.raises(UsageExceeded) as one_more:  # counted across shards: one row beyond the grant
        enclave._count_rows(_spec(data, onnx_bytes), batch, 1)
    assert str(one_more.value) == "batch b-1: the owner's grant counts 40 rows; 40 scored here already, 1 more refused"


def test_a_model_object_that_is_not_the_cards_is_refused(onnx_bytes: bytes) -> None:
    dek, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    ciphertext = nonce + AESGCM(dek).encrypt(nonce, onnx_bytes, b"spam:1")
    card = ModelCard.parse({"type": CARD_TYPE, "name": "spam", "version": 1, "protection": "aes-256-gcm",
                            "digest": "sha256:" + hashlib.sha256(onnx_bytes).hexdigest(), "object_key": "o",
                            "broker": "provider", "key_id": "k", "wrapped_dek": base64.b64encode(b"w").decode(),
                            "task": SPAM_TASK, "contract": SPAM_CONTRACT})
    assert _decrypt_model(card, dek, {"o": ciphertext}.__getitem__) == onnx_bytes  # read from the card's object key
    with pytest.raises(ModelIntegrityError) as altered:  # another model's object, or altered bytes
        _decrypt_model(card, dek, lambda key: ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))
    assert str(altered.value) == ("model spam:1: expected ciphertext authenticated by its data key, got a tag "
                                  "mismatch (the object was altered or belongs to another model)")
    relabelled = ModelCard.parse({**card.raw, "version": 2})  # the same ciphertext under another version
    with pytest.raises(ModelIntegrityError, match="tag mismatch"):
        _decrypt_model(relabelled, dek, lambda key: ciphertext)


def test_a_card_of_another_version_with_the_chosen_digest_is_refused(sim_dir: Path, onnx_bytes: bytes) -> None:
    """The provider's genuine card for spam:2 (same weights): the owner chose spam:1, whose terms may differ."""
    data = _input()
    with pytest.raises(ModelIntegrityError) as refused:
        _enclave(sim_dir).score_shard(_spec(data, onnx_bytes), BytesSource(data), _card(onnx_bytes, version=2),
                                      lambda key: onnx_bytes)
    digest = "sha256:" + hashlib.sha256(onnx_bytes).hexdigest()
    assert str(refused.value) == (f"model card spam:2 ({digest}): expected spam:1 with digest {digest} "
                                  "(the owner's choice)")


def test_a_card_naming_one_provider_signed_by_another_configured_provider_is_refused(
        sim_dir: Path, onnx_bytes: bytes) -> None:
    """Both providers are configured; the rival signs a card naming the provider's broker and key (its terms
    over another's model): only the named provider's keys verify a card."""
    data = _input()
    forged = _card(onnx_bytes, protection="aes-256-gcm", key=RIVAL_KEY)
    with pytest.raises(FormatError) as refused:
        _enclave(sim_dir).score_shard(_spec(data, onnx_bytes), BytesSource(data), forged, lambda key: onnx_bytes)
    assert (refused.value.field, refused.value.expected) == (  # the named provider's one key, not the rival's
        "card.signature", "an Ed25519 signature by one of 1 pinned provider key(s)")
    assert _enclave(sim_dir)._verified_card(_spec(data, onnx_bytes), _card(onnx_bytes, protection="aes-256-gcm"))


def _tuned_card(onnx: bytes, *, tenant: str = "acme", owner_broker: str = "owner", version: int = 1) -> str:
    """A tuned model's card as the training enclave writes it (its signature is not what the worker checks)."""
    spec = TrainingSpec(tenant, "job-1", f"incoming/{tenant}/job-1/train.parquet", "ee" * 32, "spam-recipe", 1,
                        "sha256:" + "5e" * 32, owner_broker, "spam-tuned", version, "share-1", "AAAA",
                        f"tuned/{tenant}/spam-tuned/{version}/receipt.jws")
    trained = TrainedModel(onnx, "sha256:" + hashlib.sha256(onnx).hexdigest(), Metrics(0.97, 0.98, 0.975, 210, 90, 45))
    recipe = RecipeCard("spam-recipe", 1, "sha256:" + "5e" * 32, "recipes/spam-recipe/1/recipe.json.enc", "provider",
                        "recipe.spam-recipe", "AAAA", {})
    return sign_json(tuned_card(spec, trained, recipe, evidence_sha256="ab" * 32), generate_signing_key())


@pytest.mark.parametrize(("tenant", "owner_broker"), [("other", "owner"), ("acme", "other-owner")])
def test_a_tuned_model_is_refused_for_a_batch_not_its_owners(sim_dir: Path, onnx_bytes: bytes, tenant: str,
                                                              owner_broker: str) -> None:
    """The platform names one owner's tuned model for another's batch (another tenant, or the same tenant name
    at another owner broker): refused on the card before any broker is asked for a key."""
    data = _input()
    spec = _spec(data, onnx_bytes, model_name="acme/spam-tuned", protection="pme")
    with pytest.raises(TunedModelRefused) as refused:
        _enclave(sim_dir).score_shard(spec, BytesSource(data), _tuned_card(onnx_bytes, tenant=tenant,
                                                                          owner_broker=owner_broker),
                                      lambda key: onnx_bytes)
    assert str(refused.value) == (
        f"tuned model {tenant}/spam-tuned:1: belongs to tenant {tenant!r} (owner broker {owner_broker!r}); batch "
        "b-1 is tenant 'acme''s (owner broker 'owner'): a tuned model scores only its owner's batches")


def test_a_tuned_model_other_than_the_owners_choice_is_refused(sim_dir: Path, onnx_bytes: bytes) -> None:
    data = _input()
    spec = _spec(data, onnx_bytes, model_name="acme/spam-tuned", protection="pme")
    enclave, digest = _enclave(sim_dir), "sha256:" + hashlib.sha256(onnx_bytes).hexdigest()
    card, tuned = enclave._scoring_card(spec, _tuned_card(onnx_bytes))
    assert tuned is not None and (card.name, card.version, card.digest) == ("acme/spam-tuned", 1, digest)
    with pytest.raises(ModelIntegrityError) as refused:  # version 2 of the owner's own tuned model
        enclave._scoring_card(spec, _tuned_card(onnx_bytes, version=2))
    assert str(refused.value) == (f"tuned model card acme/spam-tuned:2 ({digest}): expected acme/spam-tuned:1 with "
                                  f"digest {digest} (the owner's choice)")


def test_results_are_wrapped_only_under_the_batchs_result_key(onnx_bytes: bytes) -> None:
    """A key id other than the spec's result key is refused before the owner's broker is asked for anything."""
    data = _input()
    keys = _BatchKeys(None, _spec(data, onnx_bytes))  # type: ignore[arg-type]  # never reached
    with pytest.raises(PermissionError) as refused:
        keys.wrap("platform-key", bytes(32))
    assert str(refused.value) == "wrap: expected the batch's result key r, got platform-key"


def test_a_model_object_equal_to_the_cards_digest_on_a_prefix_only_is_refused(sim_dir: Path,
                                                                               onnx_bytes: bytes) -> None:
    """The card (and the owner's choice) names a digest equal to the object's in all but its last hex digit."""
    data, real = _input(), "sha256:" + hashlib.sha256(onnx_bytes).hexdigest()
    named = real[:-1] + ("0" if real[-1] != "0" else "1")
    with pytest.raises(ModelIntegrityError) as refused:
        _enclave(sim_dir).score_shard(_spec(data, onnx_bytes, model_digest=named), BytesSource(data),
                                      _card(onnx_bytes, digest=named), lambda key: onnx_bytes)
    assert str(refused.value) == f"model spam:1: expected digest {named} (the owner's choice), got {real}"


def test_a_shard_whose_file_lacks_a_contract_column_is_refused_naming_it(sim_dir: Path, onnx_bytes: bytes) -> None:
    """The owner's file has message_id but no text: refused before scoring, naming the column and the contract."""
    sink = io.BytesIO()
    pq.write_table(pa.table({"message_id": ["m0", "m1"], "subject": ["a", "b"]}), sink)
    data = sink.getvalue()
    with pytest.raises(ShardInputError) as refused:
        _enclave(sim_dir).score_shard(_spec(data, onnx_bytes), BytesSource(data), _card(onnx_bytes),
                                      lambda key: onnx_bytes)
    assert str(refused.value) == ("input incoming/acme/b-1/part-00000.parquet: expected columns ['message_id', "
                                  "'text'] (model spam:1's contract), column 'text' is missing; submit the data for "
                                  "this model's inputs")


def test_a_model_over_the_batchs_time_limit_is_stopped_naming_the_shard_and_the_setting(onnx_bytes: bytes) -> None:
    """The spec's limit (1 ms per row) reaches the model's run; the refusal says which shard, model and setting."""
    data = _input()
    spec = _spec(data, onnx_bytes, max_ms_per_row=1)
    table = pa.table({"id": [f"r{i}" for i in range(10)], **columns(10)})
    with pytest.raises(LimitExceeded) as stopped:
        _scored(spec, table, ContractSession(slow_model(), CONTRACT), None)
    assert str(stopped.value) == (
        f"shard 0 of batch b-1, model spam:1: the model ran {CHUNK_ROWS} rows for more than {CHUNK_ROWS} ms, over "
        "the batch's limit of 1 ms per row set by the platform; choose a lighter model, or ask the platform's "
        "operator to raise cscore_limits")


def test_the_workers_phase_clock_adds_up_laps_per_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([10.0, 10.1234567, 10.5, 10.75])
    monkeypatch.setattr("enclave.worker.time.perf_counter", lambda: next(ticks))
    clock = _Clock()
    clock.lap("keys")
    clock.lap("read")
    clock.lap("keys")  # a phase lapped again adds to its seconds
    assert clock.laps == {"keys": round(0.1234567 + 0.25, 6), "read": round(10.5 - 10.1234567, 6)}
    assert clock.laps["keys"] == 0.373457


def test_a_model_over_the_batchs_memory_limit_is_stopped_naming_the_shard_and_the_setting(onnx_bytes: bytes) -> None:
    """The spec's memory limit (64 MiB, the least it may set; this process holds more) reaches the model's run."""
    data = _input()
    spec = _spec(data, onnx_bytes, max_ms_per_row=3_600_000, max_memory_mib=64)
    table = pa.table({"id": [f"r{i}" for i in range(10)], **columns(10)})
    with pytest.raises(LimitExceeded) as stopped:
        _scored(spec, table, ContractSession(slow_model(), CONTRACT), None)
    assert str(stopped.value) == (
        "shard 0 of batch b-1, model spam:1: the worker's memory went over the batch's limit of 64 MiB set by the "
        "platform while the model ran; choose a lighter model, or ask the platform's operator to raise cscore_limits")


def test_an_empty_slices_results_have_the_schema_of_any_other(onnx_bytes: bytes) -> None:
    """An owner's empty part is one row group of no rows: its results must concatenate with the other shards'."""
    model = ContractSession(onnx_bytes, Contract.parse(SPAM_CONTRACT))
    spec = _spec(b"", onnx_bytes)
    empty = _scored(spec, pa.table({"message_id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
                    model, 3)
    full = _scored(spec, pa.table({"message_id": ["m0", "m1"], "text": TEXTS[:2]}), model, 3)
    assert empty.num_rows == 0 and empty.schema == full.schema
    assert empty.schema.field("model_digest").type == pa.dictionary(pa.int32(), pa.string())
    assert pa.concat_tables([empty, full]).column("model_digest").to_pylist() == [spec.model_digest] * 2
