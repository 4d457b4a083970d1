"""The training recipe and its signed card, each refusal by field, expected and actual.

Every document here is right in every way but the one its check guards: a recipe of the current type with every
setting in range (and a `base` the tokenizer could have produced), a card signed by a pinned provider key; then
one thing changed (a setting one past its bound, a field missing or of the wrong type, an unknown field, a token
the tokenizer never yields, the signer). Pure: no model trained, no recipe encrypted.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import OKPKey

from tests.wire.documents import changed, refused
from wire.canonical import canonical_json
from wire.errors import FormatError
from wire.recipe import (
    ALGORITHMS,
    C_RANGE,
    MAX_FEATURES,
    MAX_ITER_RANGE,
    RECIPE_CARD_TYPE,
    RECIPE_TYPE,
    TOKEN_PATTERNS,
    BaseWeights,
    Recipe,
    RecipeCard,
    verify_recipe_card,
)

RECIPE_FIELDS = "one of ['algorithm', 'base', 'features', 'hyperparameters', 'seed', 'type']"
CARD_FIELDS = ("one of ['broker', 'broker_url', 'digest', 'key_id', 'name', 'object_key', 'protection', "
               "'published_at', 'type', 'version', 'wrapped_dek']")
PATTERN_HINT = "other patterns do not convert exactly to ONNX"
CLEAR = "aes-256-gcm (a recipe is never published in clear)"
DIGEST = "sha256:" + "cd" * 32
WHAT = "recipes/tfidf/2/recipe.json.enc"


def _recipe(**changes: Any) -> dict[str, Any]:
    """A recipe right in every setting, with `changes` applied by dotted path (a value of ... removes it)."""
    doc: dict[str, Any] = {
        "type": RECIPE_TYPE, "algorithm": "tfidf-logreg",
        "features": {"token_pattern": r"[a-zA-Z0-9_]{2,}", "max_features": 1000},
        "hyperparameters": {"C": 2.5, "max_iter": 200}, "seed": 7,
        "base": {"vocabulary": ["free", "money", "hello"], "coef": [1.5, 2, -0.5], "intercept": -1}}
    return changed(doc, changes)


def _card(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": RECIPE_CARD_TYPE, "name": "tfidf", "version": 2, "digest": DIGEST,
                           "object_key": WHAT, "protection": "aes-256-gcm", "broker": "provider",
                           "broker_url": "https://provider.example", "key_id": "k-2", "wrapped_dek": "ZGVr",
                           "published_at": 1700000000}
    return changed(doc, changes)


def _recipe_refused(doc: Any, field: str, expected: Any, actual: Any, hint: str = "") -> str:
    return refused(lambda: Recipe.parse(doc), field, expected, actual, hint)


def _card_refused(doc: Any, field: str, expected: Any, actual: Any, hint: str = "") -> str:
    return refused(lambda: RecipeCard.parse(doc), field, expected, actual, hint)


# -- a right recipe -------------------------------------------------------------------------------------


def test_a_right_recipe_gives_its_settings_and_base() -> None:
    recipe = Recipe.parse(_recipe())
    assert recipe == Recipe(token_pattern=r"[a-zA-Z0-9_]{2,}", max_features=1000, C=2.5, max_iter=200, seed=7,
                            base=BaseWeights(("free", "money", "hello"), (1.5, 2.0, -0.5), -1.0))
    assert recipe.base is not None
    assert all(type(w) is float for w in (*recipe.base.coef, recipe.base.intercept))
    assert Recipe.parse(recipe.to_json()) == recipe


def test_a_recipe_without_base_starts_from_nothing_and_writes_no_base() -> None:
    recipe = Recipe.parse(_recipe(base=...))
    assert recipe.base is None
    assert recipe.to_json() == {"type": RECIPE_TYPE, "algorithm": "tfidf-logreg",
                                "features": {"token_pattern": r"[a-zA-Z0-9_]{2,}", "max_features": 1000},
                                "hyperparameters": {"C": 2.5, "max_iter": 200}, "seed": 7}


def test_the_canonical_bytes_are_rfc8785_of_the_json() -> None:
    recipe = Recipe.parse(_recipe())
    assert recipe.canonical() == canonical_json(recipe.to_json())
    assert recipe.canonical() == (
        b'{"algorithm":"tfidf-logreg","base":{"coef":[1.5,2,-0.5],"intercept":-1,"vocabulary":["free","money",'
        b'"hello"]},"features":{"max_features":1000,"token_pattern":"[a-zA-Z0-9_]{2,}"},"hyperparameters":'
        b'{"C":2.5,"max_iter":200},"seed":7,"type":"cscore.recipe/v1"}')


def test_an_integer_c_is_taken_as_a_float() -> None:
    recipe = Recipe.parse(_recipe(**{"hyperparameters.C": 3}))
    assert (recipe.C, type(recipe.C)) == (3.0, float)


@pytest.mark.parametrize("pattern", TOKEN_PATTERNS)
def test_every_listed_token_pattern_is_taken(pattern: str) -> None:
    assert Recipe.parse(_recipe(**{"features.token_pattern": pattern, "base": ...})).token_pattern == pattern


@pytest.mark.parametrize(("path", "value"), [
    ("features.max_features", 100), ("features.max_features", MAX_FEATURES), ("hyperparameters.C", C_RANGE[0]),
    ("hyperparameters.C", C_RANGE[1]), ("hyperparameters.max_iter", MAX_ITER_RANGE[0]),
    ("hyperparameters.max_iter", MAX_ITER_RANGE[1]), ("seed", 0), ("seed", 2**32 - 1)])
def test_each_setting_at_its_bounds_is_taken(path: str, value: Any) -> None:
    recipe = Recipe.parse(_recipe(**{path: value, "base": ...}))
    assert recipe.to_json()[path.split(".")[0]] == value if "." not in path else \
        recipe.to_json()[path.split(".")[0]][path.split(".")[1]] == value
    assert (C_RANGE, MAX_ITER_RANGE, MAX_FEATURES) == ((1e-4, 1e4), (10, 10_000), 50_000)


# -- the recipe document --------------------------------------------------------------------------------


@pytest.mark.parametrize(("doc", "actual"), [([], "list"), ("{}", "str"), (None, "NoneType")])
def test_a_recipe_that_is_not_an_object_is_refused(doc: Any, actual: str) -> None:
    _recipe_refused(doc, "recipe", "a JSON object", actual)


@pytest.mark.parametrize("doc_type", ["cscore.recipe/v2", RECIPE_CARD_TYPE, None])
def test_a_recipe_of_another_type_is_refused(doc_type: Any) -> None:
    _recipe_refused(_recipe(type=doc_type), "recipe.type", RECIPE_TYPE, doc_type)
    _recipe_refused(_recipe(type=...), "recipe.type", RECIPE_TYPE, None)


def test_an_unknown_field_is_refused_first_in_sorted_order() -> None:
    _recipe_refused(_recipe(outputs="per-row", evaluate="x"), "recipe.evaluate", RECIPE_FIELDS, "evaluate",
                    "unknown field")


@pytest.mark.parametrize(("section", "allowed"), [("features", "one of ['max_features', 'token_pattern']"),
                                                  ("hyperparameters", "one of ['C', 'max_iter']"),
                                                  ("base", "one of ['coef', 'intercept', 'vocabulary']")])
def test_an_unknown_member_of_a_section_is_refused(section: str, allowed: str) -> None:
    _recipe_refused(_recipe(**{f"{section}.penalty": "l1"}), f"recipe.{section}.penalty", allowed, "penalty",
                    "unknown field")


@pytest.mark.parametrize("algorithm", ["tfidf-svm", "", None, ...])
def test_another_algorithm_is_refused(algorithm: Any) -> None:
    _recipe_refused(_recipe(algorithm=algorithm), "recipe.algorithm", f"one of {list(ALGORITHMS)}",
                    None if algorithm is ... else algorithm)
    assert list(ALGORITHMS) == ["tfidf-logreg"]


@pytest.mark.parametrize(("path", "kind"), [("features", "dict"), ("hyperparameters", "dict"),
                                            ("features.token_pattern", "str"), ("features.max_features", "int"),
                                            ("hyperparameters.C", "int or float"), ("hyperparameters.max_iter", "int"),
                                            ("seed", "int"), ("base.vocabulary", "list"), ("base.coef", "list"),
                                            ("base.intercept", "int or float")])
def test_each_field_missing_is_refused(path: str, kind: str) -> None:
    _recipe_refused(_recipe(**{path: ...}), f"recipe.{path}", kind, None)


@pytest.mark.parametrize(("path", "value", "kind", "actual"), [
    ("features", [], "dict", "list"), ("hyperparameters", "C=1", "dict", "str"), ("base", [], "dict", "list"),
    ("features.token_pattern", 2, "str", "int"), ("features.max_features", 1000.0, "int", "float"),
    ("features.max_features", True, "int", "bool"), ("hyperparameters.C", "1", "int or float", "str"),
    ("hyperparameters.C", True, "int or float", "bool"), ("hyperparameters.max_iter", 200.0, "int", "float"),
    ("seed", False, "int", "bool"), ("seed", "7", "int", "str"), ("base.vocabulary", "free", "list", "str"),
    ("base.coef", {"free": 1}, "list", "dict"), ("base.intercept", "0", "int or float", "str"),
    ("base.intercept", None, "int or float", "NoneType")])
def test_each_field_of_the_wrong_type_is_refused(path: str, value: Any, kind: str, actual: str) -> None:
    _recipe_refused(_recipe(**{path: value}), f"recipe.{path}", kind, actual)


@pytest.mark.parametrize("pattern", [r"\w+", r"[a-zA-Z0-9_]{1,}", r"(?u)\b\w\w+\b", ""])
def test_a_token_pattern_outside_the_list_is_refused_with_why(pattern: str) -> None:
    _recipe_refused(_recipe(**{"features.token_pattern": pattern}), "recipe.features.token_pattern",
                    f"one of {list(TOKEN_PATTERNS)}", pattern, PATTERN_HINT)


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("features.max_features", 99, "100..50000"), ("features.max_features", MAX_FEATURES + 1, "100..50000"),
    ("features.max_features", -1, "100..50000"),
    ("hyperparameters.C", 0.99e-4, "0.0001..10000.0"), ("hyperparameters.C", 10000.5, "0.0001..10000.0"),
    ("hyperparameters.C", 0, "0.0001..10000.0"), ("hyperparameters.C", float("inf"), "0.0001..10000.0"),
    ("hyperparameters.max_iter", 9, "10..10000"), ("hyperparameters.max_iter", 10_001, "10..10000"),
    ("seed", -1, "0..4294967295"), ("seed", 2**32, "0..4294967295")])
def test_each_setting_one_past_its_bound_is_refused(path: str, value: Any, expected: str) -> None:
    _recipe_refused(_recipe(**{path: value}), f"recipe.{path}", expected, value)


def test_a_c_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(FormatError) as info:
        Recipe.parse(_recipe(**{"hyperparameters.C": float("nan")}))
    assert (info.value.field, info.value.expected) == ("recipe.hyperparameters.C", "0.0001..10000.0")


# -- base -----------------------------------------------------------------------------------------------


def test_a_base_as_large_as_max_features_is_taken_one_more_is_refused() -> None:
    tokens = [f"t{i:03d}" for i in range(101)]
    recipe = Recipe.parse(_recipe(**{"features.max_features": 101, "base.vocabulary": tokens,
                                     "base.coef": [0.0] * 101}))
    assert recipe.base is not None and len(recipe.base.vocabulary) == 101
    _recipe_refused(_recipe(**{"features.max_features": 100, "base.vocabulary": tokens, "base.coef": [0.0] * 101}),
                    "recipe.base.vocabulary", "1..100 tokens (features.max_features)", 101)


def test_a_base_of_one_token_is_taken_an_empty_one_refused() -> None:
    recipe = Recipe.parse(_recipe(**{"base.vocabulary": ["free"], "base.coef": [1]}))
    assert recipe.base == BaseWeights(("free",), (1.0,), -1.0)
    _recipe_refused(_recipe(**{"base.vocabulary": [], "base.coef": []}), "recipe.base.vocabulary",
                    "1..1000 tokens (features.max_features)", 0)


@pytest.mark.parametrize(("pattern", "token"), [
    (r"[a-zA-Z0-9_]{2,}", "Free"), (r"[a-zA-Z0-9_]{2,}", "f"), (r"[a-zA-Z0-9_]{2,}", "free money"),
    (r"[a-zA-Z0-9_]{2,}", "free\n"), (r"[a-zA-Z0-9_]{2,}", "café"), (r"[a-zA-Z0-9_]{3,}", "ab"),
    (r"[a-zA-Z]{2,}", "a1"), (r"[a-zA-Z]{2,}", "free_"), (r"[a-zA-Z0-9_]{2,}", 12), (r"[a-zA-Z0-9_]{2,}", None)])
def test_a_token_the_tokenizer_never_yields_is_refused(pattern: str, token: Any) -> None:
    _recipe_refused(_recipe(**{"features.token_pattern": pattern, "base.vocabulary": ["money", token, "hello"]}),
                    "recipe.base.vocabulary", f"lowercase tokens matching {pattern} whole", token)


def test_a_null_token_is_refused_not_taken_for_none_found() -> None:
    # next(..., None) used to return the null token itself, read as "no bad token": the base was accepted
    _recipe_refused(_recipe(**{"base.vocabulary": [None, "money", "hello"]}), "recipe.base.vocabulary",
                    r"lowercase tokens matching [a-zA-Z0-9_]{2,} whole", None)


def test_a_null_weight_is_refused_not_a_type_error() -> None:
    # next(..., None) used to return the null weight itself, read as "no bad weight": float(None) raised TypeError
    _recipe_refused(_recipe(**{"base.coef": [None, 1.0, 2.0]}), "recipe.base.coef", "finite numbers", None)


def test_the_first_bad_token_is_named() -> None:
    _recipe_refused(_recipe(**{"base.vocabulary": ["money", "X", "Y"]}), "recipe.base.vocabulary",
                    r"lowercase tokens matching [a-zA-Z0-9_]{2,} whole", "X")


def test_a_token_twice_is_refused_naming_the_first_repeated() -> None:
    _recipe_refused(_recipe(**{"base.vocabulary": ["aa", "bb", "cc", "bb", "aa"], "base.coef": [0] * 5}),
                    "recipe.base.vocabulary", "each token once", "bb")


@pytest.mark.parametrize("coef", [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0], []])
def test_a_weight_count_other_than_the_tokens_is_refused(coef: list[float]) -> None:
    _recipe_refused(_recipe(**{"base.coef": coef}), "recipe.base.coef", "3 weights (one per token)", len(coef))


@pytest.mark.parametrize("weight", [True, "1", None, float("inf"), float("-inf"), [1.0]])
def test_a_weight_that_is_not_a_finite_number_is_refused(weight: Any) -> None:
    _recipe_refused(_recipe(**{"base.coef": [0.5, weight, 1.0]}), "recipe.base.coef", "finite numbers", weight)


def test_the_first_bad_weight_is_named() -> None:
    _recipe_refused(_recipe(**{"base.coef": [0.5, "a", "b"]}), "recipe.base.coef", "finite numbers", "a")


def test_a_nan_weight_is_refused() -> None:
    with pytest.raises(FormatError) as info:
        Recipe.parse(_recipe(**{"base.coef": [0.5, float("nan"), 1.0]}))
    assert (info.value.field, info.value.expected) == ("recipe.base.coef", "finite numbers")


def test_a_bool_intercept_is_refused_as_not_a_number() -> None:
    _recipe_refused(_recipe(**{"base.intercept": True}), "recipe.base.intercept", "int or float", "bool")


@pytest.mark.parametrize("intercept", [float("inf"), float("-inf"), float("nan")])
def test_an_intercept_that_is_not_a_finite_number_is_refused(intercept: Any) -> None:
    with pytest.raises(FormatError) as info:
        Recipe.parse(_recipe(**{"base.intercept": intercept}))
    error = info.value
    assert (error.field, error.expected, error.hint) == ("recipe.base.intercept", "finite numbers", "")
    assert error.actual is intercept


# -- the recipe card ------------------------------------------------------------------------------------


def test_a_right_card_gives_every_field() -> None:
    doc = _card()
    card = RecipeCard.parse(doc)
    assert card == RecipeCard(name="tfidf", version=2, digest=DIGEST, object_key=WHAT, broker="provider",
                              key_id="k-2", wrapped_dek="ZGVr", raw=doc)
    assert card.raw is doc
    assert (card.aad, card.reference) == (b"recipe:tfidf:2", "tfidf:2")


def test_the_card_digest_is_the_recipes_canonical_sha256() -> None:
    recipe = Recipe.parse(_recipe())
    digest = "sha256:" + hashlib.sha256(recipe.canonical()).hexdigest()
    assert RecipeCard.parse(_card(digest=digest)).digest == digest


@pytest.mark.parametrize(("doc", "actual"), [([], "list"), ("{}", "str")])
def test_a_card_that_is_not_an_object_is_refused(doc: Any, actual: str) -> None:
    _card_refused(doc, "recipe_card", "a JSON object", actual)


@pytest.mark.parametrize("doc_type", ["cscore.model-card/v2", "cscore.recipe-card/v2", None])
def test_a_card_of_another_type_is_refused(doc_type: Any) -> None:
    _card_refused(_card(type=doc_type), "recipe_card.type", RECIPE_CARD_TYPE, doc_type)


def test_an_unknown_card_field_is_refused() -> None:
    _card_refused(_card(task="x", contract={}), "recipe_card.contract", CARD_FIELDS, "contract", "unknown field")


@pytest.mark.parametrize("digest", ["sha256:" + "CD" * 32, "sha256:" + "c" * 63, "sha256:" + "c" * 65,
                                    "sha256:" + "c" * 64 + "\n", "md5:" + "c" * 64, "c" * 64])
def test_a_malformed_card_digest_is_refused(digest: str) -> None:
    _card_refused(_card(digest=digest), "recipe_card.digest", "sha256:<64 hex>", digest)


@pytest.mark.parametrize("protection", ["none", "AES-256-GCM", None, ...])
def test_a_recipe_card_not_encrypted_is_refused(protection: Any) -> None:
    _card_refused(_card(protection=protection), "recipe_card.protection", CLEAR,
                  None if protection is ... else protection)


@pytest.mark.parametrize(("field", "kind"), [("digest", "str"), ("name", "str"), ("object_key", "str"),
                                             ("broker", "str"), ("key_id", "str"), ("wrapped_dek", "str"),
                                             ("version", "int")])
def test_each_card_field_missing_is_refused(field: str, kind: str) -> None:
    _card_refused(_card(**{field: ...}), f"recipe_card.{field}", kind, None)


@pytest.mark.parametrize(("field", "value", "kind", "actual"), [
    ("digest", 1, "str", "int"), ("name", None, "str", "NoneType"), ("object_key", [], "str", "list"),
    ("broker", 1, "str", "int"), ("key_id", True, "str", "bool"), ("wrapped_dek", b"x", "str", "bytes"),
    ("version", "2", "int", "str"), ("version", True, "int", "bool")])
def test_each_card_field_of_the_wrong_type_is_refused(field: str, value: Any, kind: str, actual: str) -> None:
    _card_refused(_card(**{field: value}), f"recipe_card.{field}", kind, actual)


def test_a_signed_card_verifies_and_one_by_another_key_is_refused() -> None:
    provider, forger = OKPKey.generate_key("Ed25519"), OKPKey.generate_key("Ed25519")
    public = provider.as_dict(private=False)

    def sign(doc: dict[str, Any], key: OKPKey) -> str:
        return jws.serialize_compact({"alg": "Ed25519"}, json.dumps(doc).encode(), key, algorithms=["Ed25519"])

    assert verify_recipe_card(sign(_card(), provider), [public], what=WHAT) == RecipeCard.parse(copy.deepcopy(_card()))
    refused(lambda: verify_recipe_card(sign(_card(), forger), [public], what=WHAT), "card.signature",
             "an Ed25519 signature by one of 1 pinned provider key(s)", "none verifies",
             f"{WHAT}: only cards signed by a trusted provider are used")
    refused(lambda: verify_recipe_card(sign(_card(protection="none"), provider), [public], what=WHAT),
             "recipe_card.protection", CLEAR, "none")
