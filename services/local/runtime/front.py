"""The Invoke API in front of the sandboxes: ``POST /2015-03-31/functions/{name}/invocations``.

boto3's Lambda client with ``endpoint_url`` (or ``AWS_ENDPOINT_URL_LAMBDA``) calls exactly this.
Errors are shaped as Lambda shapes them (``x-amzn-ErrorType`` and a JSON body), so boto3 raises
the same exception classes it raises against AWS: ``ResourceNotFoundException``,
``TooManyRequestsException`` (429 above the concurrency limit), ``RequestTooLargeException``,
``InvalidRequestContentException``.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import re
import threading
import time
import urllib.parse
import uuid
from typing import Any

from services.aws import aws_region
from services.local.runtime import control
from services.local.runtime.config import LOG_TAIL_BYTES, MAX_EVENT_PAYLOAD, MAX_SYNC_PAYLOAD, RuntimeSettings
from services.local.runtime.cpushare import CpuLimiter
from services.local.runtime.httpjson import JsonHandler
from services.local.runtime.sandbox import Invocation, Outcome, Sandbox, SandboxError
from services.logs import event

log = logging.getLogger("cosmic.worker.runtime")
_INVOKE = re.compile(r"^/2015-03-31/functions/(?P<name>[^/?]+)/invocations(?:\?.*)?$")
#: How long an Event invocation is retried while every sandbox is busy (Lambda keeps trying for hours).
EVENT_MAX_WAIT = 900.0


class Pool:
    """The sandboxes, handed out one invocation at a time."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.limiter = CpuLimiter(settings.memory_mb, settings.sandboxes, reserve=settings.cpu_reserve)
        self.sandboxes = [Sandbox(index, settings, self.limiter) for index in range(settings.sandboxes)]
        self._idle = list(self.sandboxes)
        self._lock = threading.Lock()

    def start(self) -> None:
        for sandbox in self.sandboxes:
            sandbox.start()
        deadline = time.monotonic() + self.settings.init_timeout
        for sandbox in self.sandboxes:
            sandbox.wait_ready(max(deadline - time.monotonic(), 0))

    def acquire(self) -> Sandbox | None:
        """An idle sandbox, or None when every one is busy (the concurrency limit)."""
        with self._lock:
            return self._idle.pop() if self._idle else None

    def release(self, sandbox: Sandbox) -> None:
        with self._lock:
            self._idle.append(sandbox)

    def invoke(self, sandbox: Sandbox, invocation: Invocation) -> Outcome:
        try:
            sandbox.wait_ready(self.settings.init_timeout)
            return sandbox.invoke(invocation)
        finally:
            self.release(sandbox)

    def stop(self) -> None:
        for sandbox in self.sandboxes:
            sandbox.stop()
        self.limiter.close()


def function_name(raw: str) -> str:
    """The function name of a path segment: a name, or an ARN with an optional qualifier."""
    name = urllib.parse.unquote(raw)
    if name.startswith("arn:"):
        parts = name.split(":")
        name = parts[6] if len(parts) > 6 else name
    return name.split(":", 1)[0]


class InvokeApi(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, settings: RuntimeSettings, pool: Pool) -> None:
        super().__init__((settings.host, settings.port), _InvokeHandler)
        self.settings, self.pool = settings, pool
        self.names = {settings.worker.function, "function"}


