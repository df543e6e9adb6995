"""The lighter listing parser gives what botocore's gives, on moto's real pages, and errors stay ours.

:class:`services.s3listing.ListingParser` replaces botocore's generic walk of ``<Contents>`` by a
table; these tests hold it to botocore's own parser on the same bytes (captured from moto's
server, keys with spaces, unicode, XML-escaped and URL-encoding-prone characters, sizes, an empty
page, truncated pages and their continuations, ``FetchOwner``), check that the table is really
what parses them, and that a listing that cannot be read is the store's error, hence the
coordinator's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from botocore.parsers import RestXMLParser

from services.coordinator.errors import StorageFailed, UnknownBucket, from_store_error
from services.s3listing import ListingParser
from services.s3store import S3Store, StoreError, s3_client

BUCKET = "listing-parser"
#: Keys that a hand-written parser gets wrong: XML escapes, URL-encoding (``+``, ``%``), unicode, spaces.
KEYS = ["plain/1.pt", "plain/with space.pt", "plain/amp&lt<gt>quote\"apos'.pt", "plain/plus+percent%41.pt",
        "plain/unicodé 日本 ✓.pt", "plain/tab\ttab.pt", "plain/deep/er/key.npz", "plain/empty.pt"]
SIZES = [1, 0, 17, 1000, 3, 2, 5, 0]

_TAGS = "<Key>a</Key><LastModified>2026-11-30T16:52:37.000Z</LastModified><ETag>\"e\"</ETag><Size>7</Size>"
PAGE = ('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        "<Name>b</Name><Prefix></Prefix><KeyCount>{count}</KeyCount><MaxKeys>1000</MaxKeys>"
        "<IsTruncated>false</IsTruncated>{contents}</ListBucketResult>")


def page(*contents: str) -> dict[str, Any]:
    """A response dict as botocore's endpoint hands it to the parser."""
    body = PAGE.format(count=len(contents), contents="".join(f"<Contents>{c}</Contents>" for c in contents))
    return {"status_code": 200, "headers": {"x-amz-request-id": "r"}, "body": body.encode(), "context": {}}


def output_shape() -> Any:
    return s3_client(region="us-east-1", access_key="k", secret_key="s").meta.service_model.operation_model(
        "ListObjectsV2").output_shape


def both(response: dict[str, Any], shape: Any) -> tuple[Any, Any]:
    """The page as botocore's parser and as ours parse it (timestamps as text, as our clients keep them),
    each with its types spelled out (:func:`typed`)."""
    return (typed(RestXMLParser(timestamp_parser=str).parse(dict(response), shape)),
            typed(ListingParser(timestamp_parser=str).parse(dict(response), shape)))


