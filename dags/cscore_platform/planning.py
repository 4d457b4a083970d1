"""Shard planning: ranges of row groups, from the counts the owner signed (the footer is encrypted)."""

from __future__ import annotations

from typing import Any

from dags.cscore_platform.manifest import Manifest
from wire.shard import parse_limits


def plan_shards(manifest: Manifest, limits: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One shard per `shard_row_groups` row groups of each object, with deterministic output keys, each carrying
    the platform's run `limits` (`wire.shard.parse_limits`; the defaults when None)."""
    limits = parse_limits(limits or {})
    shards: list[dict[str, Any]] = []
    for obj in manifest.objects:
        for start in range(0, obj.row_groups, manifest.shard_row_groups):
            index = len(shards)
            shards.append(
                {
                    "tenant": manifest.tenant,
                    "batch_id": manifest.batch_id,
                    "shard_index": index,
                    "input_key": obj.key,
                    "input_sha256": obj.sha256,
                    "input_file_id": obj.file_id,
                    "row_group_start": start,
                    "row_group_end": min(start + manifest.shard_row_groups, obj.row_groups),
                    "model_name": manifest.model_name,
                    "model_version": manifest.model_version,
                    "model_digest": manifest.model_digest,
                    "owner_broker": manifest.broker_name,
                    "footer_key": manifest.footer_key,
                    "column_key": manifest.column_key,
                    "result_key": manifest.result_key,
                    "protection": manifest.protection,
                    # Deterministic keys: a retried shard overwrites, never duplicates.
                    "output_key": f"{manifest.results_prefix}shard-{index:05d}.parquet",
                    "receipt_key": f"{manifest.results_prefix}shard-{index:05d}.receipt.jws",
                    **limits,
                }
            )
    return shards
