"""S3 through boto3, shared by the worker and the coordinator: listings without the 1,000-key cap, bytes in and out.

Endpoints come from the standard variables (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), so
the same code talks to AWS, LocalStack under compose, and moto's server on loopback. Off AWS the
endpoint is a bare host, so path-style addressing is used there (no bucket subdomains).

:func:`s3_client` is the one way an S3 client is made. Callers that must not take this process's
environment (the embedded stack's own moto server, where a user's ``AWS_REGION`` would make moto
refuse ``CreateBucket``; a command pointed at another stack) pass endpoint, region and
credentials explicitly; whatever they leave out, boto3 resolves from the environment as usual.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as TransportError
from botocore.parsers import ResponseParserError, ResponseParserFactory
from botocore.utils import determine_content_length

from services.aws import s3_endpoint
from services.s3listing import ListingParserFactory

#: Bodies up to this many bytes are sent without ``Expect: 100-continue``: the threshold of AWS's
#: SDK for Go (``ContinueHeaderThresholdBytes``). botocore asks S3 for a ``100 Continue`` before
#: every object body, however small, which costs a round trip per PUT: on the path of every
#: journal segment a wave of ranks waits for (:mod:`services.coordinator.waves`), every manifest
#: and every result. The handshake pays only where a refused request would waste a large upload.
CONTINUE_THRESHOLD_BYTES = 2 * 1024 * 1024

#: What S3 (and moto, and LocalStack) answer for a key that is not there, as ``StoreError.code``.
NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})


#: :attr:`StoreError.code` when boto3 found no credentials (not one of S3's codes: S3 never saw the call).
NO_CREDENTIALS = "NoCredentials"


class StoreError(RuntimeError):
    """An S3 call that failed for a reason the caller should report (not found, denied, ...).

    ``code`` is S3's error code (``NoSuchBucket``, ``NoSuchKey``, ``AccessDenied``, ...), or None
    when S3 gave no answer (a transport error: no endpoint, a timeout) or one we cannot read (a
    document that is not JSON), or :data:`NO_CREDENTIALS` when boto3 found nothing to sign with
    (the caller may know where credentials are: the embedded stack's). ``bucket`` and ``key``
    (the prefix, for a listing) say where.
    ``endpoint`` is the S3 endpoint that gave no answer (connection refused, a timeout), set for
    transport failures only: :attr:`unanswered` tells them from an unreadable document.
    Callers branch on ``code`` and ``unanswered``, never on the message.
    """

    def __init__(self, message: str, *, bucket: str, key: str, code: str | None = None,
                 endpoint: str | None = None) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.key = key
        self.code = code
        self.endpoint = endpoint

    @property
    def unanswered(self) -> bool:
        """S3 gave no answer at all (a transport failure): the call may work once S3 is back."""
        return self.code is None and self.endpoint is not None


@dataclass(frozen=True)
class Blob:
    data: bytes
    etag: str


def s3_client(endpoint_url: str | None = None, region: str | None = None, access_key: str | None = None,
              secret_key: str | None = None, *, connect_timeout: float = 10, read_timeout: float = 120,
              attempts: int = 5, pool: int = 8, fast_listing: bool = True) -> Any:
    """A boto3 S3 client; every argument left None is boto3's to resolve (standard variables, profile).

    Path-style addressing off AWS (an endpoint given here or in the standard variables): a bare
    host has no bucket subdomains. Listings are parsed by :mod:`services.s3listing` (the same
    result as botocore's parser, about 3x faster), unless ``fast_listing`` is False (the
    benchmark's and the tests' reference).
    """
    custom_endpoint = bool(endpoint_url or s3_endpoint())
    config = Config(retries={"mode": "standard", "max_attempts": attempts}, max_pool_connections=pool,
                    tcp_keepalive=True, connect_timeout=connect_timeout, read_timeout=read_timeout,
                    s3={"addressing_style": "path" if custom_endpoint else "auto"})
    client = _session(fast_listing).client("s3", endpoint_url=endpoint_url, region_name=region,
                                           aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                           config=config)
    # where botocore adds the header (the prefix's handlers run after the operations' own): after it
    client.meta.events.register_last("before-call.s3", _continue_only_when_large)
    return client


def _continue_only_when_large(params: dict[str, Any], **_: Any) -> None:
    """Drop botocore's ``Expect: 100-continue`` from a body of at most :data:`CONTINUE_THRESHOLD_BYTES`."""
    size = determine_content_length(params.get("body"))
    if size is not None and size <= CONTINUE_THRESHOLD_BYTES:
        params["headers"].pop("Expect", None)


def _session(fast_listing: bool = True) -> boto3.Session:
    """A session whose responses keep timestamps as text: we never read them, and parsing
    ``LastModified`` into datetimes was a fifth of the time of listing 10,000 partitions. With
    ``fast_listing``, its S3 responses are parsed by :class:`.s3listing.ListingParser`."""
    core = botocore.session.get_session()
    factory = ListingParserFactory() if fast_listing else ResponseParserFactory()
    factory.set_parser_defaults(timestamp_parser=str)
    core.register_component("response_parser_factory", factory)
    return boto3.Session(botocore_session=core)


class S3Store:
    """One boto3 S3 client, kept for the life of the sandbox (warm invocations reuse its connections)."""

    def __init__(self, client: Any | None = None) -> None:
        self.client = client or s3_client()

    def keys(self, bucket: str, prefix: str) -> Iterator[str]:
        """Every key under ``prefix``, following continuation tokens (no 1,000-key cap)."""
        return (key for key, _, _ in self.objects(bucket, prefix))

    def objects(self, bucket: str, prefix: str) -> Iterator[tuple[str, str, int]]:
        """``(key, etag, size)`` of every object under ``prefix``, across every page of the listing."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"], item["ETag"].strip('"'), int(item["Size"])
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("list", bucket, prefix, exc) from None
        except (ResponseParserError, ValueError) as exc:  # S3 answered, but not a listing we can read
            raise StoreError(f"cannot list s3://{bucket}/{prefix}: unreadable listing: {str(exc)[:200]}",
                             bucket=bucket, key=prefix) from None

    def get(self, bucket: str, key: str) -> Blob:
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
            return Blob(response["Body"].read(), response["ETag"].strip('"'))
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("read", bucket, key, exc) from None

    def etag(self, bucket: str, key: str) -> str | None:
        """The object's ETag, or None when it does not exist."""
        try:
            return str(self.client.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in NOT_FOUND:
                return None
            raise self._failed("check", bucket, key, exc) from None

    def download(self, bucket: str, key: str, path: str) -> None:
        """Stream an object to a file (multipart, parallel ranges for large checkpoints)."""
        try:
            self.client.download_file(bucket, key, path)
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("download", bucket, key, exc) from None

    def upload(self, path: str | os.PathLike[str], bucket: str, key: str) -> None:
        """Stream a file to ``key`` (multipart, parallel parts for large partitions)."""
        try:
            self.client.upload_file(os.fspath(path), bucket, key)
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("upload to", bucket, key, exc) from None
        except S3UploadFailedError as exc:  # boto3's transfer wraps S3's answer in text
            raise StoreError(f"cannot upload to s3://{bucket}/{key}: {exc}", bucket=bucket, key=key) from None

    def upload_changed(self, bucket: str, files: Sequence[tuple[str | os.PathLike[str], str]]) -> int:
        """Upload each ``(path, key)`` unless an object of the same size is already there (one
        listing per folder, not a request per file); returns how many were uploaded."""
        present: dict[str, dict[str, int]] = {}
        uploaded = 0
        for path, key in files:
            folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
            if folder not in present:
                present[folder] = {name: size for name, _, size in self.objects(bucket, folder)}
            if present[folder].get(key) != os.path.getsize(path):
                self.upload(path, bucket, key)
                uploaded += 1
        return uploaded

    def put(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("write", bucket, key, exc) from None

    def put_new(self, bucket: str, key: str, data: bytes, content_type: str = "application/json") -> bool:
        """Create ``key`` only if it does not exist (a conditional write); False when it already did.

        What makes a lock or an idempotency record safe against two writers at once.
        """
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type, IfNoneMatch="*")
            return True
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise self._failed("create", bucket, key, exc) from None

    def get_json(self, bucket: str, key: str) -> Any | None:
        """The JSON document at ``key``, or None when there is none; a malformed one is a StoreError."""
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in NOT_FOUND:
                return None
            raise self._failed("read", bucket, key, exc) from None
        try:
            return json.loads(response["Body"].read())
        except ValueError as exc:
            raise StoreError(f"s3://{bucket}/{key} is not valid JSON: {exc}", bucket=bucket, key=key) from None

    def readable_json(self, bucket: str, key: str,
                      unreadable: Callable[[StoreError], None] | None = None) -> Any | None:
        """The JSON document at ``key``, or None when there is none or it cannot be read (denied,
        not JSON: handed to ``unreadable`` first); only S3 not answering is raised, for the caller
        must not take an outage for an absent document."""
        try:
            return self.get_json(bucket, key)
        except StoreError as exc:
            if exc.unanswered:
                raise
            if unreadable is not None:
                unreadable(exc)
            return None

    def folders(self, bucket: str, prefix: str = "") -> list[str]:
        """The "folders" (common prefixes) directly under ``prefix``, for error messages that suggest."""
        paginator = self.client.get_paginator("list_objects_v2")
        found: list[str] = []
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                found += [item["Prefix"] for item in page.get("CommonPrefixes", [])]
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("list", bucket, prefix, exc) from None
        return found

    def ensure_bucket(self, bucket: str) -> None:
        """Make ``bucket`` unless it exists (one request: an existing bucket is an answer, not an error)."""
        try:
            self.client.create_bucket(Bucket=bucket)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._failed("create", bucket, "", exc) from None

    def put_json(self, bucket: str, key: str, document: Any, indent: int | None = 2) -> None:
        """Write ``document`` as JSON: indented for people by default, ``indent=None`` for machine
        documents of thousands of entries (compact JSON is about 5x faster to make)."""
        separators = (",", ":") if indent is None else None
        self.put(bucket, key, json.dumps(document, indent=indent, separators=separators).encode() + b"\n",
                 "application/json")

    def delete(self, bucket: str, key: str) -> None:
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("delete", bucket, key, exc) from None

    def delete_many(self, bucket: str, keys: list[str]) -> None:
        """Delete ``keys``, 1,000 per request (S3's ``DeleteObjects`` limit): a job's thousands of
        journal segments were as many requests. A key that is already gone is no error."""
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            try:
                answer = self.client.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True})
            except (ClientError, BotoCoreError) as exc:
                raise self._failed("delete", bucket, chunk[0], exc) from None
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(f"cannot delete s3://{bucket}/{first.get('Key')}: {first.get('Code')}: "
                                 f"{first.get('Message')} ({len(errors)} keys not deleted)",
                                 bucket=bucket, key=str(first.get("Key")), code=first.get("Code"))


    def _failed(self, action: str, bucket: str, key: str, exc: ClientError | BotoCoreError) -> StoreError:
        """The StoreError for a failed call: S3's code and message when S3 answered, the transport's
        error and the endpoint when not."""
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = error.get("Code")
            return StoreError(f"cannot {action} s3://{bucket}/{key}: {code or 'error'}: {error.get('Message', exc)}",
                              bucket=bucket, key=key, code=code)
        if isinstance(exc, NoCredentialsError):
            return StoreError(f"cannot {action} s3://{bucket}/{key}: {exc}", bucket=bucket, key=key,
                              code=NO_CREDENTIALS)
        endpoint = str(self.client.meta.endpoint_url) if isinstance(exc, TransportError | HTTPClientError) else None
        return StoreError(f"cannot {action} s3://{bucket}/{key}: {exc}", bucket=bucket, key=key, endpoint=endpoint)


def _code(exc: ClientError | BotoCoreError) -> str | None:
    """S3's error code; None when S3 did not answer."""
    return exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
