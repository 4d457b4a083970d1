"""The provider's signed model card, each refusal by field, expected and actual.

Every card here is right in every way but the one its check guards: signed by a pinned provider key, of the
current type, with every field the worker relies on well formed; then one thing changed (the signer, the type,
a field missing, of the wrong type or out of range, an unknown field). Pure: real Ed25519 keys, no model trained.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import OctKey, OKPKey

from tests.wire.documents import changed, refused
from wire.card import CARD_TYPE, MAX_DIGITS, PROTECTIONS, ModelCard, verify_card, verify_signed
from wire.contract import TASKS, Contract
from wire.errors import FormatError

CONTRACT: dict[str, Any] = {
    "id_column": "message_id",
    "inputs": [{"tensor": "text", "column": "text", "dtype": "string", "shape": [None, 1],
                "preprocess": {"kind": "email-text"}}],
    "outputs": [{"tensor": "probabilities", "column": "spam_probability", "kind": "probability", "class_index": 1},
                {"tensor": "label", "column": "label", "kind": "label", "dtype": "int8"}],
    "classes": ["ham", "spam"]}
DIGEST = "sha256:" + "ab" * 32
FIELDS = ("one of ['broker', 'broker_url', 'contract', 'description', 'digest', 'key_id', 'metrics', 'name', "
          "'object_key', 'output', 'price', 'protection', 'published_at', 'quota', 'size', 'task', 'type', "
          "'version', 'wrapped_dek']")
SIGNER = "an Ed25519 signature by one of {} pinned provider key(s)"
HINT = "models/spam/3/model.onnx.enc: only cards signed by a trusted provider are used"
OUTPUT = "{'probability_digits': int | null}"
QUOTA = "{'rows': int > 0, 'period_s': int > 0} or null"
METRICS = "{name: number} (the provider's claimed metrics) or null"
PRICE = "{'currency': ISO 4217 code, 'per_1000_rows': number >= 0} or null"
WHAT = "models/spam/3/model.onnx.enc"


def _card(**changes: Any) -> dict[str, Any]:
    """An encrypted card right in every field, with `changes` applied (a value of ... removes the field)."""
    doc: dict[str, Any] = {
        "type": CARD_TYPE, "name": "spam", "version": 3, "digest": DIGEST, "size": 1234,
        "task": "text-classification", "contract": copy.deepcopy(CONTRACT), "metrics": {"accuracy": 0.97},
        "description": "a spam filter", "price": {"currency": "EUR", "per_1000_rows": 0.5},
        "object_key": "models/spam/3/model.onnx.enc", "protection": "aes-256-gcm", "broker": "provider",
        "broker_url": "https://provider.example", "key_id": "k-1", "wrapped_dek": "d3JhcHBlZA==",
        "output": {"probability_digits": 3}, "quota": {"rows": 1000, "period_s": 86400}, "published_at": 1700000000}
    return changed(doc, changes)


def _parse_refused(doc: Any, field: str, expected: Any, actual: Any, hint: str = "") -> str:
    return refused(lambda: ModelCard.parse(doc), field, expected, actual, hint)


def _key() -> OKPKey:
    return OKPKey.generate_key("Ed25519", private=True)


def _public(key: OKPKey) -> dict[str, Any]:
    return dict(key.as_dict(private=False))


def _sign(payload: bytes | dict[str, Any] | list[Any], key: OKPKey) -> str:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return jws.serialize_compact({"alg": "Ed25519"}, body, key, algorithms=["Ed25519"])


# -- a right card, whole --------------------------------------------------------------------------------


def test_a_right_encrypted_card_gives_every_field_the_worker_acts_on() -> None:
    doc = _card()
    card = ModelCard.parse(doc)
    assert (card.name, card.version, card.digest, card.object_key, card.protection) == (
        "spam", 3, DIGEST, "models/spam/3/model.onnx.enc", "aes-256-gcm")
    assert (card.broker, card.key_id, card.wrapped_dek) == ("provider", "k-1", "d3JhcHBlZA==")
    assert (card.probability_digits, card.quota, card.task) == (3, {"rows": 1000, "period_s": 86400},
                                                                 "text-classification")
    assert card.contract == Contract.parse(CONTRACT)
    assert card.metrics == {"accuracy": 0.97}
    assert card.price == {"currency": "EUR", "per_1000_rows": 0.5}
    assert card.raw is doc
    assert card.aad == b"spam:3"


def test_the_terms_are_copies_not_the_documents_own_objects() -> None:
    doc = _card()
    card = ModelCard.parse(doc)
    assert card.quota is not doc["quota"] and card.price is not doc["price"] and card.metrics is not doc["metrics"]


def test_a_card_without_protection_is_encrypted_by_default_and_needs_its_key_fields() -> None:
    card = ModelCard.parse(_card(protection=...))
    assert (card.protection, card.broker, card.key_id, card.wrapped_dek) == (
        "aes-256-gcm", "provider", "k-1", "d3JhcHBlZA==")
    _parse_refused(_card(protection=..., broker=...), "card.broker", "str", None)


def test_an_unencrypted_card_carries_no_key_fields_even_when_present() -> None:
    card = ModelCard.parse(_card(protection="none"))
    assert (card.protection, card.broker, card.key_id, card.wrapped_dek) == ("none", None, None, None)
    bare = ModelCard.parse(_card(protection="none", broker=..., key_id=..., wrapped_dek=..., broker_url=...))
    assert (bare.broker, bare.key_id, bare.wrapped_dek) == (None, None, None)


def test_the_optional_terms_absent_or_null() -> None:
    for value in (..., None):
        card = ModelCard.parse(_card(output=value, quota=value, metrics=value, price=value))
        assert (card.probability_digits, card.quota, card.metrics, card.price) == (None, None, {}, None)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_is_accepted(task: str) -> None:
    assert ModelCard.parse(_card(task=task)).task == task


# -- the document and its type --------------------------------------------------------------------------


@pytest.mark.parametrize(("doc", "actual"), [([], "list"), ("{}", "str"), (None, "NoneType")])
def test_a_card_that_is_not_an_object_is_refused(doc: Any, actual: str) -> None:
    _parse_refused(doc, "card", "a JSON object", actual)


def test_a_v1_card_is_refused_with_the_hint_to_publish_again() -> None:
    message = _parse_refused(_card(type="cscore.model-card/v1"), "card.type", CARD_TYPE, "cscore.model-card/v1",
                             "a card without a contract: the provider must publish the model again "
                             "(`cscore provider publish`)")
    assert message == ("card.type: expected cscore.model-card/v2, got 'cscore.model-card/v1'; a card without a "
                       "contract: the provider must publish the model again (`cscore provider publish`)")


@pytest.mark.parametrize("doc_type", ["cscore.model-card/v3", "cscore.recipe-card/v1", "", 2])
def test_a_card_of_another_type_is_refused(doc_type: Any) -> None:
    _parse_refused(_card(type=doc_type), "card.type", CARD_TYPE, doc_type)


def test_a_card_without_a_type_is_refused() -> None:
    _parse_refused(_card(type=...), "card.type", CARD_TYPE, None)


def test_an_unknown_field_is_refused_first_in_sorted_order() -> None:
    _parse_refused(_card(zeta=1, alpha=2), "card.alpha", FIELDS, "alpha", "unknown field")


# -- each field -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "kind"), [("task", "str"), ("digest", "str"), ("name", "str"), ("version", "int"),
                                             ("object_key", "str"), ("broker", "str"), ("key_id", "str"),
                                             ("wrapped_dek", "str"), ("contract", "dict")])
def test_each_required_field_missing_is_refused(field: str, kind: str) -> None:
    _parse_refused(_card(**{field: ...}), f"card.{field}", kind, None)


@pytest.mark.parametrize(("field", "value", "kind", "actual"), [
    ("task", 1, "str", "int"), ("digest", None, "str", "NoneType"), ("name", 7, "str", "int"),
    ("version", "3", "int", "str"), ("version", True, "int", "bool"), ("version", 3.0, "int", "float"),
    ("object_key", ["k"], "str", "list"), ("broker", False, "str", "bool"), ("key_id", 1, "str", "int"),
    ("wrapped_dek", b"x", "str", "bytes"), ("contract", [], "dict", "list")])
def test_each_required_field_of_the_wrong_type_is_refused(field: str, value: Any, kind: str, actual: str) -> None:
    _parse_refused(_card(**{field: value}), f"card.{field}", kind, actual)


@pytest.mark.parametrize("task", ["text", "Text-Classification", ""])
def test_a_task_outside_the_vocabulary_is_refused(task: str) -> None:
    _parse_refused(_card(task=task), "card.task", f"one of {list(TASKS)}", task)


@pytest.mark.parametrize("digest", ["sha256:" + "AB" * 32, "sha256:" + "a" * 63, "sha256:" + "a" * 65,
                                    "sha256:" + "a" * 64 + "\n", "sha512:" + "a" * 64, "a" * 64,
                                    " sha256:" + "a" * 64, "sha256:" + "g" * 64])
def test_a_digest_not_sha256_of_64_lower_hex_is_refused(digest: str) -> None:
    _parse_refused(_card(digest=digest), "card.digest", "sha256:<64 hex>", digest)


@pytest.mark.parametrize("protection", ["AES-256-GCM", "aes-128-gcm", "", None, "pme"])
def test_a_protection_outside_the_list_is_refused(protection: Any) -> None:
    _parse_refused(_card(protection=protection), "card.protection", f"one of {list(PROTECTIONS)}", protection)
    assert list(PROTECTIONS) == ["aes-256-gcm", "none"]


def test_a_malformed_contract_is_refused_under_the_card() -> None:
    with pytest.raises(FormatError) as info:
        ModelCard.parse(_card(contract={**CONTRACT, "inputs": []}))
    assert info.value.field.startswith("card.contract")


# -- output.probability_digits --------------------------------------------------------------------------


@pytest.mark.parametrize("digits", [0, 1, MAX_DIGITS, None])
def test_probability_digits_in_range_or_null_are_taken(digits: int | None) -> None:
    assert MAX_DIGITS == 9
    assert ModelCard.parse(_card(output={"probability_digits": digits})).probability_digits == digits


def test_an_empty_output_means_full_precision() -> None:
    assert ModelCard.parse(_card(output={})).probability_digits is None


@pytest.mark.parametrize("digits", [-1, MAX_DIGITS + 1, True, False, 2.0, "3"])
def test_probability_digits_out_of_range_or_not_an_int_are_refused(digits: Any) -> None:
    _parse_refused(_card(output={"probability_digits": digits}), "card.output.probability_digits",
                   "null or 0..9", digits)


@pytest.mark.parametrize("output", [3, [], "full", {"probability_digits": 3, "rounding": "half-even"}, {"digits": 3}])
def test_an_output_not_the_one_member_object_is_refused(output: Any) -> None:
    _parse_refused(_card(output=output), "card.output", OUTPUT, output)


# -- quota ----------------------------------------------------------------------------------------------


def test_the_smallest_quota_is_one_row_per_second() -> None:
    assert ModelCard.parse(_card(quota={"rows": 1, "period_s": 1})).quota == {"rows": 1, "period_s": 1}


@pytest.mark.parametrize("quota", [
    1000, [], {"rows": 1000}, {"period_s": 60}, {"rows": 1, "period_s": 1, "burst": 5},
    {"rows": 0, "period_s": 60}, {"rows": 10, "period_s": 0}, {"rows": -1, "period_s": 60},
    {"rows": 10, "period_s": -60}, {"rows": True, "period_s": 60}, {"rows": 10, "period_s": True},
    {"rows": 10.0, "period_s": 60}, {"rows": "10", "period_s": 60}, {"rows": 10, "period_s": None}])
def test_a_malformed_quota_is_refused(quota: Any) -> None:
    _parse_refused(_card(quota=quota), "card.quota", QUOTA, quota)


# -- metrics --------------------------------------------------------------------------------------------


def test_metrics_become_floats() -> None:
    metrics = ModelCard.parse(_card(metrics={"accuracy": 1, "f1": 0.5, "auc": -0.25})).metrics
    assert metrics == {"accuracy": 1.0, "f1": 0.5, "auc": -0.25}
    assert all(type(v) is float for v in metrics.values())
    assert ModelCard.parse(_card(metrics={})).metrics == {}


@pytest.mark.parametrize("metrics", [[], 0.97, "accuracy", {"accuracy": True}, {"accuracy": "0.97"},
                                     {"accuracy": None}, {1: 0.97}, {"accuracy": 0.9, "f1": [0.5]}])
def test_malformed_metrics_are_refused(metrics: Any) -> None:
    _parse_refused(_card(metrics=metrics), "card.metrics", METRICS, metrics)


# -- price ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("price", [{"currency": "EUR", "per_1000_rows": 0}, {"currency": "USD", "per_1000_rows": 2},
                                   {"currency": "CHF", "per_1000_rows": 1e9 - 1}])
def test_a_price_in_range_is_taken(price: dict[str, Any]) -> None:
    assert ModelCard.parse(_card(price=price)).price == price


@pytest.mark.parametrize("price", [
    [], "EUR 0.5", {"currency": "EUR"}, {"per_1000_rows": 0.5}, {"currency": "EUR", "per_1000_rows": 0.5, "vat": 0},
    {"currency": 978, "per_1000_rows": 0.5}, {"currency": "eur", "per_1000_rows": 0.5},
    {"currency": "EU", "per_1000_rows": 0.5}, {"currency": "EURO", "per_1000_rows": 0.5},
    {"currency": "EUR\n", "per_1000_rows": 0.5}, {"currency": "EUR", "per_1000_rows": "0.5"},
    {"currency": "EUR", "per_1000_rows": True}, {"currency": "EUR", "per_1000_rows": None},
    {"currency": "EUR", "per_1000_rows": -0.01}, {"currency": "EUR", "per_1000_rows": 1e9},
    {"currency": "EUR", "per_1000_rows": float("inf")}, {"currency": "EUR", "per_1000_rows": float("nan")}])
def test_a_malformed_price_is_refused(price: Any) -> None:
    _parse_refused(_card(price=price), "card.price", PRICE, price)


# -- the signature --------------------------------------------------------------------------------------


def test_a_card_signed_by_a_pinned_key_verifies_whichever_key_in_the_list() -> None:
    provider, other = _key(), _key()
    token = _sign(_card(), provider)
    for keys in ([_public(provider)], [_public(other), _public(provider)], (_public(provider), _public(other))):
        card = verify_card(token, keys, what=WHAT)
        assert (card.name, card.version, card.raw) == ("spam", 3, _card())
    assert verify_signed(token, [_public(other), _public(provider)], what=WHAT) == _card()


def test_a_token_with_surrounding_whitespace_is_read() -> None:
    provider = _key()
    assert verify_card("\n " + _sign(_card(), provider) + "\n", [_public(provider)], what=WHAT).name == "spam"


def test_a_card_signed_by_another_key_is_refused_naming_the_object() -> None:
    provider, forger = _key(), _key()
    token = _sign(_card(), forger)
    message = refused(lambda: verify_card(token, [_public(provider)], what=WHAT), "card.signature",
                       SIGNER.format(1), "none verifies", HINT)
    assert message == ("card.signature: expected an Ed25519 signature by one of 1 pinned provider key(s), got "
                       f"'none verifies'; {HINT}")
    refused(lambda: verify_card(token, [_public(provider), _public(_key())], what=WHAT), "card.signature",
             SIGNER.format(2), "none verifies", HINT)


def test_no_pinned_key_verifies_nothing() -> None:
    token = _sign(_card(), _key())
    refused(lambda: verify_signed(token, [], what=WHAT), "card.signature", SIGNER.format(0), "none verifies", HINT)


def test_a_card_edited_after_signing_is_refused() -> None:
    provider = _key()
    header, _, signature = _sign(_card(), provider).split(".")
    edited = jws.serialize_compact({"alg": "Ed25519"}, json.dumps(_card(quota=None)).encode(), _key(),
                                   algorithms=["Ed25519"]).split(".")[1]
    refused(lambda: verify_card(f"{header}.{edited}.{signature}", [_public(provider)], what=WHAT),
             "card.signature", SIGNER.format(1), "none verifies", HINT)


@pytest.mark.parametrize("token", ["", "not a jws", "a.b", "a.b.c"])
def test_not_a_compact_jws_is_refused_as_unsigned(token: str) -> None:
    refused(lambda: verify_card(token, [_public(_key())], what=WHAT), "card.signature", SIGNER.format(1),
             "none verifies", HINT)


def test_a_malformed_pinned_key_is_skipped_not_fatal() -> None:
    provider = _key()
    token = _sign(_card(), provider)
    broken = {"kty": "OKP", "crv": "Ed25519", "x": "!!"}
    assert verify_card(token, [broken, _public(provider)], what=WHAT).name == "spam"
    refused(lambda: verify_card(token, [broken], what=WHAT),
             "card.signature", SIGNER.format(1), "none verifies", HINT)


def test_an_hmac_token_is_refused_whatever_key_it_claims() -> None:
    provider = _key()
    secret = {"kty": "oct", "k": provider.as_dict(private=False)["x"]}
    token = jws.serialize_compact({"alg": "HS256"}, json.dumps(_card()).encode(), OctKey.import_key(secret),
                                  algorithms=["HS256"])
    refused(lambda: verify_card(token, [_public(provider)], what=WHAT), "card.signature", SIGNER.format(1),
             "none verifies", HINT)


def test_a_signed_payload_that_is_not_json_is_refused_naming_the_object() -> None:
    provider = _key()
    token = _sign(b"\xff\xfe not json", provider)
    message = refused(lambda: verify_signed(token, [_public(provider)], what=WHAT), "card.payload", "JSON",
                       "undecodable bytes", WHAT)
    assert message == f"card.payload: expected JSON, got 'undecodable bytes'; {WHAT}"


def test_a_signed_card_that_is_malformed_is_refused_by_the_parse() -> None:
    provider = _key()
    token = _sign(_card(quota={"rows": 0, "period_s": 1}), provider)
    refused(lambda: verify_card(token, [_public(provider)], what=WHAT), "card.quota", QUOTA,
             {"rows": 0, "period_s": 1})
    assert verify_signed(_sign([1, 2], provider), [_public(provider)], what=WHAT) == [1, 2]
