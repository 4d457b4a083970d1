"""S3 + SQS on moto_server: bucket, manifest queues, the S3 -> SQS notifications, and a probe that proves it.

Scoring manifests (`.../manifest.jws`) wake cscore_batch through QUEUE, training manifests (`.../training.jws`)
wake cscore_train through TRAINING_QUEUE: one queue per DAG, since each asset watcher deletes what it reads."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any
from urllib.parse import unquote_plus

import boto3

BUCKET = "cscore"
QUEUE = "cscore-manifests"
PREFIX = "incoming/"
SUFFIX = "manifest.jws"
TRAINING_QUEUE = "cscore-training"
TRAINING_SUFFIX = "training.jws"
REGION = "us-east-1"


def clients(endpoint: str) -> tuple[Any, Any]:
    """boto3 S3 and SQS clients for the endpoint (moto accepts the `testing` credentials)."""
    kw = dict(endpoint_url=endpoint, region_name=REGION,
              aws_access_key_id="testing", aws_secret_access_key="testing")
    return boto3.client("s3", **kw), boto3.client("sqs", **kw)


def put_object(env: dict[str, str], key: str, body: bytes) -> None:
    """One object into the stack's bucket, with the stack's endpoint (None: AWS) and credentials."""
    client = boto3.client("s3", endpoint_url=env.get("CSCORE_S3_ENDPOINT") or None,
                          region_name=env.get("AWS_DEFAULT_REGION", REGION),
                          aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                          aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"))
    client.put_object(Bucket=env.get("CSCORE_BUCKET", BUCKET), Key=key, Body=body)


def provision(endpoint: str, bucket: str = BUCKET, queue: str = QUEUE, training_queue: str = TRAINING_QUEUE) -> str:
    """Create bucket, queues and notifications (moto keeps nothing across restarts); return the manifest queue's
    URL (the training queue's: `queue_url(endpoint, training_queue)`)."""
    s3, sqs = clients(endpoint)
    s3.create_bucket(Bucket=bucket)
    configs, urls = [], []
    for name, suffix in ((queue, SUFFIX), (training_queue, TRAINING_SUFFIX)):
        queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": _queue_policy(arn, bucket)})
        configs.append({"Id": f"{name}-created", "QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [
                            {"Name": "prefix", "Value": PREFIX}, {"Name": "suffix", "Value": suffix}]}}})
        urls.append(queue_url)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": configs})
    for queue_url in urls:
        sqs.purge_queue(QueueUrl=queue_url)  # drop the s3:TestEvent AWS sends when a notification is set
    return str(urls[0])


def queue_url(endpoint: str, queue: str) -> str:
    """The URL of a queue `provision` created."""
    return str(clients(endpoint)[1].get_queue_url(QueueName=queue)["QueueUrl"])


def _queue_policy(queue_arn: str, bucket: str) -> str:
    """Allow the bucket to send to the queue (required by AWS, ignored by moto)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"}, "Action": "sqs:SendMessage",
        "Resource": queue_arn, "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}}}]})


def event_keys(messages: list[dict[str, Any]]) -> list[str]:
    """Object keys of the S3 ObjectCreated records in SQS messages (keys arrive URL-encoded)."""
    keys = []
    for msg in messages:
        for record in json.loads(msg["Body"]).get("Records", []):
            if record.get("eventName", "").startswith("ObjectCreated"):
                keys.append(unquote_plus(record["s3"]["object"]["key"]))
    return keys


def receive_keys(sqs: Any, queue_url: str, wait_s: float = 2.0) -> list[str]:
    """Receive and delete what is in the queue within wait_s; return the created objects' keys."""
    keys: list[str] = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = got.get("Messages", [])
        for msg in messages:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=msg["ReceiptHandle"])
        keys += event_keys(messages)
        if keys:
            return keys
        time.sleep(0.05)
    return keys


def probe(endpoint: str, queue_url: str, bucket: str = BUCKET) -> None:
    """Put a probe manifest, expect its event on the queue, then delete both; raise if it does not arrive."""
    s3, sqs = clients(endpoint)
    key = f"{PREFIX}_probe/{uuid.uuid4().hex}/{SUFFIX}"
    s3.put_object(Bucket=bucket, Key=key, Body=b"probe")
    try:
        keys = receive_keys(sqs, queue_url, wait_s=5.0)
    finally:
        s3.delete_object(Bucket=bucket, Key=key)
    if key not in keys:
        raise RuntimeError(f"S3 -> SQS notification did not deliver {key!r} (got {keys!r})")
