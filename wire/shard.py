"""What one shard of a batch is: the instruction the platform sends, and what comes back.

Both travel through the platform (Celery messages, Airflow XCom), so they carry object keys,
digests and counts only: never a key, an email or a score.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Any

from wire.canonical import canonical_json
from wire.errors import FormatError

# The footer key-value entry that binds an input file to its tenant, batch, object key and file id. PME
# encrypts and authenticates the footer (AES-GCM, with the file's AAD that every page's AAD also carries),
# so only the owner can write it, and a file read under another key or for another batch is refused.
INPUT_BINDING_KEY = "cscore.input"
# The platform's per-batch limits on the model's run (availability only: a platform can always stop work).
DEFAULT_MS_PER_ROW = 1_000
DEFAULT_MEMORY_MIB = 4_096
LIMIT_RANGES = {"max_ms_per_row": (1, 3_600_000), "max_memory_mib": (64, 1 << 20)}
OPTIONAL_FIELDS = {"protection": "pme", "input_file_id": "", "max_ms_per_row": DEFAULT_MS_PER_ROW,
                   "max_memory_mib": DEFAULT_MEMORY_MIB}


LIMITS_VARIABLE = "cscore_limits"  # the Airflow Variable where the platform's operator sets them


def parse_limits(doc: Any) -> dict[str, int]:
    """The platform's run limits from its JSON object ``{"max_ms_per_row": int, "max_memory_mib": int}`` (each
    optional, defaults DEFAULT_MS_PER_ROW and DEFAULT_MEMORY_MIB). Raises FormatError naming the field."""
    if not isinstance(doc, dict):
        raise FormatError(LIMITS_VARIABLE, "a JSON object", type(doc).__name__)
    unknown = sorted(set(doc) - set(LIMIT_RANGES))
    if unknown:
        raise FormatError(f"{LIMITS_VARIABLE}.{unknown[0]}", f"one of {sorted(LIMIT_RANGES)}", unknown[0],
                          "unknown field")
    defaults = {"max_ms_per_row": DEFAULT_MS_PER_ROW, "max_memory_mib": DEFAULT_MEMORY_MIB}
    limits: dict[str, int] = {}
    for name, (low, high) in LIMIT_RANGES.items():
        value = doc.get(name, defaults[name])
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise FormatError(f"{LIMITS_VARIABLE}.{name}", f"an integer in {low}..{high}", value)
        limits[name] = value
    return limits


def input_binding(tenant: str, batch_id: str, key: str, file_id: str) -> str:
    """The binding's value: canonical JSON of the four names (a stable byte string to compare)."""
    return canonical_json({"tenant": tenant, "batch_id": batch_id, "key": key, "file_id": file_id}).decode()


class ShardSpecError(ValueError):
    """A shard instruction is malformed."""


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: a range of row groups of one input object."""

    tenant: str
    batch_id: str
    shard_index: int
    input_key: str
    input_sha256: str
    row_group_start: int
    row_group_end: int  # exclusive
    model_name: str
    model_version: int
    model_digest: str
    owner_broker: str  # the owner broker's name in the worker configuration (never a URL: see wire.worker_config)
    footer_key: str
    column_key: str
    result_key: str
    output_key: str
    receipt_key: str
    protection: str = "pme"  # "none": plaintext baseline for benchmarks, chosen in the owner's manifest
    input_file_id: str = ""  # the manifest's file id of the input (PME): the worker finds it in the footer's binding
    max_ms_per_row: int = DEFAULT_MS_PER_ROW  # wall milliseconds the model may take per row it runs (padding included)
    max_memory_mib: int = DEFAULT_MEMORY_MIB  # the worker process's resident memory (MiB) allowed while the model runs

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardSpec:
        """Build from a message, naming the first field that is missing or of the wrong type."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name not in data and field.name in OPTIONAL_FIELDS:
                continue
            if field.name not in data:
                raise ShardSpecError(f"shard.{field.name}: expected a value, got nothing")
            value = data[field.name]
            expected = int if field.type == "int" else str
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ShardSpecError(
                    f"shard.{field.name}: expected {expected.__name__}, got {type(value).__name__}"
                )
            values[field.name] = value
        spec = cls(**values)
        if not 0 <= spec.row_group_start < spec.row_group_end:
            raise ShardSpecError(
                f"shard.row_groups: expected 0 <= start < end, got [{spec.row_group_start}, "
                f"{spec.row_group_end})"
            )
        spec._check_paths()
        spec._check_limits()
        return spec

    def _check_limits(self) -> None:
        for name, (low, high) in LIMIT_RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ShardSpecError(f"shard.{name}: expected {low}..{high}, got {value}")

    def _check_paths(self) -> None:
        # The platform writes the spec: its paths must stay inside this batch's own folders.
        results = f"results/{self.tenant}/{self.batch_id}/shard-{self.shard_index:05d}"
        expected = {
            "output_key": f"{results}.parquet",
            "receipt_key": f"{results}.receipt.jws",
        }
        for name, value in expected.items():
            if getattr(self, name) != value:
                raise ShardSpecError(f"shard.{name}: expected {value}, got {getattr(self, name)}")
        if not self.input_key.startswith(f"incoming/{self.tenant}/{self.batch_id}/"):
            raise ShardSpecError(
                f"shard.input_key: expected a key under incoming/{self.tenant}/{self.batch_id}/, got {self.input_key}"
            )
        if self.protection not in ("pme", "none"):
            raise ShardSpecError(f"shard.protection: expected 'pme' or 'none', got {self.protection!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ShardOutcome:
    """What a scored shard reports back: where its outputs are and their digests."""

    shard_index: int
    output_key: str
    output_sha256: str
    receipt_key: str
    receipt_sha256: str
    rows: int
    worker: str
    reused: bool  # True when an earlier attempt had already finished this shard
    # Seconds per phase in the worker (keys, read, score, write, sign, store), for benchmarks; {} when reused.
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    # The worker's attestation to the brokers this shard used (the `cscore.attest` shape: worker, config_digest,
    # verdicts; no secret), so the platform needs no attestation round trip of its own; {} when reused or plain.
    attestation: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardOutcome:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
