"""The owner-signed batch manifest, as the platform validates it (it cannot read the data itself)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

MANIFEST_TYPE = "cscore.manifest/v1"
MANIFEST_NAME = "manifest.jws"
PROTECTIONS = ("pme", "none")  # "none": the benchmark's plaintext baseline, chosen by the owner
_KEY_PATTERN = re.compile(r"^incoming/(?P<tenant>[A-Za-z0-9_.-]+)/(?P<batch>[A-Za-z0-9_.-]+)/manifest\.jws$")


class ManifestError(ValueError):
    """The manifest cannot be processed; the message names the field, expected and actual value."""


@dataclass(frozen=True)
class ManifestObject:
    key: str
    size: int
    sha256: str
    rows: int
    row_groups: int
    file_id: str = ""  # PME inputs: the id the file's authenticated footer carries (the worker checks it)


@dataclass(frozen=True)
class Manifest:
    """A verified manifest: everything the platform needs to plan and dispatch the batch."""

    key: str
    sha256: str
    tenant: str
    batch_id: str
    objects: tuple[ManifestObject, ...]
    model_name: str
    model_version: int
    model_digest: str
    results_prefix: str
    broker_name: str  # the owner broker's name in the workers' measured configuration
    broker_url: str
    footer_key: str
    column_key: str
    result_key: str
    shard_row_groups: int
    protection: str = "pme"

    @property
    def rows(self) -> int:
        return sum(obj.rows for obj in self.objects)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["objects"] = [dict(obj.__dict__) for obj in self.objects]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        values = dict(data)
        values["objects"] = tuple(ManifestObject(**obj) for obj in data["objects"])
        return cls(**values)


def tenant_and_batch(key: str) -> tuple[str, str]:
    """Split `incoming/<tenant>/<batch>/manifest.jws`; anything else is not a manifest."""
    match = _KEY_PATTERN.fullmatch(key)  # not match: its $ also matches before a final newline
    if not match:
        raise ManifestError(
            f"manifest key: expected incoming/<tenant>/<batch>/{MANIFEST_NAME}, got {key!r}"
        )
    return match["tenant"], match["batch"]


def verify_manifest(key: str, token: bytes, tenant_key: dict[str, Any]) -> Manifest:
    """Check the owner's signature and the manifest's shape; returns the typed manifest."""
    tenant, batch = tenant_and_batch(key)
    try:
        signed = jws.deserialize_compact(
            token.decode("ascii").strip(), OKPKey.import_key(tenant_key), algorithms=["Ed25519"]
        )
        payload = json.loads(signed.payload)
    except (UnicodeDecodeError, JoseError, ValueError) as exc:
        raise ManifestError(
            f"manifest {key}: expected a compact JWS signed by tenant {tenant}'s registered key, "
            f"got {type(exc).__name__}: {exc}. Re-sign it with `cscore owner submit`."
        ) from exc
    return _typed(key, hashlib.sha256(token).hexdigest(), tenant, batch, payload)


def _field(payload: dict[str, Any], path: str, kind: type) -> Any:
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ManifestError(f"manifest.{path}: expected {kind.__name__}, got nothing")
        value = value[part]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ManifestError(f"manifest.{path}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _expect(path: str, expected: Any, actual: Any) -> None:
    if expected != actual:
        raise ManifestError(f"manifest.{path}: expected {expected!r}, got {actual!r}")


def _typed(key: str, digest: str, tenant: str, batch: str, payload: Any) -> Manifest:
    if not isinstance(payload, dict):
        raise ManifestError(f"manifest: expected a JSON object, got {type(payload).__name__}")
    _expect("type", MANIFEST_TYPE, payload.get("type"))
    _expect("tenant", tenant, _field(payload, "tenant", str))
    _expect("batch_id", batch, _field(payload, "batch_id", str))
    protection = payload.get("protection", "pme")
    if protection not in PROTECTIONS:
        raise ManifestError(f"manifest.protection: expected one of {PROTECTIONS}, got {protection!r}")
    objects = tuple(_object(payload, i, f"incoming/{tenant}/{batch}/", protection) for i in
                    range(len(_field(payload, "objects", list))))
    if not objects or sum(obj.rows for obj in objects) == 0:
        raise ManifestError("manifest.objects: expected at least one email, got an empty batch")
    results_prefix = _field(payload, "results.prefix", str)
    _expect("results.prefix", f"results/{tenant}/{batch}/", results_prefix)
    shard_row_groups = _field(payload, "shard_row_groups", int)
    if shard_row_groups < 1:
        raise ManifestError(f"manifest.shard_row_groups: expected >= 1, got {shard_row_groups}")
    digest_value = _field(payload, "model.digest", str)
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest_value):
        raise ManifestError(f"manifest.model.digest: expected sha256:<64 hex>, got {digest_value!r}")
    return Manifest(
        key=key,
        sha256=digest,
        tenant=tenant,
        batch_id=batch,
        objects=objects,
        model_name=_field(payload, "model.name", str),
        model_version=_field(payload, "model.version", int),
        model_digest=digest_value,
        results_prefix=results_prefix,
        broker_name=_field(payload, "key_broker.name", str),
        broker_url=_field(payload, "key_broker.url", str),
        footer_key=_field(payload, "key_broker.footer_key", str),
        column_key=_field(payload, "key_broker.column_key", str),
        result_key=_field(payload, "key_broker.result_key", str),
        shard_row_groups=shard_row_groups,
        protection=protection,
    )


def _object(payload: dict[str, Any], index: int, prefix: str, protection: str) -> ManifestObject:
    raw = payload["objects"][index]
    if not isinstance(raw, dict):
        raise ManifestError(f"manifest.objects[{index}]: expected an object, got {type(raw).__name__}")
    obj = ManifestObject(
        key=_field(raw, "key", str),
        size=_field(raw, "size", int),
        sha256=_field(raw, "sha256", str),
        rows=_field(raw, "rows", int),
        row_groups=_field(raw, "row_groups", int),
        file_id=str(raw.get("file_id", "")) if protection == "pme" else "",
    )
    if not obj.key.startswith(prefix) or obj.key.endswith(MANIFEST_NAME):
        raise ManifestError(f"manifest.objects[{index}].key: expected a data object under {prefix}, got {obj.key!r}")
    if obj.rows > 0 and obj.row_groups < 1:
        raise ManifestError(f"manifest.objects[{index}].row_groups: expected >= 1, got {obj.row_groups}")
    if protection == "pme" and not re.fullmatch(r"[0-9a-f]{32}", obj.file_id):
        # The worker checks this id against the file's authenticated footer: a PME input has one.
        raise ManifestError(f"manifest.objects[{index}].file_id: expected 32 hex digits (the id in the file's "
                            f"encrypted footer), got {raw.get('file_id')!r}")
    return obj
