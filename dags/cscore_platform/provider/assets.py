"""The assets a batch's results update, for downstream DAGs (`schedule=[RESULTS]` or a batch's own asset)."""

from __future__ import annotations

import os

from airflow.sdk import Asset, AssetAlias


def _bucket() -> str:
    return os.environ.get("CSCORE_BUCKET", "cscore")


# Every batch's results: one event per batch, extra {tenant, batch_id, result_manifest, rows, run_id}.
RESULTS = Asset(name="cscore_results", uri=f"s3://{_bucket()}/results/", group="cscore")
# Each batch's own asset is added through this alias when its results land.
RESULTS_ALIAS = AssetAlias(name="cscore_batch_results", group="cscore")


def batch_results_asset(tenant: str, batch_id: str) -> Asset:
    """One batch's results: `s3://<bucket>/results/<tenant>/<batch>/`, named `cscore_results/<tenant>/<batch>`."""
    return Asset(name=f"cscore_results/{tenant}/{batch_id}", uri=f"s3://{_bucket()}/results/{tenant}/{batch_id}/",
                 group="cscore")
