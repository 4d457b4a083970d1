"""What providers have published: what an owner chooses from."""

from __future__ import annotations

from dataclasses import dataclass

from enclave.signing import unverified_payload
from sdk.storage import ObjectStore


@dataclass(frozen=True)
class ModelListing:
    name: str
    version: int
    digest: str
    signer: str
    published_at: int


def list_models(store: ObjectStore) -> list[ModelListing]:
    """Every published model card, newest version last per name."""
    listings = []
    for key in store.keys("models/"):
        if key.endswith("/card.jws"):
            token = store.get(key).decode()
            card = unverified_payload(token, what=f"model card {key}")
            listings.append(ModelListing(card["name"], card["version"], card["digest"],
                                         _kid(token), card.get("published_at", 0)))
    return sorted(listings, key=lambda m: (m.name, m.version))


def find_model(store: ObjectStore, ref: str) -> ModelListing:
    """`name:version` or `name` (latest); a clear error lists what exists."""
    name, _, version = ref.partition(":")
    models = [m for m in list_models(store) if m.name == name and (not version or str(m.version) == version)]
    if not models:
        known = ", ".join(f"{m.name}:{m.version}" for m in list_models(store)) or "none"
        raise LookupError(f"model: expected one of the published models ({known}), got {ref!r}")
    return models[-1]


def _kid(token: str) -> str:
    import base64
    import json
    header = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))).get("kid", ""))
