"""Object storage from a party's own machine (boto3 over HTTP; `CSCORE_S3_ENDPOINT` for moto/MinIO)."""

from __future__ import annotations

import io
import os
from typing import Any

import boto3
from botocore.exceptions import ClientError


class ObjectStore:
    """The shared bucket, as one party sees it."""

    def __init__(self, bucket: str | None = None, endpoint_url: str | None = None) -> None:
        self.bucket = bucket or os.environ.get("CSCORE_BUCKET", "cscore")
        self._s3: Any = boto3.client("s3", endpoint_url=endpoint_url or os.environ.get("CSCORE_S3_ENDPOINT") or None)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def put_large(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """`put` as an S3 multipart upload of 8 MiB parts sent 4 at a time when `data` is over 8 MiB."""
        from boto3.s3.transfer import TransferConfig

        self._s3.upload_fileobj(io.BytesIO(data), self.bucket, key, ExtraArgs={"ContentType": content_type},
                                Config=TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20,
                                                      max_concurrency=4))

    def get(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def get_if_exists(self, key: str) -> bytes | None:
        try:
            return self.get(key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise

    def exists(self, key: str) -> bool:
        """Whether the object is there (HEAD; other errors than not-found raise)."""
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return False
            raise
        return True

    def modified(self, key: str) -> float | None:
        """When the object was last written, by the bucket's own clock (Unix seconds; None: not there)."""
        try:
            return float(self._s3.head_object(Bucket=self.bucket, Key=key)["LastModified"].timestamp())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise

    def keys(self, prefix: str) -> list[str]:
        paginator = self._s3.get_paginator("list_objects_v2")
        return [obj["Key"] for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                for obj in page.get("Contents", [])]

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=key)
