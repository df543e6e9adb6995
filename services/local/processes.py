"""Child processes, started, awaited and stopped one way, for every server we run locally: the
embedded stack's services, moto's S3 server, the demo's coordinator, the benchmarks' servers and
the tests' servers.

    child = start(python("services.rendezvous", "--port", str(port)), name="the rendezvous server", log=path)
    child.wait_ready(lambda: healthz(health_port), timeout=20)
    ...
    child.stop()

:meth:`Child.wait_ready` fails fast, with the log's tail, when the child exits while starting.
:meth:`Child.stop` sends SIGTERM, SIGKILL after a timeout, and reaps. A child started with
``new_session`` outlives the process that started it (the embedded stack's do, by design) and is
signalled as a process group, so what it started (the runtime's sandboxes) goes with it.

Processes known only by pid (a stack recorded by another process) are checked with :func:`alive`
and :func:`is_ours` and stopped with :func:`stop_pids`. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from services.local.errors import ChildError

#: The project: the working folder of children that run its modules (``python -m services...``).
ROOT = Path(__file__).resolve().parents[2]
#: Seconds a child has to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 10.0
#: Seconds to wait for a child killed with SIGKILL to be reaped.
REAP_TIMEOUT = 5.0
READY_POLL = 0.05
PROBE_TIMEOUT = 1.0


#: Popen objects of the children this process started and has not reaped yet, by pid: kept so
#: that :func:`alive` reaps them and none is garbage collected while running.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def python(module: str, *args: str) -> list[str]:
    """The command line of ``python -m module *args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


@dataclass
class Child:
    """A child process we started. ``name`` says what it is in errors (``"moto's S3 server"``)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path | None
    session: bool
    stop_timeout: float = STOP_TIMEOUT
    #: it had to be killed: it did not exit within the timeout after SIGTERM
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, ready: Callable[[], bool], timeout: float, poll: float = READY_POLL) -> Child:
        """Return once ``ready()``; ChildError when the child exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ChildError(f"{self.name} exited with status {self.process.returncode} while starting; "
                                 f"{log_tail(self.log)}", self.name, self.log)
            if ready():
                return self
            if time.monotonic() >= deadline:
                raise ChildError(f"{self.name} was not ready within {timeout:.0f} s; {log_tail(self.log)}",
                                 self.name, self.log)
            time.sleep(poll)

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, SIGKILL after ``timeout`` (else the child's ``stop_timeout``); its exit status."""
        outlived = stop_pids([self.pid], self.stop_timeout if timeout is None else timeout, group=self.session)
        self.killed = self.killed or bool(outlived)
        return self._reap()

    def kill(self) -> int:
        """SIGKILL at once (its group too when it has its own session), as a crash would; its exit status."""
        _signal(self.pid, signal.SIGKILL, self.session, alone=self.running())
        return self._reap()

    def _reap(self) -> int:
        code = self.process.wait(timeout=REAP_TIMEOUT)
        _CHILDREN.pop(self.pid, None)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


def start(command: Sequence[str], *, name: str | None = None, log: Path | None = None, append: bool = False,
          env: Mapping[str, str] | None = None, cwd: Path | None = None, new_session: bool = False,
          preexec: Callable[[], None] | None = None, stdout: int | None = None,
          stop_timeout: float = STOP_TIMEOUT) -> Child:
    """Start ``command`` with no stdin, its output (stdout and stderr) in ``log`` (else discarded).

    ``append`` keeps what the log holds and writes a line with the time and command first, so that
    runs can be told apart. ``stdout`` (``subprocess.PIPE``, ``DEVNULL``) sends stdout elsewhere and
    only stderr to the log. ``env`` replaces the environment (build it from ``os.environ`` to extend
    it). ``new_session``: the child outlives us and is signalled with its group. ``preexec`` runs in
    the child before the command (a resource limit).
    """
    with contextlib.ExitStack() as closing:
        output: int | IO[bytes] = subprocess.DEVNULL
        if log is not None:
            log_file = closing.enter_context(open(log, "ab" if append else "wb"))  # the child keeps its own
            if append:
                log_file.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
                log_file.flush()
            output = log_file
        process = subprocess.Popen(list(command), stdin=subprocess.DEVNULL,
                                   stdout=output if stdout is None else stdout,
                                   stderr=subprocess.STDOUT if stdout is None else output,
                                   env=None if env is None else dict(env), cwd=cwd,
                                   start_new_session=new_session, preexec_fn=preexec)
    _CHILDREN[process.pid] = process
    return Child(name or " ".join(command[:3]), process, log, new_session, stop_timeout)


def log_tail(path: Path | str | None, lines: int = 15) -> str:
    """The last ``lines`` of a child's log, indented, for an error message."""
    if path is None:
        return "no log"
    try:
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"no log ({exc})"
    return f"last lines of {path}:\n" + "\n".join("    " + line for line in text)


# -- probes ----------------------------------------------------------------------------------------
def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts TCP connections on the port."""
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
    except OSError:
        return False
    return True


def http_ok(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """A GET of ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def healthz(port: int, host: str = "127.0.0.1") -> bool:
    """The health endpoint on the port answers 200."""
    return http_ok(f"http://{host}:{port}/healthz")


# -- processes known by pid ------------------------------------------------------------------------
def started_ticks(pid: int, proc: Path = Path("/proc")) -> str:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat``), "" when it is gone or
    unknown: with the pid, it tells a process from a later one that reuses its pid."""
    try:
        return (proc / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return ""


def alive(pid: int) -> bool:
    """Running and not a zombie; reaps our own children that have exited."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def is_ours(pid: int, marker: str, port: int) -> bool:
    """The process's command line holds ``marker`` and ``port``: a recycled pid is someone else's."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc to tell: trust the record
    return marker.encode() in arguments and str(port).encode() in arguments


def stop_pids(pids: Iterable[int], timeout: float = STOP_TIMEOUT, group: bool = True) -> list[int]:
    """SIGTERM each running process (its process group when ``group``), SIGKILL what outlives
    ``timeout`` (and, with ``group``, what is left of each group), reap our own children.

    Returns the pids that had to be killed. Pass only pids checked to be ours (:func:`is_ours`).
    """
    running = [pid for pid in pids if alive(pid)]
    for pid in running:
        _signal(pid, signal.SIGTERM, group)
    deadline = time.monotonic() + timeout
    pause = 0.002  # most exit at once: do not make every stop cost a whole poll
    while any(alive(pid) for pid in running) and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(2 * pause, READY_POLL)
    outlived = [pid for pid in running if alive(pid)]
    for pid in running:
        if group:  # stragglers of the group, a leader that hung
            _signal(pid, signal.SIGKILL, group, alone=False)
        elif pid in outlived:
            _signal(pid, signal.SIGKILL, group=False)
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            child.wait(timeout=REAP_TIMEOUT)
    return outlived


def _signal(pid: int, signum: int, group: bool, alone: bool = True) -> None:
    """Signal the session we started (its pid is its group's id) when ``group``, else (or when the
    group is gone and ``alone``) the process itself.

    ``alone`` is only for a process just checked to be running: after it exits its pid may be reused.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            try:
                os.killpg(pid, signum)
                return
            except ProcessLookupError:
                pass
        if alone:
            os.kill(pid, signum)
