"""The training recipe: a provider's feature pipeline and hyperparameters, and the signed card it is published with.

The recipe (`cscore.recipe/v1`) is the provider's property: it travels encrypted (AES-256-GCM, AAD
``recipe:<name>:<version>``) under a data key wrapped by the provider's broker, like a model. Payload::

    {"type": "cscore.recipe/v1", "algorithm": "tfidf-logreg",
     "features": {"token_pattern": one of TOKEN_PATTERNS, "max_features": int (100..MAX_FEATURES)},
     "hyperparameters": {"C": float (C_RANGE), "max_iter": int (MAX_ITER_RANGE)},
     "seed": int >= 0,
     "base": {"vocabulary": [token, ...], "coef": [float, ...], "intercept": float}}   (optional)

`base` is the provider's model to start from, as secret as the rest: the TF-IDF vocabulary (a token's column is
its position; lowercase tokens the token pattern matches whole, each once, at most `max_features`), one
logistic-regression weight per token and the intercept. Training then keeps that vocabulary and starts the
solver from those weights (scikit-learn's warm start).

A recipe holds settings only, no code and no evaluation: the enclave alone decides what it measures
(precision, recall, F1 and counts on the owner's held-out split), so a recipe cannot ask for per-row
outputs. Unknown fields are refused, not ignored.

The recipe card (`cscore.recipe-card/v1`), compact JWS (Ed25519) by the provider's card key::

    {"type", "name", "version": int, "digest": "sha256:<hex>" (of the recipe's canonical JSON),
     "object_key": "recipes/<name>/<version>/recipe.json.enc", "protection": "aes-256-gcm",
     "broker", "broker_url", "key_id", "wrapped_dek": base64, "published_at": epoch s}
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from wire.canonical import canonical_json
from wire.card import verify_signed
from wire.errors import FormatError, refuse_unknown, require, typed_document

RECIPE_TYPE = "cscore.recipe/v1"
RECIPE_CARD_TYPE = "cscore.recipe-card/v1"
ALGORITHMS = ("tfidf-logreg",)
# Only patterns skl2onnx's tokenizer reproduces exactly (ASCII classes): the trained model must score
# in the enclave as it trained.
TOKEN_PATTERNS = (r"[a-zA-Z0-9_]{2,}", r"[a-zA-Z0-9_]{3,}", r"[a-zA-Z]{2,}")
MAX_FEATURES = 50_000
C_RANGE = (1e-4, 1e4)
MAX_ITER_RANGE = (10, 10_000)
_RECIPE_FIELDS = {"type", "algorithm", "features", "hyperparameters", "seed", "base"}
_CARD_FIELDS = {"type", "name", "version", "digest", "object_key", "protection", "broker", "broker_url", "key_id",
                "wrapped_dek", "published_at"}


@dataclass(frozen=True)
class BaseWeights:
    """A provider's model to start from (module docstring): vocabulary[i] is column i, coef[i] its weight."""

    vocabulary: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float

    def to_json(self) -> dict[str, Any]:
        return {"vocabulary": list(self.vocabulary), "coef": list(self.coef), "intercept": self.intercept}


@dataclass(frozen=True)
class Recipe:
    """A verified recipe's settings (module docstring); `digest` is the sha256 of its canonical JSON."""

    token_pattern: str
    max_features: int
    C: float  # noqa: N815 - scikit-learn's name
    max_iter: int
    seed: int
    base: BaseWeights | None = None

    def to_json(self) -> dict[str, Any]:
        doc = {"type": RECIPE_TYPE, "algorithm": ALGORITHMS[0],
               "features": {"token_pattern": self.token_pattern, "max_features": self.max_features},
               "hyperparameters": {"C": self.C, "max_iter": self.max_iter}, "seed": self.seed}
        return {**doc, "base": self.base.to_json()} if self.base is not None else doc

    def canonical(self) -> bytes:
        """The recipe's bytes as published (RFC 8785 JSON): what its card's digest names."""
        return canonical_json(self.to_json())

    @classmethod
    def parse(cls, doc: Any) -> Recipe:
        """Strict parse; FormatError names the field (an unknown one included)."""
        doc = typed_document(doc, "recipe", RECIPE_TYPE, _RECIPE_FIELDS)
        if doc.get("algorithm") not in ALGORITHMS:
            raise FormatError("recipe.algorithm", f"one of {list(ALGORITHMS)}", doc.get("algorithm"))
        features = require(doc, "features", dict, where="recipe")
        refuse_unknown(features, {"token_pattern", "max_features"}, where="recipe.features")
        hyper = require(doc, "hyperparameters", dict, where="recipe")
        refuse_unknown(hyper, {"C", "max_iter"}, where="recipe.hyperparameters")
        pattern = require(doc, "features.token_pattern", str, where="recipe")
        if pattern not in TOKEN_PATTERNS:
            raise FormatError("recipe.features.token_pattern", f"one of {list(TOKEN_PATTERNS)}", pattern,
                              "other patterns do not convert exactly to ONNX")
        max_features = _bounded(doc, "features.max_features", int, (100, MAX_FEATURES))
        return cls(token_pattern=pattern, max_features=max_features,
                   C=float(_bounded(doc, "hyperparameters.C", (int, float), C_RANGE)),
                   max_iter=_bounded(doc, "hyperparameters.max_iter", int, MAX_ITER_RANGE),
                   seed=_bounded(doc, "seed", int, (0, 2**32 - 1)),
                   base=_base(doc, pattern, max_features) if "base" in doc else None)


