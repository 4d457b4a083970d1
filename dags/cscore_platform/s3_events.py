"""S3 object-created events, delivered through SQS to an Airflow asset watcher: the queue's Asset, and the
object keys that the events which woke a run name.

Event shape: AWS S3 event notifications (`Records[].s3.object.key`, URL-encoded, spaces as `+`), one per SQS
message body, as `MessageQueueTrigger` hands them in its payload's `message_batch`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import structlog

if TYPE_CHECKING:
    from airflow.sdk import Asset

_log = structlog.get_logger("cscore.events")
SQS_LONG_POLL_S = 20  # the most SQS allows (ReceiveMessage WaitTimeSeconds)


def queue_asset(asset_name: str, watcher_name: str, queue_url: str | None) -> Asset | None:
    """The Asset an SQS queue's S3 events update (None without a queue URL: the DAG is then run by hand)."""
    if not queue_url:
        return None
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
    from airflow.sdk import Asset, AssetWatcher

    # Long polls back to back: SQS answers as soon as a message lands, so an event waits for no sleep (it
    # waited up to waiter_delay + wait_time_seconds), and the watcher opens one connection per 20 s, not per 2 s.
    trigger = MessageQueueTrigger(scheme="sqs", sqs_queue=queue_url, waiter_delay=0,
                                  wait_time_seconds=SQS_LONG_POLL_S, max_messages=10)
    return Asset(asset_name, watchers=[AssetWatcher(name=watcher_name, trigger=trigger)])


def event_extras(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The extras of every asset event that triggered this run (a task's context), oldest first."""
    events = context.get("triggering_asset_events") or {}
    return [event.extra for asset_events in events.values() for event in asset_events]


def object_keys(extras: Iterable[dict[str, Any]], conf: Mapping[str, Any], file_name: str) -> list[str]:
    """The keys a run is for, each once: a manual run's `conf["manifest_keys"]` as given, then the keys of
    objects named `file_name` in the S3 events (decoded; other objects and non-S3 messages are passed over)."""
    keys: list[str] = [str(k) for k in conf.get("manifest_keys") or []]
    for extra in extras:
        # A trigger-made asset event carries the trigger's event under "payload".
        for message in (extra.get("payload") or extra).get("message_batch") or []:
            keys += [k for k in _keys_in_s3_event(message.get("Body", "")) if k.endswith("/" + file_name)]
    unique = list(dict.fromkeys(keys))
    _log.info(f"This run will look at {len(unique)} {file_name} object(s): {', '.join(unique) or 'none'}")
    return unique


def _keys_in_s3_event(body: str) -> list[str]:
    try:
        records = json.loads(body).get("Records", [])
    except (ValueError, AttributeError):
        _log.warning("Ignored a queue message that is not an S3 event")
        return []
    return [unquote_plus(r["s3"]["object"]["key"]) for r in records if "s3" in r]
