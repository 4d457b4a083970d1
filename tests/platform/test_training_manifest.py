"""The platform derives a training job's instruction from the owner's signed manifest only."""

from __future__ import annotations

from typing import Any

import pytest

from dags.cscore_platform.manifest import ManifestError
from dags.cscore_platform.training import training_spec
from enclave.signing import generate_signing_key, sign_json
from wire.training import TrainingSpec

KEY = "incoming/acme/t-1/training.jws"
OWNER = generate_signing_key()


def _manifest(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "cscore.training-manifest/v1", "tenant": "acme", "job_id": "t-1", "created_at": 0,
        "object": {"key": "incoming/acme/t-1/train.parquet", "size": 10, "sha256": "ab" * 32, "rows": 240,
                   "spam": 120},
        "recipe": {"name": "spam-recipe", "version": 1, "digest": "sha256:" + "cd" * 32},
        "model": {"name": "spam-filter-tuned", "version": 1}, "holdout": {"fraction": 0.3, "seed": 0},
        "key_broker": {"name": "owner", "url": "https://owner", "data_key": "acme.t-1.train",
                       "share_key": "acme.t-1.share", "share_wrapped": "AAAA"}}
    return {**doc, **changes}


def test_the_owners_manifest_gives_a_well_formed_spec() -> None:
    spec = TrainingSpec.from_dict(training_spec(KEY, sign_json(_manifest(), OWNER).encode(),
                                                OWNER.as_dict(private=False)))
    assert (spec.input_sha256, spec.recipe_digest, spec.owner_share_wrapped) == ("ab" * 32, "sha256:" + "cd" * 32,
                                                                                   "AAAA")
    assert spec.receipt_key == "tuned/acme/spam-filter-tuned/1/receipt.jws"


def test_a_spec_whose_receipt_is_not_beside_its_models_card_is_refused() -> None:
    """The platform builds the spec: a receipt key under another model's folder would misfile the enclave's receipt."""
    from wire.errors import FormatError

    doc = training_spec(KEY, sign_json(_manifest(), OWNER).encode(), OWNER.as_dict(private=False))
    moved = {**doc, "receipt_key": "tuned/acme/spam-filter-tuned/2/receipt.jws"}
    with pytest.raises(FormatError) as refused:
        TrainingSpec.from_dict(moved)
    assert (refused.value.field, refused.value.expected, refused.value.actual) == (
        "training_spec.receipt_key", "tuned/acme/spam-filter-tuned/1/receipt.jws", moved["receipt_key"])


@pytest.mark.parametrize(("token_of", "match"), [
    # The platform signs its own manifest (its labels, its recipe) for a real tenant.
    (lambda: sign_json(_manifest(), generate_signing_key()), "signed by tenant acme's registered key"),
    # The owner's manifest of another job moved under this job's key: the job id is signed.
    (lambda: sign_json(_manifest(job_id="t-0"), OWNER), "job_id: expected 't-1'"),
    # A manifest pointing the job at another object (another tenant's data, say).
    (lambda: sign_json(_manifest(object={**_manifest()["object"], "key": "incoming/other/x/train.parquet"}), OWNER),
     "object.key: expected"),
])
def test_forged_or_moved_manifests_are_refused(token_of: Any, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        training_spec(KEY, token_of().encode(), OWNER.as_dict(private=False))


def test_the_training_dag_is_documented_and_keeps_return_values_out_of_logs(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    dag = importlib.import_module("dags.cscore_train").cscore_train()
    assert dag.dag_id == "cscore_train" and "training job" in dag.doc_md
    assert {t.task_id for t in dag.tasks} == {"find_training_manifests", "validate_training_manifest", "train"}
    for t in dag.tasks:
        kwargs = getattr(t, "partial_kwargs", None) or t.__dict__
        assert t.doc_md and kwargs.get("show_return_value_in_logs") is False, t.task_id


def test_training_keys_come_from_s3_events_and_conf_each_once() -> None:
    """The watcher's events (S3 records inside SQS messages, keys URL-encoded) name training manifests only."""
    import json

    from dags.cscore_platform.s3_events import object_keys
    from dags.cscore_platform.training import TRAINING_NAME

    def message(*keys: str) -> dict[str, str]:
        return {"Body": json.dumps({"Records": [{"s3": {"object": {"key": k}}} for k in keys]})}

    extras = [{"payload": {"message_batch": [message("incoming/acme/t+2/training.jws",
                                                     "incoming/acme/b1/manifest.jws"),
                                             {"Body": "not json"}, message(KEY)]}}]
    assert object_keys(extras, {"manifest_keys": [KEY]}, TRAINING_NAME) == [KEY, "incoming/acme/t 2/training.jws"]
    assert object_keys([], {}, TRAINING_NAME) == []
