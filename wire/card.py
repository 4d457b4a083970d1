"""The model card: a provider's signed description of one published model version.

Compact JWS, Ed25519, by the provider's card key (owners pin it; workers find it in their measured
configuration). Payload (`cscore.model-card/v2`)::

    {"type", "name", "version": int, "digest": "sha256:<hex>" (of the plaintext ONNX), "size": int,
     "task": one of wire.contract.TASKS, "contract": wire.contract.Contract (inputs, outputs, classes),
     "metrics": {name: number} (what the provider claims, e.g. held-out accuracy), "description": str,
     "price": {"currency": "EUR", "per_1000_rows": number} | null,
     "object_key": "models/<name>/<version>/model.onnx(.enc)",
     "protection": "aes-256-gcm" | "none",
     "broker": provider broker name, "broker_url", "key_id", "wrapped_dek": base64   (encrypted models only)
     "output": {"probability_digits": int | null}    (null: full float32; 0: labels only)
     "quota": {"rows": int, "period_s": int} | null  (rows per owner per period, metered by the provider broker)
     "published_at": epoch s}

Unknown fields are refused. v1 cards (no contract) are refused with a hint to publish again.
The contract and the terms (`output`, `quota`) bind the enclave only because the card is signed: an unsigned
or re-signed card is refused before any key is asked for.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from wire.contract import TASKS, Contract
from wire.errors import FormatError, refuse_unknown, require

CARD_TYPE = "cscore.model-card/v2"
_OLD_TYPES = ("cscore.model-card/v1",)
_FIELDS = {"type", "name", "version", "digest", "size", "task", "contract", "metrics", "description", "price",
           "object_key", "protection", "broker", "broker_url", "key_id", "wrapped_dek", "output", "quota",
           "published_at"}
PROTECTIONS = ("aes-256-gcm", "none")
MAX_DIGITS = 9  # float32 carries about 7 significant digits; more is "full"


@dataclass(frozen=True)
class ModelCard:
    """A verified card's fields that a worker or an owner acts on."""

    name: str
    version: int
    digest: str
    object_key: str
    protection: str
    broker: str | None
    key_id: str | None
    wrapped_dek: str | None
    probability_digits: int | None
    quota: dict[str, int] | None
    task: str
    contract: Contract
    metrics: dict[str, float]
    price: dict[str, Any] | None
    raw: dict[str, Any]

    @property
    def aad(self) -> bytes:
        """Additional data of the model ciphertext: the name and version it was published as."""
        return f"{self.name}:{self.version}".encode()

    @classmethod
    def parse(cls, doc: Any) -> ModelCard:
        """Strict parse of the payload; FormatError names the field."""
        if not isinstance(doc, dict):
            raise FormatError("card", "a JSON object", type(doc).__name__)
        if doc.get("type") in _OLD_TYPES:
            raise FormatError("card.type", CARD_TYPE, doc.get("type"), "a card without a contract: the provider "
                              "must publish the model again (`cscore provider publish`)")
        if doc.get("type") != CARD_TYPE:
            raise FormatError("card.type", CARD_TYPE, doc.get("type"))
        refuse_unknown(doc, _FIELDS, where="card")
        task = require(doc, "task", str, where="card")
        if task not in TASKS:
            raise FormatError("card.task", f"one of {list(TASKS)}", task)
        digest = require(doc, "digest", str, where="card")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise FormatError("card.digest", "sha256:<64 hex>", digest)
        protection = doc.get("protection", "aes-256-gcm")
        if protection not in PROTECTIONS:
            raise FormatError("card.protection", f"one of {list(PROTECTIONS)}", protection)
        encrypted = protection != "none"
        return cls(
            name=require(doc, "name", str, where="card"), version=require(doc, "version", int, where="card"),
            digest=digest, object_key=require(doc, "object_key", str, where="card"), protection=protection,
            broker=require(doc, "broker", str, where="card") if encrypted else None,
            key_id=require(doc, "key_id", str, where="card") if encrypted else None,
            wrapped_dek=require(doc, "wrapped_dek", str, where="card") if encrypted else None,
            probability_digits=_digits(doc.get("output")), quota=_quota(doc.get("quota")), task=task,
            contract=Contract.parse(require(doc, "contract", dict, where="card")), metrics=_metrics(doc.get("metrics")),
            price=_price(doc.get("price")), raw=doc)


def verify_card(token: str, keys: list[dict[str, Any]] | tuple[dict[str, Any], ...], *, what: str) -> ModelCard:
    """Verify a card against any of `keys` (public Ed25519 JWKs) and parse it.

    Raises FormatError `card.signature` (naming `what`, e.g. the object key) when no key verifies it.
    """
    return ModelCard.parse(verify_signed(token, keys, what=what))


def verify_signed(token: str, keys: list[dict[str, Any]] | tuple[dict[str, Any], ...], *, what: str) -> Any:
    """The JSON payload of a provider-signed document (model or recipe card) that one of `keys` verifies.

    Raises FormatError `card.signature` when none does, `card.payload` when the payload is not JSON.
    """
    for jwk in keys:
        try:
            signed = jws.deserialize_compact(token.strip(), OKPKey.import_key(jwk), algorithms=["Ed25519"])
        except (JoseError, ValueError):
            continue
        try:
            return json.loads(signed.payload)
        except ValueError as exc:
            raise FormatError("card.payload", "JSON", "undecodable bytes", what) from exc
    raise FormatError("card.signature", f"an Ed25519 signature by one of {len(keys)} pinned provider key(s)",
                      "none verifies", f"{what}: only cards signed by a trusted provider are used")


def _digits(output: Any) -> int | None:
    if output is None:
        return None
    if not isinstance(output, dict) or set(output) - {"probability_digits"}:
        raise FormatError("card.output", "{'probability_digits': int | null}", output)
    digits = output.get("probability_digits")
    if digits is not None and (not isinstance(digits, int) or isinstance(digits, bool) or
                               not 0 <= digits <= MAX_DIGITS):
        raise FormatError("card.output.probability_digits", f"null or 0..{MAX_DIGITS}", digits)
    return digits


def _quota(quota: Any) -> dict[str, int] | None:
    if quota is None:
        return None
    if not isinstance(quota, dict) or set(quota) != {"rows", "period_s"} or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in quota.values()):
        raise FormatError("card.quota", "{'rows': int > 0, 'period_s': int > 0} or null", quota)
    return dict(quota)


def _metrics(metrics: Any) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in metrics.items()):
        raise FormatError("card.metrics", "{name: number} (the provider's claimed metrics) or null", metrics)
    return {k: float(v) for k, v in metrics.items()}


def _price(price: Any) -> dict[str, Any] | None:
    if price is None:
        return None
    if (not isinstance(price, dict) or set(price) != {"currency", "per_1000_rows"}
            or not isinstance(price["currency"], str) or not re.fullmatch(r"[A-Z]{3}", price["currency"])
            or not isinstance(price["per_1000_rows"], int | float) or isinstance(price["per_1000_rows"], bool)
            or not 0 <= price["per_1000_rows"] < 1e9):
        raise FormatError("card.price", "{'currency': ISO 4217 code, 'per_1000_rows': number >= 0} or null", price)
    return dict(price)
