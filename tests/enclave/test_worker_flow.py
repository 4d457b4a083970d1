"""`Enclave.score_shard` end to end in one process, with real objects throughout: the owner's and the provider's
brokers (the production app and verifier, `tests.keybroker.inproc.Env`), the provider's encrypted model and
signed card as `sdk.provider.publish_model` writes them, the owner's PME input as `sdk.owner.encode_part`
writes it, and simulated SEV-SNP evidence. Only the transport is in process: the worker's sessions reach each
broker app through a test client instead of TLS (the test records what the worker built them with).

Each test changes one thing the platform controls and asserts the refusal (field, expected, actual), or a
property of what leaves the enclave (ciphertext the owner opens, receipt and usage fields, row counts).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import re
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation import Policy, TrustAnchors
from enclave import worker as worker_module
from enclave.kbs_client import AttestedSession
from enclave.limits import LimitExceeded
from enclave.pme import PmeKeys, write_encrypted
from enclave.pme import _registry as pme_registry
from enclave.ranged import BytesSource
from enclave.receipts import USAGE_TYPE, verify_receipt
from enclave.runner import clear_contract_sessions
from enclave.scoring import ModelSession
from enclave.signing import (
    SignatureError,
    canonical_json,
    generate_signing_key,
    sign_json,
    unverified_payload,
    verify_json,
)
from enclave.training import joint_key
from enclave.worker import (
    Enclave,
    ModelIntegrityError,
    ScoredShard,
    ShardInputError,
    TrainedJob,
    UsageExceeded,
    _tuned_namespace,
    _UnwrapOnly,
)
from sdk.owner import OwnerKeys, decrypt_results, encode_part
from sdk.provider import publish_model, publish_recipe
from sdk.storage import ObjectStore
from tests.enclave.test_training import RECIPE, _mail
from tests.enclave.test_worker_checks import CA, TEXTS, _tuned_card, onnx_bytes  # noqa: F401 (the module's model fixture)
from tests.keybroker.inproc import GOOD, Env
from tests.keybroker.test_recipe_release import MemoryStore, ProviderAt
from wire.card import ModelCard
from wire.errors import FormatError
from wire.recipe import verify_recipe_card
from wire.shard import ShardSpec
from wire.training import TRAINING_RECEIPT_TYPE, TrainingSpec, TunedCard
from wire.worker_config import BrokerIdentity, WorkerConfig

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TENANT, BATCH = "acme", "b-1"


@dataclass
class Stack:
    """Two brokers, the provider's published model, the owner's batches, a worker configured for both brokers."""

    owner: Env
    provider: Env
    party: ProviderAt
    store: MemoryStore
    card_key: str
    digest: str
    enclave: Enclave
    apps: dict[str, Any]
    inputs: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # batch id -> (input object, file id)
    built: list[dict[str, Any]] = field(default_factory=list)  # each session the worker opened: its arguments

    def batch(self, batch_id: str, *, rows: int = len(TEXTS), digest: str | None = None,
              shares: tuple[str, ...] = ()) -> None:
        """The owner's batch as `cscore owner submit` makes it: keys, one PME part (two row groups of 15 emails),
        and a grant of `rows` rows (and a tuned model's `shares`) for this worker's measurement and configuration."""
        keys = OwnerKeys.for_batch(TENANT, batch_id)
        for key_id in keys.all():
            self.owner.admin.create_key(key_id, kind="result" if key_id == keys.results else "data")
        table = pa.table({"message_id": [f"m{i}" for i in range(len(TEXTS))], "text": TEXTS})
        self.inputs[batch_id] = encode_part(table, self.owner.admin, keys, tenant=TENANT, batch_id=batch_id,
                                            key=f"incoming/{TENANT}/{batch_id}/part-00000.parquet")
        self.owner.admin.grant(batch_id, digest or self.digest, [GOOD], [*keys.all(), *shares],
                               config_digests=[self.enclave.config.digest_hex()], rows=rows)

    def spec(self, batch_id: str = BATCH, start: int = 0, end: int = 2, **changes: Any) -> ShardSpec:
        """The shard spec the platform would send for row groups [start, end) of the batch's one part."""
        keys, (data, file_id) = OwnerKeys.for_batch(TENANT, batch_id), self.inputs[batch_id]
        values: dict[str, Any] = dict(
            tenant=TENANT, batch_id=batch_id, shard_index=start,
            input_key=f"incoming/{TENANT}/{batch_id}/part-00000.parquet",
            input_sha256=hashlib.sha256(data).hexdigest(), input_file_id=file_id, row_group_start=start,
            row_group_end=end, model_name="spam", model_version=1, model_digest=self.digest, owner_broker="owner",
            footer_key=keys.footer, column_key=keys.emails, result_key=keys.results,
            output_key=f"results/{TENANT}/{batch_id}/shard-{start:05d}.parquet",
            receipt_key=f"results/{TENANT}/{batch_id}/shard-{start:05d}.receipt.jws")
        values.update(changes)
        return ShardSpec(**values)

    def card(self) -> str:
        return self.store.get(self.card_key).decode()

    def score(self, spec: ShardSpec | None = None, card: str | None = None) -> ScoredShard:
        spec = spec or self.spec()
        return self.enclave.score_shard(spec, BytesSource(self.inputs[spec.batch_id][0]), card or self.card(),
                                        self.store.get)

    def decisions(self, broker: Env, operation: str) -> list[tuple[Any, ...]]:
        return [(e["key_id"], e["batch_id"], e["model_digest"], e["decision"]) for e in broker.admin.decisions()
                if e["operation"] == operation]


def _config(*providers: BrokerIdentity) -> WorkerConfig:
    return WorkerConfig("simulated-sev-snp", (BrokerIdentity("owner", "https://owner.test", CA),), providers)


@pytest.fixture
def stack(tmp_path: Path, onnx_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> Stack:  # noqa: F811
    clear_contract_sessions()  # every test loads the model from its object: a cached one would skip the checks
    monkeypatch.setattr("sdk.owner.ROW_GROUP_SIZE", 15)  # two row groups per part: two shards
    owner, provider = Env(tmp_path / "owner"), Env(tmp_path / "provider", name="provider")
    party = ProviderAt(home=tmp_path / "provider-home", broker_url="https://provider.test", broker_name="provider")
    object.__setattr__(party, "admin", provider.admin)
    provider.admin.register_owner("owner", owner.admin.grant_key())
    store = MemoryStore()
    published = publish_model(onnx_bytes, "spam", provider=party, store=cast(ObjectStore, store),
                              allowed_measurements=[GOOD], probability_digits=3)
    config = _config(BrokerIdentity("provider", "https://provider.test", CA + " ", (party.public_key(),)))
    enclave = Enclave(owner.enclave(host_data=config.digest_hex()), config, name="cscore-worker-1@test")
    stack = Stack(owner, provider, party, store, published.card_key, published.digest, enclave,
                  {"owner": owner.app, "provider": provider.app})

    def session(url: str, tee: Any, **kwargs: Any) -> AttestedSession:
        stack.built.append({"url": url, **kwargs})
        return AttestedSession(url, tee, client=TestClient(stack.apps[kwargs["broker_name"]]), keys=kwargs["keys"],
                               party=kwargs["party"], broker_name=kwargs["broker_name"])

    monkeypatch.setattr(worker_module, "AttestedSession", session)
    stack.batch(BATCH)
    return stack


def _trust(stack: Stack) -> dict[str, Any]:
    """What the owner verifies receipts with: the simulated root, the granted measurement."""
    return {"anchors": TrustAnchors.from_dir(stack.owner.sim_dir),
            "policy": Policy.from_dict({"allowed_measurements": [GOOD], "allowed_roots": ["simulated"]})}


def test_a_shard_is_scored_into_results_only_the_owner_opens_with_a_receipt_of_what_was_read(
        stack: Stack, onnx_bytes: bytes, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("enclave.worker.RESULT_ROW_GROUP_SIZE", 7)  # results are written in row groups of this size
    with caplog.at_level(logging.INFO, logger="enclave.worker"):
        scored = stack.score(stack.spec(start=1, end=2))
    with PmeKeys(stack.owner.admin) as keys:
        results = decrypt_results(scored.output, keys)
        assert keys.open(scored.output).metadata.num_row_groups == 3  # 15 rows, 7 a group
    # What the platform's log gets: counts and digests, no content.
    assert [r.getMessage() for r in caplog.records if r.name == "enclave.worker"] == [
        f"scored shard 1 of batch b-1: 15 rows, output sha256 {scored.output_sha256}"]
    expected, _ = ModelSession(onnx_bytes).score(TEXTS[15:])
    assert results.column("message_id").to_pylist() == [f"m{i}" for i in range(15, 30)]  # its row group only
    assert results.column("spam_probability").to_pylist() == pytest.approx(
        [round(float(p), 3) for p in expected], abs=1e-6)  # the card's 3 digits
    assert results.column("model_digest").to_pylist() == [stack.digest] * 15
    assert scored.rows == 15 and scored.output_sha256 == hashlib.sha256(scored.output).hexdigest()
    assert re.fullmatch(r"results/acme/b-1/shard-00001\.[0-9a-f]{16}\.parquet", scored.output_key)
    assert scored.evidence_sha256 == hashlib.sha256(canonical_json(scored.evidence)).hexdigest()
    receipt = verify_receipt(scored.receipt, scored.evidence, **_trust(stack)).payload
    assert receipt["input"] == {"key": "incoming/acme/b-1/part-00000.parquet", "sha256": "",
                                "file_id": stack.inputs[BATCH][1], "row_groups": [1, 2]}
    assert receipt["output"] == {"key": scored.output_key, "sha256": scored.output_sha256, "rows": 15}
    assert receipt["model"] == {"name": "spam", "version": 1, "digest": stack.digest}
    assert receipt["evidence_sha256"] == scored.evidence_sha256 and receipt["worker"] == "cscore-worker-1@test"
    assert (receipt["tenant"], receipt["batch_id"], receipt["shard_index"]) == (TENANT, BATCH, 1)
    usage = verify_receipt(scored.usage, scored.evidence, **_trust(stack), expected_type=USAGE_TYPE).payload
    assert (usage["provider"], usage["tenant"], usage["batch_id"], usage["shard_index"], usage["rows"],
            usage["model"]) == ("provider", TENANT, BATCH, 1, 15, receipt["model"])
    assert list(scored.seconds) == ["keys", "read", "score", "write", "sign"]
    # The output is PME under the batch's result key: no plaintext Parquet footer, no email id in the clear.
    assert scored.output.endswith(b"PARE") and b"m15" not in scored.output


def test_the_receipt_names_each_broker_the_batchs_keys_came_through_with_its_claims_digest(stack: Stack) -> None:
    scored = stack.score()
    sessions = unverified_payload(scored.receipt, what="receipt")["sessions"]
    digests = {name: session.current().claims_digest for name, session in stack.enclave._sessions.items()}
    assert sessions == [{"broker": "owner", "claims_digests": [digests["owner"]]},
                        {"broker": "provider", "claims_digests": [digests["provider"]]}]
    # The evidence is the owner session's, whose receipt key signed: it binds that key and this batch.
    assert scored.evidence["runtime_data"]["batch_id"] == BATCH
    assert scored.evidence["runtime_data"]["broker"] == "owner"
    assert stack.enclave._sessions_for("b-never") == []  # a batch no request named: no broker to name


def test_the_worker_opens_one_session_per_configured_broker_pinned_to_its_ca_with_one_set_of_keys(
        stack: Stack) -> None:
    stack.score(stack.spec(start=0, end=1))
    stack.score(stack.spec(start=1, end=2))  # the second shard reuses both sessions
    assert [{k: v for k, v in b.items() if k != "keys"} for b in stack.built] == [
        {"url": "https://owner.test", "ca_pem": CA, "party": "owner", "broker_name": "owner"},
        {"url": "https://provider.test", "ca_pem": CA + " ", "party": "provider", "broker_name": "provider"}]
    # One tee key for both: the owner's model grant names the key the provider's broker then sees.
    assert stack.built[0]["keys"] is stack.built[1]["keys"] is stack.enclave._keys


def test_shards_of_one_batch_share_one_model_release_and_one_result_key_release(stack: Stack) -> None:
    first, second = stack.score(stack.spec(start=0, end=1)), stack.score(stack.spec(start=1, end=2))
    assert (first.rows, second.rows) == (15, 15) and first.output_key != second.output_key
    assert stack.decisions(stack.provider, "unwrap") == [("model.spam", BATCH, stack.digest, "allow")]
    assert stack.decisions(stack.owner, "release") == [("acme.b-1.results", BATCH, stack.digest, "allow")]
    assert [d[1:] for d in stack.decisions(stack.owner, "model-grant")] == [(BATCH, stack.digest, "allow")]


def test_each_batch_asks_the_providers_broker_for_the_model_key_afresh(stack: Stack) -> None:
    stack.batch("b-2")
    stack.score()
    stack.score(stack.spec("b-2"))
    assert stack.decisions(stack.provider, "unwrap") == [("model.spam", BATCH, stack.digest, "allow"),
                                                         ("model.spam", "b-2", stack.digest, "allow")]


def test_a_worker_keeps_the_newest_batches_only_and_closes_the_keys_of_the_one_it_forgets(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("enclave.worker.BATCH_CONTEXTS", 2)
    for batch_id in ("b-2", "b-3"):
        stack.batch(batch_id)
    stack.score(stack.spec(start=0, end=1))
    first = stack.enclave._batches[("owner", BATCH, stack.digest)].keys
    stack.score(stack.spec("b-2"))
    stack.score(stack.spec(start=1, end=2))  # b-1 used again: now the newest
    stack.score(stack.spec("b-3"))  # b-2, the oldest, is forgotten
    assert [key[1] for key in stack.enclave._batches] == [BATCH, "b-3"]
    assert first._connection.kms_instance_id in pme_registry
    stack.score(stack.spec("b-2", start=0, end=1))  # b-2 again: a new context, its model key asked for again
    assert [key[1] for key in stack.enclave._batches] == ["b-3", "b-2"]
    assert first._connection.kms_instance_id not in pme_registry  # b-1's keys closed when it was forgotten
    assert [d[1] for d in stack.decisions(stack.provider, "unwrap")] == [BATCH, "b-2", "b-3", "b-2"]


def test_more_rows_than_the_grant_counts_are_refused_across_the_batchs_shards(stack: Stack) -> None:
    stack.score(stack.spec(start=0, end=1))
    stack.score(stack.spec(start=1, end=2))
    with pytest.raises(UsageExceeded) as refused:  # the platform sends a shard again
        stack.score(stack.spec(start=0, end=1))
    assert str(refused.value) == "batch b-1: the owner's grant counts 30 rows; 30 scored here already, 15 more refused"


def test_a_grant_for_fewer_rows_than_the_shard_refuses_it(stack: Stack) -> None:
    stack.batch("b-small", rows=14)
    with pytest.raises(UsageExceeded) as refused:
        stack.score(stack.spec("b-small", start=0, end=1))
    assert str(refused.value) == ("batch b-small: the owner's grant counts 14 rows; 0 scored here already, 15 more "
                                  "refused")


def test_the_rows_of_a_shard_whose_scoring_failed_stay_granted(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model run stopped midway (a limit, an operator's error): no score left the enclave, so the shard's rows
    go back to the batch's grant and the platform may send the shard again. (The stop is raised here: the
    watchdog's own stops depend on timing, `test_worker_checks` tests them.)"""
    def stopped(*args: Any) -> pa.Table:
        raise LimitExceeded("stopped")

    with monkeypatch.context() as patch:
        patch.setattr(worker_module, "_scored", stopped)
        with pytest.raises(LimitExceeded, match="stopped"):
            stack.score()
    assert stack.score().rows == 30  # the grant's 30 rows are all still there


def test_a_model_object_of_another_model_is_refused_after_the_key_release(stack: Stack) -> None:
    """The platform serves another ciphertext under the card's object key: the released key does not open it."""
    card = ModelCard.parse(unverified_payload(stack.card(), what="card"))
    served = stack.store.get(card.object_key)
    stack.store.put(card.object_key, served[:-1] + bytes([served[-1] ^ 1]))  # a tag byte set to 0 may be 0 already
    with pytest.raises(ModelIntegrityError, match="tag mismatch"):
        stack.score()


def test_another_providers_card_for_the_same_digest_opens_its_own_object(
        stack: Stack, tmp_path: Path, onnx_bytes: bytes) -> None:  # noqa: F811
    """A model's digest is public in its card. A second configured provider publishes a card naming the same
    digest over an object that is not the model: a worker that loaded the first provider's model must not
    serve it under the second's card (its terms, its broker's metering): the rival's object is opened and refused."""
    rival = Env(tmp_path / "rival", name="rival")
    rival.admin.register_owner("owner", stack.owner.admin.grant_key())
    party = ProviderAt(home=tmp_path / "rival-home", broker_url="https://rival.test", broker_name="rival")
    object.__setattr__(party, "admin", rival.admin)
    published = publish_model(onnx_bytes, "spam", provider=party, store=cast(ObjectStore, stack.store),
                              allowed_measurements=[GOOD])  # version 2 in the shared store
    config = _config(stack.enclave.config.providers[0],
                     BrokerIdentity("rival", "https://rival.test", CA, (party.public_key(),)))
    stack.enclave = Enclave(stack.owner.enclave(host_data=config.digest_hex()), config, name="w@test")
    stack.apps["rival"] = rival.app
    stack.batch("b-2")
    stack.batch("b-3")
    stack.score(stack.spec("b-2"))  # the provider's model, loaded and cached
    card = ModelCard.parse(unverified_payload(stack.store.get(published.card_key).decode(), what="card"))
    stack.store.put(card.object_key, b"\x00" * 64)
    with pytest.raises(ModelIntegrityError, match="model spam:2: expected ciphertext authenticated"):
        stack.score(stack.spec("b-3", model_version=2), stack.store.get(published.card_key).decode())
    assert stack.decisions(rival, "unwrap") == [("model.spam", "b-3", stack.digest, "allow")]


def test_attesting_names_each_broker_and_what_it_verified(stack: Stack) -> None:
    answer = stack.enclave.attest(["owner", "provider"], batch_id="b-9")
    assert answer["worker"] == "cscore-worker-1@test"
    assert answer["config_digest"] == stack.enclave.config.digest_hex()
    for verdict, (name, url) in zip(answer["verdicts"], [("owner", "https://owner.test"),
                                                         ("provider", "https://provider.test")], strict=True):
        result = stack.enclave._sessions[name].current()
        claims = result.claims
        assert verdict == {"broker": name, "url": url, "accepted": True, "tee": "sev-snp", "measurement": GOOD,
                           "root": "simulated", "host_data": stack.enclave.config.digest_hex(),
                           "claims_digest": hashlib.sha256(canonical_json(claims)).hexdigest(),
                           "expires_at": result.expires_at}
        assert stack.enclave._sessions[name].runtime_data["batch_id"] == "b-9"  # type: ignore[index]
    assert stack.enclave.attest(["owner"])["verdicts"][0]["claims_digest"] == answer["verdicts"][0]["claims_digest"]
    fresh = Enclave(stack.owner.enclave(host_data=stack.enclave.config.digest_hex()), stack.enclave.config)
    fresh.attest(["owner"])  # for no batch: the evidence binds none
    assert "batch_id" not in fresh._sessions["owner"].runtime_data  # type: ignore[operator]


def test_attesting_to_a_broker_the_configuration_does_not_name_is_refused(stack: Stack) -> None:
    with pytest.raises(FormatError) as refused:
        stack.enclave.attest(["platform-relay"])
    assert (refused.value.field, refused.value.actual) == ("provider_broker", "platform-relay")
    assert stack.built == []


def test_a_model_card_without_its_key_is_refused_before_any_broker_is_asked(stack: Stack) -> None:
    card = ModelCard.parse(unverified_payload(stack.card(), what="card"))
    for unkeyed in (dataclasses.replace(card, broker=None), dataclasses.replace(card, key_id=None),
                    dataclasses.replace(card, wrapped_dek=None)):
        with pytest.raises(ModelIntegrityError) as refused:
            stack.enclave._authorised_model(stack.spec(), unkeyed, None, None, stack.store.get)  # type: ignore[arg-type]
        assert str(refused.value) == "model card spam:1: expected an encrypted model"
    assert stack.built == []


def test_a_receipt_needs_an_attested_owner_session(stack: Stack) -> None:
    card = ModelCard.parse(unverified_payload(stack.card(), what="card"))
    unattested = AttestedSession("https://owner.test", stack.owner.enclave(), client=TestClient(stack.owner.app))
    with pytest.raises(RuntimeError) as refused:
        stack.enclave._receipted(stack.spec(), card, unattested, "results/acme/b-1/x.parquet", b"x", 1)
    assert str(refused.value) == "receipt: expected an attested owner session, got none"


def _trained(stack: Stack) -> tuple[TrainingSpec, TrainedJob, bytes]:
    """The owner's training job (as `cscore owner train` makes it: labelled rows under a job key, a share the
    owner wrapped, a grant naming the recipe), trained by the worker over both brokers. Returns the spec, the
    job and the tuned model's plaintext, opened as the two parties together could."""
    recipe = publish_recipe(RECIPE, "spam-recipe", provider=stack.party, store=cast(ObjectStore, stack.store),
                            allowed_measurements=[GOOD])
    owner = stack.owner.admin
    for key_id in ("job-1-data", "share-1"):
        owner.create_key(key_id)
    owner.grant("job-1", recipe.digest, [GOOD], ["job-1-data", "share-1"],
                config_digests=[stack.enclave.config.digest_hex()], rows=240)
    texts, labels, holdout = _mail(240)
    table = pa.table({"text": texts, "label": pa.array(labels, pa.int8()), "holdout": holdout})
    data = write_encrypted(table, owner, footer_key="job-1-data", column_key="job-1-data", row_group_size=100)
    share = b"\x07" * 32
    spec = TrainingSpec(TENANT, "job-1", "incoming/acme/job-1/train.parquet", hashlib.sha256(data).hexdigest(),
                        "spam-recipe", 1, recipe.digest, "owner", "spam-tuned", 1, "share-1",
                        base64.b64encode(owner.wrap("share-1", share)).decode(), "tuned/acme/spam-tuned/1/receipt.jws")
    job = stack.enclave.train(spec, data, stack.store.get(recipe.card_key).decode(), stack.store.get)
    card = verify_recipe_card(stack.store.get(recipe.card_key).decode(), [stack.party.public_key()], what="recipe")
    recipe_dek = stack.provider.admin.unwrap(card.key_id, base64.b64decode(card.wrapped_dek))
    model = AESGCM(joint_key(share, recipe_dek, model=spec.model)).decrypt(job.model[:12], job.model[12:],
                                                                           spec.model.encode())
    return spec, job, model


def test_the_owners_job_is_trained_under_its_grant_into_a_model_only_both_shares_open(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="enclave.worker"):
        spec, job, model = _trained(stack)
    assert job.model_key == "tuned/acme/spam-tuned/1/model.onnx.enc"
    receipt = verify_receipt(job.receipt, job.evidence, **_trust(stack), expected_type=TRAINING_RECEIPT_TYPE).payload
    card = verify_json(job.card, job.evidence["runtime_data"]["receipt_pubkey"], what="tuned card")
    digest = "sha256:" + hashlib.sha256(model).hexdigest()
    assert card["digest"] == receipt["model"]["digest"] == digest and card["evidence_sha256"] == job.evidence_sha256
    assert receipt["evidence_sha256"] == job.evidence_sha256 == hashlib.sha256(
        canonical_json(job.evidence)).hexdigest()
    assert (receipt["job_id"], receipt["worker"], receipt["metrics"]) == ("job-1", "cscore-worker-1@test", job.metrics)
    assert job.metrics["holdout_rows"] == 120 and job.evidence["runtime_data"]["batch_id"] == "job-1"
    assert [s["broker"] for s in receipt["sessions"]] == ["owner", "provider"]
    assert [r.getMessage() for r in caplog.records if r.name == "enclave.worker"] == [
        f"trained acme/spam-tuned:1 for acme (job job-1): model {digest}"]
    # The recipe key against the owner's grant for this job and recipe; the data key and the share under it.
    assert stack.decisions(stack.provider, "unwrap") == [("recipe.spam-recipe", "job-1", spec.recipe_digest, "allow")]
    assert sorted(stack.decisions(stack.owner, "unwrap")) == [("job-1-data", "job-1", spec.recipe_digest, "allow"),
                                                              ("share-1", "job-1", spec.recipe_digest, "allow")]


def test_a_recipe_card_is_verified_with_the_keys_of_the_provider_it_names(stack: Stack) -> None:
    """A recipe card naming no configured provider, or signed by another key than its provider's, is refused."""
    recipe = publish_recipe(RECIPE, "spam-recipe", provider=stack.party, store=cast(ObjectStore, stack.store),
                            allowed_measurements=[GOOD])
    token = stack.store.get(recipe.card_key).decode()
    spec = TrainingSpec(TENANT, "job-1", "incoming/acme/job-1/train.parquet", "00" * 32, "spam-recipe", 1,
                        recipe.digest, "owner", "spam-tuned", 1, "share-1", "", "tuned/acme/spam-tuned/1/receipt.jws")
    assert stack.enclave._verified_recipe_card(spec, token).digest == recipe.digest
    payload = unverified_payload(token, what="recipe card")
    for forged, keys in ((sign_json({**payload, "broker": "rival"}, stack.party.signing_key()), 0),
                         (sign_json(payload, generate_signing_key()), 1)):
        with pytest.raises(FormatError) as refused:
            stack.enclave._verified_recipe_card(spec, forged)
        assert str(refused.value) == (
            f"card.signature: expected an Ed25519 signature by one of {keys} pinned provider key(s), got 'none "
            "verifies'; recipes/spam-recipe/1/card.jws: only cards signed by a trusted provider are used")
    # A card naming no broker is checked against every configured provider's keys: it verifies, then fails to parse.
    unnamed = {k: v for k, v in payload.items() if k != "broker"}
    with pytest.raises(FormatError) as refused:
        stack.enclave._verified_recipe_card(spec, sign_json(unnamed, stack.party.signing_key()))
    assert refused.value.field == "recipe_card.broker"


def test_a_tuned_model_scores_its_owners_batch_with_both_shares(stack: Stack) -> None:
    spec, job, model = _trained(stack)
    stack.store.put(job.model_key, job.model)
    digest = "sha256:" + hashlib.sha256(model).hexdigest()
    stack.batch("b-t", digest=digest, shares=("share-1",))
    scored = stack.score(stack.spec("b-t", model_name="acme/spam-tuned", model_digest=digest), job.card)
    with PmeKeys(stack.owner.admin) as keys:
        results = decrypt_results(scored.output, keys)
    expected, _ = ModelSession(model).score(TEXTS)
    assert results.column("spam_probability").to_pylist() == pytest.approx([float(p) for p in expected], abs=0)
    assert ("share-1", "b-t", digest, "allow") in stack.decisions(stack.owner, "unwrap")
    assert stack.decisions(stack.provider, "unwrap")[-1] == ("recipe.spam-recipe", "b-t", digest, "allow")


def test_a_providers_card_naming_a_cached_tuned_models_digest_opens_its_own_object(stack: Stack) -> None:
    """A tuned model's digest is public in its card. The recipe's provider signs a card of its own naming it, over
    its own object, and a batch grants that digest: the worker that scored the tuned model must open the provider's
    object with the provider's key, never serve the owner's tuned model from its cache."""
    spec, job, model = _trained(stack)
    stack.store.put(job.model_key, job.model)
    digest = "sha256:" + hashlib.sha256(model).hexdigest()
    stack.batch("b-t", digest=digest, shares=("share-1",))
    stack.score(stack.spec("b-t", model_name="acme/spam-tuned", model_digest=digest), job.card)  # cached
    forged = sign_json({**unverified_payload(stack.card(), what="card"), "digest": digest},
                       stack.party.signing_key())
    stack.batch("b-p", digest=digest)
    with pytest.raises(ModelIntegrityError) as refused:
        stack.score(stack.spec("b-p", model_digest=digest), forged)
    assert str(refused.value) == (f"model spam:1: expected digest {digest} (the owner's choice), got {stack.digest}")
    assert stack.decisions(stack.provider, "unwrap")[-1] == ("model.spam", "b-p", digest, "allow")


def test_a_tuned_models_cache_namespace_names_its_reference_and_both_shares(onnx_bytes: bytes) -> None:  # noqa: F811
    """Whose keys opened a tuned model: the same reference with any share changed is another namespace."""
    payload = unverified_payload(_tuned_card(onnx_bytes), what="tuned card")
    shares = ["owner", "share-1", "AAAA", "provider", "recipe.spam-recipe", "AAAA"]
    assert _tuned_namespace(TunedCard.parse(payload)) == (
        "tuned:acme/spam-tuned:1:" + hashlib.sha256(canonical_json(shares)).hexdigest())
    seen = {_tuned_namespace(TunedCard.parse(payload))}
    for share in ("owner_share", "provider_share"):
        for name, value in (("broker", "other"), ("key_id", "other"), ("wrapped", "CCCC")):
            seen.add(_tuned_namespace(TunedCard.parse({**payload, share: {**payload[share], name: value}})))
    assert len(seen) == 7


def test_a_plaintext_object_served_for_a_confidential_shard_is_refused(stack: Stack) -> None:
    """The platform serves plain Parquet of its own under the input key of a PME shard: refused, whatever its
    footer claims (only an encrypted footer is authenticated), before any row is read."""
    data, _ = encode_part(pa.table({"message_id": ["m0"], "text": ["platform's email"]}), None,
                          OwnerKeys.for_batch(TENANT, BATCH), tenant=TENANT, batch_id=BATCH, key="unused")
    stack.inputs[BATCH] = (data, stack.inputs[BATCH][1])
    with pytest.raises(ShardInputError) as refused:
        stack.score()
    assert str(refused.value) == (
        "input incoming/acme/b-1/part-00000.parquet: expected a Parquet file with an encrypted footer (ending "
        "b'PARE'), got one ending b'PAR1'; the owner's inputs are all PME-encrypted")


def test_a_confidential_shard_whose_file_lacks_a_contract_column_is_refused_naming_it(stack: Stack) -> None:
    """The owner's genuine PME part, bound to this batch and key, holds its emails under `body`: the card's contract
    names `text`, and the refusal says so before any row is read or counted."""
    key = f"incoming/{TENANT}/{BATCH}/part-00000.parquet"
    table = pa.table({"message_id": [f"m{i}" for i in range(len(TEXTS))], "body": TEXTS})
    stack.inputs[BATCH] = encode_part(table, stack.owner.admin, OwnerKeys.for_batch(TENANT, BATCH), tenant=TENANT,
                                      batch_id=BATCH, key=key)
    with pytest.raises(ShardInputError) as refused:
        stack.score()
    assert str(refused.value) == (f"input {key}: expected columns ['message_id', 'text'] (model spam:1's contract), "
                                  "column 'text' is missing; submit the data for this model's inputs")


def test_a_worker_without_a_name_is_named_by_its_host(stack: Stack) -> None:
    config = stack.enclave.config
    assert Enclave(stack.owner.enclave(host_data=config.digest_hex()), config).name == socket.gethostname()


def test_a_training_jobs_key_client_never_wraps() -> None:
    with pytest.raises(PermissionError) as refused:
        _UnwrapOnly(None, {"batch_id": "job-1"}).wrap("job-1-data", bytes(32))  # type: ignore[arg-type]
    assert str(refused.value) == "wrap job-1-data: a training job writes no Parquet"


def test_a_card_that_is_no_jws_is_named_as_what_it_should_be(stack: Stack) -> None:
    """What the platform hands in place of a card is named by what it should have been, before any key is asked."""
    spec = TrainingSpec(TENANT, "job-1", "incoming/acme/job-1/train.parquet", "00" * 32, "spam-recipe", 1,
                        "sha256:" + "5e" * 32, "owner", "spam-tuned", 1, "share-1", "", "tuned/acme/spam-tuned/1/r.jws")
    with pytest.raises(SignatureError, match=r"^recipe card: expected a compact JWS, got "):
        stack.enclave._verified_recipe_card(spec, "not a card")
    with pytest.raises(SignatureError, match=r"^model card: expected a compact JWS, got "):
        stack.score(card="not a card")
    assert stack.built == []


def test_the_worker_scores_with_one_onnxruntime_thread_per_session(stack: Stack) -> None:
    """Two workers share two cores: each scores with one thread (intra-op 1, inter-op 1, sequential), in the
    published graph's session and in its TF-IDF path's, so the workers never run more scoring threads than cores."""
    import onnxruntime as ort

    from enclave import runner

    stack.score()
    [model] = runner._cache.values()
    sessions = {"whole graph": model._session, "tf-idf path": model.rewrite._linear if model.rewrite else None}
    found = {name: (s.get_session_options().intra_op_num_threads, s.get_session_options().inter_op_num_threads,
                    s.get_session_options().execution_mode) if s else None for name, s in sessions.items()}
    assert model.threads == 1
    assert found == {name: (1, 1, ort.ExecutionMode.ORT_SEQUENTIAL) for name in sessions}
