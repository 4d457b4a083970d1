"""Object storage as the worker sees it: ciphertext in, ciphertext out."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from botocore.exceptions import ClientError


@cache
def s3_client() -> Any:
    """boto3 S3 client; `CSCORE_S3_ENDPOINT` points it at moto or MinIO, unset means AWS."""
    return boto3.client("s3", endpoint_url=os.environ.get("CSCORE_S3_ENDPOINT") or None)


def bucket() -> str:
    return os.environ.get("CSCORE_BUCKET", "cscore")


def get_bytes(key: str) -> bytes:
    return s3_client().get_object(Bucket=bucket(), Key=key)["Body"].read()


def put_bytes(key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    s3_client().put_object(Bucket=bucket(), Key=key, Body=data, ContentType=content_type)


def get_if_exists(key: str) -> bytes | None:
    try:
        return get_bytes(key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return None
        raise


def put_if_absent(key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
    """Write only if nothing is there (conditional write); False when another writer was first."""
    try:
        s3_client().put_object(Bucket=bucket(), Key=key, Body=data, ContentType=content_type, IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"PreconditionFailed", "ConditionalRequestConflict"}:
            return False
        raise
    return True


def delete(key: str) -> None:
    s3_client().delete_object(Bucket=bucket(), Key=key)
