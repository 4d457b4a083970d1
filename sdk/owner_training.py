"""The data owner's training job (`cscore owner train`): labelled mail in, a signed training manifest out.

The owner reads folders ``spam/`` and ``ham/``, chooses its held-out split (SHA-256 rank of each id, seeded),
PME-encrypts the rows under per-job keys at its own broker, makes its half of the tuned model's key (a random
share wrapped by its broker: `enclave.training.joint_key`), records a grant naming the recipe's digest, and
uploads the manifest (`cscore.training-manifest/v1`, Ed25519 by the owner's key) last::

    {"type", "tenant", "job_id", "created_at",
     "object": {"key", "size", "sha256", "rows", "spam"},
     "recipe": {"name", "version", "digest"}, "model": {"name", "version"},
     "holdout": {"fraction", "seed"},
     "key_broker": {"name", "url", "data_key", "share_key", "share_wrapped": base64}}
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from attestation import Policy, TrustAnchors
from attestation.errors import AttestationError
from enclave.pme import write_encrypted
from enclave.receipts import VerifiedReceipt, verify_receipt
from enclave.signing import SignatureError, sign_json, unverified_payload, verify_json
from sdk.broker_admin import BrokerAdminError
from sdk.emails import Email, check_emails, read_emails
from sdk.models import ModelListing
from sdk.party import Party
from sdk.platform_text import shown
from sdk.storage import ObjectStore
from wire.errors import FormatError
from wire.receipt import parse_sessions
from wire.recipe import RecipeCard
from wire.training import MIN_HOLDOUT_PER_CLASS, TRAINING_RECEIPT_TYPE, TUNED_CARD_TYPE, TunedCard, aggregate_metrics
from wire.worker_config import config_digest_from_claims

TRAINING_MANIFEST_TYPE = "cscore.training-manifest/v1"

LABELS = {"ham": 0, "spam": 1}
ROW_GROUP_SIZE = 1_000


class TrainingJobError(ValueError):
    """The training job cannot be submitted or verified as given; the message says why. A verification refusal
    also names `field` (dotted, in the named object), `expected` and `actual`; None where the message says it."""

    def __init__(self, message: str, *, field: str | None = None, expected: Any = None, actual: Any = None) -> None:
        super().__init__(message)
        self.field, self.expected, self.actual = field, expected, actual


@dataclass(frozen=True)
class SubmittedTraining:
    tenant: str
    job_id: str
    manifest_key: str
    rows: int
    holdout_rows: int


def read_labelled(path: Path) -> list[tuple[Email, int]]:
    """The emails under ``path/spam`` (label 1) and ``path/ham`` (label 0), ids prefixed by their folder.

    Raises TrainingJobError when a folder is missing or empty, EmailInputError for an unreadable file.
    """
    labelled: list[tuple[Email, int]] = []
    for folder, label in LABELS.items():
        if not (Path(path) / folder).is_dir():
            raise TrainingJobError(f"{path}: expected folders 'spam/' and 'ham/', '{folder}/' is missing")
        emails = [Email(message_id=f"{folder}/{e.message_id}", text=e.text) for e in read_emails(Path(path) / folder)]
        if not emails:
            raise TrainingJobError(f"{path / folder}: expected emails, found none")
        labelled.extend((e, label) for e in emails)
    return labelled


def held_out(message_ids: Sequence[str], fraction: float, seed: int) -> list[bool]:
    """The owner's split: an id is held out when SHA-256(seed, id) ranks in the first `fraction` (order-free)."""
    if not 0.0 < fraction < 1.0:
        raise TrainingJobError(f"holdout fraction: expected in (0, 1), got {fraction}")
    threshold = int(fraction * 2**64)
    return [int.from_bytes(hashlib.sha256(f"{seed}\0{m}".encode()).digest()[:8], "big") < threshold
            for m in message_ids]


