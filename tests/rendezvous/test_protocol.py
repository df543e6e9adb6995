"""The wire format and the name rule, shared by server, client and tests."""

from __future__ import annotations

import pytest

from services.rendezvous.protocol import (
    NAME_MAX,
    NameRejected,
    decode_address,
    describe_name,
    encode_address,
    encode_name,
    parse_name,
    wire_ipv4,
)


def test_address_message_layout() -> None:
    message = encode_address("198.51.100.7", 10000)
    assert message == bytes([198, 51, 100, 7]) + (10000).to_bytes(2, "big") + b"\0\0"
    assert decode_address(message) == ("198.51.100.7", 10000)


@pytest.mark.parametrize("size", [0, 7, 9])
def test_decode_refuses_wrong_sizes(size: int) -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        decode_address(b"\1" * size)


@pytest.mark.parametrize(
    ("first_read", "name"),
    [
        (b"a", b"a"),
        (b"x" * NAME_MAX, b"x" * NAME_MAX),
        (b"x" * NAME_MAX + b"\0" * 28, b"x" * NAME_MAX),
        (b"job\0rest-is-padding", b"job"),
        (b"\xff\x01\x80", b"\xff\x01\x80"),
    ],
)
def test_names_accepted(first_read: bytes, name: bytes) -> None:
    assert parse_name(first_read) == name


@pytest.mark.parametrize(
    ("first_read", "reason"),
    [
        (b"\0", "empty_name"),
        (b"\0name-after-nul", "empty_name"),
        (b"x" * (NAME_MAX + 1), "name_too_long"),
        (b"x" * (NAME_MAX + 1) + b"\0", "name_too_long"),
    ],
)
def test_names_rejected(first_read: bytes, reason: str) -> None:
    with pytest.raises(NameRejected) as caught:
        parse_name(first_read)
    assert caught.value.reason == reason


def test_client_side_name_encoding() -> None:
    assert encode_name("rang-0-1") == b"rang-0-1"
    assert encode_name("é") == "é".encode()
    assert encode_name(b"\xfe") == b"\xfe"
    for bad in ("", "x" * 101, "a\0b"):
        with pytest.raises(NameRejected):
            encode_name(bad)


@pytest.mark.parametrize(
    ("host", "wire"),
    [("198.51.100.1", "198.51.100.1"), ("::ffff:203.0.113.9", "203.0.113.9"), ("::1", None),
     ("2001:db8::1", None), ("not-an-address", None)],
)
def test_wire_ipv4(host: str, wire: str | None) -> None:
    assert wire_ipv4(host) == wire


def test_describe_name_is_log_safe() -> None:
    assert describe_name(b"job-1") == "job-1"
    assert describe_name(b"a\nb\xff") == "a\\nb\\xff"
