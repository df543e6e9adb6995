"""The TCPunch wire protocol, in one place for the server, the client and the tests.

What travels (see ``shared/PROTOCOL.md``, measured against the reference server and client):

* client -> server: the pairing name, read by the server with ONE ``recv`` of at most
  :data:`NAME_MAX` bytes, no length prefix, no terminator; the name ends at the first NUL.
* server -> client: two 8-byte messages, each an IPv4 address and TCP port in network byte
  order followed by two zero bytes. Message 1 is the client's own address as the server sees
  it; message 2 is the peer's.

Our defined behaviour for names (the reference server has none: a 100-byte name without NUL
reads past its buffer):

* the name is the first read from the connection, cut at its first NUL byte;
* a name of 1 to 100 bytes is accepted; any byte other than NUL may appear (names are bytes,
  not text, and are compared byte for byte);
* an empty name (no bytes before the first NUL) is rejected;
* a name longer than 100 bytes (no NUL among the first 101 bytes of a longer read) is rejected;
  a NUL ends the name, and what follows it in that read is padding and ignored;
* any byte a client sends after its name is a protocol violation and drops that client.

A rejected client is closed without a reply, so it never receives an address it could
mistake for a peer.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from services.rendezvous.errors import NameRejected

#: Largest name the reference server reads in its single ``recv``.
NAME_MAX = 100
#: Size of each server -> client message.
MESSAGE_SIZE = 8
#: Default pairing port of the reference server.
DEFAULT_PORT = 10000

_MESSAGE = struct.Struct("!4sH2x")


def parse_name(first_read: bytes) -> bytes:
    """Return the pairing name carried by a connection's first read, or raise NameRejected."""
    nul = first_read.find(b"\0", 0, NAME_MAX + 1)
    name = first_read if nul < 0 else first_read[:nul]
    if len(name) > NAME_MAX:
        raise NameRejected("name_too_long", f"name longer than {NAME_MAX} bytes")
    if not name:
        raise NameRejected("empty_name", "empty pairing name")
    return name


def encode_name(name: str | bytes) -> bytes:
    """Encode a client's pairing name for the wire, refusing what the server would reject.

    ``str`` names are UTF-8 encoded. The name is sent without a terminator, as the reference
    client sends it.
    """
    raw = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    if not raw:
        raise NameRejected("empty_name", "pairing name must not be empty")
    if len(raw) > NAME_MAX:
        raise NameRejected("name_too_long", f"pairing name is {len(raw)} bytes; at most {NAME_MAX}")
    if b"\0" in raw:
        raise NameRejected("nul_in_name", "pairing name must not contain a NUL byte")
    return raw


def encode_address(ip: str, port: int) -> bytes:
    """Pack an IPv4 address and port into one 8-byte message."""
    return _MESSAGE.pack(socket.inet_aton(ip), port)


def decode_address(message: bytes) -> tuple[str, int]:
    """Unpack an 8-byte message into ``(ip, port)``; raises ValueError on a malformed one."""
    if len(message) != MESSAGE_SIZE:
        raise ValueError(f"address message must be {MESSAGE_SIZE} bytes, got {len(message)}")
    packed_ip, port = _MESSAGE.unpack(message)
    return socket.inet_ntoa(packed_ip), port


def wire_ipv4(host: str) -> str | None:
    """The IPv4 form of a peer address for the wire, or None when it has none.

    IPv4-mapped IPv6 addresses (``::ffff:198.51.100.7``, what a dual-stack listener reports)
    become plain IPv4; a native IPv6 address cannot be carried in the 4-byte field.
    """
    if ":" not in host:  # the hot path: an AF_INET peer name is already dotted IPv4
        return host if host.count(".") == 3 else None
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else None


def describe_name(name: bytes) -> str:
    """A log-safe rendering of a name: printable ASCII as is, anything else escaped."""
    return repr(bytes(name))[2:-1]