def typed(value: Any) -> Any:
    """``value`` with every scalar's type beside it: ``==`` alone takes a size of 7.0 for 7."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return type(value).__name__, value


@pytest.fixture(scope="module")
def pages(s3_endpoint: str) -> Iterator[list[dict[str, Any]]]:
    """Every raw ListObjectsV2 answer moto gave for a set of listings, as the parser receives them."""
    client = s3_client()
    client.create_bucket(Bucket=BUCKET)
    for key, size in zip(KEYS, SIZES, strict=True):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x" * size)
    captured: list[dict[str, Any]] = []
    client.meta.events.register("before-parse.s3.ListObjectsV2",
                                lambda response_dict, **_: captured.append(dict(response_dict)))
    for arguments in ({"Prefix": "plain/"}, {"Prefix": "plain/", "FetchOwner": True}, {"Prefix": "none/"},
                      {"Prefix": "plain/", "Delimiter": "/"}):
        for _ in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, **arguments):
            pass
        for _ in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, PaginationConfig={"PageSize": 3},
                                                                   **arguments):
            pass
    yield captured


def test_every_page_moto_gives_parses_as_botocore_parses_it(pages: list[dict[str, Any]]) -> None:
    shape = output_shape()
    assert len(pages) >= 12 and any(b"<IsTruncated>true" in p["body"] for p in pages)
    assert any(b"<Contents>" not in p["body"] for p in pages) and any(b"<Owner>" in p["body"] for p in pages)
    for response in pages:
        reference, ours = both(response, shape)
        assert ours == reference


def test_a_listing_through_our_client_equals_one_through_botocores(pages: list[dict[str, Any]]) -> None:
    fast, reference = S3Store(s3_client()), S3Store(s3_client(fast_listing=False))
    listed = sorted(fast.objects(BUCKET, "plain/"))
    assert listed == sorted(reference.objects(BUCKET, "plain/"))
    assert sorted((key, size) for key, _, size in listed) == sorted(zip(KEYS, SIZES, strict=True))
    for arguments in ({"Prefix": "plain/", "MaxKeys": 3}, {"Prefix": "plain/", "FetchOwner": True}):
        ours = fast.client.list_objects_v2(Bucket=BUCKET, **arguments)
        theirs = reference.client.list_objects_v2(Bucket=BUCKET, **arguments)
        ours.pop("ResponseMetadata"), theirs.pop("ResponseMetadata")
        assert typed(ours) == typed(theirs) and ours["Contents"]


def test_the_table_parses_the_entries_and_botocore_only_what_it_does_not_cover() -> None:
    shape = output_shape()
    walked: list[str] = []

    class Watched(ListingParser):
        def _handle_structure(self, shape: Any, node: Any) -> Any:
            walked.append(shape.name)
            return super()._handle_structure(shape, node)

    plain = page(_TAGS + "<ChecksumAlgorithm>CRC32</ChecksumAlgorithm><StorageClass>STANDARD</StorageClass>",
                 _TAGS.replace("<Size>7", "<Size>0") + "<ChecksumAlgorithm>A</ChecksumAlgorithm>"
                 "<ChecksumAlgorithm>B</ChecksumAlgorithm><Unmodelled>x</Unmodelled><StorageClass></StorageClass>")
    parsed = Watched(timestamp_parser=str).parse(dict(plain), shape)
    assert walked == ["ListObjectsV2Output"]  # no entry went through botocore's generic walk
    assert typed(parsed["Contents"]) == both(plain, shape)[0]["Contents"]
    assert parsed["Contents"][1] == {"Key": "a", "LastModified": "2026-11-30T16:52:37.000Z", "ETag": '"e"',
                                     "Size": 0, "ChecksumAlgorithm": ["A", "B"], "StorageClass": ""}
    unusual = page(_TAGS + "<Owner><ID>o</ID><DisplayName>d</DisplayName></Owner>",
                   _TAGS + "<RestoreStatus><IsRestoreInProgress>true</IsRestoreInProgress></RestoreStatus>",
                   _TAGS + "<Key>twice</Key>")
    walked.clear()
    reference = RestXMLParser(timestamp_parser=str).parse(dict(unusual), shape)
    ours = Watched(timestamp_parser=str).parse(dict(unusual), shape)
    assert walked.count("Object") == 3  # each handed to botocore whole
    assert typed(ours["Contents"][:2]) == typed(reference["Contents"][:2])
    assert ours["Contents"][0]["Owner"] == {"ID": "o", "DisplayName": "d"}
    # a key given twice: botocore passes both elements on as they are, and so do we
    assert [element.text for element in ours["Contents"][2]["Key"]] == ["a", "twice"] == \
        [element.text for element in reference["Contents"][2]["Key"]]


def test_a_value_that_is_not_what_the_model_says_fails_as_in_botocore() -> None:
    broken = page(_TAGS.replace("<Size>7", "<Size>seven"))
    with pytest.raises(ValueError):
        RestXMLParser(timestamp_parser=str).parse(dict(broken), output_shape())
    with pytest.raises(ValueError):
        ListingParser(timestamp_parser=str).parse(dict(broken), output_shape())


class _Unreadable(BaseHTTPRequestHandler):
    """An S3 stand-in that answers every listing with a page whose Size is not a number."""

    def do_GET(self) -> None:
        body = page(_TAGS.replace("<Size>7", "<Size>seven"))["body"]
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.mark.integration
def test_an_unreadable_listing_is_a_store_error_and_the_coordinators_502() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unreadable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = S3Store(s3_client(f"http://127.0.0.1:{server.server_address[1]}", "us-east-1", "k", "s", attempts=1))
        with pytest.raises(StoreError, match="unreadable listing") as unreadable:
            list(store.objects("b", "data/"))
        store.client.close()  # its pooled connection to the stand-in, which is going away
    finally:
        server.shutdown()
        server.server_close()
    assert (unreadable.value.code, unreadable.value.unanswered, unreadable.value.key) == (None, False, "data/")
    assert type(from_store_error(unreadable.value)) is StorageFailed


def test_a_missing_bucket_is_still_the_coordinators_unknown_bucket(s3_endpoint: str) -> None:
    with pytest.raises(StoreError) as missing:
        list(S3Store(s3_client()).objects("no-such-listing-bucket", "data/"))
    assert missing.value.code == "NoSuchBucket"
    assert isinstance(from_store_error(missing.value), UnknownBucket)


def test_if_botocores_internals_move_the_listing_is_still_botocores(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3 is not pinned: a botocore whose private helpers changed must cost speed, never a listing
    def moved(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("'RestXMLParser' object has no attribute '_member_key_name'")

    monkeypatch.setattr(ListingParser, "_table", moved)
    response = page(_TAGS, _TAGS.replace(">a<", ">b<"))
    ours, botocores = both(response, output_shape())
    assert ours == botocores and [entry["Key"] for entry in ours["Contents"]] == [("str", "a"), ("str", "b")]
