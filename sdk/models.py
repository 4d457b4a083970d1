"""What providers have published: what an owner chooses from, checked against the providers it trusts."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import OKPKey

from enclave.signing import SignatureError, unverified_payload, verify_json
from sdk.storage import ObjectStore
from wire.card import ModelCard
from wire.errors import FormatError


@dataclass(frozen=True)
class ModelListing:
    name: str
    version: int
    digest: str
    signer: str  # thumbprint of the key that signed the card
    published_at: int
    trusted: bool  # signed by a provider key the owner pinned
    card: ModelCard | None = None  # the parsed card (task, contract, metrics, price, quota); None if malformed
    problem: str = ""  # why the card does not parse (an old card without a contract, a malformed field)
    owner_keys: tuple[str, ...] = ()  # owner broker keys a batch's grant must name too (a tuned model's share)

    @property
    def task(self) -> str:
        return self.card.task if self.card else "?"

    def summary(self) -> dict[str, Any]:
        """What `cscore models` shows of a card: JSON-ready, no secrets (the card is public)."""
        card = self.card
        return {"model": f"{self.name}:{self.version}", "task": self.task, "trusted": self.trusted,
                "signer": self.signer, "digest": self.digest, "published_at": self.published_at,
                "provider": card.broker if card else None,
                "inputs": [f"{'+'.join(i.columns)} ({i.kind})" for i in card.contract.inputs] if card else [],
                "outputs": list(card.contract.result_columns[1:]) if card else [],
                "classes": list(card.contract.classes or ()) if card else [],
                "metrics": card.metrics if card else {}, "price": card.price if card else None,
                "quota": card.quota if card else None,
                "probability_digits": card.probability_digits if card else None, "problem": self.problem}


def list_models(store: ObjectStore, trusted_keys: Sequence[dict[str, Any]] = (), *,
                task: str | None = None) -> list[ModelListing]:
    """Every published model card (only `task`'s, when given); `trusted` says whether its signature verifies
    under a pinned key."""
    keys = {OKPKey.import_key(k).thumbprint(): k for k in trusted_keys}
    listings = []
    for key in store.keys("models/"):
        if key.endswith("/card.jws"):
            token = store.get(key).decode()
            card = unverified_payload(token, what=f"model card {key}")
            signer = _kid(token)
            parsed, problem = _parsed(card)
            listings.append(ModelListing(card["name"], card["version"], card["digest"], signer,
                                         card.get("published_at", 0), _verifies(token, keys.get(signer), key),
                                         parsed, problem))
    return sorted((m for m in listings if task is None or m.task == task), key=lambda m: (m.name, m.version))


def _parsed(card: dict[str, Any]) -> tuple[ModelCard | None, str]:
    try:
        return ModelCard.parse(card), ""
    except FormatError as exc:
        return None, str(exc)


def find_model(store: ObjectStore, ref: str, trusted_keys: Sequence[dict[str, Any]]) -> ModelListing:
    """`name:version` or `name` (latest) among cards signed by a trusted provider; errors say what exists."""
    name, _, version = ref.partition(":")
    every = list_models(store, trusted_keys)
    models = [m for m in every if m.name == name and (not version or str(m.version) == version)]
    if not models:
        known = ", ".join(f"{m.name}:{m.version}" for m in every) or "none"
        raise LookupError(f"model: expected one of the published models ({known}), got {ref!r}")
    chosen = models[-1]
    if not chosen.trusted and chosen.signer in {OKPKey.import_key(k).thumbprint() for k in trusted_keys}:
        raise LookupError(f"model {chosen.name}:{chosen.version}: expected a card signed by your pinned provider key "
                          f"{chosen.signer}, which it names, got a signature that key does not verify: the card "
                          "was forged or altered; do not use it")
    if not chosen.trusted:
        raise LookupError(f"model {chosen.name}:{chosen.version}: expected a card signed by a provider key you "
                          f"trust, got one signed by {chosen.signer}; pin the provider's key with "
                          "`cscore owner trust-provider KEY.jwk`")
    if chosen.card is None:
        raise LookupError(f"model {chosen.name}:{chosen.version}: its card cannot be used ({chosen.problem})")
    return chosen


def _verifies(token: str, key: dict[str, Any] | None, where: str) -> bool:
    if key is None:
        return False
    try:
        verify_json(token, key, what=f"model card {where}")
    except SignatureError:
        return False
    return True


def _kid(token: str) -> str:
    header = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))).get("kid", ""))
