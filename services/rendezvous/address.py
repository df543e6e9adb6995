"""``host:port`` endpoints of the rendezvous server, and the address a name stands for right now.

On AWS the server's name is a Route 53 record its task rewrites whenever it is replaced, with a
short TTL. Workers could resolve it themselves, but a sandbox's resolver may still hold the old
answer (or a cached "no such name" from before the first registration); the coordinator resolves
the name when a job starts and hands every rank the same address. Standard library only.
"""

from __future__ import annotations

import ipaddress
import socket


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> ``(host, port)``; ValueError naming what is wrong."""
    host, separator, port = endpoint.strip().rpartition(":")
    host = host.strip("[]")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{endpoint!r} is not host:port")
    return host, int(port)


def current_address(endpoint: str) -> str:
    """``endpoint`` with its host name replaced by the IPv4 address it resolves to now.

    An address stays as it is. Raises OSError when the name does not resolve.
    """
    host, port = split_endpoint(endpoint)
    try:
        ipaddress.ip_address(host)
        return endpoint
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except UnicodeError as exc:  # a malformed name (an empty label) fails in the IDNA codec, not in DNS
        raise OSError(f"{host!r} is not a valid host name: {exc}") from None
    return f"{found[0][4][0]}:{port}"
