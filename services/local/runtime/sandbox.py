"""One warm sandbox: a ``python -m awslambdaric <handler>`` process and the Runtime API it polls.

Each sandbox has its own Runtime API listener on loopback (``AWS_LAMBDA_RUNTIME_API``), so
there is never a question of which process took which invocation. The runtime interface client
long-polls ``/next``; :meth:`Sandbox.invoke` hands it one invocation and waits for its
``/response`` or ``/error``, the function timeout, or the process's death, and measures what
Lambda's REPORT line reports (duration, peak RSS of the process during the invocation), plus what
CPU the sandbox had (``CPU: 1.00 vCPU by cgroup-v1``, :mod:`.cpushare`): Lambda's REPORT has no such
field, and a local figure means little without it.
"""

from __future__ import annotations

import fcntl
import http.server
import json
import logging
import math
import os
import queue
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from dataclasses import dataclass, field, replace

from services.aws import aws_region
from services.local.errors import SandboxError
from services.local.runtime.config import MAX_SYNC_PAYLOAD, RuntimeSettings
from services.local.runtime.control import function_arn
from services.local.runtime.cpushare import CpuLimiter, CpuShare
from services.local.runtime.httpjson import JsonHandler
from services.logs import event
from services.memory import peak_rss_kib

log = logging.getLogger("cosmic.worker.runtime")
_RESULT = re.compile(r"^/2018-06-01/runtime/invocation/(?P<id>[^/]+)/(?P<kind>response|error)$")


@dataclass
class Invocation:
    payload: bytes
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_context: str | None = None


@dataclass
class Outcome:
    """What one invocation produced, shaped as Lambda's Invoke API reports it."""

    body: bytes
    function_error: str | None
    log: str
    duration_ms: float
    max_memory_mb: int
    init_ms: float | None


class _RuntimeApi(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sandbox: Sandbox) -> None:
        super().__init__(("127.0.0.1", 0), _RuntimeApiHandler)
        self.sandbox = sandbox


class _RuntimeApiHandler(JsonHandler):
    server: _RuntimeApi

    def do_GET(self) -> None:
        if self.path != "/2018-06-01/runtime/invocation/next":
            self.respond(404, b'{"errorMessage":"unknown path"}')
            return
        invocation, deadline_ms, arn = self.server.sandbox._next()
        headers = {  # awslambdaric's native client crashes without any of these
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": arn,
            "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
            "Content-Type": "application/json",
        }
        if invocation.client_context:
            headers["Lambda-Runtime-Client-Context"] = invocation.client_context
        self.respond(200, invocation.payload, headers)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = _RESULT.match(self.path)
        if match:
            self.server.sandbox._complete(match["id"], body, match["kind"] == "error")
            self.respond(202, b'{"status":"OK"}')
        elif self.path == "/2018-06-01/runtime/init/error":
            self.server.sandbox._init_failed(body)
            self.respond(202, b'{"status":"OK"}')
        else:
            self.respond(404, b'{"errorMessage":"unknown path"}')


