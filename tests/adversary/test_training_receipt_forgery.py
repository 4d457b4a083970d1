"""Forged training receipts against the owner's verification (`sdk.owner_training.verify_training`), issue 16.

Every forgery here is a well-formed receipt, signed by a genuinely attested enclave key of a granted measurement
and configuration, with its evidence beside it, correct except for one thing: it signs no session at the owner's
broker, or a session only another broker's key attested, or a session whose release in the owner broker's signed
log was for another job, recipe or data key (or was refused), or it names another job, recipe or data digest, or
counts other than the owner's manifest's rows split in two. Each is refused naming field, expected and actual;
the honest receipt built the same way passes.

In process: the owner's broker and another broker are real brokers (production verifier trusting the simulated
SEV-SNP root, their own token keys and signed decision logs) behind FastAPI test clients; the enclaves are
simulated SEV-SNP guests whose attested sessions make the real key requests; S3 is moto.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from joserfc.jwk import OKPKey
from moto import mock_aws

from attestation import Policy, TrustAnchors
from enclave.kbs_client import AttestedSession, KbsError
from enclave.receipts import evidence_document
from enclave.signing import canonical_json, sign_json, unverified_payload
from enclave.training import Metrics, TrainedModel, sign_training_receipt, tuned_card
from sdk.broker_admin import BrokerAdmin
from sdk.emails import Email
from sdk.owner_training import TrainingJobError, held_out, submit_training, verify_training
from sdk.party import Party
from sdk.storage import ObjectStore
from tests.enclave.test_training import _mail, _published
from tests.keybroker.inproc import CONFIG, GOOD, OTHER, Env
from wire.receipt import BrokerSession
from wire.recipe import RecipeCard
from wire.training import TrainingSpec

TENANT, JOB, OTHER_JOB = "acme", "t-1", "t-0"
OTHER_RECIPE = "sha256:" + "0f" * 32


class OwnerAt(Party):
    """The owner's party with its broker admin client given (the in-process broker)."""

    admin: Any = None

    def broker(self) -> BrokerAdmin:
        return cast(BrokerAdmin, self.admin)


@dataclass
class Scene:
    """One owner's training job t-1 and the enclaves around it (module docstring)."""

    store: ObjectStore
    owner: OwnerAt
    recipe: RecipeCard
    manifest: dict[str, Any]
    anchors: TrustAnchors
    policy: Policy
    workers: dict[str, AttestedSession]  # by what its sessions did: "honest", "other-broker", ...
    holdout: tuple[int, int, int]  # train rows, held-out rows, held-out spam

    def put_receipt(self, worker: str, *, sessions: list[BrokerSession] | None = None,
                    share: dict[str, str] | None = None, **change: Any) -> None:
        """The receipt and tuned card of job t-1 signed by `worker`'s attested receipt key (its evidence
        beside them); `sessions` default: what that worker's sessions carried for t-1 (or any job it served);
        `share`: the manifest's key_broker fields the platform replaced in the spec it handed the enclave;
        `change`: receipt payload fields replaced (dotted names one level deep: "input.sha256")."""
        session = self.workers[worker]
        assert session.evidence is not None and session.runtime_data is not None
        doc = evidence_document(session.evidence, session.runtime_data)
        evidence_sha = hashlib.sha256(canonical_json(doc)).hexdigest()
        spec = _spec({**self.manifest, "key_broker": {**self.manifest["key_broker"], **(share or {})}}, self.recipe)
        self.store.put(f"{spec.prefix}evidence/{evidence_sha}.json", canonical_json(doc))
        onnx = secrets.token_bytes(64)  # stands for the tuned model's ONNX bytes: not what is verified here
        trained = TrainedModel(onnx, "sha256:" + hashlib.sha256(onnx).hexdigest(), Metrics(0.97, 0.98, 0.975,
                                                                                            *self.holdout))
        key = OKPKey.import_key(session.receipt_private_key)  # as the worker does: the key its evidence binds
        if sessions is None:
            sessions = [BrokerSession(self.manifest["key_broker"]["name"], _digests(session))]
        token = sign_training_receipt(key, spec=spec, trained=trained, evidence_sha256=evidence_sha, worker="w1",
                                      sessions=sessions)
        if change:
            payload = unverified_payload(token, what="receipt")
            for dotted, value in change.items():
                parent, _, leaf = dotted.rpartition(".")
                (payload[parent] if parent else payload)[leaf] = value
            token = sign_json(payload, key)
        self.store.put(spec.prefix + "card.jws", sign_json(tuned_card(spec, trained, self.recipe,
                                                                      evidence_sha256=evidence_sha), key).encode())
        self.store.put(spec.receipt_key, token.encode())

    def verify(self) -> Any:
        return verify_training(self.store, TENANT, JOB, owner=self.owner, anchors=self.anchors, policy=self.policy)

    def refusal(self) -> TrainingJobError:
        with pytest.raises(TrainingJobError) as refused:
            self.verify()
        return refused.value


