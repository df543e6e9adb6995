"""Invoking a worker: the Lambda Invoke API through boto3, with our retries instead of botocore's.

Synchronous ``RequestResponse`` calls with ``LogType=Tail``, because the REPORT line in the log
tail is where Lambda states what it bills: duration, billed duration, configured memory and the
memory used. botocore's own retries are off (they would re-run a whole rank on a read timeout
without us knowing). Throttling (429, TooManyRequestsException) is waiting, not failing: the call
is repeated with exponential backoff and full jitter for as long as the caller's deadline allows,
however many times that takes. Service errors (5xx) and dropped connections are retried up to
``retries`` times, and a function error is returned for the job to decide on (a new attempt). The
read timeout is the function's timeout plus a margin; connections are kept alive (TCP keepalive: a
15-minute silent invocation must not be cut by a NAT) and pooled, one per concurrent rank.

On AWS, starts are paced by a token bucket at Lambda's scaling rate (each function adds at most
1,000 execution environments per 10 s), so a wave of thousands of ranks is not mostly 429s; below
that rate it never waits.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, ReadTimeoutError

from services.coordinator.backoff import full_jitter
from services.coordinator.capacity import Capacity
from services.coordinator.errors import DependencyUnavailable
from services.logs import event as log_event

log = logging.getLogger("cosmic.coordinator.invoke")
_REPORT_FIELDS = {"Duration": "duration_ms", "Billed Duration": "billed_duration_ms", "Memory Size": "memory_size_mb",
                  "Max Memory Used": "max_memory_used_mb", "Init Duration": "init_duration_ms"}
_REPORT = re.compile(r"(Duration|Billed Duration|Memory Size|Max Memory Used|Init Duration): ([\d.]+)")
#: The local runtime's own field (AWS's REPORT has none): the CPU the sandbox had and what enforced it.
_CPU = re.compile(r"\tCPU: ([\d.]+) vCPU by ([\w-]+)")
_THROTTLED_CODES = {"TooManyRequestsException"}
_RETRYABLE_CODES = {"ServiceException", "EC2ThrottledException", "ThrottlingException",
                    "ResourceNotReadyException", "Throttling", "RequestLimitExceeded"}
READ_MARGIN_S = 60.0
#: Lambda's scaling rule: each function adds at most this many execution environments ...
SCALING_BURST = 1000
#: ... per this many seconds.
SCALING_PERIOD_S = 10.0
#: The longest pause between two tries of a throttled call: capacity that frees is taken within
#: about this long (a 20 s cap, as for errors, left ranks idle 3-13 s after a sandbox freed: bench/faults.py).
THROTTLE_MAX_DELAY_S = 4.0
#: How long a throttled call may wait when the caller gives no deadline.
DEFAULT_THROTTLE_WAIT_S = 3600.0


def parse_report(log_tail: str) -> dict[str, float | str | None]:
    """The figures of the last REPORT line in a log tail (None for those absent); on the local runtime
    also ``cpu_vcpus`` and ``cpu_enforced_by`` (``cgroup-v1``, ``affinity``, ...)."""
    report: dict[str, float | str | None] = {name: None for name in _REPORT_FIELDS.values()}
    line = next((line for line in reversed(log_tail.splitlines()) if line.startswith("REPORT")), "")
    for label, value in _REPORT.findall(line):
        report[_REPORT_FIELDS[label]] = float(value)
    cpu = _CPU.search(line)
    if cpu:
        report["cpu_vcpus"], report["cpu_enforced_by"] = float(cpu[1]), cpu[2]
    return report


class TokenBucket:
    """``burst`` tokens, refilled at ``burst / period_s`` per second; :meth:`take` waits for one."""

    def __init__(self, burst: int = SCALING_BURST, period_s: float = SCALING_PERIOD_S) -> None:
        self.burst, self.rate = float(burst), burst / period_s
        self._tokens, self._at = float(burst), time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take a token, waiting until one is there; returns the seconds waited."""
        with self._lock:  # callers line up: each waits for its own token
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= 1
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait:
            time.sleep(wait)
        return wait