class _InvokeHandler(JsonHandler):
    server: InvokeApi

    def _error(self, status: int, kind: str, message: str, **extra: str) -> None:
        body = json.dumps({"Type": "User", "message": message, **extra}).encode()
        self.respond(status, body, {"x-amzn-ErrorType": kind, "x-amzn-RequestId": str(uuid.uuid4())})

    def do_GET(self) -> None:
        """The control plane's read calls (:mod:`control`): capacity, as AWS answers them."""
        body = control.answer(self.path, self.server.settings, self.server.names, aws_region(), function_name)
        if isinstance(body, str):
            self._error(404, "ResourceNotFoundException", f"Function not found: {body}")
            return
        if body is None:
            self._error(404, "UnknownOperationException", f"unknown operation GET {self.path}")
            return
        self.respond(200, json.dumps(body).encode(), {"x-amzn-RequestId": str(uuid.uuid4())})

    def do_POST(self) -> None:
        match = _INVOKE.match(self.path)
        if not match:
            self._error(404, "UnknownOperationException", f"unknown operation {self.path}")
            return
        name = function_name(match["name"])
        size = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(size) if size else b""
        if name not in self.server.names:
            self._error(404, "ResourceNotFoundException", f"Function not found: {name}")
            return
        kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        limit = MAX_EVENT_PAYLOAD if kind == "Event" else MAX_SYNC_PAYLOAD
        if size > limit:
            self._error(413, "RequestTooLargeException",
                        f"Request must be smaller than {limit} bytes for the InvokeFunction operation")
            return
        try:
            json.loads(payload or b"{}")
        except ValueError as exc:
            self._error(400, "InvalidRequestContentException", f"Could not parse request body into json: {exc}")
            return
        invocation = Invocation(payload or b"{}", client_context=_client_context(self.headers))
        if kind == "DryRun":
            self.respond(204, b"", {"x-amzn-RequestId": invocation.request_id})
        elif kind == "Event":
            threading.Thread(target=_run_event, args=(self.server.pool, invocation), daemon=True).start()
            self.respond(202, b"", {"x-amzn-RequestId": invocation.request_id})
        elif kind == "RequestResponse":
            self._invoke(invocation)
        else:
            self._error(400, "InvalidParameterValueException", f"unknown invocation type {kind!r}")

    def _invoke(self, invocation: Invocation) -> None:
        sandbox = self.server.pool.acquire()
        if sandbox is None:
            self._error(429, "TooManyRequestsException", "Rate Exceeded.",
                        Reason="ReservedFunctionConcurrentInvocationLimitExceeded")
            return
        try:
            outcome = self.server.pool.invoke(sandbox, invocation)
        except SandboxError as failed:  # Lambda answers an init failure as the function's error
            self.respond(200, failed.body, {"x-amzn-RequestId": invocation.request_id,
                                            "X-Amz-Function-Error": "Unhandled"})
            return
        headers = {"x-amzn-RequestId": invocation.request_id, "X-Amz-Executed-Version": "$LATEST"}
        if outcome.function_error:
            headers["X-Amz-Function-Error"] = outcome.function_error
        if self.headers.get("X-Amz-Log-Type") == "Tail":
            tail = outcome.log.encode()[-LOG_TAIL_BYTES:]
            headers["X-Amz-Log-Result"] = base64.b64encode(tail).decode()
        event(log, "invoked", logging.DEBUG, request_id=invocation.request_id, sandbox=sandbox.index,
              ms=round(outcome.duration_ms, 2), error=outcome.function_error or "")
        self.respond(200, outcome.body, headers)


def _client_context(headers: Any) -> str | None:
    encoded = headers.get("X-Amz-Client-Context")
    return base64.b64decode(encoded).decode() if encoded else None


def _run_event(pool: Pool, invocation: Invocation) -> None:
    """Run an Event invocation when a sandbox frees up, as Lambda's async queue does."""
    deadline, pause = time.monotonic() + EVENT_MAX_WAIT, 0.01
    while time.monotonic() < deadline:
        sandbox = pool.acquire()
        if sandbox is not None:
            try:
                outcome = pool.invoke(sandbox, invocation)
            except SandboxError as failed:
                event(log, "event_failed", logging.ERROR, request_id=invocation.request_id, error=str(failed))
                return
            event(log, "event_invoked", request_id=invocation.request_id, error=outcome.function_error or "")
            return
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
    event(log, "event_dropped", logging.ERROR, request_id=invocation.request_id, waited_s=EVENT_MAX_WAIT)
