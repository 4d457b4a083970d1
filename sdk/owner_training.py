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
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from enclave.pme import write_encrypted
from enclave.signing import sign_json, verify_json
from sdk.emails import Email, check_emails, read_emails
from sdk.party import Party
from sdk.storage import ObjectStore
from wire.recipe import RecipeCard

TRAINING_MANIFEST_TYPE = "cscore.training-manifest/v1"
LABELS = {"ham": 0, "spam": 1}
ROW_GROUP_SIZE = 1_000


class TrainingJobError(ValueError):
    """The training job cannot be submitted as given; the message says why."""


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


def training_spec(manifest_token: str, owner_key: dict[str, Any], *, owner_broker: str) -> dict[str, Any]:
    """The worker's instruction (`wire.training.TrainingSpec` as a dict) from a verified training manifest."""
    m = verify_json(manifest_token, owner_key, what="training manifest")
    if m.get("type") != TRAINING_MANIFEST_TYPE:
        raise TrainingJobError(f"training manifest.type: expected {TRAINING_MANIFEST_TYPE}, got {m.get('type')!r}")
    model = m["model"]
    return {"tenant": m["tenant"], "job_id": m["job_id"], "input_key": m["object"]["key"],
            "input_sha256": m["object"]["sha256"], "recipe_name": m["recipe"]["name"],
            "recipe_version": m["recipe"]["version"], "recipe_digest": m["recipe"]["digest"],
            "owner_broker": owner_broker, "model_name": model["name"], "model_version": model["version"],
            "owner_share_key": m["key_broker"]["share_key"], "owner_share_wrapped": m["key_broker"]["share_wrapped"],
            "receipt_key": f"tuned/{m['tenant']}/{model['name']}/{model['version']}/receipt.jws"}


def _next_tuned_version(store: ObjectStore, tenant: str, name: str) -> int:
    versions = [int(k.split("/")[3]) for k in store.keys(f"tuned/{tenant}/{name}/") if k.endswith("/card.jws")]
    return max(versions, default=0) + 1
