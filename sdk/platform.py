"""What the platform publishes for the parties to check: the workers' configuration document.

The platform uploads it to `platform/worker-config.json`; an owner reads it, checks that it names the
owner's own broker at the URL the owner uses, and grants its digest (the workers' HOST_DATA). A different
document (another broker URL, another CA, another TEE mode) has another digest, so no grant covers it.
"""

from __future__ import annotations

import json

from sdk.storage import ObjectStore
from wire.errors import FormatError
from wire.worker_config import WorkerConfig

WORKER_CONFIG_KEY = "platform/worker-config.json"


class WorkerConfigError(ValueError):
    """The platform's worker configuration cannot be granted by this party; the message says why."""


def published_worker_config(store: ObjectStore) -> WorkerConfig:
    """The workers' configuration as the platform published it (WorkerConfigError if absent or malformed)."""
    raw = store.get_if_exists(WORKER_CONFIG_KEY)
    if raw is None:
        raise WorkerConfigError(f"s3://{store.bucket}/{WORKER_CONFIG_KEY}: expected the platform's worker "
                                "configuration, found nothing; ask the platform operator to publish it")
    try:
        return WorkerConfig.parse(json.loads(raw))
    except (ValueError, FormatError) as exc:
        raise WorkerConfigError(f"s3://{store.bucket}/{WORKER_CONFIG_KEY}: {exc}") from exc


def config_for_owner(config: WorkerConfig, broker_name: str, broker_url: str) -> str:
    """The digest (hex) an owner grants, after checking the configuration names its broker at its URL."""
    try:
        listed = config.owner(broker_name)
    except FormatError as exc:
        raise WorkerConfigError(f"worker configuration {config.digest_hex()}: {exc}") from exc
    if listed.url.rstrip("/") != broker_url.rstrip("/"):
        raise WorkerConfigError(f"worker configuration {config.digest_hex()}: owners[{broker_name}].url expected "
                                f"{broker_url} (your broker), got {listed.url}; do not grant it")
    return config.digest_hex()
