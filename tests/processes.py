"""Starting the local Lambda runtime and the rendezvous server as child processes, the same way in
every test that needs one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from services.ports import free_port, free_ports
from tests.common import REPO


@contextmanager
def _child(args: list[str], log: Path, ready: Callable[[], bool], startup_s: float,
           env: dict[str, str] | None = None) -> Iterator[None]:
    """``python -m *args`` from the repository, its output in ``log``; returns once ``ready()``, and
    requires a clean exit on SIGTERM afterwards."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=environ, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_s
        while not ready():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


@contextmanager
def runtime_process(log: Path, *options: str, env: dict[str, str] | None = None,
                    startup_s: float = 60.0) -> Iterator[str]:
    """``python -m services.local.runtime --port P *options``; yields its endpoint URL once it listens."""
    port = free_port()
    with _child(["services.local.runtime", "--port", str(port), *options], log, lambda: "listening" in log.read_text(),
                startup_s, env):
        yield f"http://127.0.0.1:{port}"


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def rendezvous_process(log: Path, startup_s: float = 15.0) -> Iterator[str]:
    """``python -m services.rendezvous`` on loopback; yields its ``host:port`` once /healthz answers."""
    port, health_port = free_ports(2)
    with _child(["services.rendezvous", "--host", "127.0.0.1", "--port", str(port), "--health-host", "127.0.0.1",
                 "--health-port", str(health_port)], log, lambda: _healthy(health_port), startup_s):
        yield f"127.0.0.1:{port}"
