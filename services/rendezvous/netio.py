"""Blocking socket helpers shared by everything that reads framed bytes from a peer link."""

from __future__ import annotations

import socket


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes; raises ConnectionError if the peer closes first.

    TCP delivers a byte stream, not messages: one ``recv`` may return any part of what was sent.
    """
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError(f"peer closed after {got} of {size} bytes")
        got += n
    return bytes(buffer)