def submit_training(labelled: Sequence[tuple[Email, int]], recipe: RecipeCard, *, tenant: str, owner: Party,
                    store: ObjectStore, measurements: list[str], config_digests: list[str], model_name: str,
                    holdout_fraction: float = 0.3, seed: int = 0, job_id: str | None = None) -> SubmittedTraining:
    """Encrypt and upload the rows, record the grant, upload the signed training manifest last."""
    if not labelled:
        raise TrainingJobError("emails: expected labelled emails, got none")
    emails = [e for e, _ in labelled]
    check_emails(emails)  # every refusal before any broker key is created or any byte uploaded
    job_id = job_id or f"t-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    holdout = held_out([e.message_id for e in emails], holdout_fraction, seed)
    for label, name in ((1, "spam"), (0, "ham")):  # the enclave refuses it too: say so before any upload
        held = sum(1 for (_, y), h in zip(labelled, holdout, strict=True) if h and y == label)
        if held < MIN_HOLDOUT_PER_CLASS:
            raise TrainingJobError(f"holdout: expected at least {MIN_HOLDOUT_PER_CLASS} {name} emails held out, got "
                                   f"{held} (fraction {holdout_fraction}, seed {seed}); metrics on a smaller split "
                                   f"would tell individual emails' labels: add {name} mail or raise --holdout")
    broker = owner.broker()
    data_key, share_key = f"{tenant}.{job_id}.train", f"{tenant}.{job_id}.share"
    for key_id in (data_key, share_key):
        broker.create_key(key_id, kind="data")
    table = pa.table({"text": [e.text for e in emails], "label": pa.array([y for _, y in labelled], pa.int8()),
                      "holdout": holdout})
    data = write_encrypted(table, broker, footer_key=data_key, column_key=data_key, row_group_size=ROW_GROUP_SIZE)
    prefix = f"incoming/{tenant}/{job_id}/"
    store.put(prefix + "train.parquet", data)
    share_wrapped = base64.b64encode(broker.wrap(share_key, os.urandom(32))).decode()  # the owner keeps no copy
    broker.grant(job_id, recipe.digest, measurements, [data_key, share_key], config_digests=config_digests,
                 rows=len(emails))
    manifest: dict[str, Any] = {
        "type": TRAINING_MANIFEST_TYPE, "tenant": tenant, "job_id": job_id, "created_at": int(time.time()),
        "object": {"key": prefix + "train.parquet", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                   "rows": len(emails), "spam": sum(y for _, y in labelled)},
        "recipe": {"name": recipe.name, "version": recipe.version, "digest": recipe.digest},
        "model": {"name": model_name, "version": _next_tuned_version(store, tenant, model_name)},
        "holdout": {"fraction": holdout_fraction, "seed": seed},
        "key_broker": {"name": owner.broker_name, "url": owner.broker_url, "data_key": data_key,
                       "share_key": share_key, "share_wrapped": share_wrapped}}
    manifest_key = prefix + "training.jws"
    store.put(manifest_key, sign_json(manifest, owner.signing_key()).encode(), "application/jose")
    return SubmittedTraining(tenant, job_id, manifest_key, len(emails), sum(holdout))


@dataclass(frozen=True)
class TrainingOutcome:
    """A verified training job: the tuned model's reference and digest, the held-out metrics, who trained it."""

    tenant: str
    job_id: str
    model: str  # <tenant>/<name>:<version>, as `cscore owner submit --model` takes it
    digest: str
    metrics: dict[str, Any]
    measurement: str
    receipt: dict[str, Any]
    card: dict[str, Any]


