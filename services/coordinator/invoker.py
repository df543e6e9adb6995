"""Invoking a worker: the Lambda Invoke API through boto3, with our retries instead of botocore's.

Synchronous ``RequestResponse`` calls with ``LogType=Tail``, because the REPORT line in the log
tail is where Lambda states what it bills: duration, billed duration, configured memory and the
memory used. botocore's own retries are off (they would re-run a whole rank on a read timeout
without us knowing); throttling (429) and service errors (5xx) are retried here with exponential
backoff and full jitter, and a function error is returned for the job to decide on (a new
attempt). The read timeout is the function's timeout plus a margin; connections are kept alive
(TCP keepalive: a 15-minute silent invocation must not be cut by a NAT) and pooled, one per
concurrent rank.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, ReadTimeoutError

from services.coordinator.errors import DependencyUnavailable
from services.logs import event as log_event

log = logging.getLogger("cosmic.coordinator.invoke")
_REPORT_FIELDS = {"Duration": "duration_ms", "Billed Duration": "billed_duration_ms", "Memory Size": "memory_size_mb",
                  "Max Memory Used": "max_memory_used_mb", "Init Duration": "init_duration_ms"}
_REPORT = re.compile(r"(Duration|Billed Duration|Memory Size|Max Memory Used|Init Duration): ([\d.]+)")
_RETRYABLE_CODES = {"TooManyRequestsException", "ServiceException", "EC2ThrottledException", "ThrottlingException",
                    "ResourceNotReadyException", "Throttling", "RequestLimitExceeded"}
READ_MARGIN_S = 60.0


def parse_report(log_tail: str) -> dict[str, float | None]:
    """The figures of the last REPORT line in a log tail (None for those absent)."""
    report = {name: None for name in _REPORT_FIELDS.values()}
    line = next((line for line in reversed(log_tail.splitlines()) if line.startswith("REPORT")), "")
    for label, value in _REPORT.findall(line):
        report[_REPORT_FIELDS[label]] = float(value)
    return report  # type: ignore[return-value]


@dataclass(frozen=True)
class Capacity:
    """Concurrent executions a function may have, and where the number comes from (for messages)."""

    limit: int
    source: str


@dataclass
class Outcome:
    """One invocation's result: the worker's answer, or its error, and what Lambda reported."""

    ok: bool
    response: dict[str, Any] | None = None
    error: str | None = None
    report: dict[str, float | None] = field(default_factory=dict)


@dataclass
class InvokeStats:
    """Counters for ``/metrics``."""

    invocations: int = 0
    function_errors: int = 0
    throttles: int = 0
    transport_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)


class Invoker:
    """Invokes one worker function; thread-safe (boto3 clients are), one pool sized for the concurrency."""

    def __init__(self, function: str, function_timeout_s: float, pool_size: int, retries: int = 8,
                 base_delay_s: float = 0.2, max_delay_s: float = 20.0, stats: InvokeStats | None = None) -> None:
        self.function = function
        self.retries = retries
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self.stats = stats or InvokeStats()
        self.client = boto3.client("lambda", config=Config(
            retries={"total_max_attempts": 1}, read_timeout=function_timeout_s + READ_MARGIN_S, connect_timeout=10,
            max_pool_connections=max(1, pool_size), tcp_keepalive=True))

    def capacity(self) -> Capacity | None:
        """How many of this function's invocations may run at once: its reserved concurrency when
        set, else the account's unreserved concurrency (shared with every other function, so a job
        within it can still be throttled). None where the endpoint answers neither call;
        DependencyUnavailable (503) when Lambda gives no answer at all: a job would only fail every rank."""
        try:
            reserved = self.client.get_function_concurrency(FunctionName=self.function)
            if reserved.get("ReservedConcurrentExecutions") is not None:
                return Capacity(int(reserved["ReservedConcurrentExecutions"]), "reserved concurrency of the function")
            limits = self.client.get_account_settings().get("AccountLimit", {})
        except (ConnectionError, HTTPClientError) as exc:
            raise DependencyUnavailable("lambda", str(self.client.meta.endpoint_url),
                                        f"{type(exc).__name__}: {exc}") from None
        except (ClientError, BotoCoreError):
            return None
        value = limits.get("UnreservedConcurrentExecutions")
        return Capacity(int(value), "unreserved concurrency of the account") if value is not None else None

    def invoke(self, payload: dict[str, Any]) -> Outcome:
        body = json.dumps(payload).encode()
        for retry in range(self.retries + 1):
            try:
                response = self.client.invoke(FunctionName=self.function, Payload=body, LogType="Tail",
                                              InvocationType="RequestResponse")
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if (code in _RETRYABLE_CODES or status in (429, 500, 502, 503, 504)) and retry < self.retries:
                    self.stats.add(throttles=1)
                    self._pause(retry, code or str(status))
                    continue
                self.stats.add(transport_errors=1)
                return Outcome(False, error=f"{code or status}: {exc}")
            except ReadTimeoutError as exc:  # the invocation may still be running: not safe to retry here
                self.stats.add(transport_errors=1)
                return Outcome(False, error=f"no answer within the read timeout: {exc}")
            except (ConnectionError, BotoCoreError) as exc:
                if retry < self.retries:
                    self.stats.add(transport_errors=1)
                    self._pause(retry, type(exc).__name__)
                    continue
                return Outcome(False, error=f"{type(exc).__name__}: {exc}")
            return self._outcome(response)
        return Outcome(False, error="gave up after retries")  # pragma: no cover (loop returns)

    def _outcome(self, response: dict[str, Any]) -> Outcome:
        self.stats.add(invocations=1)
        tail = base64.b64decode(response.get("LogResult") or b"").decode(errors="replace")
        report = parse_report(tail)
        raw = response["Payload"].read()
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = {"errorMessage": raw[:500].decode(errors="replace")}
        if "FunctionError" in response:
            self.stats.add(function_errors=1)
            message = answer.get("errorMessage") if isinstance(answer, dict) else str(answer)
            kind = answer.get("errorType", response["FunctionError"]) if isinstance(answer, dict) else "Error"
            return Outcome(False, error=f"{kind}: {message}", report=report)
        if not isinstance(answer, dict):
            return Outcome(False, error=f"the worker answered {str(answer)[:200]!r}, not a result", report=report)
        return Outcome(True, response=answer, report=report)

    def _pause(self, retry: int, reason: str) -> None:
        delay = random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**retry))  # full jitter
        log_event(log, "invoke_retry", logging.WARNING, function=self.function, reason=reason, retry=retry + 1,
                  delay_s=round(delay, 3))
        time.sleep(delay)
