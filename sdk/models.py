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


@dataclass(frozen=True)
class ModelListing:
    name: str
    version: int
    digest: str
    signer: str  # thumbprint of the key that signed the card
    published_at: int
    trusted: bool  # signed by a provider key the owner pinned


def list_models(store: ObjectStore, trusted_keys: Sequence[dict[str, Any]] = ()) -> list[ModelListing]:
    """Every published model card; `trusted` says whether its signature verifies under a pinned key."""
    keys = {OKPKey.import_key(k).thumbprint(): k for k in trusted_keys}
    listings = []
    for key in store.keys("models/"):
        if key.endswith("/card.jws"):
            token = store.get(key).decode()
            card = unverified_payload(token, what=f"model card {key}")
            signer = _kid(token)
            listings.append(ModelListing(card["name"], card["version"], card["digest"], signer,
                                         card.get("published_at", 0), _verifies(token, keys.get(signer), key)))
    return sorted(listings, key=lambda m: (m.name, m.version))


def find_model(store: ObjectStore, ref: str, trusted_keys: Sequence[dict[str, Any]]) -> ModelListing:
    """`name:version` or `name` (latest) among cards signed by a trusted provider; errors say what exists."""
    name, _, version = ref.partition(":")
    every = list_models(store, trusted_keys)
    models = [m for m in every if m.name == name and (not version or str(m.version) == version)]
    if not models:
        known = ", ".join(f"{m.name}:{m.version}" for m in every) or "none"
        raise LookupError(f"model: expected one of the published models ({known}), got {ref!r}")
    chosen = models[-1]
    if not chosen.trusted:
        raise LookupError(f"model {chosen.name}:{chosen.version}: expected a card signed by a provider key you "
                          f"trust, got one signed by {chosen.signer}; pin the provider's key with "
                          "`cscore owner trust-provider KEY.jwk`")
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