def wait_for_training(store: ObjectStore, tenant: str, job_id: str, *, timeout: float = 1800.0,
                      progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Poll the job's status until it succeeded or failed; returns the status document (the platform's word:
    `verify_training` checks what it claims). Raises TrainingJobError for an unknown job, TimeoutError."""
    manifest_key = f"incoming/{tenant}/{job_id}/training.jws"
    if not store.exists(manifest_key):
        raise TrainingJobError(f"training job {job_id!r}: no such job for tenant {tenant!r} ({manifest_key} is absent "
                               f"in bucket {store.bucket}); check the id `cscore owner train` printed and --tenant")
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        raw = store.get_if_exists(f"status/{tenant}/{job_id}.json")
        status: dict[str, Any] = json.loads(raw) if raw else {"state": "submitted"}
        if status["state"] != last:
            progress(last := status["state"])
        if status["state"] in {"succeeded", "failed"}:
            return status
        time.sleep(float(os.environ.get("CSCORE_POLL_S", "0.25")))
    raise TimeoutError(f"training job {job_id}: expected it to finish within {timeout:.0f} s, still {last!r}; "
                       "look at the Airflow UI for the cscore_train run")


def verify_training(store: ObjectStore, tenant: str, job_id: str, *, owner: Party, anchors: TrustAnchors | None = None,
                    policy: Policy | None = None, accept_simulated: bool = False) -> TrainingOutcome:
    """Check the enclave's receipt and tuned-model card against the owner's own manifest and grant.

    Both are signed by the key the attestation evidence beside them binds (verified against `anchors` and
    `policy`; by default AMD's roots, the simulated one only with `accept_simulated`, and the measurements this
    owner granted the job), by a worker of a measurement and configuration this owner granted, for this job's
    data and recipe digests. The receipt must sign a session at this owner's broker that the broker's own
    signed decision log shows attested and released this job's data key for this recipe (`_check_owner_session`).
    Raises TrainingJobError naming the object and the field, with `field`, `expected` and `actual`.
    """
    m = verify_json(_get(store, f"incoming/{tenant}/{job_id}/training.jws", "your signed training manifest").decode(),
                    owner.signing_key().as_dict(private=False), what="training manifest")
    prefix = f"tuned/{tenant}/{m['model']['name']}/{m['model']['version']}/"
    broker = owner.broker()
    granted = broker.get_grant(job_id)
    if anchors is None or policy is None:
        from sdk.results import owner_trust

        anchors, policy = owner_trust(accept_simulated=accept_simulated,
                                      measurements=[str(x) for x in granted.get("measurements", [])])
    receipt = _enclave_signed(store, prefix + "receipt.jws", prefix, TRAINING_RECEIPT_TYPE, anchors, policy)
    if receipt.claims.measurement not in granted.get("measurements", []):
        raise TrainingJobError(f"{prefix}receipt.jws: measurement expected one of {granted.get('measurements')} "
                               f"(your grant), got {receipt.claims.measurement}")
    config = config_digest_from_claims(receipt.claims.host_data or "")
    if config not in granted.get("config_digests", []):
        raise TrainingJobError(f"{prefix}receipt.jws: worker configuration (host_data) expected one of "
                               f"{granted.get('config_digests')} (your grant), got {config}")
    p = receipt.payload
    expected = {"tenant": tenant, "job_id": job_id, "input.sha256": m["object"]["sha256"],
                "recipe.digest": m["recipe"]["digest"], "model.name": m["model"]["name"],
                "model.version": m["model"]["version"]}
    _expect_fields(prefix + "receipt.jws", expected, p)
    _check_owner_session(prefix + "receipt.jws", m, p, broker.decisions())
    try:
        metrics = aggregate_metrics(p.get("metrics"), where="metrics")
    except FormatError as exc:  # per-row values or a split too small: not what this owner is shown
        raise TrainingJobError(f"{prefix}receipt.jws: {exc}") from exc
    _check_counts(prefix + "receipt.jws", m, metrics)
    card = _enclave_signed(store, prefix + "card.jws", prefix, TUNED_CARD_TYPE, anchors, policy).payload
    # The owner's share is the one its manifest wrapped: the spec that carried it to the enclave is the platform's.
    _expect_fields(prefix + "card.jws", {"tenant": tenant, "name": m["model"]["name"],
                                         "version": m["model"]["version"], "digest": p["model"]["digest"],
                                         "lineage.input_sha256": m["object"]["sha256"],
                                         "lineage.recipe.digest": m["recipe"]["digest"],
                                         "owner_share.broker": m["key_broker"]["name"],
                                         "owner_share.key_id": m["key_broker"]["share_key"],
                                         "owner_share.wrapped": m["key_broker"]["share_wrapped"]}, card)
    return TrainingOutcome(tenant, job_id, f"{tenant}/{m['model']['name']}:{m['model']['version']}",
                           p["model"]["digest"], metrics, receipt.claims.measurement, p, card)


def tuned_models(store: ObjectStore, tenant: str, *, owner: Party, anchors: TrustAnchors | None = None,
                 policy: Policy | None = None, accept_simulated: bool = False,
                 skipped: list[str] | None = None) -> list[ModelListing]:
    """This owner's tuned models, as `cscore models` lists them and `cscore owner submit --model` chooses them.

    Only cards under `tuned/<tenant>/` whose job this owner signed and whose receipt and card verify
    (`verify_training`): a card the platform planted, or another owner's, is not listed; `skipped` (when given)
    gets one "KEY: why" line per card left out, so the owner can tell a missing model from a refused one.
    """
    listings: dict[str, ModelListing] = {}
    for key in store.keys(f"tuned/{tenant}/"):
        if not key.endswith("/card.jws"):
            continue
        try:
            job_id = TunedCard.parse(unverified_payload(store.get(key).decode(errors="replace"), what=key)).job_id
            outcome = verify_training(store, tenant, job_id, owner=owner, anchors=anchors, policy=policy,
                                      accept_simulated=accept_simulated)
        except (TrainingJobError, FormatError, SignatureError, BrokerAdminError) as exc:
            if skipped is not None:  # the platform wrote the card and evidence: one safe line each
                skipped.append(shown(exc if str(exc).startswith(key) else f"{key}: {exc}"))
            continue
        card = TunedCard.parse(outcome.card)
        listings[outcome.model] = ModelListing(
            f"{tenant}/{card.name}", card.version, card.digest, f"enclave {outcome.measurement[:16]}",
            int(outcome.receipt.get("issued_at", 0)), True, card.model_card(), owner_keys=(card.owner_key_id,))
    return [listings[k] for k in sorted(listings)]


def find_tuned_model(store: ObjectStore, ref: str, *, owner: Party, anchors: TrustAnchors | None = None,
                     policy: Policy | None = None, accept_simulated: bool = False) -> ModelListing:
    """`<tenant>/<name>:<version>` or `<tenant>/<name>` (latest) among this owner's verified tuned models."""
    name, _, version = ref.partition(":")
    tenant = name.partition("/")[0]
    skipped: list[str] = []
    every = tuned_models(store, tenant, owner=owner, anchors=anchors, policy=policy,
                         accept_simulated=accept_simulated, skipped=skipped)
    chosen = [m for m in every if m.name == name and (not version or str(m.version) == version)]
    if not chosen:
        known = ", ".join(f"{m.name}:{m.version}" for m in every) or "none"
        refused = f"; {len(skipped)} tuned card(s) did not verify, the first: {skipped[0]}" if skipped else ""
        raise LookupError(f"model: expected one of your tuned models ({known}), got {ref!r}{refused}")
    return chosen[-1]


