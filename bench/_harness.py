"""What every benchmark needs: child servers on free loopback ports, always stopped, and a report.

Shared by ``rendezvous_server.py`` and ``pair_latency.py`` so that both start our server the same
way, neither can leave a server running after it exits, and both write results the same way.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.local.processes import Child, ChildError, healthz, python, start
from services.ports import free_ports

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
OUT = BENCH / "out"
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0

_children: list[Child] = []


# -- processes -------------------------------------------------------------------------------
@dataclass
class Server:
    """A server under test, running as a child process."""

    label: str
    child: Child
    port: int
    health_port: int | None
    log: Path


def spawn(cmd: list[str], log: Path, stdout: int = subprocess.DEVNULL, cwd: Path = REPO) -> Child:
    """Start a child whose stderr goes to ``log``; every child is killed when the bench exits.

    ``child.stop()`` sends SIGTERM, then SIGKILL after STOP_TIMEOUT: a stuck server must not outlive the bench.
    """
    child = start(cmd, name=log.stem, log=log, stdout=stdout, cwd=cwd, stop_timeout=STOP_TIMEOUT)
    _children.append(child)
    return child


def stop_all() -> None:
    """Stop every child still running (the bench's ``finally``), whatever fails on the way."""
    while _children:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _children.pop().stop()


def http_get(port: int, path: str, timeout: float = 2.0) -> str:
    """Body of a GET on the health port."""
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as response:
        return response.read().decode()


def start_ours(loop: str, label: str, *extra: str, tree: Path = REPO, module: str = "services.rendezvous") -> Server:
    """Our server on ``loop``, ready: its /healthz answers (it starts listening before that port).

    ``tree``: another checkout of the repository (a ``git worktree`` of an older commit) whose
    ``services`` to run: ``python -m`` puts the working directory first on the import path.
    ``module``: what ``python -m`` runs (``bench._reader_drive``: the C hub driven another way).
    """
    log = OUT / f"{label.replace('/', '-')}.stderr.log"
    for _ in range(3):
        port, health_port = free_ports(2)
        child = spawn(python(module, "--host", HOST, "--port", str(port), "--health-host", HOST,
                             "--health-port", str(health_port), "--loop", loop, "--log-level", "WARNING", *extra), log,
                      cwd=tree)
        try:
            child.wait_ready(functools.partial(healthz, health_port, HOST), STARTUP_TIMEOUT)
        except ChildError:
            child.stop()  # lost a port race or did not come up: try fresh ports
            continue
        return Server(label, child, port, health_port, log)
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
