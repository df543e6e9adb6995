"""The base of both HTTP APIs of the runtime (Invoke API in front, Runtime API behind)."""

from __future__ import annotations

import http.server
from typing import Any


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, JSON by default, quiet (the runtime logs what matters itself)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        return

    def respond(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