def _enclave_signed(store: ObjectStore, key: str, prefix: str, kind: str, anchors: TrustAnchors,
                    policy: Policy) -> VerifiedReceipt:
    token = _get(store, key, f"the enclave's {kind}").decode(errors="replace")
    digest = str(unverified_payload(token, what=key).get("evidence_sha256", ""))
    evidence_key = f"{prefix}evidence/{digest}.json"
    try:
        evidence = json.loads(_get(store, evidence_key, "the attestation evidence it names"))
        return verify_receipt(token, evidence, anchors=anchors, policy=policy, expected_type=kind)
    except AttestationError as exc:
        from sdk.results import simulated_advice  # pyarrow and numpy: loaded only for this refusal

        raise TrainingJobError(f"{key} (evidence {evidence_key}): {exc}{simulated_advice(exc)}") from exc
    except (SignatureError, ValueError, KeyError, TypeError) as exc:
        raise TrainingJobError(f"{key} (evidence {evidence_key}): {exc}") from exc


def _check_owner_session(where: str, manifest: dict[str, Any], payload: dict[str, Any],
                         decisions: list[dict[str, Any]]) -> None:
    """The receipt signs a session at this owner's broker (the manifest's `key_broker`) whose claims digests that
    broker's own decision log (hash chain and checkpoint signed by its token key: `BrokerAdmin.decisions`) shows
    attested, and under which it released this job's data key for this recipe: the enclave that signed the
    receipt got the owner's rows for this job and recipe from the owner's broker, by that broker's word."""
    broker = manifest["key_broker"]["name"]
    sessions = {s.broker: set(s.claims_digests) for s in parse_sessions(payload)}  # shape checked by verify_receipt
    digests = sessions.get(broker, set())
    if not digests:
        raise _refused(where, "sessions", f"a session at your broker {broker!r} with its claims digests",
                       sorted(sessions))
    allowed = [e for e in decisions if e.get("decision") == "allow" and e.get("claims_digest") in digests]
    if not any(e.get("operation") == "attest" for e in allowed):
        raise _refused(where, f"sessions[{broker}].claims_digests",
                       f"claims your broker {broker!r} attested (in its signed decision log)", sorted(digests))
    released = [e for e in allowed if e.get("operation") == "unwrap"]
    for name, value, what in (("batch_id", manifest["job_id"], "job"),
                              ("model_digest", manifest["recipe"]["digest"], "recipe digest"),
                              ("key_id", manifest["key_broker"]["data_key"], "data key")):
        matching = [e for e in released if e.get(name) == value]
        if not matching:  # the release this session names was for another job, recipe or key than this job's
            raise _refused(where, f"sessions[{broker}].releases.{name}",
                           f"{value!r} (your manifest's {what}, a release in your broker's log)",
                           sorted({str(e.get(name)) for e in released}))
        released = matching