@dataclass
class Outcome:
    """One invocation's result: the worker's answer, or its error, and what Lambda reported."""

    ok: bool
    response: dict[str, Any] | None = None
    error: str | None = None
    report: dict[str, float | str | None] = field(default_factory=dict)
    #: Seconds spent waiting out throttling (429) before the invocation ran, or until the deadline.
    throttled_s: float = 0.0
    #: The invocation's log tail (``LogResult``: Lambda's last 4 KB), empty when Lambda sent none.
    log_tail: str = ""


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
        self.function, self.function_timeout_s = function, function_timeout_s
        self.retries = retries
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self.stats = stats or InvokeStats()
        self.client = boto3.client("lambda", config=Config(
            retries={"total_max_attempts": 1}, read_timeout=function_timeout_s + READ_MARGIN_S, connect_timeout=10,
            max_pool_connections=max(1, pool_size), tcp_keepalive=True))
        on_aws = "amazonaws.com" in str(self.client.meta.endpoint_url)  # the scaling rule is AWS's
        self.pacing = TokenBucket() if on_aws else None

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

    def invoke(self, payload: dict[str, Any], deadline: float | None = None,
               on_throttled: Callable[[bool], None] | None = None) -> Outcome:
        """Invoke once, waiting out throttling until the monotonic ``deadline`` (default: an hour).

        ``on_throttled(True)`` is called when a 429 starts a wait, ``on_throttled(False)`` when the
        call is sent again, so the caller can show the attempt as throttled meanwhile.
        """
        body = json.dumps(payload).encode()
        deadline = deadline if deadline is not None else time.monotonic() + DEFAULT_THROTTLE_WAIT_S
        retry = throttled = 0
        waited = 0.0
        while True:
            if self.pacing is not None:
                self.pacing.take()
            try:
                # (RequestResponse is the default type: not sent, a header fewer to build, sign and parse)
                response = self.client.invoke(FunctionName=self.function, Payload=body, LogType="Tail")
                # read here: an answer cut mid-body raises only now (ResponseStreamingError), a dropped connection
                raw = response["Payload"].read()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code in _THROTTLED_CODES or status == 429:
                    self.stats.add(throttles=1)
                    delay = full_jitter(throttled, self.base_delay_s, THROTTLE_MAX_DELAY_S)
                    left = deadline - time.monotonic()
                    if on_throttled is not None:
                        on_throttled(True)
                    if left <= delay:
                        time.sleep(max(0.0, left))
                        return Outcome(False, error=f"throttled ({code or status}) until the job deadline passed, "
                                                    f"{throttled + 1} calls over {waited + max(0.0, left):.1f} s",
                                       throttled_s=waited + max(0.0, left))
                    self._log_wait("throttled", code or str(status), throttled, delay)
                    time.sleep(delay)
                    waited += delay
                    throttled += 1
                    if on_throttled is not None:
                        on_throttled(False)
                    continue
                if (code in _RETRYABLE_CODES or status in (500, 502, 503, 504)) and retry < self.retries:
                    self.stats.add(throttles=1)
                    self._pause(retry, code or str(status))
                    retry += 1
                    continue
                self.stats.add(transport_errors=1)
                return Outcome(False, error=f"{code or status}: {exc}", throttled_s=waited)
            except ReadTimeoutError as exc:  # the invocation may still be running: not safe to retry here
                self.stats.add(transport_errors=1)
                return Outcome(False, error=f"no answer within the read timeout: {exc}", throttled_s=waited)
            except (ConnectionError, BotoCoreError) as exc:
                if retry < self.retries:
                    self.stats.add(transport_errors=1)
                    self._pause(retry, type(exc).__name__)
                    retry += 1
                    continue
                return Outcome(False, error=f"{type(exc).__name__}: {exc}", throttled_s=waited)
            outcome = self._outcome(response, raw)
            outcome.throttled_s = waited
            return outcome

    def _outcome(self, response: dict[str, Any], raw: bytes) -> Outcome:
        self.stats.add(invocations=1)
        tail = base64.b64decode(response.get("LogResult") or b"").decode(errors="replace")
        report = parse_report(tail)
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = {"errorMessage": raw[:500].decode(errors="replace")}
        if "FunctionError" in response:
            self.stats.add(function_errors=1)
            message = answer.get("errorMessage") if isinstance(answer, dict) else str(answer)
            kind = answer.get("errorType", response["FunctionError"]) if isinstance(answer, dict) else "Error"
            return Outcome(False, error=f"{kind}: {message}", report=report, log_tail=tail)
        if not isinstance(answer, dict):
            return Outcome(False, error=f"the worker answered {str(answer)[:200]!r}, not a result", report=report,
                           log_tail=tail)
        return Outcome(True, response=answer, report=report, log_tail=tail)

    def _backoff(self, retry: int) -> float:
        return full_jitter(retry, self.base_delay_s, self.max_delay_s)

    def _pause(self, retry: int, reason: str) -> None:
        delay = self._backoff(retry)
        self._log_wait("invoke_retry", reason, retry, delay)
        time.sleep(delay)

    def _log_wait(self, what: str, reason: str, retry: int, delay: float) -> None:
        log_event(log, what, logging.WARNING if what == "invoke_retry" else logging.INFO, function=self.function,
                  reason=reason, retry=retry + 1, delay_s=round(delay, 3))
