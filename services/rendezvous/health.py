"""The HTTP side port: ``/healthz`` and ``/metrics`` for Fargate and load-balancer probes.

Probes get their own port so that they never touch the pairing port (two bare probes killed
the reference server). A deliberately tiny HTTP/1.1 responder: GET only, one request per
connection, bounded request size, time and concurrency, so a probe flood cannot starve pairing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Protocol

from services.logs import event

log = logging.getLogger("cosmic.rendezvous.health")

REQUEST_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 8192
MAX_CONCURRENT = 16


class Observable(Protocol):
    """What the health port needs from the server."""

    @property
    def serving(self) -> bool: ...

    def render_metrics(self) -> str: ...


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\nCache-Control: no-store\r\n\r\n")
    return head.encode("ascii") + body


def route(method: str, path: str, server: Observable) -> bytes:
    """The full HTTP response for one request line."""
    path = path.split("?", 1)[0]
    if path not in ("/healthz", "/metrics"):
        return _response("404 Not Found", "text/plain", b"not found\n")
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", "text/plain", b"GET only\n")
    if path == "/metrics":
        body = server.render_metrics().encode()
        response = _response("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
    elif server.serving:
        response = _response("200 OK", "application/json", json.dumps({"status": "ok"}).encode())
    else:
        response = _response("503 Service Unavailable", "application/json", b'{"status":"stopping"}')
    if method == "HEAD":
        response = response.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    return response


async def start(host: str, port: int, server: Observable) -> asyncio.AbstractServer:
    """Start the health listener; it lives until the returned server is closed."""
    active = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        active += 1
        try:
            if active > MAX_CONCURRENT:
                response = _response("503 Service Unavailable", "text/plain", b"busy\n")
            else:
                response = await _read_and_route(reader, server)
            writer.write(response)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (TimeoutError, ConnectionError):
            pass  # the prober left or stalled: nothing to answer
        finally:
            active -= 1
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_BYTES, reuse_address=True)


async def _read_and_route(reader: asyncio.StreamReader, server: Observable) -> bytes:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return _response("400 Bad Request", "text/plain", b"bad request\n")
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response("400 Bad Request", "text/plain", b"bad request line\n")
    method, path, _ = parts
    event(log, "probe", logging.DEBUG, method=method, path=path)
    return route(method, path, server)
