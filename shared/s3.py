"""Outputs in an S3-compatible bucket (AWS S3, MinIO, Ceph, moto...), for workers on
several machines: each writes where the web can read.

An output is one PutObject with its Content-MD5: S3 stores the whole body or nothing and
never shows a partial object, and a body damaged in transit is refused. Keys sit under
the URL's prefix (`s3://bucket/prefix` stores `prefix/jobs/<id>/000000.png`).

Endpoint, region and credentials come from `GENQ_S3_*` when set, else from boto3's own
chain (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_DEFAULT_REGION`, a profile, an
instance role). The client is made on first use in each process: a Celery pool child
or gunicorn worker forked after start-up never shares its parent's connections.
"""
from __future__ import annotations

import base64
import hashlib
import os
from contextlib import contextmanager
from typing import Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.storage import (
    CHUNK_BYTES,
    OutputMissing,
    StorageUnavailable,
    StoredObject,
    check_key,
    content_type,
    directory_prefix,
)

MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
DELETE_BATCH = 1000  # keys one DeleteObjects request may name


class S3Storage:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, region: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 addressing_style: str = "auto", timeout: float = 10.0):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client_args = {"endpoint_url": endpoint_url or None, "region_name": region or None,
                             "aws_access_key_id": access_key_id or None,
                             "aws_secret_access_key": secret_access_key or None}
        if addressing_style == "auto" and endpoint_url:
            addressing_style = "path"  # a self-hosted endpoint seldom resolves bucket.host names
        self._config = Config(
            s3={"addressing_style": addressing_style},
            connect_timeout=timeout, read_timeout=timeout,
            retries={"mode": "standard", "max_attempts": 3},
            request_checksum_calculation="when_required",  # Content-MD5 below; some S3-compatible servers refuse CRC trailers
            response_checksum_validation="when_required",
        )
        self._client = None
        self._client_pid = None

    @classmethod
    def from_settings(cls, bucket: str, prefix: str, settings) -> "S3Storage":
        secret = settings.s3_secret_access_key
        return cls(bucket, prefix, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                   access_key_id=settings.s3_access_key_id,
                   secret_access_key=secret.get_secret_value() if secret else None,
                   addressing_style=settings.s3_addressing_style, timeout=settings.s3_timeout_seconds)

    def __repr__(self) -> str:
        return f"S3Storage('s3://{self.bucket}/{self.prefix}')"

    @property
    def client(self):
        if self._client is None or self._client_pid != os.getpid():
            self._client = boto3.session.Session().client("s3", config=self._config, **self._client_args)
            self._client_pid = os.getpid()
        return self._client

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        digest = base64.b64encode(hashlib.md5(data).digest()).decode()
        self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data, ContentMD5=digest,
                               ContentType=content_type(key))

    def get(self, key: str) -> bytes:
        with _errors_told(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"].read()

    def open(self, key: str) -> StoredObject:
        with _errors_told(key):
            reply = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
        return StoredObject(_stream(reply["Body"]), reply["ContentLength"], content_type(key))

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._name(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING_CODES:
                return False
            raise

    def delete(self, key: str) -> None:
        """Deleting a key that is not there succeeds (S3 semantics), as locally."""
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (ending in "/"), a thousand per request."""
        keys = [entry["Key"] for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._name(directory_prefix(prefix).rstrip("/")) + "/")
            for entry in page.get("Contents", [])]  # as stored: a foreign object's odd name goes too
        for start in range(0, len(keys), DELETE_BATCH):
            chunk = keys[start:start + DELETE_BATCH]
            reply = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk],
                                                                          "Quiet": True})
            if reply.get("Errors"):
                error = reply["Errors"][0]
                raise StorageUnavailable(f"deleting {error.get('Key')} failed: {error.get('Code')} {error.get('Message')}",
                                         retry_after=5)
        return len(keys)

    def keys(self, prefix: str = "") -> Iterator[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start + prefix)
        for page in pages:
            for entry in page.get("Contents", []):
                yield entry["Key"][len(start):]

    def presigned_url(self, key: str, seconds: int) -> str:
        """A URL anyone holding it may GET for `seconds`; signing is local, no request is sent."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._name(key), "ResponseContentType": content_type(key)},
            ExpiresIn=seconds)


@contextmanager
def _errors_told(key: str) -> Iterator[None]:
    """A missing object or an unreachable service, as the typed errors a client can read."""
    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in MISSING_CODES:
            raise OutputMissing(f"output {key} is missing from storage") from None
        raise _unavailable(exc) from None
    except BotoCoreError as exc:
        raise _unavailable(exc) from None


def _unavailable(exc: Exception) -> StorageUnavailable:
    return StorageUnavailable(f"output storage cannot be read now ({type(exc).__name__}); try again", retry_after=5)


def _stream(body) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()