def _spec(manifest: dict[str, Any], recipe: RecipeCard) -> TrainingSpec:
    """The worker's instruction, as `training_spec` derives it from the owner's manifest."""
    model = manifest["model"]
    return TrainingSpec(TENANT, manifest["job_id"], manifest["object"]["key"], manifest["object"]["sha256"],
                        recipe.name, recipe.version, recipe.digest, manifest["key_broker"]["name"], model["name"],
                        model["version"], manifest["key_broker"]["share_key"],
                        manifest["key_broker"]["share_wrapped"],
                        f"tuned/{TENANT}/{model['name']}/{model['version']}/receipt.jws")


def _digests(session: AttestedSession) -> tuple[str, ...]:
    """Every claims digest the session's requests carried, whichever job they named."""
    return tuple(sorted({d for job in (JOB, OTHER_JOB) for d in session.claims_digests(job)}))


def _unwrap(session: AttestedSession, admin: BrokerAdmin, key_id: str, job: str, recipe: str) -> None:
    """A real key request of an attested enclave: the broker logs the release under its claims digest."""
    session.unwrap(key_id, admin.wrap(key_id, os.urandom(32)), batch_id=job, model_digest=recipe)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    with pytest.MonkeyPatch.context() as env_vars, mock_aws():
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env_vars.setenv(name, value)
        env_vars.delenv("CSCORE_S3_ENDPOINT", raising=False)
        store = ObjectStore("cscore")
        store._s3.create_bucket(Bucket="cscore")
        yield _build(tmp_path_factory.mktemp("training-forgery"), store)