def _check_counts(where: str, manifest: dict[str, Any], metrics: dict[str, Any]) -> None:
    """The receipt's counts are the manifest's rows split in two (training, held out), its held-out spam and ham
    within the manifest's: kept in clear, they then say nothing the manifest beside them does not."""
    rows, spam = manifest["object"]["rows"], manifest["object"]["spam"]
    held, held_spam = metrics["holdout_rows"], metrics["holdout_spam"]
    if metrics["train_rows"] + held != rows:
        raise _refused(where, "metrics.train_rows + metrics.holdout_rows", f"{rows} (your manifest's rows)",
                       metrics["train_rows"] + held)
    if held_spam > spam:
        raise _refused(where, "metrics.holdout_spam", f"at most {spam} (your manifest's spam rows)", held_spam)
    if held - held_spam > rows - spam:
        raise _refused(where, "metrics.holdout_rows - metrics.holdout_spam",
                       f"at most {rows - spam} (your manifest's ham rows)", held - held_spam)


def _expect_fields(where: str, expected: dict[str, Any], doc: dict[str, Any]) -> None:
    for dotted, value in expected.items():
        actual: Any = doc
        for part in dotted.split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        if actual != value:
            raise _refused(where, dotted, f"{value!r} (your manifest)", actual)


def _refused(where: str, field: str, expected: Any, actual: Any) -> TrainingJobError:
    """`where: field expected E, got A`, with field, expected and actual kept on the error."""
    return TrainingJobError(f"{where}: {field} expected {expected}, got {actual!r}", field=field, expected=expected,
                            actual=actual)


def _get(store: ObjectStore, key: str, what: str) -> bytes:
    data = store.get_if_exists(key)
    if data is None:
        raise TrainingJobError(f"s3://{store.bucket}/{key}: expected {what}, found nothing")
    return data


def _next_tuned_version(store: ObjectStore, tenant: str, name: str) -> int:
    versions = [int(k.split("/")[3]) for k in store.keys(f"tuned/{tenant}/{name}/") if k.endswith("/card.jws")]
    return max(versions, default=0) + 1