@dataclass(frozen=True)
class RecipeCard:
    """A verified recipe card's fields that a worker or an owner acts on."""

    name: str
    version: int
    digest: str
    object_key: str
    broker: str
    key_id: str
    wrapped_dek: str
    raw: dict[str, Any]

    @property
    def aad(self) -> bytes:
        """Additional data of the recipe ciphertext: its name and version, apart from any model's."""
        return f"recipe:{self.name}:{self.version}".encode()

    @property
    def reference(self) -> str:
        return f"{self.name}:{self.version}"

    @classmethod
    def parse(cls, doc: Any) -> RecipeCard:
        """Strict parse of the payload; FormatError names the field."""
        doc = typed_document(doc, "recipe_card", RECIPE_CARD_TYPE, _CARD_FIELDS)
        digest = require(doc, "digest", str, where="recipe_card")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise FormatError("recipe_card.digest", "sha256:<64 hex>", digest)
        if doc.get("protection") != "aes-256-gcm":
            raise FormatError("recipe_card.protection", "aes-256-gcm (a recipe is never published in clear)",
                              doc.get("protection"))
        text = {name: require(doc, name, str, where="recipe_card")
                for name in ("name", "object_key", "broker", "key_id", "wrapped_dek")}
        return cls(version=require(doc, "version", int, where="recipe_card"), digest=digest, raw=doc, **text)


def verify_recipe_card(token: str, keys: list[dict[str, Any]] | tuple[dict[str, Any], ...], *,
                       what: str) -> RecipeCard:
    """Verify a recipe card against any of `keys` (the provider's pinned Ed25519 JWKs) and parse it.

    Raises FormatError `card.signature` when no key verifies it, `recipe_card.*` when it does not parse.
    """
    return RecipeCard.parse(verify_signed(token, keys, what=what))


def _base(doc: dict[str, Any], pattern: str, max_features: int) -> BaseWeights:
    """The recipe's `base`, strictly: tokens the tokenizer can yield, each once, and a finite weight for each."""
    refuse_unknown(require(doc, "base", dict, where="recipe"), {"vocabulary", "coef", "intercept"},
                   where="recipe.base")
    vocabulary = require(doc, "base.vocabulary", list, where="recipe")
    if not 1 <= len(vocabulary) <= max_features:
        raise FormatError("recipe.base.vocabulary", f"1..{max_features} tokens (features.max_features)",
                          len(vocabulary))
    # a list, not next(..., None): a null token (or weight) must be named, not taken for "none found"
    bad = [t for t in vocabulary if not isinstance(t, str) or t != t.lower() or not re.fullmatch(pattern, t)]
    if bad:  # a token the lowercasing tokenizer never yields would be a dead column
        raise FormatError("recipe.base.vocabulary", f"lowercase tokens matching {pattern} whole", bad[0])
    if len(set(vocabulary)) != len(vocabulary):
        raise FormatError("recipe.base.vocabulary", "each token once",
                          next(t for i, t in enumerate(vocabulary) if t in vocabulary[:i]))
    coef = require(doc, "base.coef", list, where="recipe")
    if len(coef) != len(vocabulary):
        raise FormatError("recipe.base.coef", f"{len(vocabulary)} weights (one per token)", len(coef))
    intercept = require(doc, "base.intercept", (int, float), where="recipe")
    for field, values in (("coef", coef), ("intercept", [intercept])):
        bad = [w for w in values if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w)]
        if bad:
            raise FormatError(f"recipe.base.{field}", "finite numbers", bad[0])
    return BaseWeights(tuple(vocabulary), tuple(float(w) for w in coef), float(intercept))


def _bounded(doc: dict[str, Any], path: str, kind: type | tuple[type, ...], bounds: tuple[float, float]) -> Any:
    value = require(doc, path, kind, where="recipe")
    if not bounds[0] <= value <= bounds[1]:
        raise FormatError(f"recipe.{path}", f"{bounds[0]}..{bounds[1]}", value)
    return value
