"""``StoreError`` carries S3's code, bucket and key, against moto's real S3 server; None when S3 did not answer."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.config import Config

from services.ports import free_port
from services.s3store import CONTINUE_THRESHOLD_BYTES, S3Store, StoreError


def test_a_store_error_carries_the_s3_code_bucket_and_key(s3_endpoint: str) -> None:
    store = S3Store()
    store.client.create_bucket(Bucket="store-errors")
    with pytest.raises(StoreError) as missing_key:
        store.get("store-errors", "not/there.json")
    assert (missing_key.value.code, missing_key.value.bucket, missing_key.value.key) == \
        ("NoSuchKey", "store-errors", "not/there.json")
    with pytest.raises(StoreError) as missing_bucket:
        list(store.keys("no-such-bucket-here", "partitions/"))
    assert (missing_bucket.value.code, missing_bucket.value.key) == ("NoSuchBucket", "partitions/")
    store.put("store-errors", "broken.json", b"{not json")
    with pytest.raises(StoreError, match="not valid JSON") as unreadable:
        store.get_json("store-errors", "broken.json")
    assert unreadable.value.code is None
    assert store.get_json("store-errors", "not/there.json") is None  # a missing document is no error


def test_ensure_bucket_makes_a_bucket_once_and_keeps_what_it_holds(s3_endpoint: str) -> None:
    store = S3Store()
    store.ensure_bucket("ensured-bucket")
    store.put("ensured-bucket", "kept.txt", b"kept")
    store.ensure_bucket("ensured-bucket")  # already there: no error, nothing lost
    assert store.get("ensured-bucket", "kept.txt").data == b"kept"


def _unanswered_store() -> S3Store:
    """A store whose endpoint nothing listens on, tried once."""
    return S3Store(boto3.client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name="us-east-1",
                                aws_access_key_id="testing", aws_secret_access_key="testing",
                                config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=2)))


def test_a_store_that_does_not_answer_is_a_store_error_without_a_code() -> None:
    with pytest.raises(StoreError, match="cannot read s3://b/k") as unanswered:
        _unanswered_store().get("b", "k")
    assert unanswered.value.code is None and (unanswered.value.bucket, unanswered.value.key) == ("b", "k")


def test_only_a_large_body_waits_for_100_continue(s3_endpoint: str) -> None:
    """botocore asks for ``100 Continue`` before every body; ours only above the threshold (a round
    trip saved per journal segment, manifest and result), and both still arrive whole."""
    store = S3Store()
    store.ensure_bucket("continue-threshold")
    sent: dict[str, str | None] = {}

    def note(request: Any, **_: Any) -> None:
        sent[request.url.rsplit("/", 1)[-1]] = request.headers.get("Expect")

    store.client.meta.events.register("before-send.s3.PutObject", note)
    small, large = b"s" * CONTINUE_THRESHOLD_BYTES, b"l" * (CONTINUE_THRESHOLD_BYTES + 1)
    store.put("continue-threshold", "small", small)
    store.put("continue-threshold", "large", large)
    assert sent == {"small": None, "large": b"100-continue"}
    assert store.get("continue-threshold", "small").data == small
    assert store.get("continue-threshold", "large").data == large

    plain = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))  # what botocore alone does
    plain.meta.events.register("before-send.s3.PutObject", note)
    plain.put_object(Bucket="continue-threshold", Key="plain", Body=b"p")
    assert sent["plain"] == b"100-continue"


def test_readable_json_skips_what_cannot_be_read_and_raises_only_silence(s3_endpoint: str) -> None:
    store = S3Store()
    store.ensure_bucket("readable-json")
    store.put("readable-json", "broken.json", b"{not json")
    skipped: list[StoreError] = []
    assert store.readable_json("readable-json", "absent.json", skipped.append) is None and not skipped
    assert store.readable_json("readable-json", "broken.json", skipped.append) is None
    assert [exc.key for exc in skipped] == ["broken.json"]
    with pytest.raises(StoreError) as unanswered:
        _unanswered_store().readable_json("readable-json", "broken.json", skipped.append)
    assert unanswered.value.unanswered and len(skipped) == 1