def _build(tmp: Path, store: ObjectStore) -> Scene:
    owner_env, other_env = Env(tmp / "owner"), Env(tmp / "other", name="other")
    owner = OwnerAt(home=tmp / "owner-home", broker_url="http://testserver", broker_name="owner")
    object.__setattr__(owner, "admin", owner_env.admin)
    recipe, _, _ = _published()
    texts, labels, _ = _mail(240)
    labelled = [(Email(f"m{i:03d}", text), y) for i, (text, y) in enumerate(zip(texts, labels, strict=True))]
    # The owner's own job t-0 (same recipe) first, then t-1: `cscore owner train` twice.
    submit_training(labelled, recipe, tenant=TENANT, owner=owner, store=store, measurements=[GOOD],
                    config_digests=[CONFIG], model_name="earlier", job_id=OTHER_JOB)
    job = submit_training(labelled, recipe, tenant=TENANT, owner=owner, store=store, measurements=[GOOD],
                          config_digests=[CONFIG], model_name="spam-filter-tuned", job_id=JOB)
    manifest = unverified_payload(store.get(job.manifest_key).decode(), what="manifest")
    data_key, share_key = manifest["key_broker"]["data_key"], manifest["key_broker"]["share_key"]
    admin = owner_env.admin
    workers = {name: owner_env.worker() for name in ("honest", "other-job", "share-only", "other-recipe", "denied")}
    workers["other-broker"] = other_env.worker()
    # An enclave served by another broker (its own token key), which holds a key of the same id for t-1.
    other_env.admin.create_key(data_key)
    other_env.admin.grant(JOB, recipe.digest, [GOOD], [data_key], config_digests=[CONFIG], rows=240)
    _unwrap(workers["other-broker"], other_env.admin, data_key, JOB, recipe.digest)
    _unwrap(workers["other-job"], admin, f"{TENANT}.{OTHER_JOB}.train", OTHER_JOB, recipe.digest)
    _unwrap(workers["share-only"], admin, share_key, JOB, recipe.digest)  # the owner's share, never its rows
    # A grant of t-1 to another measurement: the owner's broker refuses this enclave the rows (and logs it).
    admin.grant(JOB, recipe.digest, [OTHER], [data_key, share_key], config_digests=[CONFIG], rows=240)
    with pytest.raises(KbsError):
        _unwrap(workers["denied"], admin, data_key, JOB, recipe.digest)
    # A recipe the owner granted t-1 first, then replaced by its last word (the recipe its manifest names).
    admin.grant(JOB, OTHER_RECIPE, [GOOD], [data_key, share_key], config_digests=[CONFIG], rows=240)
    _unwrap(workers["other-recipe"], admin, data_key, JOB, OTHER_RECIPE)
    admin.grant(JOB, recipe.digest, [GOOD], [data_key, share_key], config_digests=[CONFIG], rows=240)
    for key_id in (data_key, share_key):
        _unwrap(workers["honest"], admin, key_id, JOB, recipe.digest)
    spam_held = sum(1 for (_, y), h in zip(labelled, held_out([e.message_id for e, _ in labelled], 0.3, 0),
                                           strict=True) if h and y)
    anchors = TrustAnchors.from_dir(owner_env.sim_dir)
    policy = Policy.from_dict({"allowed_measurements": [GOOD], "allowed_roots": ["simulated"]})
    return Scene(store, owner, recipe, manifest, anchors, policy, workers,
                 (job.rows - job.holdout_rows, job.holdout_rows, spam_held))


def test_the_honest_receipt_passes(scene: Scene) -> None:
    scene.put_receipt("honest")
    outcome = scene.verify()
    assert outcome.model == f"{TENANT}/spam-filter-tuned:1" and outcome.metrics["f1"] == 0.975
    assert outcome.receipt["sessions"][0]["broker"] == "owner"


@pytest.mark.parametrize("sessions", [[], [BrokerSession("provider", ("ab" * 32,))]], ids=["none", "provider-only"])
def test_a_receipt_without_a_session_at_the_owners_broker_is_refused(scene: Scene,
                                                                      sessions: list[BrokerSession]) -> None:
    scene.put_receipt("honest", sessions=sessions)
    refused = scene.refusal()
    assert refused.field == "sessions" and "a session at your broker 'owner'" in str(refused.expected)
    assert refused.actual == [s.broker for s in sessions]


def test_a_session_another_brokers_key_attested_is_refused(scene: Scene) -> None:
    """The enclave got a key of the same id for t-1 from another broker: the owner's broker never attested it."""
    scene.put_receipt("other-broker")
    refused = scene.refusal()
    assert refused.field == "sessions[owner].claims_digests"
    assert refused.expected == "claims your broker 'owner' attested (in its signed decision log)"
    assert refused.actual == list(_digests(scene.workers["other-broker"]))


@pytest.mark.parametrize(("worker", "field", "expected", "actual"), [
    ("other-job", "batch_id", JOB, [OTHER_JOB]),
    ("other-recipe", "model_digest", "recipe", [OTHER_RECIPE]),
    ("share-only", "key_id", f"{TENANT}.{JOB}.train", [f"{TENANT}.{JOB}.share"]),
    ("denied", "batch_id", JOB, []),
], ids=["another-job", "another-recipe", "another-data-key", "refused"])
def test_a_session_whose_release_was_for_another_job_recipe_or_data_key_or_refused_is_refused(
        scene: Scene, worker: str, field: str, expected: str, actual: list[str]) -> None:
    scene.put_receipt(worker)
    refused = scene.refusal()
    wanted = scene.recipe.digest if expected == "recipe" else expected
    assert refused.field == f"sessions[owner].releases.{field}"
    assert str(refused.expected).startswith(f"{wanted!r} (your manifest's ")
    assert refused.actual == actual


