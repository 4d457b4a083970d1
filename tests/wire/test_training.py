"""The training job's wire formats, each refusal by field, expected and actual.

Every document here is right in every way but the one its check guards: a training spec whose digests are
well-formed and whose receipt key is its model's folder's, a tuned card carrying every field it may carry with
metrics on a held-out split of exactly the smallest size allowed; then one thing changed (a field missing, of the
wrong type or unknown, a digest one digit off, a key under another folder, a split one row too small). Pure: no
model trained, no worker run.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.wire.documents import changed, refused
from wire.card import ModelCard
from wire.contract import SPAM_CONTRACT, Contract
from wire.errors import FormatError
from wire.training import (
    METRIC_COUNTS,
    METRIC_RATES,
    MIN_HOLDOUT_PER_CLASS,
    TRAINING_RECEIPT_TYPE,
    TUNED_CARD_TYPE,
    TUNED_PROTECTION,
    TrainingSpec,
    TunedCard,
    aggregate_metrics,
    model_card_key,
)

TEXT = ("tenant", "job_id", "input_key", "input_sha256", "recipe_name", "recipe_digest", "owner_broker",
        "model_name", "owner_share_key", "owner_share_wrapped", "receipt_key")
SPEC_FIELDS = ("one of ['input_key', 'input_sha256', 'job_id', 'model_name', 'model_version', 'owner_broker', "
               "'owner_share_key', 'owner_share_wrapped', 'receipt_key', 'recipe_digest', 'recipe_name', "
               "'recipe_version', 'tenant']")
CARD_FIELDS = ("one of ['broker', 'broker_url', 'digest', 'evidence_sha256', 'lineage', 'metrics', 'name', "
               "'object_key', 'owner_share', 'protection', 'provider_share', 'schema', 'size', 'tenant', 'type', "
               "'version']")
METRIC_FIELDS = "one of ['f1', 'holdout_rows', 'holdout_spam', 'precision', 'recall', 'train_rows']"
SMALL_SPLIT = "metrics on a smaller split tell individual rows' labels"
SHA = "ab" * 32
DIGEST = "sha256:" + "cd" * 32


def _spec(**changes: Any) -> dict[str, Any]:
    """A training spec right in every field, with `changes` applied (a value of ... removes the field)."""
    doc: dict[str, Any] = {
        "tenant": "acme", "job_id": "j-1", "input_key": "training/acme/j-1/input.parquet", "input_sha256": SHA,
        "recipe_name": "tfidf", "recipe_version": 2, "recipe_digest": DIGEST, "owner_broker": "acme-broker",
        "model_name": "spam", "model_version": 3, "owner_share_key": "k-owner", "owner_share_wrapped": "b3du",
        "receipt_key": "tuned/acme/spam/3/receipt.jws"}
    return changed(doc, changes)


def _metrics(**changes: Any) -> dict[str, Any]:
    """Metrics on the smallest split allowed: exactly MIN_HOLDOUT_PER_CLASS held-out rows of each class."""
    doc: dict[str, Any] = {"precision": 0.9, "recall": 0.8, "f1": 0.85, "train_rows": 160, "holdout_rows": 40,
                           "holdout_spam": 20}
    return changed(doc, changes)


def _card(**changes: Any) -> dict[str, Any]:
    """A tuned card carrying every field it may, with `changes` applied by dotted path (... removes it)."""
    doc: dict[str, Any] = {
        "type": "cscore.tuned-model-card/v1", "tenant": "acme", "name": "spam", "version": 3, "digest": DIGEST,
        "size": 1234, "object_key": "tuned/acme/spam/3/model.onnx.enc", "protection": "aes-256-gcm+2",
        "schema": {"inputs": ["text"], "outputs": ["label", "probabilities"]},
        "broker": "provider", "broker_url": "https://provider.example",
        "owner_share": {"broker": "acme-broker", "key_id": "k-owner", "wrapped": "b3du"},
        "provider_share": {"broker": "provider", "key_id": "k-prov", "wrapped": "cHJvdg=="},
        "lineage": {"job_id": "j-1", "input_sha256": SHA, "recipe": {"name": "tfidf", "version": 2,
                                                                       "digest": DIGEST}},
        "metrics": _metrics(), "evidence_sha256": SHA}
    return changed(doc, changes)


def _spec_refused(doc: Any, field: str, expected: Any, actual: Any, hint: str = "") -> str:
    return refused(lambda: TrainingSpec.from_dict(doc), field, expected, actual, hint)


def _card_refused(doc: Any, field: str, expected: Any, actual: Any, hint: str = "") -> str:
    return refused(lambda: TunedCard.parse(doc), field, expected, actual, hint)


def _metrics_refused(doc: Any, field: str, expected: Any, actual: Any, hint: str = "") -> str:
    return refused(lambda: aggregate_metrics(doc, where="m"), field, expected, actual, hint)


# -- the constants are the wire's: another value is another format --------------------------------------


def test_the_formats_names_and_bounds_are_pinned() -> None:
    assert TRAINING_RECEIPT_TYPE == "cscore.training-receipt/v2"
    assert TUNED_CARD_TYPE == "cscore.tuned-model-card/v1"
    assert TUNED_PROTECTION == "aes-256-gcm+2"
    assert MIN_HOLDOUT_PER_CLASS == 20
    assert METRIC_RATES == ("precision", "recall", "f1")
    assert METRIC_COUNTS == ("train_rows", "holdout_rows", "holdout_spam")


# -- the training spec ----------------------------------------------------------------------------------


def test_a_right_spec_gives_every_field_its_model_and_folder() -> None:
    spec = TrainingSpec.from_dict(_spec())
    assert spec == TrainingSpec(
        tenant="acme", job_id="j-1", input_key="training/acme/j-1/input.parquet", input_sha256=SHA,
        recipe_name="tfidf", recipe_version=2, recipe_digest=DIGEST, owner_broker="acme-broker", model_name="spam",
        model_version=3, owner_share_key="k-owner", owner_share_wrapped="b3du",
        receipt_key="tuned/acme/spam/3/receipt.jws")
    assert spec.model == "acme/spam:3"
    assert spec.prefix == "tuned/acme/spam/3/"
    assert spec.to_dict() == _spec()
    assert TrainingSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("doc", [[], "spec", None, 3])
def test_a_spec_that_is_not_an_object_is_refused(doc: Any) -> None:
    _spec_refused(doc, "training_spec", "a JSON object", type(doc).__name__)


def test_an_unknown_spec_field_is_refused_first_in_sorted_order() -> None:
    _spec_refused(_spec(zeta=1, extra="x"), "training_spec.extra", SPEC_FIELDS, "extra", "unknown field")


@pytest.mark.parametrize("name", TEXT)
def test_each_text_field_of_the_spec_is_required(name: str) -> None:
    _spec_refused(_spec(**{name: ...}), f"training_spec.{name}", "str", None)


@pytest.mark.parametrize("name", TEXT)
@pytest.mark.parametrize("value", [1, None, ["x"], True])
def test_each_text_field_of_the_spec_must_be_text(name: str, value: Any) -> None:
    _spec_refused(_spec(**{name: value}), f"training_spec.{name}", "str", type(value).__name__)


@pytest.mark.parametrize("name", ["recipe_version", "model_version"])
def test_each_version_is_a_required_integer_never_a_bool(name: str) -> None:
    _spec_refused(_spec(**{name: ...}), f"training_spec.{name}", "int", None)
    for value in (True, 2.0, "2", None):
        _spec_refused(_spec(**{name: value}), f"training_spec.{name}", "int", type(value).__name__)


@pytest.mark.parametrize("value", ["AB" * 32, "ab" * 31 + "a", "ab" * 32 + "a", SHA + "\n", "sha256:" + SHA, "",
                                   "g" * 64])
def test_the_input_digest_is_64_lower_case_hex_digits(value: str) -> None:
    message = _spec_refused(_spec(input_sha256=value), "training_spec.input_sha256", "64 hex digits", value)
    assert message.startswith("training_spec.input_sha256: expected 64 hex digits, got ")


@pytest.mark.parametrize("value", ["sha256:" + "CD" * 32, "sha256:" + "cd" * 31, "sha256:" + "cd" * 33, SHA,
                                   DIGEST + "\n", "sha512:" + "cd" * 32, "sha256:", "SHA256:" + "cd" * 32])
def test_the_recipe_digest_is_sha256_and_64_lower_case_hex_digits(value: str) -> None:
    _spec_refused(_spec(recipe_digest=value), "training_spec.recipe_digest", "sha256:<64 hex>", value)


@pytest.mark.parametrize("key", ["tuned/acme/spam/4/receipt.jws", "tuned/acme/other/3/receipt.jws",
                                 "tuned/evil/spam/3/receipt.jws", "tuned/acme/spam/3/receipt.json",
                                 "tuned/acme/spam/3/receipt.jws\n", "receipts/acme/j-1.jws", ""])
def test_the_receipt_key_must_be_beside_its_models_card(key: str) -> None:
    _spec_refused(_spec(receipt_key=key), "training_spec.receipt_key", "tuned/acme/spam/3/receipt.jws", key)


def test_the_receipt_key_follows_the_tenant_name_and_version() -> None:
    spec = TrainingSpec.from_dict(_spec(tenant="beta", model_name="ham", model_version=12,
                                        receipt_key="tuned/beta/ham/12/receipt.jws"))
    assert (spec.model, spec.prefix) == ("beta/ham:12", "tuned/beta/ham/12/")


# -- aggregate metrics ----------------------------------------------------------------------------------


def test_metrics_on_the_smallest_split_allowed_are_returned_whole() -> None:
    assert aggregate_metrics(_metrics(), where="m") == _metrics()


@pytest.mark.parametrize("name", METRIC_RATES)
@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, 0.5])
def test_a_rate_at_and_between_its_bounds_is_taken(name: str, value: Any) -> None:
    assert aggregate_metrics(_metrics(**{name: value}), where="m")[name] == value


@pytest.mark.parametrize("name", METRIC_RATES)
@pytest.mark.parametrize("value", [-0.001, 1.001, 2, -1, float("inf"), float("-inf")])
def test_a_rate_outside_0_to_1_is_refused(name: str, value: Any) -> None:
    _metrics_refused(_metrics(**{name: value}), f"m.{name}", "a rate in 0..1", value)


def test_a_nan_rate_is_refused() -> None:
    with pytest.raises(FormatError) as info:
        aggregate_metrics(_metrics(recall=float("nan")), where="m")
    assert (info.value.field, info.value.expected) == ("m.recall", "a rate in 0..1")


@pytest.mark.parametrize("name", METRIC_RATES)
def test_a_rate_must_be_a_number(name: str) -> None:
    _metrics_refused(_metrics(**{name: ...}), f"m.{name}", "int or float", None)
    for value in (True, "0.5", None, [0.5]):
        _metrics_refused(_metrics(**{name: value}), f"m.{name}", "int or float", type(value).__name__)


@pytest.mark.parametrize("name", METRIC_COUNTS)
def test_a_count_must_be_an_integer(name: str) -> None:
    _metrics_refused(_metrics(**{name: ...}), f"m.{name}", "int", None)
    for value in (True, 20.0, "20", None):
        _metrics_refused(_metrics(**{name: value}), f"m.{name}", "int", type(value).__name__)


@pytest.mark.parametrize("doc", [[0.9, 0.8], None, "metrics", 1])
def test_metrics_that_are_not_an_object_are_refused(doc: Any) -> None:
    _metrics_refused(doc, "m", "a JSON object", type(doc).__name__)


def test_an_extra_metric_is_refused_first_in_sorted_order() -> None:
    _metrics_refused(_metrics(row_scores=[0.1], accuracy=0.9), "m.accuracy", METRIC_FIELDS, "accuracy",
                     "unknown field")


def test_nineteen_held_out_spam_rows_are_too_few() -> None:
    message = _metrics_refused(_metrics(holdout_rows=39, holdout_spam=19), "m.holdout_spam",
                               "at least 20 held-out spam rows", 19, SMALL_SPLIT)
    assert message == ("m.holdout_spam: expected at least 20 held-out spam rows, got 19; metrics on a smaller "
                       "split tell individual rows' labels")


def test_nineteen_held_out_ham_rows_are_too_few() -> None:
    _metrics_refused(_metrics(holdout_rows=39), "m.holdout_rows", "at least 20 held-out ham rows", 19, SMALL_SPLIT)


def test_more_held_out_rows_of_either_class_are_taken() -> None:
    assert aggregate_metrics(_metrics(holdout_rows=1000, holdout_spam=21), where="m")["holdout_spam"] == 21
    assert aggregate_metrics(_metrics(holdout_rows=1000, holdout_spam=979), where="m")["holdout_rows"] == 1000


@pytest.mark.parametrize(("rows", "spam"), [(0, 0), (1, 1), (19, 19), (40, 0), (5, 10)])
def test_a_split_too_small_in_spam_is_named_for_spam_first(rows: int, spam: int) -> None:
    _metrics_refused(_metrics(holdout_rows=rows, holdout_spam=spam), "m.holdout_spam",
                     "at least 20 held-out spam rows", spam, SMALL_SPLIT)


@pytest.mark.parametrize(("rows", "spam", "ham"), [(20, 20, 0), (21, 20, 1), (1000, 990, 10), (20, 40, -20)])
def test_a_split_too_small_in_ham_names_the_ham_rows(rows: int, spam: int, ham: int) -> None:
    _metrics_refused(_metrics(holdout_rows=rows, holdout_spam=spam), "m.holdout_rows",
                     "at least 20 held-out ham rows", ham, SMALL_SPLIT)


# -- where a card lives -----------------------------------------------------------------------------------


def test_a_providers_card_and_a_tuned_card_are_each_under_their_own_folder() -> None:
    assert model_card_key("spam", 2) == "models/spam/2/card.jws"
    assert model_card_key("acme/spam", 3) == "tuned/acme/spam/3/card.jws"
    assert model_card_key("acme/team/spam", 3) == "tuned/acme/team/spam/3/card.jws"


# -- the tuned card ---------------------------------------------------------------------------------------


def test_a_right_tuned_card_gives_every_field() -> None:
    doc = _card()
    card = TunedCard.parse(doc)
    assert card == TunedCard(
        tenant="acme", name="spam", version=3, digest=DIGEST, object_key="tuned/acme/spam/3/model.onnx.enc",
        owner_broker="acme-broker", owner_key_id="k-owner", owner_wrapped="b3du", provider_broker="provider",
        provider_key_id="k-prov", provider_wrapped="cHJvdg==", job_id="j-1", metrics=_metrics(), raw=_card())
    assert card.raw is doc
    assert card.reference == "acme/spam:3"


def test_a_tuned_cards_optional_fields_may_be_left_out() -> None:
    doc = _card(size=..., schema=..., broker=..., broker_url=..., evidence_sha256=...)
    assert TunedCard.parse(doc).raw == doc


def test_a_tuned_card_is_acted_on_as_the_spam_contracts_card_with_the_providers_share() -> None:
    card = TunedCard.parse(_card(**{"metrics.precision": 1, "metrics.recall": 0}))
    assert card.model_card() == ModelCard(
        name="acme/spam", version=3, digest=DIGEST, object_key="tuned/acme/spam/3/model.onnx.enc",
        protection="aes-256-gcm", broker="provider", key_id="k-prov", wrapped_dek="cHJvdg==",
        probability_digits=None, quota=None, task="text-classification", contract=Contract.parse(SPAM_CONTRACT),
        metrics={"precision": 1.0, "recall": 0.0, "f1": 0.85}, price=None, raw=card.raw)
    metrics = card.model_card().metrics
    assert all(type(value) is float for value in metrics.values())
    assert card.model_card().aad == b"acme/spam:3"


@pytest.mark.parametrize("doc", [[], "card", None])
def test_a_tuned_card_that_is_not_an_object_is_refused(doc: Any) -> None:
    _card_refused(doc, "tuned_card", "a JSON object", type(doc).__name__)


def test_an_unknown_tuned_card_field_is_refused_first_in_sorted_order() -> None:
    _card_refused(_card(zz=1, aa=2), "tuned_card.aa", CARD_FIELDS, "aa", "unknown field")


@pytest.mark.parametrize("value", ["cscore.model-card/v2", "cscore.tuned-model-card/v2", None, ...])
def test_a_card_of_another_type_is_refused(value: Any) -> None:
    _card_refused(_card(type=value), "tuned_card.type", "cscore.tuned-model-card/v1",
                  None if value is ... else value)


@pytest.mark.parametrize("value", ["aes-256-gcm", "none", "AES-256-GCM+2", None, ...])
def test_a_tuned_card_is_protected_by_both_shares_only(value: Any) -> None:
    _card_refused(_card(protection=value), "tuned_card.protection", "aes-256-gcm+2",
                  None if value is ... else value)


@pytest.mark.parametrize("name", ["tenant", "name", "digest", "object_key"])
def test_each_text_field_of_the_card_is_required_text(name: str) -> None:
    _card_refused(_card(**{name: ...}), f"tuned_card.{name}", "str", None)
    _card_refused(_card(**{name: 7}), f"tuned_card.{name}", "str", "int")


def test_the_cards_version_is_a_required_integer_never_a_bool() -> None:
    _card_refused(_card(version=...), "tuned_card.version", "int", None)
    for value in (True, 3.0, "3"):
        _card_refused(_card(version=value), "tuned_card.version", "int", type(value).__name__)


@pytest.mark.parametrize("value", ["sha256:" + "CD" * 32, "sha256:" + "cd" * 31, "sha256:" + "cd" * 33,
                                   "cd" * 32, DIGEST + "\n", "sha512:" + "cd" * 32])
def test_the_cards_digest_is_sha256_and_64_lower_case_hex_digits(value: str) -> None:
    _card_refused(_card(digest=value), "tuned_card.digest", "sha256:<64 hex>", value)


@pytest.mark.parametrize("key", ["tuned/acme/spam/4/model.onnx.enc", "tuned/acme/other/3/model.onnx.enc",
                                 "tuned/evil/spam/3/model.onnx.enc", "models/spam/3/model.onnx.enc",
                                 "tuned/acme/spam/3/model.onnx", "tuned/acme/spam/3/model.onnx.enc\n"])
def test_the_object_key_must_be_in_the_cards_own_folder(key: str) -> None:
    _card_refused(_card(object_key=key), "tuned_card.object_key", "tuned/acme/spam/3/model.onnx.enc", key)


@pytest.mark.parametrize("side", ["owner", "provider"])
@pytest.mark.parametrize("field", ["broker", "key_id", "wrapped"])
def test_each_share_field_is_required_text(side: str, field: str) -> None:
    _card_refused(_card(**{f"{side}_share.{field}": ...}), f"tuned_card.{side}_share.{field}", "str", None)
    _card_refused(_card(**{f"{side}_share.{field}": 1}), f"tuned_card.{side}_share.{field}", "str", "int")


@pytest.mark.parametrize("side", ["owner", "provider"])
def test_a_share_that_is_missing_or_not_an_object_names_its_first_field(side: str) -> None:
    _card_refused(_card(**{f"{side}_share": ...}), f"tuned_card.{side}_share.broker", "str", None)
    _card_refused(_card(**{f"{side}_share": "b3du"}), f"tuned_card.{side}_share.broker", "str", None)


def test_the_shares_are_not_swapped() -> None:
    card = TunedCard.parse(_card())
    assert (card.owner_broker, card.owner_key_id, card.owner_wrapped) == ("acme-broker", "k-owner", "b3du")
    assert (card.provider_broker, card.provider_key_id, card.provider_wrapped) == ("provider", "k-prov", "cHJvdg==")


def test_the_lineages_job_id_is_required_text() -> None:
    _card_refused(_card(**{"lineage.job_id": ...}), "tuned_card.lineage.job_id", "str", None)
    _card_refused(_card(**{"lineage.job_id": 1}), "tuned_card.lineage.job_id", "str", "int")
    _card_refused(_card(lineage=...), "tuned_card.lineage.job_id", "str", None)


def test_the_cards_metrics_are_checked_as_aggregate_metrics_under_its_name() -> None:
    _card_refused(_card(metrics=...), "tuned_card.metrics", "a JSON object", "NoneType")
    _card_refused(_card(metrics=[0.9, 0.8]), "tuned_card.metrics", "a JSON object", "list")
    _card_refused(_card(**{"metrics.row_scores": [0.1]}), "tuned_card.metrics.row_scores", METRIC_FIELDS,
                  "row_scores", "unknown field")
    _card_refused(_card(**{"metrics.holdout_spam": 19, "metrics.holdout_rows": 39}),
                  "tuned_card.metrics.holdout_spam", "at least 20 held-out spam rows", 19, SMALL_SPLIT)
    _card_refused(_card(**{"metrics.f1": 1.5}), "tuned_card.metrics.f1", "a rate in 0..1", 1.5)


def test_parsing_leaves_the_document_as_it_was() -> None:
    doc = _card()
    before = copy.deepcopy(doc)
    TunedCard.parse(doc)
    assert doc == before
