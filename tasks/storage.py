"""Object storage as the worker sees it: ciphertext in, ciphertext out."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

import boto3
from botocore.exceptions import BotoCoreError, ClientError

F = TypeVar("F", bound=Callable[..., Any])
# Codes that a later attempt may not meet (throttling, server errors, timeouts): the task is retried.
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                   "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}


class StorageError(RuntimeError):
    """An S3 call failed after boto3's own retries; names the operation, the object key and the error code
    (none of them secret). `transient` says whether trying again later may succeed."""

    def __init__(self, operation: str, key: str, code: str, status: int | None, transient: bool) -> None:
        self.operation, self.key, self.code, self.transient = operation, key, code, transient
        http = f" (HTTP {status})" if status else ""
        super().__init__(f"S3 {operation} of {key}: {code}{http} after boto3's retries")


def _named(operation: str) -> Callable[[F], F]:
    """Turn boto3's errors of one storage call into a StorageError naming operation, key and code."""

    def wrap(call: F) -> F:
        @functools.wraps(call)
        def run(key: str, *args: Any, **kwargs: Any) -> Any:
            try:
                return call(key, *args, **kwargs)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = str(error.get("Code") or status or "ClientError")
                if code in {"NoSuchKey", "404", "PreconditionFailed", "ConditionalRequestConflict"}:
                    raise  # answers, not failures: the callers below decide
                failure = StorageError(operation, key, code, status, code in TRANSIENT_CODES or (status or 0) >= 500)
            except BotoCoreError as exc:  # no answer at all: connection refused or reset, timeouts
                failure = StorageError(operation, key, type(exc).__name__, None, True)
            raise failure  # outside the handler: boto3's own text (request ids, URLs) stays in the worker

        return run  # type: ignore[return-value]

    return wrap


_CLIENT_LOCK = threading.Lock()


def s3_client() -> Any:
    """The process's one boto3 S3 client; `CSCORE_S3_ENDPOINT` points it at moto or MinIO, unset means AWS."""
    with _CLIENT_LOCK:  # a shard's first reads start on three threads at once: each built its own (0.1 CPU-s each)
        return new_s3_client()


@cache
def new_s3_client() -> Any:
    """Built once per process by `s3_client` (`new_s3_client.cache_clear()` makes the next call build another)."""
    return boto3.client("s3", endpoint_url=os.environ.get("CSCORE_S3_ENDPOINT") or None)


def bucket() -> str:
    return os.environ.get("CSCORE_BUCKET", "cscore")


@_named("GetObject")
def get_bytes(key: str) -> bytes:
    return s3_client().get_object(Bucket=bucket(), Key=key)["Body"].read()


class S3Object:
    """One object read by byte ranges (`enclave.ranged.RangeSource`): a shard fetches its footer and its own
    row groups, not the whole file. Counts requests and bytes, for the worker's log."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.requests = 0
        self.bytes_read = 0

    def tail(self, length: int) -> tuple[bytes, int]:
        data, content_range = _get_range(self.key, f"bytes=-{length}")
        self._count(data)
        # "bytes 123-456/789": the total after the slash (a whole-object answer has no Content-Range).
        return data, int(content_range.rsplit("/", 1)[1]) if content_range else len(data)

    def read(self, offset: int, length: int) -> bytes:
        data, _ = _get_range(self.key, f"bytes={offset}-{offset + length - 1}")
        self._count(data)
        return data

    def read_all(self) -> bytes:
        data = get_bytes(self.key)
        self._count(data)
        return data

    def _count(self, data: bytes) -> None:
        self.requests += 1
        self.bytes_read += len(data)


@_named("GetObject (Range)")
def _get_range(key: str, byte_range: str) -> tuple[bytes, str]:
    answer = s3_client().get_object(Bucket=bucket(), Key=key, Range=byte_range)
    return answer["Body"].read(), str(answer.get("ContentRange") or "")


@_named("PutObject")
def put_bytes(key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    s3_client().put_object(Bucket=bucket(), Key=key, Body=data, ContentType=content_type)


def get_if_exists(key: str) -> bytes | None:
    try:
        return get_bytes(key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            return None
        raise


@_named("PutObject (If-None-Match)")
def put_if_absent(key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
    """Write only if nothing is there (conditional write); False when another writer was first."""
    try:
        s3_client().put_object(Bucket=bucket(), Key=key, Body=data, ContentType=content_type, IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"PreconditionFailed", "ConditionalRequestConflict"}:
            return False
        raise
    return True


@_named("DeleteObject")
def delete(key: str) -> None:
    s3_client().delete_object(Bucket=bucket(), Key=key)