@pytest.mark.parametrize(("field", "value"), [
    ("job_id", OTHER_JOB), ("recipe.digest", OTHER_RECIPE), ("input.sha256", "ee" * 32), ("tenant", "rival"),
], ids=["another-job", "another-recipe", "another-data-digest", "another-tenant"])
def test_a_receipt_for_another_job_recipe_or_data_digest_is_refused(scene: Scene, field: str, value: str) -> None:
    scene.put_receipt("honest", **{field: value})
    refused = scene.refusal()
    mine = {"job_id": JOB, "recipe.digest": scene.recipe.digest, "input.sha256": scene.manifest["object"]["sha256"],
            "tenant": TENANT}[field]
    assert (refused.field, refused.expected, refused.actual) == (field, f"{mine!r} (your manifest)", value)



def _counts(train: int, held: int, spam: int) -> dict[str, Any]:
    return {"precision": 0.97, "recall": 0.98, "f1": 0.975, "train_rows": train, "holdout_rows": held,
            "holdout_spam": spam}


@pytest.mark.parametrize("case", ["one-row-more", "more-spam-than-submitted", "more-ham-than-submitted"])
def test_receipt_counts_other_than_the_manifests_rows_split_in_two_are_refused(scene: Scene, case: str) -> None:
    """The counts stay in clear because they are the manifest's own (docs/THREAT_MODEL.md): a receipt whose
    counts are not (well formed, at least MIN_HOLDOUT_PER_CLASS rows of each class) is refused."""
    rows, spam = scene.manifest["object"]["rows"], scene.manifest["object"]["spam"]
    train, held, held_spam = scene.holdout
    assert (train + held, held_spam <= spam) == (rows, True)  # the honest receipt's counts are the manifest's
    forged = {"one-row-more": (train + 1, held, held_spam),
              "more-spam-than-submitted": (rows - (spam + 1 + 30), spam + 1 + 30, spam + 1),
              "more-ham-than-submitted": (rows - (rows - spam + 1 + 30), rows - spam + 1 + 30, 30)}[case]
    scene.put_receipt("honest", metrics=_counts(*forged))
    refused = scene.refusal()
    field, expected, actual = {
        "one-row-more": ("metrics.train_rows + metrics.holdout_rows", f"{rows} (your manifest's rows)", rows + 1),
        "more-spam-than-submitted": ("metrics.holdout_spam", f"at most {spam} (your manifest's spam rows)", spam + 1),
        "more-ham-than-submitted": ("metrics.holdout_rows - metrics.holdout_spam",
                                    f"at most {rows - spam} (your manifest's ham rows)", rows - spam + 1)}[case]
    assert (refused.field, refused.expected, refused.actual) == (field, expected, actual)


@pytest.mark.parametrize("field", ["share_key", "share_wrapped", "name"])
def test_a_tuned_card_whose_owner_share_is_not_the_manifests_is_refused(scene: Scene, field: str) -> None:
    """The platform hands the enclave a spec whose owner share is another (the job's data key, granted for the
    same job): the receipt, its sessions and its counts are honest, the card names the substituted share."""
    forged = {"share_key": scene.manifest["key_broker"]["data_key"], "share_wrapped": "AAAA", "name": "rival"}[field]
    scene.put_receipt("honest", share={field: forged})
    refused = scene.refusal()
    card_field = {"share_key": "key_id", "share_wrapped": "wrapped", "name": "broker"}[field]
    assert (refused.field, refused.expected, refused.actual) == (
        f"owner_share.{card_field}", f"{scene.manifest['key_broker'][field]!r} (your manifest)", forged)
