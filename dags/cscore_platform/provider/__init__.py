"""cscore for data engineers' own DAGs, shipped the way Airflow's provider packages ship theirs.

    from dags.cscore_platform.provider import (
        KeyBrokerHook, WorkerPoolHook, ScoreBatchOperator, ShardsTrigger, RESULTS, RESULTS_ALIAS,
        batch_results_asset, DeferSafeLocalExecutor)

Documented in docs/PROVIDER.md.
"""

from dags.cscore_platform.provider.assets import RESULTS, RESULTS_ALIAS, batch_results_asset
from dags.cscore_platform.provider.hooks import (
    BrokerUnavailable,
    ConnectionMissing,
    KeyBrokerHook,
    WorkerPoolHook,
    broker_conn_id,
)
from dags.cscore_platform.provider.operators import ScoreBatchOperator
from dags.cscore_platform.provider.triggers import ShardsTrigger

__all__ = ["RESULTS", "RESULTS_ALIAS", "BrokerUnavailable", "ConnectionMissing", "KeyBrokerHook",
           "ScoreBatchOperator", "ShardsTrigger", "WorkerPoolHook", "batch_results_asset", "broker_conn_id"]
