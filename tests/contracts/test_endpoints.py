"""The rendezvous endpoint as ``host:port`` (the contract), and the address its name has now (the coordinator)."""

from __future__ import annotations

import pytest

from services.contracts import split_endpoint
from services.coordinator.planning import current_address


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("rendezvous.example.com:10000", ("rendezvous.example.com", 10000)),
    ("198.51.100.4:1", ("198.51.100.4", 1)),
    ("[2001:db8::1]:10000", ("2001:db8::1", 10000)),
    (" localhost:65535 ", ("localhost", 65535)),
])
def test_split_endpoint(endpoint: str, expected: tuple[str, int]) -> None:
    assert split_endpoint(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["rendezvous.example.com", ":10000", "host:", "host:0", "host:65536", "host:x1"])
def test_split_endpoint_refuses_what_is_not_host_port(endpoint: str) -> None:
    with pytest.raises(ValueError, match="is not host:port"):
        split_endpoint(endpoint)


def test_current_address_resolves_names_and_keeps_addresses() -> None:
    assert current_address("localhost:10000") == "127.0.0.1:10000"
    assert current_address("203.0.113.9:10000") == "203.0.113.9:10000"
    assert current_address("[::1]:10000") == "[::1]:10000"


def test_a_malformed_name_is_an_oserror_like_one_that_does_not_resolve() -> None:
    with pytest.raises(OSError, match="not a valid host name"):
        current_address("a..b:10000")
