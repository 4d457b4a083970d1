"""One training job as the platform hands it to a worker: object keys, digests and names, never a secret.

The owner chooses the data (its sha256) and the recipe (name, version, digest) in its signed training
manifest; the worker trains only if the bytes it is handed match those digests. Shape (`cscore.training-spec/v1`
is not on the wire: the dict is the Celery argument)::

    {"tenant", "job_id", "input_key", "input_sha256": hex, "recipe_name", "recipe_version": int,
     "recipe_digest": "sha256:<hex>", "owner_broker": name in the worker configuration,
     "model_name": name the tuned model is published under, "model_version": int,
     "owner_share_key": owner key id, "owner_share_wrapped": base64 (the owner's half of the tuned model's key,
     wrapped by its broker), "receipt_key": where its receipt goes}

The tuned model is stored under ``tuned/<tenant>/<model_name>/<model_version>/``: its ciphertext, the card the
enclave signs (lineage and both key shares, wrapped) and the receipt.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from wire.errors import FormatError, refuse_unknown, require

_TEXT = ("tenant", "job_id", "input_key", "input_sha256", "recipe_name", "recipe_digest", "owner_broker",
         "model_name", "owner_share_key", "owner_share_wrapped", "receipt_key")


@dataclass(frozen=True)
class TrainingSpec:
    """One training job (module docstring)."""

    tenant: str
    job_id: str
    input_key: str
    input_sha256: str
    recipe_name: str
    recipe_version: int
    recipe_digest: str
    owner_broker: str
    model_name: str
    model_version: int
    owner_share_key: str
    owner_share_wrapped: str
    receipt_key: str

    @property
    def model(self) -> str:
        """The tuned model's reference, `name:version` (the AAD of its ciphertext)."""
        return f"{self.model_name}:{self.model_version}"

    @property
    def prefix(self) -> str:
        return f"tuned/{self.tenant}/{self.model_name}/{self.model_version}/"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Any) -> TrainingSpec:
        """Strict parse; FormatError names the field."""
        if not isinstance(doc, dict):
            raise FormatError("training_spec", "a JSON object", type(doc).__name__)
        refuse_unknown(doc, set(_TEXT) | {"recipe_version", "model_version"}, where="training_spec")
        text = {name: require(doc, name, str, where="training_spec") for name in _TEXT}
        if not re.fullmatch(r"[0-9a-f]{64}", text["input_sha256"]):
            raise FormatError("training_spec.input_sha256", "64 hex digits", text["input_sha256"])
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", text["recipe_digest"]):
            raise FormatError("training_spec.recipe_digest", "sha256:<64 hex>", text["recipe_digest"])
        return cls(recipe_version=require(doc, "recipe_version", int, where="training_spec"),
                   model_version=require(doc, "model_version", int, where="training_spec"), **text)
