"""Bounded input: a request body is counted as it arrives, and an error quotes only an excerpt of it.

A ``Content-Length`` check alone is no limit: a chunked body has none, and was read whole (a
200 MB body took ~1 GB of memory) and echoed back whole in the 422. :class:`BodyLimit` is a
plain ASGI middleware (not FastAPI's ``http`` middleware, which buffers) that refuses a declared
length over the limit at once, and stops a chunked body with a 413 as soon as the bytes received
pass it. :func:`excerpt` cuts what a validation error quotes of the input.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Characters of an input value an error message may quote.
EXCERPT_CHARS = 120


def too_large(limit: int) -> str:
    return f"the body must be at most {limit} bytes"


class BodyLimit:
    """Refuse bodies over ``max_bytes`` with 413, whether or not they declare their length."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _send_413(send, self.max_bytes)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # FastAPI answers an HTTPException raised while it reads the body
                    raise HTTPException(413, too_large(self.max_bytes))
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except HTTPException as exc:  # read outside a route (a middleware, a dependency): answer it here
            if exc.status_code != 413 or started:
                raise
            await _send_413(send, self.max_bytes)


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps({"detail": too_large(limit)}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def excerpt(value: Any) -> Any:
    """``value`` when its JSON is short, else the start of that JSON with how much was left out."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) <= EXCERPT_CHARS:
        return value
    return f"{text[:EXCERPT_CHARS]}... ({len(text) - EXCERPT_CHARS} more characters)"


def errors_with_excerpts(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors as pydantic gives them, each quoting at most an excerpt of its input."""
    return [{**error, "input": excerpt(error["input"])} if "input" in error else error for error in errors]