class Sandbox:
    """A warm execution environment taking one invocation at a time."""

    def __init__(self, index: int, settings: RuntimeSettings, limiter: CpuLimiter | None = None) -> None:
        self.index, self.settings = index, settings
        self.limiter = limiter or CpuLimiter(settings.memory_mb, settings.sandboxes)
        #: What CPU this sandbox has (its share, as enforced); set again on each (re)start.
        self.cpu: CpuShare = self.limiter.share
        self.function_arn = function_arn(settings.worker.function, aws_region())
        self._api = _RuntimeApi(self)
        threading.Thread(target=self._api.serve_forever, name=f"sandbox-{index}-api", daemon=True).start()
        self._work: queue.Queue[tuple[Invocation, int]] = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._current: Invocation | None = None
        self._result: tuple[bytes, bool] | None = None
        self._log_lines: list[str] = []
        self._pump_idle = threading.Event()
        self.ready = threading.Event()
        self._settled = threading.Event()  # ready, or its initialisation failed
        self.process: subprocess.Popen[bytes] | None = None
        self._spawned_at = 0.0
        self._init_ms: float | None = None
        self._init_error: bytes | None = None
        self._warm = False  # has served an invocation since its (re)start

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start (or restart) the process; :attr:`ready` is set when it first asks for work."""
        self.ready.clear()
        self._settled.clear()
        self._init_ms = None
        self._init_error = None
        env = {**os.environ,
               "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self._api.server_address[1]}",
               "AWS_LAMBDA_FUNCTION_NAME": self.settings.worker.function,
               "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
               "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.settings.memory_mb),
               "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.settings.worker.function}",
               "AWS_LAMBDA_LOG_STREAM_NAME": f"local/sandbox-{self.index}",
               "AWS_REGION": aws_region(), "AWS_DEFAULT_REGION": aws_region(),
               "COSMIC_WORKER_THREADS": str(self.limiter.share.threads),
               "PYTHONUNBUFFERED": "1"}
        self._spawned_at = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "-m", "awslambdaric", self.settings.handler],
                                        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        process = self.process
        self._limit_cpu(process.pid)
        threading.Thread(target=self._pump_output, args=(process,), daemon=True).start()
        threading.Thread(target=self._watch, args=(process,), daemon=True).start()

    def _limit_cpu(self, pid: int) -> None:
        """Put the new process under its CPU share before it has done much (it is importing Python)."""
        try:
            self.limiter.apply(self.index, pid)
            self.cpu = self.limiter.share
        except OSError as exc:  # then say so: a REPORT line must not claim a limit that is not there
            self.cpu = replace(self.limiter.share, enforced_by="none", cores=float(self.limiter.host_cores),
                               reason=str(exc))
            event(log, "sandbox_cpu_not_limited", logging.WARNING, sandbox=self.index, error=str(exc))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._api.shutdown()
        self._api.server_close()

    def _pump_output(self, process: subprocess.Popen[bytes]) -> None:
        """Collect the sandbox's output lines, reading the pipe unbuffered so that :meth:`_drain_output`
        can tell when every byte written so far has been collected."""
        assert process.stdout is not None
        fd, pending = process.stdout.fileno(), b""
        while True:
            if not select.select([fd], [], [], 0)[0]:
                self._pump_idle.set()  # everything written so far is collected
                select.select([fd], [], [])
            self._pump_idle.clear()  # before the read: unread bytes or this flag always show work left
            chunk = os.read(fd, 65536)
            if not chunk:
                self._pump_idle.set()
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                with self._lock:
                    self._log_lines.append(line)
                event(log, "sandbox_output", sandbox=self.index, line=line)  # what CloudWatch would hold

    def _drain_output(self, limit_s: float = 0.5) -> None:
        """Wait (briefly) until the output the handler wrote before answering is collected: its
        response can arrive before the pump has read its last log lines from the pipe."""
        if self.process is None or self.process.stdout is None:
            return
        fd, deadline = self.process.stdout.fileno(), time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                unread = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            except OSError:
                return  # the pipe is gone: nothing more to collect
            if unread == 0 and self._pump_idle.is_set():
                return
            time.sleep(0.0005)

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        with self._lock:
            current = self._current if process is self.process else None
        if current is not None and not self._done.is_set():
            message = f"RequestId: {current.request_id} Error: Runtime exited with error: exit status {code}"
            self._finish(json.dumps({"errorType": "Runtime.ExitError", "errorMessage": message}).encode(), True)

    # -- Runtime API callbacks -----------------------------------------------------------
    def _next(self) -> tuple[Invocation, int, str]:
        if self._init_ms is None:
            self._init_ms = (time.monotonic() - self._spawned_at) * 1e3
        self.ready.set()
        self._settled.set()
        invocation, deadline_ms = self._work.get()
        return invocation, deadline_ms, self.function_arn

    def _complete(self, request_id: str, body: bytes, is_error: bool) -> None:
        with self._lock:
            current = self._current
        if current is not None and current.request_id == request_id:
            self._finish(body, is_error)

    def _init_failed(self, body: bytes) -> None:
        self._init_error = body
        self._settled.set()
        event(log, "sandbox_init_failed", logging.ERROR, sandbox=self.index, error=body.decode("utf-8", "replace"))

    def wait_ready(self, timeout: float) -> None:
        """Return once the sandbox takes work; raise SandboxError at once if its handler failed
        to initialise (an import error, say), or when ``timeout`` passes first."""
        if not self._settled.wait(timeout):
            message = (f"sandbox {self.index} did not start within {timeout:g} s "
                       f"(handler {self.settings.handler})")
            raise SandboxError(message, json.dumps({"errorType": "Runtime.InitTimeout",
                                                    "errorMessage": message}).encode(), sandbox=self.index)
        if not self.ready.is_set() and self._init_error is not None:
            try:
                reason = json.loads(self._init_error)
                summary = f"{reason.get('errorType')}: {reason.get('errorMessage')}"
            except (ValueError, AttributeError):
                summary = self._init_error.decode("utf-8", "replace")
            raise SandboxError(f"sandbox {self.index} failed to initialise: {summary}", self._init_error,
                               sandbox=self.index)

    def _finish(self, body: bytes, is_error: bool) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._result = (body, is_error)
            self._done.set()

    # -- invoking ------------------------------------------------------------------------
    def invoke(self, invocation: Invocation) -> Outcome:
        """Run one invocation to its end; a timeout or crash restarts the sandbox (cold again)."""
        timeout = self.settings.worker.timeout
        with self._lock:
            self._current, self._result = invocation, None
            self._log_lines = [f"START RequestId: {invocation.request_id} Version: $LATEST"]
            self._done.clear()
        init_ms = None if self._warm else self._init_ms
        self._warm = True
        _reset_peak_rss(self.process)
        started = time.monotonic()
        self._work.put((invocation, int((time.time() + timeout) * 1000)))
        finished = self._done.wait(timeout)
        duration_ms = (time.monotonic() - started) * 1e3
        peak_mb = _peak_rss_mb(self.process)
        if not finished:
            self._finish(json.dumps({"errorMessage": f"{_timestamp()} {invocation.request_id} Task timed out "
                                                     f"after {timeout:.2f} seconds"}).encode(), True)
        assert self._result is not None
        body, is_error = self._result
        if len(body) > MAX_SYNC_PAYLOAD:  # as Lambda refuses a synchronous response over 6 MB
            body, is_error = json.dumps({
                "errorType": "Function.ResponseSizeTooLarge",
                "errorMessage": f"Response payload size exceeded maximum allowed payload size ({MAX_SYNC_PAYLOAD} "
                                "bytes)."}).encode(), True
        self._drain_output()
        with self._lock:
            self._current = None
            lines = [*self._log_lines, f"END RequestId: {invocation.request_id}"]
        report = (f"REPORT RequestId: {invocation.request_id}\tDuration: {duration_ms:.2f} ms\t"
                  f"Billed Duration: {math.ceil(duration_ms)} ms\tMemory Size: {self.settings.memory_mb} MB\t"
                  f"Max Memory Used: {peak_mb} MB\t{self.cpu.report_field()}")
        if init_ms is not None:
            report += f"\tInit Duration: {init_ms:.2f} ms"
        lines.append(report)
        if not finished or (self.process is not None and self.process.poll() is not None):
            self._restart()
        return Outcome(body, "Unhandled" if is_error else None, "\n".join(lines) + "\n", duration_ms, peak_mb,
                       init_ms)

    def _restart(self) -> None:
        event(log, "sandbox_replaced", logging.WARNING, sandbox=self.index)
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        while not self._work.empty():
            self._work.get_nowait()
        self._warm = False
        self.start()


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z"


def _reset_peak_rss(process: subprocess.Popen[bytes] | None) -> None:
    """Reset the process's peak RSS (VmHWM), so that REPORT shows this invocation's peak."""
    if process is not None:
        try:
            with open(f"/proc/{process.pid}/clear_refs", "w") as clear:
                clear.write("5")
        except OSError:
            pass  # not Linux, or the process is gone: the peak then spans the sandbox's life


def _peak_rss_mb(process: subprocess.Popen[bytes] | None) -> int:
    kib = peak_rss_kib(process.pid) if process is not None else None
    return math.ceil(kib / 1024) if kib else 0
