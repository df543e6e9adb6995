"""What every benchmark needs: child servers on free loopback ports, always stopped, and a report.

Shared by ``rendezvous_server.py`` and ``pair_latency.py`` so that both start our server the same
way, neither can leave a server running after it exits, and both write results the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
OUT = BENCH / "out"
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0

_children: list[subprocess.Popen[bytes]] = []


# -- processes -------------------------------------------------------------------------------
@dataclass
class Server:
    """A server under test, running as a child process."""

    label: str
    proc: subprocess.Popen[bytes]
    port: int
    health_port: int | None
    log: Path


def spawn(cmd: list[str], log: Path, stdout: int | None = None) -> subprocess.Popen[bytes]:
    """Start a child whose stderr goes to ``log``; every child is killed when the bench exits."""
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=stdout if stdout is not None else subprocess.DEVNULL,
                                stderr=err, stdin=subprocess.DEVNULL)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT: a stuck server must not outlive the bench."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def stop_all() -> None:
    """Stop every child still running (the bench's ``finally``)."""
    while _children:
        with contextlib.suppress(Exception):
            stop(_children.pop())


def free_port() -> int:
    """A loopback port free right now; the server may still lose a race for it (then we retry)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 2.0) -> str:
    """Body of a GET on the health port."""
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as response:
        return response.read().decode()


def start_ours(loop: str, label: str, *extra: str) -> Server:
    """Our server on ``loop``, ready: its /healthz answers (it starts listening before that port)."""
    for _ in range(3):
        port, health_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "services.rendezvous", "--host", HOST, "--port", str(port),
               "--health-host", HOST, "--health-port", str(health_port), "--loop", loop,
               "--log-level", "WARNING", *extra]
        log = OUT / f"{label.replace('/', '-')}.stderr.log"
        proc = spawn(cmd, log)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if http_get(health_port, "/healthz", timeout=0.5):
                    return Server(label, proc, port, health_port, log)
            time.sleep(0.05)
        stop(proc)  # lost a port race or did not come up: try fresh ports
    raise RuntimeError(f"{label}: server did not start; see {log}")


@contextlib.contextmanager
def children_killed_on_exit() -> Iterator[None]:
    """Stop every child on any exit, SIGTERM included (which Python would not unwind otherwise)."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        stop_all()
        signal.signal(signal.SIGTERM, previous)




def write_report(name: str, report: dict[str, object]) -> None:
    """Write ``bench/out/<name>.json`` with the machine and time added, and say where."""
    report = {**report, "cpus": os.cpu_count(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")
